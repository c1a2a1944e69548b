"""Train the draft on the teacher's shards: token-level distillation, resumable, while shards still arrive.

Loss per answer position (the prompt, incl. the system prompt, is context only):
    (1 - w) * CE(draft, teacher's token) + w * KL(p_T || q)
with p_T the teacher's top-k log-probs renormalised over those k ids and q the draft's full-vocabulary
softmax (so the term also pulls the draft's mass into the teacher's top-k); w = --kl-weight (0.7).
The KL carries most of the signal (k soft targets per position instead of one token); the CE keeps the
draft anchored on the tokens actually emitted, incl. the greedy ones that alpha is measured on.
The LM head (80 % of the draft's multiply-adds) is applied only at answer positions, and with
--neg N only to the batch's candidate ids + N random ones (sampled softmax; see loss_fn).

AdamW (betas 0.9/0.95, weight decay 0.1 on matrices, none on norms/embedding), linear warm-up then
cosine to 10 % over --steps, gradient clipping 1.0, seed --seed. Batches: sequences of one epoch in a
seeded random order, grouped by length (buckets of 50 batches), each batch <= --batch-tokens padded tokens.

Every --ckpt-minutes a checkpoint (model, optimizer, step, epoch, position in the epoch, the epoch's shard
list, python/numpy/torch RNG states) is written atomically to RUN/last.pt; a restart with the same command
resumes exactly. Each epoch re-scans OUT/shards, so the teacher can still be producing shards.
With --eval-every N the held-out alpha is measured every N steps (evaluate.py, cached target answers);
RUN/best.pt is the checkpoint with the highest held-out alpha so far (log: RUN/train.log, RUN/evals.jsonl).
CPU by default; CUDA when present (bf16 autocast there).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import log_to
from . import model as M


def list_shards(out: Path) -> list[str]:
    """The teacher's shards (shard_*) and the on-policy ones (op_*, onpolicy.py)."""
    return sorted(p.name for pat in ("shard_*.npz", "op_*.npz") for p in (out / "shards").glob(pat))


def load_shard(path: Path) -> list[dict]:
    z = np.load(path)
    ids, off, st = z["ids"], z["seq_off"], z["ans_start"]
    tki, tkl = z["topk_ids"], z["topk_logp"]
    # on-policy shards hold the draft's answers: the cross-entropy target is the target's argmax there
    on_policy = "policy" in z.files and str(z["policy"]) == "draft"
    seqs, a = [], 0
    for i in range(len(st)):
        s = ids[off[i]:off[i + 1]]
        n_ans = len(s) - int(st[i])
        seqs.append(dict(ids=s, start=int(st[i]), tki=tki[a:a + n_ans], tkl=tkl[a:a + n_ans]))
        if on_policy:
            seqs[-1]["tgt"] = tki[a:a + n_ans, 0]
        a += n_ans
    assert a == len(tki)
    return seqs


def epoch_batches(seqs: list[dict], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Seeded order, length-grouped batches of at most batch_tokens padded tokens."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batches = []
    chunk = max(1, 50 * batch_tokens // 200)
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(seqs[i]["ids"]))
        cur, mx = [], 0
        for i in part:
            L = len(seqs[i]["ids"])
            if cur and max(mx, L) * (len(cur) + 1) > batch_tokens:
                batches.append(cur)
                cur, mx = [], 0
            cur.append(i)
            mx = max(mx, L)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(seqs: list[dict]):
    """Right-padded input ids (causal attention needs no mask for right padding), and the answer
    positions: (row, position whose logits predict answer token j), target ids, teacher top-k."""
    L = max(len(s["ids"]) for s in seqs) - 1
    x = torch.full((len(seqs), L), 2, dtype=torch.long)
    rows, pos, tgt, tki, tkl = [], [], [], [], []
    for r, s in enumerate(seqs):
        ids = torch.from_numpy(s["ids"].astype(np.int64))
        x[r, :len(ids) - 1] = ids[:-1]
        n = len(ids) - s["start"]
        p = torch.arange(s["start"] - 1, s["start"] - 1 + n)
        rows.append(torch.full((n,), r))
        pos.append(p)
        tgt.append(ids[s["start"]:] if "tgt" not in s else torch.from_numpy(s["tgt"].astype(np.int64)))
        tki.append(torch.from_numpy(s["tki"].astype(np.int64)))
        tkl.append(torch.from_numpy(s["tkl"].astype(np.float32)))
    return x, torch.cat(rows), torch.cat(pos), torch.cat(tgt), torch.cat(tki), torch.cat(tkl)


def frequent_ids(out: Path, K: int, always=(0, 1, 2)) -> list[int]:
    """The K ids the teacher writes most often in its answers (all shards present now; ties: lower id
    first), the special ids always among them; sorted."""
    counts = np.bincount(np.concatenate([q["ids"][q["start"]:] for name in list_shards(out) if name.startswith("shard_")
                                         for q in load_shard(out / "shards" / name)]))
    counts[list(always)] = counts.max() + 1
    order = np.lexsort((np.arange(len(counts)), -counts))
    return sorted(int(i) for i in order[:K])


def head_map(ids: torch.Tensor, V: int) -> torch.Tensor:
    """id -> row of a restricted head, -1 where it has none."""
    m = torch.full((V,), -1, dtype=torch.long)
    m[ids.long()] = torch.arange(len(ids))
    return m


def loss_fn(model, batch, kl_w: float, device, autocast, neg: int = 0, hmap: torch.Tensor | None = None):
    """neg > 0: sampled softmax over the batch's candidates (every teacher top-k id and target in the
    batch) plus `neg` uniformly drawn other ids, instead of all 49,152 ids: the LM head and the
    softmax (most of a step on the CPU) shrink several-fold; the random negatives, new every step, keep
    pushing down the logits of ids that are never candidates. Evaluation always uses the full vocabulary."""
    x, rows, pos, tgt, tki, tkl = (t.to(device) for t in batch)
    with autocast():
        h = model.model(input_ids=x).last_hidden_state[rows, pos]   # only answer positions
        if hmap is not None:
            # restricted head: ids it cannot score drop out of the CE (ignored) and of the teacher's
            # top-k (masked before renormalising); agreement still counts them as misses
            logits = model.lm_head(h)
            tgt, tki_r = hmap[tgt], hmap[tki]
            tkl = tkl.masked_fill(tki_r < 0, float("-inf"))
            keep = (tki_r >= 0).any(-1)
            tki = tki_r.clamp(min=0)
        elif neg > 0:
            V = model.lm_head.weight.shape[0]
            cand = torch.unique(torch.cat([tki.flatten(), tgt, torch.randint(0, V, (neg,), device=device)]))
            logits = h @ model.lm_head.weight[cand].T
            tki = torch.searchsorted(cand, tki)
            tgt = torch.searchsorted(cand, tgt)
        else:
            logits = model.lm_head(h)
    lq = torch.log_softmax(logits.float(), -1)
    if hmap is not None:
        ce = F.nll_loss(lq, tgt, ignore_index=-1)
        lp = torch.log_softmax(tkl[keep], -1)
        t = lp.exp() * (lp - lq[keep].gather(1, tki[keep]))
        kl = torch.where(lp.isneginf(), 0.0, t).sum(-1).mean()
        agree = ((lq.argmax(-1) == tki[:, 0]) & (tki_r[:, 0] >= 0)).float().mean()
        return (1 - kl_w) * ce + kl_w * kl, ce.detach(), kl.detach(), agree.detach(), len(tgt)
    ce = F.nll_loss(lq, tgt)
    lp = torch.log_softmax(tkl, -1)                                  # renormalise teacher's top-k
    kl = (lp.exp() * (lp - lq.gather(1, tki))).sum(-1).mean()
    agree = (lq.argmax(-1) == tki[:, 0]).float().mean()              # vs the teacher's argmax
    return (1 - kl_w) * ce + kl_w * kl, ce.detach(), kl.detach(), agree.detach(), len(tgt)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log(run: Path, msg: str) -> None:
    log_to(run / "train.log", msg)


def run(a) -> None:
    from .teacher import target_dir
    out: Path = a.out
    run_dir: Path = a.run or out / "runs" / "draft"
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        import contextlib
        autocast = contextlib.nullcontext
    last = run_dir / "last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=False) if last.exists() else None
    if ck is not None:
        model, kept = M.from_state(ck["config"], ck["model"]), None
    else:
        ids = frequent_ids(out, a.head_vocab) if a.head_vocab and not getattr(a, "init", None) else None
        if getattr(a, "init", None):             # an exported draft (its head ids included) goes on learning
            from .evaluate import load_draft
            model, kept = load_draft(Path(a.init))[0], None
        elif getattr(a, "init_layers", None):
            layers = [int(x) for x in a.init_layers.split(",")]
            model, kept = M.draft_from_layers(target_dir(), layers, head_ids=ids)
        else:
            model, kept = M.new_draft(target_dir(), seed=a.seed, head_ids=ids)
    hids = M.head_ids(model)
    hmap = None if hids is None else head_map(hids, model.config.vocab_size).to(device)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    st = dict(step=0, epoch=0, pos=0, shards=None, best_alpha=-1.0, tokens=0)
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        st = ck["state"]
        random.setstate(ck["rng"]["py"])
        np.random.set_state(ck["rng"]["np"])
        torch.set_rng_state(ck["rng"]["torch"])
        log(run_dir, f"resumed from {last} at step {st['step']} (epoch {st['epoch']}, batch {st['pos']})")
    else:
        random.seed(a.seed)
        np.random.seed(a.seed)
        log(run_dir, f"new draft: {M.params(model.config)}; "
                     + (f"from {a.init}" if kept is None else
                        f"embedding keeps {kept:.3f} of the target's embedding energy") + f"; args {vars(a)}")

    (run_dir / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(a).items()}, indent=1))
    with open(run_dir / "args_history.jsonl", "a") as f:    # a resumed run may change e.g. --max-passes
        f.write(json.dumps(dict(step=st["step"], args={k: str(v) for k, v in vars(a).items()})) + "\n")

    def checkpoint(path: Path):
        save_atomic(dict(model=model.state_dict(), opt=opt.state_dict(), state=st, args=vars(a),
                         config=model.config.to_dict(),
                         rng=dict(py=random.getstate(), np=np.random.get_state(), torch=torch.get_rng_state())), path)

    cache: dict[str, list[dict]] = {}
    t_ck = time.time()
    t0, tok0, step0 = time.time(), st["tokens"], st["step"]
    acc = dict(loss=0.0, ce=0.0, kl=0.0, agree=0.0, n=0)
    while st["step"] < a.steps:
        if st["shards"] is None:                       # new epoch: re-scan the shard folder
            st["shards"] = list_shards(out)
            st["pos"] = 0
            if not st["shards"]:
                log(run_dir, "no shards yet; waiting 60 s")
                time.sleep(60)
                st["shards"] = None
                continue
        for s in st["shards"]:
            if s not in cache:
                cache[s] = load_shard(out / "shards" / s)
        seqs = [q for s in st["shards"] for q in cache[s]]
        n_data = sum(len(q["tki"]) for q in seqs)
        if a.max_passes and st["pos"] == 0 and st["tokens"] >= a.max_passes * n_data:
            # throttle: while the teacher is still producing, do not pass over the same data more than
            # max_passes times in total; wait (leaving the CPU to the teacher) until new shards appear
            log(run_dir, f"{st['tokens']} tokens seen >= {a.max_passes} x {n_data} data tokens; waiting for shards")
            checkpoint(last)
            while len(list_shards(out)) == len(st["shards"]):
                time.sleep(60)
            st["shards"] = None
            continue
        batches = epoch_batches(seqs, a.batch_tokens, random.Random(a.seed * 7919 + st["epoch"]))
        if st["pos"] == 0:
            log(run_dir, f"epoch {st['epoch']}: {len(st['shards'])} shards, {len(seqs)} seqs, "
                         f"{sum(len(q['tki']) for q in seqs)} answer tokens, {len(batches)} batches")
        while st["pos"] < len(batches) and st["step"] < a.steps:
            batch = collate([seqs[i] for i in batches[st["pos"]]])
            for g in opt.param_groups:
                g["lr"] = lr_at(st["step"], a.steps, a.warmup, a.lr)
            loss, ce, kl, agree, n = loss_fn(model, batch, a.kl_weight, device, autocast, a.neg, hmap)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            st["step"] += 1
            st["pos"] += 1
            st["tokens"] += n
            for k_, v in (("loss", loss.item()), ("ce", ce.item()), ("kl", kl.item()), ("agree", agree.item())):
                acc[k_] += v * n
            acc["n"] += n
            if st["step"] % a.log_every == 0:
                dt = time.time() - t0
                log(run_dir, f"step {st['step']} ep {st['epoch']} lr {opt.param_groups[0]['lr']:.2e} "
                             f"loss {acc['loss'] / acc['n']:.3f} ce {acc['ce'] / acc['n']:.3f} "
                             f"kl {acc['kl'] / acc['n']:.3f} agree {acc['agree'] / acc['n']:.3f} | "
                             f"{(st['step'] - step0) / dt:.3f} steps/s {(st['tokens'] - tok0) / dt:.0f} ans tok/s, "
                             f"{st['tokens']} ans tokens seen")
                acc = dict(loss=0.0, ce=0.0, kl=0.0, agree=0.0, n=0)
            if a.eval_every and st["step"] % a.eval_every == 0:
                evaluate_now(a, model, run_dir, st, checkpoint)
            if time.time() - t_ck > a.ckpt_minutes * 60:
                checkpoint(last)
                t_ck = time.time()
        if st["pos"] >= len(batches):
            st["epoch"] += 1
            st["shards"] = None
    checkpoint(last)
    if a.eval_every:
        evaluate_now(a, model, run_dir, st, checkpoint)
    log(run_dir, f"done at step {st['step']}")


def evaluate_now(a, model, run_dir: Path, st: dict, checkpoint) -> None:
    """Held-out alpha of the current weights; best.pt follows the best alpha."""
    from . import evaluate
    model.eval()
    r = evaluate.alpha(model, evaluate.heldout_answers(a.out), device=next(model.parameters()).device)
    model.train()
    rec = dict(step=st["step"], tokens=st["tokens"], epoch=st["epoch"], alpha=r["alpha"],
               agree=r["agree"], positions=r["positions"], time=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(run_dir / "evals.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    log(run_dir, f"held-out alpha at step {st['step']}: {r['alpha']:.4f} ({r['agree']}/{r['positions']})")
    better = r["alpha"] > st["best_alpha"]
    if better:
        st["best_alpha"] = r["alpha"]
    checkpoint(run_dir / "last.pt")
    if better:
        checkpoint(run_dir / "best.pt")
