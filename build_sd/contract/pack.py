"""pack.json: what `build-sd pack --wheels` put beside a bundle in its archive (the wheels an
offline board installs the runner from), with the sha256 of each."""
from __future__ import annotations

from msgspec import Struct

from .base import Record, schema_of


class WheelFile(Struct, frozen=True):
    sha256: str
    bytes: int


class PackManifest(Record, frozen=True, kw_only=True):
    KIND = "build_sd.pack"
    WHAT = "pack manifest"

    schema: int = schema_of("build_sd.pack")
    kind: str = "build_sd.pack"
    bundle: str                     # the bundle folder's name inside the archive
    platform: str                   # pip's platform tag, e.g. manylinux_2_28_aarch64
    python: str                     # e.g. 3.11
    install: str                    # the command that installs the runner on the board
    wheels: dict[str, WheelFile]    # file name under wheels/ -> hash and size
