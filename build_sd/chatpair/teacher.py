"""The target's (teacher's) answers to the training prompts, with its top-k distributions, in resumable shards.

Each prompt is rendered exactly as a chat runner renders it: `apply_chat_template([{"role": "user",
"content": p}], add_generation_prompt=True)` (the template adds its default system prompt). The target
answers up to `max_new` tokens, stopping at `<|im_end|>` (id 2, kept as the answer's last token).

A fraction `greedy_frac` of the sequences are greedy (the distribution speculative decoding is judged on);
the rest are sampled at a temperature drawn from `temps`, so the draft also sees the teacher on slightly
off-greedy paths. The top-k (token id, log-prob) of the teacher's *temperature-1* distribution at every
answer position is recorded DURING generation (the logits of the step that produced that token, KV
cache on, left padding with matching position ids): no second forward pass, which would cost ~30 % more
time. These equal a teacher-forced pass over the whole sequence up to float rounding.

Own decode loop instead of `model.generate`: per-row temperatures in one batch, finished rows are
dropped from the batch and the KV cache (answers differ a lot in length), and the raw logits are at hand.

Shard s holds prompts [s*S, (s+1)*S) of train_prompts.txt; its RNG is seeded by (seed, s), so a shard
is the same whether produced in one run or after a resume. Shards are written to a temporary file and
renamed (atomic); done shards are skipped, so the job can be killed at any time and restarted.

Shard file (npz): ids int32 (all sequences concatenated: prompt + answer), seq_off int64 [n+1],
ans_start int32 [n] (index of the first answer token within its sequence), topk_ids int32 [A, k],
topk_logp float16 [A, k] (A = total answer tokens; row j of sequence i predicts its answer token j),
temp float32 [n] (0 = greedy), finished bool [n] (ended with <|im_end|>), prompt_idx int32 [n].
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import log_to

EOS = 2


def target_dir() -> Path:
    from ..builder.gguf import checkpoint_dir
    from .fetch import target_gguf
    return checkpoint_dir(target_gguf(download=False))


def load_target(path: Path | None = None):
    from transformers import AutoTokenizer, LlamaForCausalLM
    path = path or target_dir()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    return tok, model


def render(tok, prompt: str) -> list[int]:
    """Token ids of the chat prompt exactly as a chat runner builds it (default system prompt added)."""
    out = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


@torch.no_grad()
def generate(model, prompts: list[list[int]], temps: list[float], max_new: int, k: int, gen: torch.Generator):
    """Decode a batch; returns per row (answer ids, topk ids [L,k], topk logp [L,k], finished)."""
    B = len(prompts)
    L = max(map(len, prompts))
    ids = torch.full((B, L), EOS, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):                      # left padding
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    from transformers import DynamicCache
    cache = DynamicCache()
    t = torch.tensor(temps, dtype=torch.float32)
    rows = list(range(B))                                # original index of each live row
    answers = [[] for _ in range(B)]
    tk_ids = [[] for _ in range(B)]
    tk_lp = [[] for _ in range(B)]
    finished = [False] * B
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    logits = out.logits[:, -1, :].float()
    next_pos = pos[:, -1] + 1
    for step in range(max_new):
        lp = torch.log_softmax(logits, -1)
        v, ix = lp.topk(k, -1)
        greedy = logits.argmax(-1)
        tt = t[rows]
        samp = torch.where(tt > 0, tt, torch.ones_like(tt))
        probs = torch.softmax(logits / samp[:, None], -1)
        drawn = torch.multinomial(probs, 1, generator=gen)[:, 0]
        nxt = torch.where(tt > 0, drawn, greedy)
        keep = []
        for j, r in enumerate(rows):
            tok_ = int(nxt[j])
            answers[r].append(tok_)
            tk_ids[r].append(ix[j].numpy().astype(np.int32))
            tk_lp[r].append(v[j].numpy().astype(np.float16))
            if tok_ == EOS:
                finished[r] = True
            else:
                keep.append(j)
        if not keep or step == max_new - 1:
            break
        if len(keep) < len(rows):                        # drop finished rows from batch and cache
            sel = torch.tensor(keep)
            cache.batch_select_indices(sel)
            mask, nxt, next_pos = mask[sel], nxt[sel], next_pos[sel]
            rows = [rows[j] for j in keep]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
    return [(answers[i], np.stack(tk_ids[i]), np.stack(tk_lp[i]), finished[i]) for i in range(B)]


def shard_path(out: Path, s: int) -> Path:
    return out / "shards" / f"shard_{s:05d}.npz"


def make_shard(model, tok, prompts: list[str], first: int, s: int, cfg: dict) -> dict:
    """Generate one shard's sequences; returns the arrays to save."""
    rng = random.Random(cfg["seed"] * 1_000_003 + s)
    gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + s)
    rendered = [render(tok, p) for p in prompts]
    temps = [0.0 if rng.random() < cfg["greedy_frac"] else rng.choice(cfg["temps"]) for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(rendered[i]))   # similar lengths together
    res = [None] * len(prompts)
    for b in range(0, len(order), cfg["batch"]):
        idx = order[b:b + cfg["batch"]]
        got = generate(model, [rendered[i] for i in idx], [temps[i] for i in idx], cfg["max_new"], cfg["k"], gen)
        for i, g in zip(idx, got):
            res[i] = g
    ids, off, ans_start, tki, tkl, fin = [], [0], [], [], [], []
    for i in range(len(prompts)):
        a, ti, tl, f = res[i]
        seq = rendered[i] + a
        ids.extend(seq)
        off.append(off[-1] + len(seq))
        ans_start.append(len(rendered[i]))
        tki.append(ti)
        tkl.append(tl)
        fin.append(f)
    return dict(ids=np.array(ids, np.int32), seq_off=np.array(off, np.int64), ans_start=np.array(ans_start, np.int32),
                topk_ids=np.concatenate(tki), topk_logp=np.concatenate(tkl), temp=np.array(temps, np.float32),
                finished=np.array(fin, bool), prompt_idx=np.arange(first, first + len(prompts), dtype=np.int32))


def save_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log(out: Path, msg: str) -> None:
    log_to(out / "teacher.log", msg)


def run(out: Path, shard_size: int = 64, batch: int = 32, max_new: int = 192, k: int = 32, greedy_frac: float = 0.5,
        temps=(0.7, 0.85, 1.0), seed: int = 0, max_shards: int | None = None, threads: int = 2) -> None:
    """Produce shards for train_prompts.txt in order, skipping those already on disk."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    prompts = (out / "train_prompts.txt").read_text().splitlines()
    cfg = dict(shard_size=shard_size, batch=batch, max_new=max_new, k=k, greedy_frac=greedy_frac,
               temps=list(temps), seed=seed)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    cfg_path = out / "shards" / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        gen_keys = ("shard_size", "max_new", "k", "greedy_frac", "temps", "seed")
        if any(old.get(x) != cfg[x] for x in gen_keys):
            sys.exit(f"teacher: {cfg_path} was made with {old}; refusing to mix settings (use another --out)")
    cfg_path.write_text(json.dumps(cfg, indent=1))
    n_shards = (len(prompts) + shard_size - 1) // shard_size
    if max_shards is not None:
        n_shards = min(n_shards, max_shards)
    tok, model = load_target()
    log(out, f"start: {n_shards} shards of {shard_size} prompts, cfg {cfg}, threads {threads}")
    t0 = time.time()
    made_tok = 0
    for s in range(n_shards):
        p = shard_path(out, s)
        if p.exists():
            continue
        ts = time.time()
        arr = make_shard(model, tok, prompts[s * shard_size:(s + 1) * shard_size], s * shard_size, s, cfg)
        save_atomic(p, arr)
        n_ans = len(arr["topk_ids"])
        made_tok += n_ans
        dt = time.time() - ts
        done = sum(1 for i in range(n_shards) if shard_path(out, i).exists())
        rate = made_tok / (time.time() - t0)
        eta = (n_shards - done) * n_ans / max(rate, 1e-9)
        log(out, f"shard {s}: {len(arr['ans_start'])} seqs, {n_ans} answer tokens in {dt:.0f} s "
                 f"({n_ans / dt:.1f} tok/s; run avg {rate:.1f} tok/s); {done}/{n_shards} done, "
                 f"finished {arr['finished'].mean():.2f}, ETA {eta / 3600:.1f} h")
    log(out, "all shards done")


def bench(out: Path, batches=(8, 16, 32, 64), n_new: int = 48, threads: int = 2) -> None:
    """Throughput of the decode loop (new tokens/s, all rows kept alive) for a few batch sizes."""
    torch.set_num_threads(threads)
    prompts = (out / "train_prompts.txt").read_text().splitlines()
    tok, model = load_target()
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        rendered = [render(tok, p) for p in prompts[:b]]
        ts = time.time()
        got = generate(model, rendered, [1.0] * b, n_new, 32, gen)
        dt = time.time() - ts
        n = sum(len(g[0]) for g in got)
        log(out, f"bench: batch {b}: {n} new tokens in {dt:.1f} s = {n / dt:.1f} tok/s "
                 f"(prompt ~{np.mean([len(r) for r in rendered]):.0f} tokens, {n_new} steps, T=1)")
