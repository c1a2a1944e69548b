"""The target's last hidden states over the kept sequences (data/answers/), for feature-level drafts.

A feature-level draft (EAGLE, arXiv 2401.15077) does not read tokens alone: at position t it reads
the target's own last hidden state f_t (after the final norm: the vector the LM head scores) and
the token x_{t+1}, and predicts f_{t+1}. The target's features already hold most of what decides
its next token, so one layer can follow the target far better than a standalone draft of the same
cost (the token-level draft here plateaued at alpha ~0.48).

One teacher-forced f32 pass per sequence (batched, right padding: causal attention never reads
the padding of the rows that end early). Per kept shard, FEATURES/<shard>.npz holds, for every token
of every sequence (prompt + answer, the shard's own order):
  feat   float16 [N, H]   f_t, the target's normed last hidden state
  top_ids int32 [N, k], top_logp float16 [N, k]   the target's top-k next-token log-probs (temperature 1)
and the shard's ids / seq_off / ans_start, so a features shard trains on its own.
Resumable: a shard is written to a temporary file, then renamed; done shards are skipped.
f32 on 2 cores: ~500 tokens/s (bf16 autocast would be ~3x faster, but its rounding flips near-ties
of the target's argmax, which is the label).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import log_to


def shard_sequences(z) -> list[np.ndarray]:
    ids, off = z["ids"].astype(np.int64), z["seq_off"]
    return [ids[off[i]:off[i + 1]] for i in range(len(off) - 1)]


@torch.no_grad()
def forward(model, seqs: list[np.ndarray], k: int, batch_tokens: int):
    """(feat f16 [N, H], top_ids [N, k], top_logp f16 [N, k]) over the concatenated sequences."""
    N = sum(map(len, seqs))
    H = model.config.hidden_size
    feat = np.zeros((N, H), np.float16)
    tid = np.zeros((N, k), np.int32)
    tlp = np.zeros((N, k), np.float16)
    starts = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))      # similar lengths batch together
    i = 0
    while i < len(order):
        L = len(seqs[order[i]])
        B = max(1, batch_tokens // L)
        rows = order[i:i + B]
        i += B
        x = torch.full((len(rows), L), 2, dtype=torch.long)
        am = torch.zeros((len(rows), L), dtype=torch.long)
        for r, j in enumerate(rows):
            x[r, :len(seqs[j])] = torch.from_numpy(seqs[j])
            am[r, :len(seqs[j])] = 1
        h = model.model(input_ids=x, attention_mask=am).last_hidden_state       # normed
        logp = torch.log_softmax(model.lm_head(h).float(), -1)
        v, ix = logp.topk(k, -1)
        for r, j in enumerate(rows):
            n, s = len(seqs[j]), starts[j]
            feat[s:s + n] = h[r, :n].numpy().astype(np.float16)
            tid[s:s + n] = ix[r, :n].numpy()
            tlp[s:s + n] = v[r, :n].numpy().astype(np.float16)
    return feat, tid, tlp


def main(a) -> None:
    from .keep import ANSWERS
    from .teacher import load_target
    torch.set_num_threads(a.threads)
    dst = a.out / "features"
    dst.mkdir(parents=True, exist_ok=True)
    log = a.out / "features.log"
    shards = sorted(ANSWERS.glob("*.npz"))
    if a.only:
        shards = [s for s in shards if s.name.startswith(a.only)]
    todo = [s for s in shards if not (dst / s.name).exists()][:a.max_shards]
    if not todo:
        print(f"features: all {len(shards)} shards done in {dst}")
        return
    _, model = load_target()
    log_to(log, f"features: {len(todo)} of {len(shards)} shards to do -> {dst}")
    for s in todo:
        t0 = time.perf_counter()
        z = np.load(s)
        seqs = shard_sequences(z)
        feat, tid, tlp = forward(model, seqs, a.k, a.batch_tokens)
        tmp = dst / (s.stem + ".tmp.npz")
        np.savez(tmp, feat=feat, top_ids=tid, top_logp=tlp, ids=z["ids"], seq_off=z["seq_off"],
                 ans_start=z["ans_start"])
        tmp.replace(dst / s.name)
        dt = time.perf_counter() - t0
        log_to(log, f"features: {s.name} {len(feat)} tokens in {dt:.0f} s ({len(feat) / dt:.0f} tok/s)")
