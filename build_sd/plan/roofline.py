"""Analytic latency of a subgraph function: FLOPs and bytes from the config, a roofline from the
platform description (plan/platforms.json, plan/platforms.py). For boards not at hand; a profile replaces it.

Per call of a subgraph on T tokens (S cache slots; letters as in contract/config.py):
- embed: gathers T rows: bytes 2 T D e (read + write), no FLOPs;
- each layer: weights W e with W = D H Dh + 2 D KVH Dh + H Dh D + 3 D F (+ norms), read once
  per call; the KV cache: our attention reads the S slots it attends to of K and V, 2 S KVH Dh e,
  and writes 2 T KVH Dh e; FLOPs 2 T W + 4 T H Dh S (QK^T and AV over S slots). An export that
  attends to the filled slots only (the default) reads pos + T of them: the planner passes S/2,
  the mean over a context that fills up;
- head: T' rows (1 for prefill): weights D V e, FLOPs 2 T' D V.
latency = max(FLOPs / (peak x compute efficiency), bytes / (bandwidth x efficiency))
          + dispatches x per-dispatch overhead + a fixed per-call cost.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..contract import ModelConfig

DISPATCHES_PER_LAYER = 10      # norm, qkv, rope, cache write, scores, softmax, AV, o, norm, mlp (fused)
DISPATCHES_HEAD = 3
DISPATCHES_EMBED = 1


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float
    dispatches: int

    def __add__(self, o: "Work") -> "Work":
        return Work(self.flops + o.flops, self.bytes + o.bytes, self.dispatches + o.dispatches)


def layer_weights(cfg: ModelConfig) -> int:
    D, H, KVH, Dh, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    return D * H * Dh + 2 * D * KVH * Dh + H * Dh * D + 3 * D * F + 2 * D


def work(cfg: ModelConfig, kind: str, start: int, end: int, T: int, S: int, elt: int,
         prefill: bool = False, weight_elt: float | None = None) -> Work:
    """weight_elt: bytes read per weight of the projections and the head when they are quantized
    (plan/precision.py: WEIGHT_BYTES); the embedding, activations and KV cache stay in elt."""
    we = elt if weight_elt is None else weight_elt
    D, H, KVH, Dh, V = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size
    w = Work(0.0, 0.0, 0)
    if kind in ("embed", "whole"):
        w += Work(0.0, 2.0 * T * D * elt, DISPATCHES_EMBED)
    if kind in ("layers", "whole"):
        n = end - start
        W = layer_weights(cfg)
        per = Work(2.0 * T * W + 4.0 * T * H * Dh * S,
                   W * we + 2.0 * S * KVH * Dh * elt + 2.0 * T * KVH * Dh * elt + 4.0 * T * D * elt,
                   DISPATCHES_PER_LAYER)
        w += Work(per.flops * n, per.bytes * n, per.dispatches * n)
    if kind in ("head", "whole"):
        rows = 1 if prefill else T
        K = cfg.head_rows                    # a restricted head scores K ids, writes all V logits
        w += Work(2.0 * rows * D * K, float(D * K * we + rows * V * 4), DISPATCHES_HEAD)
    return w
