"""On-policy distillation data: the DRAFT answers the training prompts, the target scores its answers.

The teacher shards (teacher.py) hold the target's own answers: the draft learns the target's next
token along paths the target takes. At decode time the draft drafts along ITS paths (the prefix is
the target's, but the draft's errors are what speculation judges), and DistillSpec (Zhou et al.
2023, "DistillSpec: Improving Speculative Decoding via Knowledge Distillation") found training on
draft-generated sequences scored by the target raises acceptance more than a fixed dataset of the
same size. Scoring is one teacher-forced forward pass over prompt + answer (no generation on the
target's side), so a shard also costs less than a teacher shard.

Shard s takes the training prompts from the END of train_prompts.txt backwards ([N - (s+1) S, N - s S)),
so it does not repeat the prompts the teacher shards answer from the start (until the two meet). The
file is a teacher shard (same arrays, see teacher.py) named op_NNNNN.npz in the same folder, plus
`policy` = "draft" and `draft_step`: the trainer then takes the TARGET's argmax, not the sequence's
token, as the cross-entropy target at each answer position. Resumable like the teacher: done shards
are skipped; the RNG is seeded by (seed, s).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from . import log_to
from .teacher import EOS, generate, load_target, render, save_atomic


def shard_path(out: Path, s: int) -> Path:
    return out / "shards" / f"op_{s:05d}.npz"


class _FullVocab(torch.nn.Module):
    """A draft whose head scores only some ids, seen as a model over the whole vocabulary (the other
    ids at -inf), so teacher.generate can drive it."""

    def __init__(self, draft, V: int):
        super().__init__()
        self.draft, self.V = draft, V
        from . import model as M
        self.ids = M.head_ids(draft)

    def forward(self, **kw):
        out = self.draft(**kw)
        if self.ids is None:
            return out
        full = torch.full((*out.logits.shape[:-1], self.V), float("-inf"), dtype=out.logits.dtype)
        full[..., self.ids.long()] = out.logits
        out.logits = full
        return out


@torch.no_grad()
def score(target, seqs: list[list[int]], starts: list[int], k: int, batch: int = 16):
    """The target's top-k log-probs at every answer position of each sequence (teacher-forced)."""
    res = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        L = max(len(seqs[i]) for i in idx) - 1
        x = torch.full((len(idx), L), EOS, dtype=torch.long)
        for r, i in enumerate(idx):                       # right padding: causal, nothing to mask
            x[r, :len(seqs[i]) - 1] = torch.tensor(seqs[i][:-1])
        lp = torch.log_softmax(target(input_ids=x).logits.float(), -1)
        for r, i in enumerate(idx):
            rows = lp[r, starts[i] - 1:len(seqs[i]) - 1]   # row j predicts answer token j
            v, ix = rows.topk(k, -1)
            res[i] = (ix.numpy().astype(np.int32), v.numpy().astype(np.float16))
    return res


def make_shard(draft, target, tok, prompts: list[str], first: int, s: int, cfg: dict) -> dict:
    rng = random.Random(cfg["seed"] * 1_000_003 + 7 * s + 1)
    gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + 7 * s + 1)
    rendered = [render(tok, p) for p in prompts]
    temps = [0.0 if rng.random() < cfg["greedy_frac"] else rng.choice(cfg["temps"]) for _ in prompts]
    got = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))
    for b in range(0, len(order), cfg["batch"]):
        idx = order[b:b + cfg["batch"]]
        for i, g in zip(idx, generate(draft, [rendered[i] for i in idx], [temps[i] for i in idx],
                                      cfg["max_new"], 1, gen)):
            got[i] = g
    seqs = [r + g[0] for r, g in zip(rendered, got)]
    scored = score(target, seqs, [len(r) for r in rendered], cfg["k"])
    off = np.cumsum([0] + [len(q) for q in seqs])
    return dict(ids=np.array([t for q in seqs for t in q], np.int32), seq_off=off.astype(np.int64),
                ans_start=np.array([len(r) for r in rendered], np.int32),
                topk_ids=np.concatenate([x[0] for x in scored]), topk_logp=np.concatenate([x[1] for x in scored]),
                temp=np.array(temps, np.float32), finished=np.array([g[3] for g in got], bool),
                prompt_idx=np.arange(first, first + len(prompts), dtype=np.int32), policy=np.array("draft"),
                draft_step=np.array(cfg["draft_step"], np.int64))


def run(out: Path, ckpt: Path, shard_size: int = 64, batch: int = 64, max_new: int = 128, k: int = 32,
        greedy_frac: float = 0.5, temps=(0.7, 1.0), seed: int = 0, max_shards: int | None = None,
        threads: int = 2) -> None:
    from .evaluate import load_draft
    torch.set_num_threads(threads)
    prompts = (out / "train_prompts.txt").read_text().splitlines()
    tok, target = load_target()
    draft, state = load_draft(ckpt)
    cfg = dict(shard_size=shard_size, batch=batch, max_new=max_new, k=k, greedy_frac=greedy_frac,
               temps=list(temps), seed=seed, draft=str(ckpt), draft_step=int(state.get("step") or -1))
    model = _FullVocab(draft, target.config.vocab_size).eval()
    n_shards = len(prompts) // shard_size
    if max_shards is not None:
        n_shards = min(n_shards, max_shards)
    log_to(out / "onpolicy.log", f"start: {n_shards} shards, cfg {cfg}")
    t0, made = time.time(), 0
    for s in range(n_shards):
        p = shard_path(out, s)
        if p.exists():
            continue
        hi = len(prompts) - s * shard_size
        ts = time.time()
        arr = make_shard(model, target, tok, prompts[hi - shard_size:hi], hi - shard_size, s, cfg)
        save_atomic(p, arr)
        n = len(arr["topk_ids"])
        made += n
        greedy = np.mean(arr["topk_ids"][:, 0] == arr["ids"][np.concatenate(
            [np.arange(a + st, b) for a, b, st in zip(arr["seq_off"][:-1], arr["seq_off"][1:], arr["ans_start"])])])
        log_to(out / "onpolicy.log", f"shard {s}: {n} answer tokens in {time.time() - ts:.0f} s "
                                     f"(run avg {made / (time.time() - t0):.1f} tok/s); the draft's token is "
                                     f"the target's argmax at {greedy:.3f} of the positions")
