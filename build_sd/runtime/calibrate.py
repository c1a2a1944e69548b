"""`build-sd calibrate`: measure the pair's acceptance on calibration prompts (no torch).

Runs the real speculative loop with a long draft (gamma = the bundle's largest verify) so every
draft position is reached, greedy and optionally at a temperature, and returns Leviathan's
alpha (accepted / judged) and the acceptance per draft position (conditional on reaching it),
which the planner turns into E[N] for every gamma (contract.Calibration).
"""
from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from ..contract import Acceptance, Calibration
from ..errors import UserError
from .metrics import Metrics
from .prompts import encode_as
from .sampling import GreedyAcceptor, RejectionSampler, SamplingParams
from .session import open_bundle
from .speculative import generate


def _aggregate(ms: list[Metrics], temperature: float | None) -> Acceptance:
    acc = sum(m.accepted for m in ms)
    rej = sum(m.rejected for m in ms)
    prop = sum(m.proposed for m in ms)
    G = max((len(m.reached) for m in ms), default=0)
    reached = [sum(m.reached[i] for m in ms if i < len(m.reached)) for i in range(G)]
    hits = [sum(m.hits[i] for m in ms if i < len(m.hits)) for i in range(G)]
    return Acceptance(alpha=acc / (acc + rej) if acc + rej else None,
                      acceptance_rate=acc / prop if prop else None,
                      per_position=[h / r if r else None for h, r in zip(hits, reached)],
                      reached=reached, iterations=sum(m.iterations for m in ms),
                      tokens=sum(m.emitted for m in ms),
                      temperature=msgspec.UNSET if temperature is None else temperature)


def calibrate(bundle: str | Path, prompts: list[str], gamma: int | None = None, temperature: float | None = None,
              max_new_tokens: int = 64, seed: int = 0, log=print, chat: bool = False,
              reference: str | Path | None = None) -> Calibration:
    """chat: each prompt is a user message in the model's chat template (alpha depends on the format).
    reference: a bundle whose target is the reference (the float model): the target's agreement with
    it is measured too (runtime/agreement.py)."""
    s = open_bundle(bundle)
    g = gamma or s.max_gamma()
    if g < 1 or g > s.max_gamma():
        raise UserError(f"--gamma {g}: this bundle verifies gamma 1..{s.max_gamma()}")
    if not prompts:
        raise UserError("no calibration prompts")
    ids = [encode_as(s, p, chat) for p in prompts]
    runs = {"greedy": None, **({"sampled": temperature} if temperature else {})}
    got = {}
    for name, temp in runs.items():
        ms = []
        for i, p in enumerate(ids):
            acc = (GreedyAcceptor() if temp is None else
                   RejectionSampler(SamplingParams(temperature=temp), np.random.default_rng(seed + i)))
            ms.append(generate(s.target, s.draft, p, g, acc, max_new_tokens, s.eos_ids).metrics)
        got[name] = _aggregate(ms, temp)
        a = got[name].alpha
        log(f"{name}: alpha {a if a is None else round(a, 4)}, per position "
            + " ".join("-" if x is None else f"{x:.2f}" for x in got[name].per_position))
    agreed = {}
    if reference is not None:
        from .agreement import agreement
        ref = open_bundle(reference, load_draft=False)
        if ref.target.export.config.vocab_size != s.target.export.config.vocab_size:
            raise UserError(f"--reference {reference}: its target has another vocabulary than {bundle}'s")
        a = agreement(s.target, ref.target, ids, max_new_tokens)
        log(f"target agreement with {reference} ({precision(ref.target.export)}): {a['agreement']:.4f} "
            f"(teacher-forced top-1 over {a['tokens']} tokens), first divergence at {a['first_divergence']:.1f}")
        agreed = dict(target_agreement=round(a["agreement"], 5), first_divergence=round(a["first_divergence"], 2),
                      reference=f"{reference} ({precision(ref.target.export)})")
    return Calibration(bundle=str(bundle), gamma=g, prompts=len(prompts), greedy=got["greedy"],
                       sampled=got.get("sampled", msgspec.UNSET), draft_precision=precision(s.draft.export),
                       target_precision=precision(s.target.export), **agreed)


def precision(export) -> str:
    """f32 | f16 | w8a8 | w4a8: the quantization when there is one, else the dtype."""
    return export.quant if export.quant != "none" else export.dtype
