"""How far a quantized target is from its float self, on the board (no torch): the accuracy bound
`plan --min-agreement` reads from a calibration.

agreement: teacher-forced top-1 agreement of the target with the reference target along the
reference's own greedy tokens (the reference's n greedy tokens are fed to the target, which
predicts each next token: the fraction equal), mean over the prompts. first_divergence: where the
target's free-running greedy output first differs from the reference's (n when it never does),
mean over the prompts. Speculative decoding reproduces the target it runs, so this -- not alpha --
is what a precision costs in accuracy.

The free-running output is not generated: up to its first difference it is the reference's, so at
each position until then the target sees the same tokens as teacher-forced, and its first different
token is the first teacher-forced prediction that differs. (That verify and decode calls agree on
the same tokens is what speculative decoding already relies on; the tests check it.) This saves a
greedy generation of the target per prompt: ~12 s of the chat demo's w8a8 calibration here.
"""
from __future__ import annotations

import numpy as np

from .chain import ModelChain
from .sampling import GreedyAcceptor
from .speculative import generate


def teacher_forced_ids(target: ModelChain, prompt: list[int], tokens: list[int]) -> list[int]:
    """The target's greedy next token after the prompt and after each of tokens[:-1]."""
    out = target.prefill(np.asarray(prompt, np.int32))
    got = [int(out.ids[-1])]
    pos, rest = len(prompt), list(tokens[:-1])
    sizes = sorted(set(target.verify_T) | {1}, reverse=True)
    while rest:
        T = next(t for t in sizes if t <= len(rest))
        got += [int(x) for x in target.step(np.asarray(rest[:T], np.int32), pos).ids]
        pos, rest = pos + T, rest[T:]
    return got


def agreement(target: ModelChain, reference: ModelChain, prompts: list[list[int]], n: int = 48) -> dict:
    """{"agreement", "first_divergence", "tokens", "prompts"} of `target` against `reference`."""
    agree, diverge, total = [], [], 0
    for ids in prompts:
        n_here = min(n, target.max_context - len(ids), reference.max_context - len(ids))
        if n_here < 1:
            continue
        ref = generate(reference, None, ids, 0, GreedyAcceptor(), n_here, []).token_ids
        forced = teacher_forced_ids(target, ids, ref)
        same = [a == b for a, b in zip(forced, ref)]
        agree.append(float(np.mean(same)))
        diverge.append(same.index(False) if False in same else len(ref))
        total += len(ref)
    return {"agreement": float(np.mean(agree)) if agree else None,
            "first_divergence": float(np.mean(diverge)) if diverge else None, "tokens": total, "prompts": len(agree)}
