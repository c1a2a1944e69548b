"""`build-sd verify --numerics`: run the bundle's golden case (contract/golden.py) on this
machine's devices, module by module, against the build machine's PyTorch reference (no torch
here: the reference's numbers travel in the bundle)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import GoldenCase
from .chain import ModelChain


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
            diff = float(np.abs(np.asarray(g[:len(ref.values)], np.float32) - np.asarray(ref.values, np.float32)).max())
            diff = max(diff, abs(float(np.abs(g).max()) - ref.absmax))
            c.max_diff = max(c.max_diff, diff)
            c.tol = max(c.tol, golden.tol_scale * max(1.0, ref.absmax))
        head = checks[step.modules[-1].label]
        if int(out.ids[-1]) != step.greedy and step.gap > golden.tol_scale * max(1.0, step.modules[-1].absmax):
            head.ids_ok = False
    return list(checks.values())
