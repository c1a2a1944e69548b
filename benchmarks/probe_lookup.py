"""Would n-gram lookup (prompt lookup decoding) lift the chat pair's tokens per verify? (a probe for
issue 16's binding lever: per-position acceptance.)

Along the f32 target's greedy answers to the 40 held-out chat prompts (as benchmarks/probe_tree.py),
replays greedy speculative decoding exactly, iteration by iteration, under three draft policies:

  draft    the committed token-level draft's chain of gamma tokens (teacher-forced argmax: while the
           chain matches the target it sees the true prefix, so leading hits are exact);
  lookup   the gamma tokens that followed the most recent earlier occurrence of the context's last
           n tokens (n from --n-max down to --n-min; prompt + answer so far), no model at all;
  hybrid   lookup where it finds a match, else the draft's chain.

Per policy: tokens per verify, draft calls per verify, and the speedup a cost table predicts
(--verify: verify_T / decode for T = gamma + 1; --c: a draft call / target decode; lookup costs 0).

  .venv/bin/python benchmarks/probe_lookup.py [--max-new 128] [--gammas 1,2,3,4,5,7]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from build_sd.chatpair import model as M  # noqa: E402
from build_sd.chatpair.evaluate import load_draft  # noqa: E402
from build_sd.chatpair.prompts import heldout_prompts  # noqa: E402
from build_sd.chatpair.teacher import generate, load_target, render  # noqa: E402
from build_sd.demo.chat import DRAFT_DIR  # noqa: E402
from build_sd.runtime.lookup import NgramLookup  # noqa: E402


def replay(prompt: list[int], ans: list[int], pred: np.ndarray, gamma: int, policy: str, n_max: int, n_min: int):
    """(verifies, tokens, draft calls) of greedy speculative decoding along ans; lookup is the
    runner's own (runtime/lookup.py)."""
    lk = NgramLookup(n_max, n_min)
    i = verifies = calls = 0
    while i < len(ans):
        prop = lk.propose(prompt + ans[:i], gamma) if policy != "draft" else []
        if not prop and policy != "lookup":
            prop = list(pred[i:i + gamma])
            calls += min(gamma, len(ans) - i)
        k = 0
        while k < len(prop) and i + k < len(ans) and prop[k] == ans[i + k]:
            k += 1
        i += k + 1                                      # the accepted run and the target's own token
        verifies += 1
    return verifies, len(ans), calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--gammas", default="1,2,3,4,5,7")
    ap.add_argument("--n-max", type=int, default=4)
    ap.add_argument("--n-min", type=int, default=2)
    ap.add_argument("--c", type=float, default=0.05, help="a draft call / a target decode")
    ap.add_argument("--verify", default="2:1.02,3:1.06,4:1.24,5:1.26,6:1.3,8:1.42",
                    help="verify_T / decode, T:x pairs (FINDINGS: this CPU, f32 target)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    vcost = {int(k): float(v) for k, v in (p.split(":") for p in a.verify.split(","))}
    prompts = heldout_prompts(a.prompts, seed=1)
    tok, target = load_target()
    rendered = [render(tok, p) for p in prompts]
    got = generate(target, rendered, [0.0] * len(prompts), a.max_new, 1, torch.Generator().manual_seed(0))
    answers = [list(map(int, g[0])) for g in got]
    draft, _ = load_draft(DRAFT_DIR)
    ids = M.head_ids(draft)
    preds = []
    with torch.no_grad():
        for r, ans in zip(rendered, answers):
            h = draft.model(input_ids=torch.tensor([r + ans[:-1]])).last_hidden_state[0, len(r) - 1:]
            p = draft.lm_head(h).float().argmax(-1)
            preds.append((p if ids is None else ids.long()[p]).numpy())
    n = sum(map(len, answers))
    print(f"{len(prompts)} held-out prompts, {n} answer positions (target f32 greedy, <= {a.max_new} tokens); "
          f"lookup n {a.n_max}..{a.n_min}; c {a.c}")
    print(f"{'gamma':>5} {'policy':>7} {'tok/verify':>10} {'calls/verify':>12} {'predicted x':>11}")
    for g in map(int, a.gammas.split(",")):
        T = g + 1
        v = vcost.get(T) or vcost[min(vcost, key=lambda t: abs(t - T))]
        for policy in ("draft", "lookup", "hybrid"):
            V = N = C = 0
            for r, ans, pred in zip(rendered, answers, preds):
                dv, dn, dc = replay(r, ans, pred, g, policy, a.n_max, a.n_min)
                V, N, C = V + dv, N + dn, C + dc
            tpv, cpv = N / V, C / V
            print(f"{g:5d} {policy:>7} {tpv:10.3f} {cpv:12.2f} {tpv / (v + cpv * a.c):11.2f}")


if __name__ == "__main__":
    main()
