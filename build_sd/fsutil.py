"""Small file helpers: atomic writes (temp name + rename), hashing with a (size, mtime) cache."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def write_atomic(path: str | Path, data: bytes | str) -> bool:
    """Write `data` to `path` through a temp file + rename. Returns False (and leaves the file and
    its mtime alone) when the content is already there, so incremental builds stay no-ops."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")     # fixed name: a killed write is overwritten next time
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_json(path: str | Path, obj) -> bool:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def copy_atomic(src: str | Path, dst: str | Path, link: bool = False) -> bool:
    """Copy src to dst unless dst already has the same size and bytes' hash.

    link=True hard-links instead of copying when both sit on one filesystem (falls back to a
    copy otherwise): a bundle then costs no disk for its weights. Safe only because build_sd
    replaces files by rename, never in place, so a rebuild of src breaks the link and leaves dst
    as it was; a user who edits a linked file in place edits both (hence opt-in).
    """
    src, dst = Path(src), Path(dst)
    if dst.exists():
        if link and os.path.samefile(src, dst):
            return False
        if not link and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
            return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            if not link:
                raise OSError
            os.link(src, tmp)
        except OSError:          # not asked, other filesystem (EXDEV) or links not allowed (EPERM)
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def read_json(path: str | Path, what: str = "file"):
    from .errors import UserError
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None


def cache_dir() -> Path:
    """build_sd's download and import cache: $BUILD_SD_CACHE, else $XDG_CACHE_HOME/build_sd, else
    ~/.cache/build_sd (imports of GGUF files, the chat pair's target)."""
    env = os.environ.get("BUILD_SD_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "build_sd"
