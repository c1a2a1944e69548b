"""A feature-level draft head for the chat target (EAGLE, arXiv 2401.15077): model, training, held-out eval.

The head drafts from the target's own last hidden state instead of tokens alone:

    h_t     = fc([embed(x_{t+1}); f_t])                 f_t: the target's normed last hidden state at t
    fhat_t  = norm(LlamaDecoderLayer(h)_t)              one layer of the target's shape, causal over 0..t,
                                                        and a final RMSNorm (started as the target's)
    logits  = head(fhat_t)  -> the draft's x_{t+2}      head: the target's tied embedding rows, frozen,
                                                        over the K ids of the token-level draft's head

`embed` is the target's embedding (frozen). The final norm makes the head an ordinary Llama model
with one layer, an `fc` before it and a second input (build_sd exports it like any draft), and puts
fhat where f lives: both are normed vectors that the same head rows score. fhat_t is trained to BE f_{t+1} (smooth-L1, weight 1) and
its head scores to match the target's next-token distribution (KL over the target's top-k renormalised
on the head's ids, weight --p-weight), as EAGLE does. Drafting step k > 1 feeds the head its own fhat
in place of f: features are noised during training (uniform, +-noise x the features' RMS) so it holds.

Cost per drafted token: fc 2H.H + layer 4.H.H(GQA less) + 3.H.I + head H.K multiply-adds, about 9M for
SmolLM2-135M (H 576, I 1536, K 8192): c ~0.07 of the target's 134M.

Evaluation (`eagle-eval`) replays greedy speculative decoding exactly along the target's greedy answers
to the held-out prompts (evaluate.heldout_answers): before each block the head's cache holds the true
features of every accepted position, the block drafts g tokens feeding fhat back, and the number of
leading matches is what greedy verification would accept. It reports step-1 accuracy (comparable to the
token-level draft's alpha) and tokens per verify for g = 1..6 next to the token-level draft's.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..builder.model.llama import RMSNorm, rotate_half
from ..contract.config import ModelConfig, rope_inv_freq
from . import log_to


def head_config(target_cfg: dict) -> ModelConfig:
    """The target's architecture (the head's layer has its shape), from its config.json dict."""
    return ModelConfig.from_hf_dict(target_cfg)


def rope(x, pos, inv_freq):
    """Llama's rotate-half RoPE; x [B, h, T, d], pos [T] (absolute positions)."""
    ang = pos.float()[:, None] * inv_freq[None]                 # [T, d/2]
    emb = torch.cat([ang, ang], -1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


class Layer(nn.Module):
    """A Llama decoder layer with HF's parameter names, and an explicit KV cache for drafting."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        # f32 inverse frequencies as transformers computes them (scaled RoPE types included)
        self.register_buffer("inv_freq", torch.tensor(rope_inv_freq(c), dtype=torch.float32), persistent=False)
        H, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.input_layernorm = RMSNorm(H, c.rms_norm_eps, torch.float32)
        self.post_attention_layernorm = RMSNorm(H, c.rms_norm_eps, torch.float32)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(H, q, bias=False)
        self.self_attn.k_proj = nn.Linear(H, kv, bias=False)
        self.self_attn.v_proj = nn.Linear(H, kv, bias=False)
        self.self_attn.o_proj = nn.Linear(q, H, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(H, c.intermediate_size, bias=False)
        self.mlp.up_proj = nn.Linear(H, c.intermediate_size, bias=False)
        self.mlp.down_proj = nn.Linear(c.intermediate_size, H, bias=False)

    def qkv(self, x, pos):
        """The RoPE'd q [B, h, T, d] and k, v [B, kvh, T, d] of rows x at positions pos."""
        c, a = self.c, self.self_attn
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(B, T, c.num_heads, c.head_dim).transpose(1, 2)
        k = a.k_proj(h).view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = a.v_proj(h).view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        return rope(q, pos, self.inv_freq), rope(k, pos, self.inv_freq), v

    def finish(self, x, q, k, v, mask):
        """Attention of q over (k, v) where mask [T, S] allows, then the residual and the MLP."""
        rep = self.c.q_per_kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.self_attn.o_proj(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))

    def forward(self, x, pos, cache: list | None = None):
        """x [B, T, H] at positions pos [T]; cache [k, v] ([B, kvh, S, d], the positions before pos[0])
        is extended in place when given; without it the T rows attend causally among themselves."""
        T = x.shape[1]
        q, k, v = self.qkv(x, pos)
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[0], cache[1] = k, v
        S = k.shape[2]
        # row i (absolute S-T+i) sees keys 0..S-T+i
        return self.finish(x, q, k, v, torch.ones(T, S, dtype=torch.bool).tril(S - T))


class EagleHead(nn.Module):
    def __init__(self, c: ModelConfig, embed: torch.Tensor, head_ids: torch.Tensor, norm: torch.Tensor):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding.from_pretrained(embed.float(), freeze=True)          # the target's
        self.register_buffer("vocab_ids", head_ids.to(torch.int32))
        self.head = nn.Linear(c.hidden_size, len(head_ids), bias=False)
        with torch.no_grad():
            self.head.weight.copy_(embed.float()[head_ids.long()])                    # tied rows
        self.head.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False)
        self.layer = Layer(c)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, torch.float32)
        with torch.no_grad():
            self.norm.weight.copy_(norm.float())

    def forward(self, feats, next_ids, pos, cache=None):
        """fhat [B, T, H] from the features f_t and the tokens x_{t+1} at positions pos."""
        return self.norm(self.layer(self.fc(torch.cat([self.embed(next_ids), feats], -1)), pos, cache))

    def unrolled(self, feats, next_ids, steps: int) -> list:
        """Drafting steps 1..steps at every position at once (EAGLE-3's training-time test): pass s
        at position q is the s-th draft of a block whose first input sits at q-s+1, so it reads
        pass s-1's output at q-1 as its feature and attends to pass 1's keys up to q-s+1 (the true
        features before the block) and to pass j's key at q-s+j (the block's own drafts). Pass 1 is
        forward(); outs[s-1][:, q] for q < s-1 is meaningless (its block would start before 0)."""
        B, T, _ = feats.shape
        pos = torch.arange(T)
        e = self.embed(next_ids)
        ks, vs, outs, f = [], [], [], feats
        for s in range(1, steps + 1):
            x = self.fc(torch.cat([e, f], -1))
            q, k, v = self.layer.qkv(x, pos)
            ks.append(k)
            vs.append(v)
            masks = [pos[None, :] <= pos[:, None] - (s - 1)]
            masks += [pos[None, :] == pos[:, None] - (s - j) for j in range(2, s + 1)]
            out = self.norm(self.layer.finish(x, q, torch.cat(ks, 2), torch.cat(vs, 2), torch.cat(masks, 1)))
            outs.append(out)
            f = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], 1)
        return outs

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]


# ---- data -----------------------------------------------------------------------------------------

def load_features(dirs: list[Path]) -> list[dict]:
    seqs = []
    for p in sorted(q for d in dirs for q in d.glob("*.npz") if ".tmp" not in q.name):
        with np.load(p) as npz:
            z = {k: npz[k] for k in npz.files}          # each npz[k] reads the file: once per array
        off, st = z["seq_off"], z["ans_start"]
        for i in range(len(st)):
            a, b = int(off[i]), int(off[i + 1])
            seqs.append(dict(ids=z["ids"][a:b].astype(np.int64), feat=z["feat"][a:b], top_ids=z["top_ids"][a:b],
                             top_logp=z["top_logp"][a:b], start=int(st[i]), shard=p.name, i=i))
    return seqs


def split(seqs: list[dict], val_frac: float, seed: int):
    """(train, validation) by a hash of each sequence's shard and index: a sequence stays on its side
    while shards keep arriving."""
    import hashlib

    def val(s):
        h = hashlib.sha1(f"{seed}:{s['shard']}:{s['i']}".encode()).digest()
        return int.from_bytes(h[:4], "little") < val_frac * 2 ** 32
    return [s for s in seqs if not val(s)], [s for s in seqs if val(s)]


def batch(seqs: list[dict], remap: np.ndarray):
    """Tensors for a list of sequences (right padding): inputs (f_t, x_{t+1}) for t = 0..n-2, targets
    f_{t+1} and the target's top-k at t+1 (mapped onto the head's rows; -1 = not in the head), and
    the loss mask: t+2 is an answer position (the drafted token is an answer token)."""
    L = max(len(s["ids"]) for s in seqs) - 1
    B, H, k = len(seqs), seqs[0]["feat"].shape[1], seqs[0]["top_ids"].shape[1]
    f = np.zeros((B, L, H), np.float32)
    x = np.zeros((B, L), np.int64)
    ft = np.zeros((B, L, H), np.float32)
    ti = np.full((B, L, k), -1, np.int64)
    tl = np.zeros((B, L, k), np.float32)
    m = np.zeros((B, L), bool)
    for b, s in enumerate(seqs):
        n = len(s["ids"]) - 1
        f[b, :n] = s["feat"][:n]
        x[b, :n] = s["ids"][1:]
        ft[b, :n] = s["feat"][1:]
        ti[b, :n] = remap[s["top_ids"][1:]]
        tl[b, :n] = s["top_logp"][1:]
        m[b, max(0, s["start"] - 2):n] = True
    t = torch.from_numpy
    return t(f), t(x), t(ft), t(ti), t(tl), t(m)


def losses(model: EagleHead, f, x, ft, ti, tl, m, noise: float, p_weight: float, unroll: int = 1):
    """(loss, feature loss, token loss, step-1 accuracy, per-step accuracies): the sum over drafting
    steps 1..unroll (weights 0.8^(s-1)) of smooth-L1(fhat, f_{t+1}) + p_weight x the cross-entropy of
    the head against the target's top-k renormalised on the head's ids."""
    if noise:
        f = f + (torch.rand_like(f) * 2 - 1) * noise
    outs = model.unrolled(f, x, unroll)
    total, vls, pls, accs = 0.0, [], [], []
    q = torch.arange(f.shape[1])
    for s, fh in enumerate(outs, 1):
        ms = m & (q >= s - 1)[None]
        fh_m, ft_m = fh[ms], ft[ms]
        v_loss = F.smooth_l1_loss(fh_m, ft_m)
        logq = torch.log_softmax(model.head(fh_m), -1)
        ti_m, tl_m = ti[ms], tl[ms]
        ok = ti_m >= 0
        p = torch.softmax(tl_m.masked_fill(~ok, -1e9), -1)                # the target's top-k on the head
        p_loss = -(p * logq.gather(-1, ti_m.clamp(min=0)).masked_fill(~ok, 0)).sum(-1).mean()
        total = total + 0.8 ** (s - 1) * (v_loss + p_weight * p_loss)
        vls.append(v_loss.detach())
        pls.append(p_loss.detach())
        with torch.no_grad():
            # agreement with the target's argmax (top-1 of its top-k), where the head holds it
            accs.append(float(((logq.argmax(-1) == ti_m[:, 0]) & ok[:, 0]).float().mean()))
    return total, vls[0], pls[0], accs[0], accs


def target_parts(target_dir: Path):
    from safetensors import safe_open
    cfg = json.loads((target_dir / "config.json").read_text())
    with safe_open(str(target_dir / "model.safetensors"), "pt") as fh:
        E = fh.get_tensor("model.embed_tokens.weight").float()
        norm = fh.get_tensor("model.norm.weight").float()
    return head_config(cfg), E, norm


def default_head_ids() -> torch.Tensor:
    """The token-level draft's 8192 head ids (the ids the teacher writes most)."""
    from safetensors import safe_open
    p = Path(__file__).parent / "models" / "draft" / "model.safetensors"
    with safe_open(str(p), "pt") as fh:
        return fh.get_tensor("lm_head.vocab_ids").long()


def new_head(target_dir: Path, seed: int) -> EagleHead:
    torch.manual_seed(seed)
    c, E, norm = target_parts(target_dir)
    m = EagleHead(c, E, default_head_ids(), norm)
    return m


def train(a) -> None:
    from .teacher import target_dir
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    run = a.run or a.out / "runs" / "eagle"
    run.mkdir(parents=True, exist_ok=True)
    log = run / "train.log"
    model = new_head(target_dir(), a.seed)
    remap = np.full(model.c.vocab_size, -1, np.int64)
    remap[model.vocab_ids.numpy()] = np.arange(len(model.vocab_ids))
    opt = torch.optim.AdamW(model.trainable(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0
    last = run / "last.pt"
    if not last.exists() and a.init:
        model.load_state_dict(torch.load(a.init, map_location="cpu", weights_only=False)["model"])
        log_to(log, f"eagle: a new run from the weights of {a.init}")
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        log_to(log, f"eagle: resumed at step {step}")
    seqs = load_features([a.out / "features"])
    if not seqs:
        raise SystemExit(f"eagle-train: no features under {a.out / 'features'}: run "
                         "`python -m build_sd.chatpair features` first")
    tr, va = split(seqs, 0.02, a.seed)
    rms = float(np.sqrt(np.mean(np.square(seqs[0]["feat"].astype(np.float32)))))
    log_to(log, f"eagle: {len(tr)} train / {len(va)} val sequences, "
                f"{sum(len(s['ids']) for s in tr):,} tokens; feature RMS {rms:.3f}; step {step} of {a.steps}")
    r = random.Random(a.seed * 1000 + step)
    t0, seen = time.time(), 0
    last_ck = time.time()
    n_files = len(list((a.out / "features").glob("*.npz")))
    while step < a.steps:
        if step % 250 == 0 and len(list((a.out / "features").glob("*.npz"))) != n_files:
            # the features job is still writing shards: train on what has arrived (same split rule)
            n_files = len(list((a.out / "features").glob("*.npz")))
            tr, va = split(load_features([a.out / "features"]), 0.02, a.seed)
            log_to(log, f"eagle: {n_files} feature shards now, {len(tr)} train sequences")
        # a batch: sequences of similar length up to --batch-tokens padded tokens
        s0 = tr[r.randrange(len(tr))]
        L = len(s0["ids"])
        pool = [s for s in (tr[r.randrange(len(tr))] for _ in range(64)) if abs(len(s["ids"]) - L) < 32]
        chosen = [s0] + pool[: max(0, a.batch_tokens // L - 1)]
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / a.steps))))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, vl, pl, acc, accs = losses(model, *batch(chosen, remap), noise=a.noise * rms, p_weight=a.p_weight,
                                         unroll=a.unroll)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable(), 1.0)
        opt.step()
        step += 1
        seen += sum(len(s["ids"]) for s in chosen)
        if step % a.log_every == 0:
            log_to(log, f"step {step} lr {lr:.2e} v {vl:.4f} p {pl:.3f} acc {' '.join(f'{x:.3f}' for x in accs)} "
                        f"{seen / (time.time() - t0):.0f} tok/s")
        if step % a.val_every == 0 or step == a.steps:
            with torch.no_grad():
                accs = np.array([losses(model, *batch(va[i:i + 8], remap), 0.0, a.p_weight, a.unroll)[4]
                                 for i in range(0, len(va), 8)]).mean(0)
            log_to(log, f"step {step} val acc {' '.join(f'{x:.4f}' for x in accs)}")
        if time.time() - last_ck > a.ckpt_minutes * 60 or step == a.steps:
            tmp = run / "last.tmp.pt"
            torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, args=vars(a) | dict(
                out=str(a.out), run=str(run))), tmp)
            tmp.replace(last)
            last_ck = time.time()


# ---- held-out replay ------------------------------------------------------------------------------

@torch.no_grad()
def replay(model: EagleHead, target, items: list[dict], gammas=(1, 2, 3, 4, 5, 6)) -> dict:
    """Greedy speculative decoding replayed along each held-out greedy answer: tokens per verify for
    each gamma, and step-1 accuracy (the head fed the true features, as in the first draft of a block)."""
    ids_of = model.vocab_ids.long()
    out = {g: [0, 0] for g in gammas}                 # tokens emitted, verify calls
    hit1 = n1 = 0
    for it in items:
        seq = it["ids"] + it["answer"]
        P, A = len(it["ids"]), len(it["answer"])
        x = torch.tensor([seq])
        f = target.model(input_ids=x).last_hidden_state[0]            # [S, H] true features
        # step-1 along the whole answer: (f_t, x_{t+1}) -> token t+2, judged for t+2 in the answer
        fh = model(f[None, :-1], x[:, 1:], torch.arange(len(seq) - 1))[0]
        pred = ids_of[model.head(fh).argmax(-1)]
        for t in range(P - 2, len(seq) - 2):
            hit1 += int(pred[t] == seq[t + 2])
            n1 += 1
        true_kv = [None, None]                                        # K/V of every true input
        model(f[None, :-1], x[:, 1:], torch.arange(len(seq) - 1), true_kv)
        for g in gammas:
            p = P                       # the target emits answer token 0 from f_{P-1} (prefill); p = its position
            emitted, calls = 1, 0
            while p < P + A - 1:
                # the head's cache: true features for inputs 0..p-2 ((f_t, x_{t+1}) for t < p-1)
                cache = [true_kv[0][:, :, :p - 1], true_kv[1][:, :, :p - 1]]
                fin, xin, drafts = f[p - 1], seq[p], []
                for i in range(g):
                    fh = model(fin[None, None], torch.tensor([[xin]]), torch.tensor([p - 1 + i]), cache)[0, 0]
                    d = int(ids_of[model.head(fh).argmax()])
                    drafts.append(d)
                    fin, xin = fh, d
                n = 0
                while n < g and p + 1 + n < P + A and drafts[n] == seq[p + 1 + n]:
                    n += 1
                calls += 1
                step = min(n + 1, P + A - 1 - p)
                emitted += step
                p += step
            out[g][0] += emitted
            out[g][1] += calls
    return dict(acc1=hit1 / n1, positions=n1,
                tokens_per_verify={g: out[g][0] / max(1, out[g][1]) for g in gammas})


def chain_blocks(correct: list[bool], gammas) -> dict:
    """Tokens per verify of a token-level draft from its teacher-forced hits along the target's answer:
    while its drafts match, its context IS the target's path, so a block accepts the leading run of
    hits (correct[j]: the draft's argmax after answer tokens < j equals answer token j)."""
    out = {}
    A = len(correct)
    for g in gammas:
        p, emitted, calls = 1, 1, 0           # answer token 0 comes from the prefill
        while p < A:
            n = 0
            while n < g and p + n < A and correct[p + n]:
                n += 1
            step = min(n + 1, A - p)
            emitted, calls, p = emitted + step, calls + 1, p + step
        out[g] = (emitted, calls)
    return out


def token_draft_replay(draft_dir: Path, items: list[dict], gammas=(1, 2, 3, 4, 5, 6)) -> dict:
    from .evaluate import load_draft
    from . import model as M
    d, _ = load_draft(draft_dir)
    ids_of = M.head_ids(d)
    tot = {g: [0, 0] for g in gammas}
    hit = n = 0
    with torch.no_grad():
        for it in items:
            seq, P = it["ids"] + it["answer"], len(it["ids"])
            logits = d(input_ids=torch.tensor([seq[:-1]])).logits[0, P - 1:]
            pred = logits.argmax(-1)
            pred = (pred if ids_of is None else ids_of[pred]).tolist()
            correct = [pred[j] == it["answer"][j] for j in range(len(it["answer"]))]
            hit, n = hit + sum(correct[1:]), n + len(correct) - 1
            for g, (e, c) in chain_blocks(correct, gammas).items():
                tot[g][0] += e
                tot[g][1] += c
    return dict(alpha=hit / n, tokens_per_verify={g: e / max(1, c) for g, (e, c) in tot.items()})


def evaluate(a) -> None:
    from .evaluate import heldout_answers
    from .teacher import load_target, target_dir
    torch.set_num_threads(a.threads)
    items = heldout_answers(a.out, 128)[: a.prompts]
    model = new_head(target_dir(), 0)
    ck = torch.load(a.ckpt or a.out / "runs" / "eagle" / "last.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    model.eval()
    _, target = load_target()
    r = replay(model, target, items)
    print(f"step {ck['step']}: held-out step-1 accuracy {r['acc1']:.4f} over {r['positions']} positions "
          f"({len(items)} prompts)")
    tok = token_draft_replay(a.draft, items)
    print(f"token-level draft {a.draft}: alpha {tok['alpha']:.4f} on the same positions (answer tokens 1..)")
    print("gamma  tokens per verify: feature head | token-level draft")
    for g, v in r["tokens_per_verify"].items():
        print(f"  {g}    {v:.3f} | {tok['tokens_per_verify'][g]:.3f}")
    if a.json:
        a.json.write_text(json.dumps(dict(step=ck["step"], **r, token_draft=tok), indent=1))
