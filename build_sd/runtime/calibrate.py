"""`build-sd calibrate`: measure the pair's acceptance on calibration prompts (no torch).

Runs the real speculative loop with a long draft (gamma = the bundle's largest verify) so every
draft position is reached, greedy and optionally at a temperature, and writes Leviathan's alpha
(accepted / judged) and the acceptance per draft position (conditional on reaching it), which
the planner turns into E[N] for every gamma.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..fsutil import write_json
from .cli_run import encode_prompt
from .metrics import Metrics
from .sampling import GreedyAcceptor, RejectionSampler, SamplingParams
from .session import open_bundle
from .speculative import generate


def _aggregate(ms: list[Metrics]) -> dict:
    acc = sum(m.accepted for m in ms)
    rej = sum(m.rejected for m in ms)
    prop = sum(m.proposed for m in ms)
    G = max((len(m.reached) for m in ms), default=0)
    reached = [sum(m.reached[i] for m in ms if i < len(m.reached)) for i in range(G)]
    hits = [sum(m.hits[i] for m in ms if i < len(m.hits)) for i in range(G)]
    return {"alpha": acc / (acc + rej) if acc + rej else None,
            "acceptance_rate": acc / prop if prop else None,
            "per_position": [h / r if r else None for h, r in zip(hits, reached)],
            "reached": reached, "iterations": sum(m.iterations for m in ms),
            "tokens": sum(m.emitted for m in ms)}


def calibrate(bundle: str, prompts: list[str], gamma: int | None = None, temperature: float | None = None,
              max_new_tokens: int = 64, seed: int = 0, log=print) -> dict:
    s = open_bundle(bundle)
    g = gamma or s.max_gamma()
    if g < 1 or g > s.max_gamma():
        raise UserError(f"--gamma {g}: this bundle verifies gamma 1..{s.max_gamma()}")
    if not prompts:
        raise UserError("no calibration prompts")
    ids = [encode_prompt(s, p) for p in prompts]
    out = {"schema": 1, "kind": "build_sd.calibration", "bundle": str(bundle), "gamma": g,
           "prompts": len(prompts)}
    runs = [("greedy", None)] + ([("sampled", temperature)] if temperature else [])
    for name, temp in runs:
        ms = []
        for i, p in enumerate(ids):
            acc = (GreedyAcceptor() if temp is None else
                   RejectionSampler(SamplingParams(temperature=temp), np.random.default_rng(seed + i)))
            ms.append(generate(s.target, s.draft, p, g, acc, max_new_tokens, s.eos_ids).metrics)
        out[name] = _aggregate(ms)
        if temp is not None:
            out[name]["temperature"] = temp
        a = out[name]["alpha"]
        log(f"{name}: alpha {a if a is None else round(a, 4)}, per position "
            + " ".join("-" if x is None else f"{x:.2f}" for x in out[name]["per_position"]))
    return out


def run_calibrate_cli(a) -> int:
    if not a.prompts:
        raise UserError("give --prompts FILE (one prompt per line; a TSV's first column is used)")
    from .cli_run import read_prompts
    prompts = read_prompts(a.prompts, a.limit)
    cal = calibrate(a.bundle, prompts, a.gamma, a.temperature, a.max_new_tokens, a.seed)
    write_json(a.out, cal)
    print(f"wrote {a.out}")
    return 0
