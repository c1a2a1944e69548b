"""How much a token tree would lift the chat draft's acceptance (a probe for issue 16's next lever).

Along the target's greedy answers to the 40 held-out chat prompts (build_sd/chatpair/prompts.py:
heldout_prompts; f32 target, <= 64 new tokens), teacher-forced, one draft forward per answer: at every
answer position, is the target's token the draft's argmax (greedy alpha), or within the draft's
top-k (what a tree with k branches at that position would accept)? A chain drafts one candidate per
position; a tree of width k at the first position and chains below accepts position 1 with the
top-k rate, at the cost of k chains verified in one call (k x gamma + 1 rows).

  .venv/bin/python benchmarks/probe_tree.py [--max-new 64] [--prompts 40]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=40)
    a = ap.parse_args()
    torch.set_num_threads(2)
    prompts = heldout_prompts(a.prompts, seed=1)
    tok, target = load_target()
    rendered = [render(tok, p) for p in prompts]
    got = generate(target, rendered, [0.0] * len(prompts), a.max_new, 1, torch.Generator().manual_seed(0))
    draft, _ = load_draft(DRAFT_DIR)
    ids = M.head_ids(draft)
    ks = (1, 2, 3, 4, 8)
    hits = {k: 0 for k in ks}
    first = {k: 0 for k in ks}        # the position right after a target token the chain rejected
    n = n_first = 0
    with torch.no_grad():
        for r, g in zip(rendered, got):
            ans = g[0]
            seq = r + ans
            h = draft.model(input_ids=torch.tensor([seq[:-1]])).last_hidden_state[0, len(r) - 1:]
            top = draft.lm_head(h).float().topk(max(ks), -1).indices
            top = (top if ids is None else ids.long()[top]).numpy()
            want = np.array(ans)
            prev_ok = False
            for i, t in enumerate(want):
                for k in ks:
                    hit = t in top[i, :k]
                    hits[k] += hit
                    if i == 0 or not prev_ok:
                        first[k] += hit
                n += 1
                n_first += i == 0 or not prev_ok
                prev_ok = top[i, 0] == t
    print(f"{len(prompts)} held-out prompts, {n} answer positions (target f32 greedy, <= {a.max_new} tokens)")
    for k in ks:
        print(f"  target token in the draft's top-{k}: {hits[k] / n:.3f} of all positions; "
              f"{first[k] / n_first:.3f} where the chain restarts (after a rejection or at the start)")


if __name__ == "__main__":
    main()
