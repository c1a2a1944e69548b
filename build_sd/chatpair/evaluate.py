"""Greedy alpha of a draft on the held-out chat prompts (build/chatpair/heldout.txt).

alpha = the fraction of answer positions where the draft's argmax equals the target's greedy token,
along the target's own greedy answer (teacher-forced: one draft forward over prompt + answer). With
greedy verification this is the per-token acceptance probability of speculative decoding.

The target's greedy answers (f32, up to --max-new tokens, stopping at <|im_end|>, which counts as a
position when produced) are generated once, batched, and cached in OUT/heldout_answers.json.

Also prints the parameter counts and matmul multiply-adds per decoded token of draft vs target.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import model as M


def heldout_answers(out: Path, max_new: int = 128) -> list[dict]:
    path = out / "heldout_answers.json"
    if path.exists():
        return json.loads(path.read_text())["items"]
    from .teacher import generate, load_target, render, target_dir
    prompts = [p for p in (out / "heldout.txt").read_text().splitlines() if p.strip()]
    tok, model = load_target()
    rendered = [render(tok, p) for p in prompts]
    got = generate(model, rendered, [0.0] * len(prompts), max_new, 1, torch.Generator().manual_seed(0))
    items = [dict(prompt=p, ids=r, answer=g[0], finished=g[3]) for p, r, g in zip(prompts, rendered, got)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(target=str(target_dir()), max_new=max_new, items=items)))
    tmp.replace(path)
    return items


@torch.no_grad()
def alpha(model, items: list[dict], device=torch.device("cpu")) -> dict:
    per = []
    ids = M.head_ids(model)
    ids = None if ids is None else ids.to(device).long()
    for it in items:
        seq = it["ids"] + it["answer"]
        x = torch.tensor([seq[:-1]], device=device)
        s = len(it["ids"])
        h = model.model(input_ids=x).last_hidden_state[0, s - 1:]     # head only where it is judged
        pred = model.lm_head(h).float().argmax(-1)
        pred = (pred if ids is None else ids[pred]).cpu().numpy()
        ok = int((pred == np.array(it["answer"])).sum())
        per.append((ok, len(it["answer"])))
    a, n = sum(p[0] for p in per), sum(p[1] for p in per)
    return dict(alpha=a / n, agree=a, positions=n, per_prompt=[p[0] / p[1] for p in per])


def load_draft(ckpt: Path):
    """A train checkpoint (.pt) or an exported folder (restricted heads too, which transformers'
    from_pretrained cannot size) as an f32 HF model, and the train state ({} for a folder)."""
    if ckpt.is_dir():
        from safetensors.torch import load_file
        state = {k: (v.float() if v.is_floating_point() else v)
                 for k, v in load_file(str(ckpt / "model.safetensors")).items()}
        cfg = json.loads((ckpt / "config.json").read_text())
        if cfg.get("tie_word_embeddings"):
            state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        return M.from_state(cfg, state).float().eval(), {}
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return M.from_state(ck["config"], ck["model"]).float().eval(), ck["state"]


def cost(draft_cfg) -> dict:
    from transformers import AutoConfig
    from .teacher import target_dir
    tc = AutoConfig.from_pretrained(str(target_dir()))
    d, t = M.macs_per_token(draft_cfg), M.macs_per_token(tc)
    K = M.head_rows(draft_cfg)
    head = ("tied head" if draft_cfg.tie_word_embeddings else
            f"untied head over the {K} ids the teacher writes most" if K < draft_cfg.vocab_size else "untied head")
    return dict(draft_params=M.params(draft_cfg), target_params=M.params(tc), draft_macs=d["total"],
                target_macs=t["total"], cost_ratio=d["total"] / t["total"], head_share=d["head"] / d["total"],
                hidden=draft_cfg.hidden_size, layers=draft_cfg.num_hidden_layers,
                heads=draft_cfg.num_attention_heads, kv_heads=draft_cfg.num_key_value_heads,
                ffn=draft_cfg.intermediate_size, vocab=draft_cfg.vocab_size, head=head)


def main(a) -> None:
    out = a.out
    ckpt = a.ckpt or out / "runs" / "draft" / "last.pt"
    items = heldout_answers(out, a.max_new)
    model, state = load_draft(ckpt)
    r = alpha(model, items)
    c = cost(model.config)
    for it, p in zip(items, r["per_prompt"]):
        print(f"{p:.3f}  {len(it['answer']):4d}  {it['prompt'][:90]}")
    print(f"checkpoint {ckpt}: step {state.get('step')}, answer tokens seen {state.get('tokens')}")
    print(f"held-out alpha {r['alpha']:.4f} ({r['agree']}/{r['positions']} positions, {len(items)} prompts)")
    print(f"draft params {c['draft_params']}, target params {c['target_params']}")
    print(f"multiply-adds/token: draft {c['draft_macs']:,} target {c['target_macs']:,} "
          f"ratio {c['cost_ratio']:.4f} ({1 / c['cost_ratio']:.2f}x cheaper)")
    if a.json:
        a.json.write_text(json.dumps(dict(ckpt=str(ckpt), step=state.get("step"), tokens=state.get("tokens"),
                                          **{k: v for k, v in r.items()}, **c), indent=1))
