"""`build-sd verify --numerics`: run the bundle's golden case (contract/golden.py) on this
machine's devices, module by module, against the build machine's PyTorch reference (no torch
here: the reference's numbers travel in the bundle)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import GoldenCase
from .chain import ModelChain


def absmax(x: np.ndarray) -> float:
    """max |x| over the finite entries: a restricted head's row is -inf on the ids it cannot
    propose (contract/config.py, head_vocab_size), which must not inflate a tolerance."""
    x = np.asarray(x, np.float32)
    fin = np.isfinite(x)
    return float(np.abs(x[fin]).max()) if fin.any() else 0.0


def row_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| over ref's finite entries; inf unless got is exactly ref elsewhere (the same
    -inf ids). NaN anywhere in got is inf too (a NaN compared with a tolerance would pass)."""
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    fin = np.isfinite(ref)
    if fin.all():
        d = np.abs(got - ref)
        return float(d.max()) if np.isfinite(d).all() else float("inf")
    if not np.array_equal(got[~fin], ref[~fin]):
        return float("inf")
    d = np.abs(got[fin] - ref[fin])
    if not d.size:
        return 0.0
    return float(d.max()) if np.isfinite(d).all() else float("inf")


def digest_values(row: np.ndarray, n: int) -> list[float]:
    """The first n values of a row for golden.json, -inf (not JSON) written as 0.0; the board digests
    its own row the same way before comparing."""
    r = np.asarray(row[:n], np.float32)
    return [float(x) for x in np.where(np.isfinite(r), r, 0.0)]


@dataclass
class ModuleCheck:
    role: str
    label: str
    device: str
    max_diff: float = 0.0
    tol: float = 0.0
    ids_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tol and self.ids_ok


def check_chain(role: str, chain: ModelChain, golden: GoldenCase) -> list[ModuleCheck]:
    """The golden calls on `chain`; one result per module (the head's also says whether the
    greedy ids matched, near ties excepted)."""
    checks = {st.meta.label: ModuleCheck(role, st.meta.label, st.device.name) for st in chain.stages}
    for step in golden.steps:
        toks = np.array(step.tokens, np.int32)
        if step.role == "prefill":
            out = chain.prefill(toks, step.pos, trace=True)
            row = len(step.tokens) - 1          # the prompt's last real row (the bucket is padded)
        else:
            out = chain.step(toks, step.pos, trace=True)
            row = -1
        got = [h.reshape(-1, h.shape[-1])[row] for _, h in out.hidden] + [out.logits()[-1]]
        for ref, g in zip(step.modules, got):
            c = checks[ref.label]
            vals = np.asarray(digest_values(g, len(ref.values)), np.float32)
            diff = float(np.abs(vals - np.asarray(ref.values, np.float32)).max())
            diff = max(diff, abs(absmax(g) - ref.absmax))
            if np.isnan(g).any() or np.isposinf(g).any():
                diff = float("inf")            # never within a tolerance (-inf: a restricted head's ids)
            c.max_diff = max(c.max_diff, diff)
            c.tol = max(c.tol, golden.tol_scale * max(1.0, ref.absmax))
        head = checks[step.modules[-1].label]
        if int(out.ids[-1]) != step.greedy and step.gap > golden.tol_scale * max(1.0, step.modules[-1].absmax):
            head.ids_ok = False
    return list(checks.values())
