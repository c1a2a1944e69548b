"""How big each module of a model is, and where to cut a model so every module fits a device.

IREE allocates a module's parameters as single device buffers, and a Vulkan device caps one
allocation (lavapipe 2 GiB, NVIDIA 4 GiB; docs/FINDINGS.md, "One allocation per module"):
measured on lavapipe, a module's weights are one allocation and all of its KV caches together
another (a 1-layer module with two 2 GiB caches asked for one 4 GiB buffer). So a module fits a
device when its weight bytes and its KV-cache bytes are each within the device's limit.
Letters as in config.py; e = bytes per element of the export dtype.
"""
from __future__ import annotations

from .config import ModelConfig
from .names import SubgraphSpec
from ..errors import UserError

ELT = {"f32": 4, "f16": 2}


def layer_weights(cfg: ModelConfig) -> int:
    """Elements of one decoder layer: attention (+ biases), MLP (+ biases), two norms."""
    D, H, KVH, Dh, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    attn = D * H * Dh + 2 * D * KVH * Dh + H * Dh * D
    attn += (H * Dh + 2 * KVH * Dh) * cfg.qkv_bias + D * cfg.o_bias
    mlp = 3 * D * F + (2 * F + D) * cfg.mlp_bias
    return attn + mlp + 2 * D


def weight_bytes(cfg: ModelConfig, spec: SubgraphSpec, dtype: str, quant: str = "none") -> int:
    """Bytes of the weights a module holds once loaded. A tied LM head is the embedding: a split
    model's `embed` and `head` modules each hold it (the .irpa stores it once). quant (w8a8, w4a8):
    the projections and the LM head are int8 in memory (w4a8 is expanded at load), the embedding
    and norms stay in dtype; the per-channel scales are left out (a few KB a layer)."""
    D, V, e = cfg.hidden_size, cfg.vocab_size, ELT[dtype]
    q = 1 if quant in ("w8a8", "w4a8") else e
    n = 0
    if spec.kind in ("embed", "whole"):
        n += V * D * e
    if spec.kind in ("layers", "whole"):
        n += (spec.end - spec.start) * layer_weights(cfg) * q
    if spec.kind in ("head", "whole"):
        tied_in_whole = spec.kind == "whole" and cfg.tie_word_embeddings and q == e
        n += D * e + (0 if tied_in_whole else cfg.head_rows * D * q)
    return n


def kv_bytes(cfg: ModelConfig, spec: SubgraphSpec, dtype: str, max_context: int) -> int:
    """Bytes of the KV caches of a module's layers: K and V of [S, KVH, Dh] per layer."""
    if spec.kind not in ("layers", "whole"):
        return 0
    return (spec.end - spec.start) * 2 * max_context * cfg.num_kv_heads * cfg.head_dim * ELT[dtype]


def usable(limit: int) -> int:
    """What a module may hold of a device's allocation limit: 1/16 stays free for the
    alignment and padding IREE adds to the parameters it packs."""
    return limit - limit // 16


def cut(cfg: ModelConfig, dtype: str, max_context: int, max_bytes: int,
        split: list[int] | None = None) -> list[int] | None:
    """The layer starts of a split export whose every module's weights and KV caches each stay
    within `max_bytes` (0: no limit), keeping every start of `split` (cuts are added, never
    removed); None when the whole model fits as one module and no split was asked for.
    Layers are packed greedily, so modules are as few as the limit allows."""
    L = cfg.num_layers
    if max_bytes <= 0:
        return split or None
    whole = SubgraphSpec("whole", 0, L)
    if not split and (weight_bytes(cfg, whole, dtype) <= max_bytes
                      and kv_bytes(cfg, whole, dtype, max_context) <= max_bytes):
        return None
    for kind in ("embed", "head"):
        need = weight_bytes(cfg, SubgraphSpec(kind), dtype)
        if need > max_bytes:
            raise UserError(f"the model's {kind} alone holds {need} bytes of weights, more than the "
                            f"module limit of {max_bytes} bytes (--max-module-bytes)")
    one = SubgraphSpec("layers", 0, 1)
    per_w, per_kv = weight_bytes(cfg, one, dtype), kv_bytes(cfg, one, dtype, max_context)
    if per_w > max_bytes or per_kv > max_bytes:
        raise UserError(f"one layer holds {per_w} bytes of weights and {per_kv} of KV cache "
                        f"(context {max_context}), more than the module limit of {max_bytes} bytes "
                        "(--max-module-bytes; a shorter --max-context shrinks the cache)")
    starts = sorted({0} | set(split or []))
    out = []
    for a, b in zip(starts, starts[1:] + [L]):
        out.append(a)
        w = kv = 0
        for layer in range(a, b):
            if w and (w + per_w > max_bytes or kv + per_kv > max_bytes):
                out.append(layer)
                w = kv = 0
            w, kv = w + per_w, kv + per_kv
    return out
