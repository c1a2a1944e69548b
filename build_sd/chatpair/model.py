"""The draft's shape, its initialisation from the target, and cost figures (parameters, multiply-adds/token).

Draft: LlamaForCausalLM, hidden 256, 4 layers, 4 heads / 2 KV heads (head_dim 64), SwiGLU 768, tied
49152 x 256 embedding, rope_theta 100000 and the target's special ids. The embedding is the target's
576-dim embedding projected onto its top-256 right singular vectors (E V, V from the SVD of E): the tied
output head then scores tokens like the target's head restricted to that subspace, which is the part of
the model that needs the most data to learn, so most of the training is saved. Layers start at random
(HF's init); the final norm starts at ones.
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


def new_draft(target_dir: Path, seed: int = 0, **over):
    """A fresh draft with the PCA-projected target embedding."""
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
    return m, kept


def params(cfg) -> dict:
    """Parameter counts (embedding counted once when tied)."""
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    emb = v * h * (1 if cfg.tie_word_embeddings else 2)
    return dict(total=L * layer + emb + h, non_embedding=L * layer + h, embedding=emb)


def macs_per_token(cfg, context: int = 0) -> dict:
    """Matmul multiply-adds per decoded token: projections + MLP + LM head (+ attention over `context`)."""
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    proj = L * (h * q + 2 * h * kv + q * h + 3 * h * i)
    attn = L * 2 * cfg.num_attention_heads * hd * context
    return dict(layers=proj, head=h * v, attention=attn, total=proj + h * v + attn)
