"""Where a chain's parameters come from: the model's .irpa, or weights drawn at run time.

Latency studies of shapes whose weights cannot travel (a 1B f32 .irpa is 5 GB; the GPU box
takes 64 MiB) open a bundle with `random_weights=SEED` (`--random-weights SEED`): every chain
then draws the parameters export.json lists (N(0, 0.02), norms 1, as benchmarks/models.py
writes them) instead of reading the .irpa. Every kernel runs as usual, so timings are real; the
tokens are noise, so pair it with --simulate-alpha. The choice is a parameter of opening a
bundle (session.open_bundle, profiler.profile), never a process-wide switch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import iree.runtime as rt

from ..contract import ExportRecord
from ..errors import UserError
from .devices import DTYPES

# (seed, name, shape, dtype) -> array: a memo shared by every chain (the draws are pure
# functions of their key), so the draft and target or two placements don't draw twice
_drawn: dict = {}


def add_weights(idx: rt.ParameterIndex, export: ExportRecord, irpa: Path, random_weights: int | None) -> None:
    """Put the model's parameters into `idx`: the .irpa's, or seeded random ones."""
    if random_weights is None:
        try:
            idx.load(str(irpa))
        except Exception as e:  # noqa: BLE001 - a corrupt archive is bad input
            raise UserError(f"{irpa}: not a readable .irpa archive ({str(e).splitlines()[0]})") from None
        return
    tensors = export.parameters.tensors
    if not tensors:
        raise UserError(f"{export.name}: export.json lists no parameter shapes (exported before "
                        "build_sd recorded them): export again to use --random-weights")
    for i, (name, t) in enumerate(sorted(tensors.items())):
        key = (random_weights, name, tuple(t.shape), t.dtype)
        a = _drawn.get(key)
        if a is None:
            if name.endswith("norm.weight"):
                a = np.ones(t.shape, DTYPES[t.dtype])
            elif t.dtype == "i8":            # a W8A8 projection: int8 weights, their scales are f32
                a = np.random.default_rng([random_weights, i]).integers(-127, 128, t.shape, dtype=np.int8)
            elif t.dtype == "u8":            # a W4A8 projection: two 4-bit codes a byte
                a = np.random.default_rng([random_weights, i]).integers(0, 256, t.shape, dtype=np.uint8)
            elif name.endswith(".ratio"):    # its group steps over the row's int8 scale: codes within +-127
                a = np.full(t.shape, 127 / 15, DTYPES[t.dtype])
            elif name.endswith(".offset"):   # its group minimums, likewise
                a = np.full(t.shape, -127 / 2, DTYPES[t.dtype])
            elif name.endswith(".scale"):
                a = np.full(t.shape, 0.02 / 127 * 3, np.float32)
            else:
                # one stream per tensor: the same seed gives the same weights whatever the placement
                rng = np.random.default_rng([random_weights, i])
                a = (rng.standard_normal(t.shape, dtype=np.float32) * 0.02).astype(DTYPES[t.dtype], copy=False)
            _drawn[key] = a
        idx.add_buffer(name, a)


def forget_drawn() -> None:
    """Free the memo (a long process that studied a big shape)."""
    _drawn.clear()
