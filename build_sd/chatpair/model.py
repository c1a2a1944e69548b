"""The draft's shape, its initialisation from the target, and cost figures (parameters, multiply-adds/token).

Draft: LlamaForCausalLM, hidden 256, 4 layers, 4 heads / 2 KV heads (head_dim 64), SwiGLU 768, tied
49152 x 256 embedding, rope_theta 100000 and the target's special ids. The embedding is the target's
576-dim embedding projected onto its top-256 right singular vectors (E V, V from the SVD of E): the tied
output head then scores tokens like the target's head restricted to that subspace, which is the part of
the model that needs the most data to learn, so most of the training is saved. Layers start at random
(HF's init); the final norm starts at ones.

With head_ids (train --head-vocab K) the LM head scores only those K ids (build_sd/builder/model/head.py:
config.json draft_vocab_size, an untied K x 256 `lm_head.weight` started from the same projected
embedding rows, and the buffer `lm_head.vocab_ids`, which state_dict and save_pretrained carry). The
head was 80 % of the draft's multiply-adds; 8192 frequent answer ids cover ~95 % of the teacher's
answer tokens, so it shrinks 6x for a small cap on alpha.
"""
from __future__ import annotations

from pathlib import Path

import torch

DRAFT = dict(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, hidden_act="silu",
             max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
             attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def draft_config(**over):
    from transformers import LlamaConfig
    cfg = dict(DRAFT, **over)
    c = LlamaConfig(**cfg)
    c.architectures = ["LlamaForCausalLM"]
    return c


def restrict(m, ids) -> None:
    """Give HF model `m` a head over `ids` only (rows copied from its current head)."""
    ids = torch.as_tensor(ids, dtype=torch.int32)
    W = m.lm_head.weight.detach()[ids.long()].clone()
    head = torch.nn.Linear(W.shape[1], len(ids), bias=False, dtype=W.dtype)
    with torch.no_grad():
        head.weight.copy_(W)
    head.register_buffer("vocab_ids", ids)
    m.config.tie_word_embeddings = False
    m.config.draft_vocab_size = len(ids)
    m.lm_head = head


def head_ids(m) -> torch.Tensor | None:
    """The ids a restricted head scores (row order), or None for a full head."""
    return getattr(m.lm_head, "vocab_ids", None)


def from_state(config: dict, state: dict):
    """An HF draft from a config dict and a state dict, restricted head included."""
    from transformers import LlamaConfig, LlamaForCausalLM
    m = LlamaForCausalLM(LlamaConfig(**config))
    from ..builder.model.head import HEAD_IDS
    if HEAD_IDS in state:
        restrict(m, state[HEAD_IDS])
    m.load_state_dict(state)
    return m


def new_draft(target_dir: Path, seed: int = 0, head_ids=None, **over):
    """A fresh draft with the PCA-projected target embedding (and a head over head_ids only)."""
    from safetensors import safe_open
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = draft_config(**over)
    m = LlamaForCausalLM(cfg)
    with safe_open(str(Path(target_dir) / "model.safetensors"), "pt") as f:
        E = f.get_tensor("model.embed_tokens.weight").float()          # [V, 576]
    # uncentered SVD: the directions that carry most of the embedding's energy (the head's scores)
    _, S, Vt = torch.linalg.svd(E, full_matrices=False)
    d = cfg.hidden_size
    W = E @ Vt[:d].T                                                    # [V, d]
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(W)
    m.tie_weights()
    kept = float((S[:d] ** 2).sum() / (S ** 2).sum())
    if head_ids is not None:
        restrict(m, head_ids)
    return m, kept


def draft_from_layers(target_dir: Path, layers: list[int], head_ids=None):
    """A draft made of the target's own layers `layers` (in that order; e.g. [0, 29]), with its
    embedding, final norm and tied head (restricted to head_ids): the target's width, so it starts
    as a shallow copy of the target rather than from nothing (self-speculative drafts such as
    LayerSkip start the same way). Returns (model, 1.0: the embedding is kept whole)."""
    from transformers import LlamaForCausalLM
    from .teacher import load_target
    _, t = load_target(Path(target_dir))
    cfg = t.config.to_dict()
    cfg.update(num_hidden_layers=len(layers), max_position_embeddings=DRAFT["max_position_embeddings"])
    m = LlamaForCausalLM(type(t.config)(**cfg))
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(t.model.embed_tokens.weight)
        m.model.norm.weight.copy_(t.model.norm.weight)
        for i, L in enumerate(layers):
            m.model.layers[i].load_state_dict(t.model.layers[L].state_dict())
    m.tie_weights()
    if head_ids is not None:
        restrict(m, head_ids)
    return m, 1.0


def params(cfg) -> dict:
    """Parameter counts (embedding counted once when tied)."""
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    emb = v * h + (0 if cfg.tie_word_embeddings else head_rows(cfg) * h)
    return dict(total=L * layer + emb + h, non_embedding=L * layer + h, embedding=emb)


def macs_per_token(cfg, context: int = 0) -> dict:
    """Matmul multiply-adds per decoded token: projections + MLP + LM head (+ attention over `context`)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    proj = L * (h * q + 2 * h * kv + q * h + 3 * h * i)
    attn = L * 2 * cfg.num_attention_heads * hd * context
    k = head_rows(cfg)
    return dict(layers=proj, head=h * k, attention=attn, total=proj + h * k + attn)


def head_rows(cfg) -> int:
    return getattr(cfg, "draft_vocab_size", None) or cfg.vocab_size
