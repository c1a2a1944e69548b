"""calib.json (written by `build-sd calibrate`): the pair's acceptance on calibration prompts."""
from __future__ import annotations

import msgspec
from msgspec import Struct

from .base import Record, schema_of


class Acceptance(Struct, frozen=True, kw_only=True):
    """alpha = accepted / judged (Leviathan's); per_position[i]: acceptance at draft position
    i + 1, given that it was reached (None where never reached)."""
    alpha: float | None
    acceptance_rate: float | None = None
    per_position: list[float | None] = []
    reached: list[int] = []
    iterations: int = 0
    tokens: int = 0
    temperature: float | msgspec.UnsetType = msgspec.UNSET

    def for_planner(self) -> float | list[float] | None:
        """Per-position figures where measured, else the overall alpha."""
        per = [float(x) for x in self.per_position if x is not None]
        return per or self.alpha


class Calibration(Record, frozen=True, kw_only=True):
    KIND = "build_sd.calibration"
    WHAT = "calibration"

    schema: int = schema_of("build_sd.calibration")
    kind: str = "build_sd.calibration"
    bundle: str
    gamma: int
    prompts: int
    greedy: Acceptance | None = None
    sampled: Acceptance | msgspec.UnsetType = msgspec.UNSET
    # each model's precision: its quantization, else its dtype (f32, f16, w8a8, w4a8): alpha depends
    # on both, and the planner's precision choice needs the figure of each combination
    draft_precision: str | msgspec.UnsetType = msgspec.UNSET
    target_precision: str | msgspec.UnsetType = msgspec.UNSET
    # the target against a reference target (`calibrate --reference`, runtime/agreement.py): the
    # accuracy `plan --min-agreement` bounds
    target_agreement: float | msgspec.UnsetType = msgspec.UNSET
    first_divergence: float | msgspec.UnsetType = msgspec.UNSET
    reference: str | msgspec.UnsetType = msgspec.UNSET

    @property
    def precisions(self) -> tuple[str | None, str | None]:
        """(draft, target) precision; None where the calibration predates the fields."""
        return (None if self.draft_precision is msgspec.UNSET else self.draft_precision,
                None if self.target_precision is msgspec.UNSET else self.target_precision)
