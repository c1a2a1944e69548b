"""Precision as a plan dimension (`plan --precisions f16,w8a8,w4a8`): what each precision is made of,
what it reads per weight, and the alpha and accuracy of each draft x target combination from the
calibrations given.

A precision is a float dtype (f32, f16: everything in it) or a quantization (w8a8, w4a8: int8
projections and LM head, the rest in the plan's --dtype; builder/model/quant.py). w4a8 stores 4-bit
weights but expands them to int8 at load, so it reads what w8a8 reads per token (../shared/probes/q8).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..contract import Calibration
from ..errors import UserError

PRECISIONS = ("f32", "f16", "w8a8", "w4a8")
QUANTS = ("w8a8", "w4a8")
# bytes a call reads per weight of a projection or the LM head (the roofline, without a profile)
WEIGHT_BYTES = {"w8a8": 1.0, "w4a8": 1.0}


def parse_precisions(text: str | None, dtype: str) -> list[str]:
    """'f16,w8a8' -> ['f16', 'w8a8']; None -> [dtype] (the plan's --dtype alone, as before)."""
    if not text:
        return [dtype]
    got = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in got if p not in PRECISIONS]
    if bad or not got:
        raise UserError(f"--precisions {text!r}: expected a list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(got))


def dtype_and_quant(precision: str, dtype: str) -> tuple[str, str]:
    """(float dtype, quant) of a precision: a quantization keeps the plan's dtype for the rest."""
    return (dtype, precision) if precision in QUANTS else (precision, "none")


@dataclass(frozen=True)
class PairAlpha:
    alpha: float | list[float]
    source: str                 # "calibrated", "given", or "estimated from D/T"


def alpha_for(draft: str, target: str, calibrations: list[Calibration], given: float | list[float] | None) -> PairAlpha:
    """alpha of a draft x target precision pair: its own calibration, else one with the same target
    precision (the draft's precision moves alpha least: <= 0.007 measured, docs/FINDINGS.md), else one
    with the same draft precision, else the first; a given --alpha applies to every pair."""
    if given is not None and not calibrations:
        return PairAlpha(given, "given")
    rows = [(c.precisions, c.greedy.for_planner()) for c in calibrations if c.greedy and c.greedy.for_planner() is not None]
    if not rows:
        raise UserError("no calibration with a greedy alpha")
    for test in (lambda d, t: d == draft and t == target, lambda d, t: t == target, lambda d, t: d == draft,
                 lambda d, t: True):
        for (d, t), a in rows:
            if test(d, t):
                exact = d == draft and t == target
                return PairAlpha(a, "calibrated" if exact else f"estimated from {d or '?'}/{t or '?'}")
    raise AssertionError("unreachable")


def agreements(calibrations: list[Calibration]) -> dict[str, float]:
    """target precision -> the best-supported agreement with its reference (calibrate --reference)."""
    out: dict[str, float] = {}
    for c in calibrations:
        t = c.precisions[1]
        if t is not None and isinstance(c.target_agreement, float):
            out[t] = c.target_agreement
    return out


def allowed_targets(precisions: list[str], calibrations: list[Calibration], min_agreement: float | None,
                    reference: str = "f32") -> tuple[list[str], dict[str, str]]:
    """The target precisions --min-agreement lets through, and why each other one was left out. The
    reference precision agrees with itself; any other needs a calibration that measured it."""
    if min_agreement is None:
        return list(precisions), {}
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    have = agreements(calibrations)
    keep, why = [], {}
    for p in precisions:
        a = 1.0 if p == reference else have.get(p)
        if a is None:
            why[p] = f"no calibration measured its agreement (build-sd calibrate --reference a {reference} bundle)"
        elif a < min_agreement:
            why[p] = f"agreement {a:.3f} < {min_agreement}"
        else:
            keep.append(p)
    if not keep:
        raise UserError("--min-agreement leaves no target precision: " + "; ".join(f"{p}: {w}" for p, w in why.items()))
    return keep, why
