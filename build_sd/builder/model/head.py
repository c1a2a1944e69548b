"""Restrict a checkpoint's LM head to K of its V ids (a draft's head; contract/config.py).

A small draft spends most of its time in its head (49152 x 256 of a 256-wide draft: 80 % of its
multiply-adds), yet it only needs to propose the tokens its target writes: 8192 ids cover ~95 % of
SmolLM2-135M-Instruct's chat answers. The restricted checkpoint keeps the full V-row embedding (a
lookup reads one row, whatever V) and writes config.json `draft_vocab_size` = K, an untied
`lm_head.weight` of K rows and `lm_head.vocab_ids` (int32, the id each row scores). Exported, its head
returns logits over all V ids, -inf on the others, so the runner and the exact sampling test see
an ordinary draft whose q is 0 where it cannot propose.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

HEAD_IDS = "lm_head.vocab_ids"


def restrict_head(state: dict[str, torch.Tensor], config: dict, ids) -> tuple[dict, dict]:
    """(state, config) of the same model whose head scores `ids` only (distinct, in 0..V-1)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    V = int(config["vocab_size"])
    if ids.ndim != 1 or len(torch.unique(ids)) != len(ids) or int(ids.min()) < 0 or int(ids.max()) >= V:
        raise ValueError(f"ids must be distinct ids in 0..{V - 1}")
    head = state.get("lm_head.weight")
    if head is None or config.get("tie_word_embeddings"):
        head = state["model.embed_tokens.weight"]
    state = dict(state)
    state["lm_head.weight"] = head[ids].clone().contiguous()
    state[HEAD_IDS] = ids.to(torch.int32)
    config = dict(config, tie_word_embeddings=False, draft_vocab_size=len(ids))
    return state, config


def write_restricted(src: Path, out: Path, ids) -> Path:
    """Copy checkpoint folder `src` (single model.safetensors) to `out` with its head restricted;
    the tokenizer and generation files travel unchanged."""
    from safetensors.torch import load_file, save_file
    src, out = Path(src), Path(out)
    state, config = restrict_head(load_file(str(src / "model.safetensors")),
                                  json.loads((src / "config.json").read_text()), ids)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).exists():
            (out / name).write_bytes((src / name).read_bytes())
    return out
