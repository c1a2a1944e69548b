"""The typed record every file build_sd writes derives from: read, check, write.

Records are msgspec Structs (frozen): `Record.read(path)` decodes the JSON, checks `kind` and
`schema`, converts it to the typed record (every field's type and range) and runs the record's
own cross-field `check`; any problem is one UserError that names the file and the first bad
field (`bundle/manifest.json: field models.draft.files.irpa: Expected str, got array`).
`write(path)` is atomic (temp name + rename) and leaves an unchanged file alone.

Schema versions live here, in one table: bump a file's version where its meaning changes, and
say in OLDEST which versions this build_sd still reads.
"""
from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from .. import __version__
from ..errors import UserError
from ..fsutil import write_json

# kind -> (schema written by this build_sd, oldest schema it still reads)
SCHEMAS: dict[str, tuple[int, int]] = {
    "build_sd.export": (1, 1),
    "build_sd.artifacts": (1, 1),
    "build_sd.bundle": (1, 1),
    "build_sd.plan": (1, 1),
    "build_sd.profile": (1, 1),
    "build_sd.calibration": (1, 1),
    "build_sd.pack": (1, 1),
    "build_sd.golden": (1, 1),
}


def schema_of(kind: str) -> int:
    return SCHEMAS[kind][0]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the file records. Subclasses set KIND and WHAT and declare `schema` and `kind`
    as their first fields (so the files keep them first)."""

    KIND: ClassVar[str] = ""
    WHAT: ClassVar[str] = "file"                 # how messages name the file
    NEWER: ClassVar[str] = "update build_sd"     # what to do about a newer schema

    def check(self) -> str | None:
        """The first cross-field problem (references between fields), or None."""
        return None

    # ---- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path, missing: str | None = None):
        """The record in `path`, or a one-line UserError (missing: the message's tail when the
        file does not exist, e.g. 'run `build-sd compile` first')."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{cls.WHAT} not found: {path}" + (f" ({missing})" if missing else ""))
        try:
            obj = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: invalid JSON ({e})") from None
        return cls.from_obj(obj, str(path))

    @classmethod
    def from_obj(cls, obj: Any, source: str = "<record>"):
        """Check and convert a decoded JSON value (a dict) to this record."""
        if not isinstance(obj, dict) or obj.get("kind") != cls.KIND:
            raise UserError(f"{source} is not a build_sd {cls.WHAT}")
        schema = obj.get("schema")
        current, oldest = SCHEMAS[cls.KIND]
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise UserError(f"{source}: field schema is missing or not an integer")
        if schema > current:
            raise UserError(f"{source} has schema {schema}; this build_sd ({__version__}) reads up to "
                            f"{current} ({cls.NEWER})")
        if schema < oldest:
            raise UserError(f"{source} has schema {schema}, from an older build_sd; this one "
                            f"({__version__}) reads {oldest}..{current}: build it again")
        try:
            rec = msgspec.convert(obj, cls)
        except msgspec.ValidationError as e:
            raise UserError(f"{source}: {_describe(e, obj, cls)}") from None
        problem = rec.check()
        if problem:
            raise UserError(f"{source}: {problem}")
        return rec

    # ---- writing ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return msgspec.to_builtins(self)

    def write(self, path: str | Path) -> bool:
        """Atomic; False (file untouched) when it already holds these bytes."""
        return write_json(path, self.to_dict())


def convert(obj: Any, typ, source: str = "<record>"):
    """A JSON value as a typed value (a record's part), or a UserError naming the bad field."""
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as e:
        raise UserError(f"{source}: {_describe(e, obj, typ)}") from None


# ---- error messages that name the field ---------------------------------------------------------
_AT = re.compile(r"^(.*) - at (`key` in )?`\$(.*)`$", re.S)
_SEG = re.compile(r"\.([A-Za-z_][\w]*)|\[(\d+|\.\.\.)\]")


def _describe(err: msgspec.ValidationError, obj: Any, typ) -> str:
    """msgspec says `... - at $.models.target.files[...]` for a value inside a dict: find the key
    it means by converting each value alone, so the message names it (files['draft/x.vmfb'])."""
    msg = str(err)
    m = _AT.match(msg)
    if not m:
        return msg.replace("`", "")
    what, key, path = m.group(1), m.group(2), m.group(3)
    where = _resolve(obj, typ, path) + (" (a key)" if key else "")
    return f"field {where}: {what}".replace("`", "")


def _resolve(obj: Any, typ, path: str) -> str:
    out = ""
    for m in _SEG.finditer(path):
        name, idx = m.group(1), m.group(2)
        if name is not None:
            out += ("." if out else "") + name
            obj = obj.get(name) if isinstance(obj, dict) else None
            typ = _field_type(typ, name)
        elif idx == "...":
            val_t = _dict_value_type(typ)
            key = _first_bad_key(obj, val_t)
            out += f"[{key!r}]" if key is not None else "[...]"
            obj = obj.get(key) if isinstance(obj, dict) and key is not None else None
            typ = val_t
        else:
            out += f"[{idx}]"
            obj = obj[int(idx)] if isinstance(obj, list) and int(idx) < len(obj) else None
            typ = _list_item_type(typ)
    return out or "(top level)"


def _strip(typ):
    """Annotated[X, ...] -> X; X | None / X | UnsetType -> X."""
    while True:
        origin = typing.get_origin(typ)
        if origin is typing.Annotated:
            typ = typing.get_args(typ)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(typ) if a not in (type(None), msgspec.UnsetType)]
            if len(args) == 1:
                typ = args[0]
                continue
        return typ


def _field_type(typ, name):
    typ = _strip(typ)
    try:
        return typing.get_type_hints(typ, include_extras=True).get(name)
    except Exception:  # noqa: BLE001 - not a struct: the path stops being typed
        return None


def _dict_value_type(typ):
    typ = _strip(typ)
    args = typing.get_args(typ) if typing.get_origin(typ) is dict else ()
    return args[1] if len(args) == 2 else None


def _list_item_type(typ):
    typ = _strip(typ)
    args = typing.get_args(typ) if typing.get_origin(typ) in (list, tuple) else ()
    return args[0] if args else None


def _first_bad_key(obj, val_t):
    if not isinstance(obj, dict) or val_t is None:
        return None
    for k, v in obj.items():
        try:
            msgspec.convert(v, val_t)
        except msgspec.ValidationError:
            return k
    return None
