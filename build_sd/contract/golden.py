"""golden.json: a small numbers check that travels with a model to the board.

`build-sd validate` writes it into the artifacts folder from the PyTorch reference it compares
with (f32): a prompt, then a few greedy decode steps; per step the greedy id and, for every
module, a digest of its output's last row (its largest magnitude and first values). `bundle`
carries it, and `build-sd verify --numerics` runs the same calls on the board's devices and
compares, module by module, with validate's tolerance (dtype-scaled, of the row's magnitude).
Modules for devices the build machine does not have (Mali, Arm) are checked this way only.
"""
from __future__ import annotations

from msgspec import Struct

from .base import Record, schema_of

VALUES = 32            # first values of a row kept per module output


class ModuleDigest(Struct, frozen=True, kw_only=True):
    label: str                 # embed, layers[0:4], head, whole
    absmax: float              # max |x| over the last row
    values: list[float]        # its first VALUES values


class GoldenStep(Struct, frozen=True, kw_only=True):
    role: str                  # prefill | decode
    pos: int                   # first position of the call
    tokens: list[int]          # the call's tokens (prefill: the prompt, unpadded)
    greedy: int                # the reference's greedy id after the call
    gap: float                 # its top-2 logit gap: ids may differ below the tolerance (a near tie)
    modules: list[ModuleDigest]


class GoldenCase(Record, frozen=True, kw_only=True):
    KIND = "build_sd.golden"
    WHAT = "golden case"

    schema: int = schema_of("build_sd.golden")
    kind: str = "build_sd.golden"
    reference: str             # what produced it, e.g. "PyTorch f32 of CKPT (config.json sha256 ...)"
    tol_scale: float           # |got - ref| <= tol_scale * max(1, absmax)
    steps: list[GoldenStep]
