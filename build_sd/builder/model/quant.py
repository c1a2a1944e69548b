"""W8A8 linear layers: int8 weights per output channel, int8 activations per token (dynamic).

Written the one way IREE 3.13 runs fast on the CPU (../shared/probes/q8/FINDINGS.md): the activation
is quantized in the graph (s_x = amax|x| / 127 per row, round, clamp to +-127), `torch._int_mm`
multiplies int8 x int8 into int32 (data tiling maps it to the i8 mmt4d ukernel; the int8 weights are
packed once at load), and the int32 result is rescaled by s_x * s_w. Any int -> float dequantization
of the weights in the graph is ~12x slower than f32 there (IREE writes a float copy every call).

Weights are quantized symmetrically per output channel (s_w = amax|w_row| / 127, round to nearest),
at export, from the float checkpoint. Stacked projections (q/k/v, gate/up) quantize exactly as the
separate ones: the scales are per row and the activation is the same. The LM head is quantized too
(the largest matrix of a small model: SmolLM2's 49152 x 576 is a third of its weights; agreement with
f32 measured the same with it as without, 92.0 %, docs/FINDINGS.md); a tied embedding keeps its float
table for the lookup (one row a token: nothing to gain) and the head gets its own int8 copy. Norms,
RoPE, attention and the KV cache stay in the model's float dtype.

W4A8 (--quant w4a8) stores the projections' weights in 4 bits and computes exactly as W8A8. Weights
are quantized in groups of GROUP along K with a scale and a minimum (w ~ d q + m, q in 0..15: the grid
of llama.cpp's Q4_1, so a checkpoint imported from a Q4_1 GGUF is represented exactly), two codes a
byte. In the graph they become per-channel int8 codes, round(q d/s_c + m/s_c) with s_c the row's
amax |d q + m| / 127 (`ratio` d/s_c and `offset` m/s_c stored as f16): a computation of parameters
only, which IREE hoists and runs once at load (../shared/probes/q8: int4 unpacked to int8 runs as fast
as int8), so the i8 mmt4d ukernel runs on them. The int8 grid is much finer than the 4-bit one: the
re-rounding costs what W8A8's rounding costs. The .irpa holds 5 bits a weight (codes + two f16 per
group) + an f32 scale a row; the expanded int8 copy lives in device memory. The LM head stays int8
(see quantize_projections). Symmetric groups (Q4_0-like) agreed only 66.3 % on SmolLM2, per-channel
int4 64.9 % (docs/FINDINGS.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

QUANTS = ("none", "w8a8", "w4a8")
QMAX = 127.0
GROUP = 32                  # w4a8: weights a group along K (llama.cpp's Q4_0 block)
Q4LEVELS = 15.0             # w4a8 codes 0..15


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, f32 scale per row): symmetric, round to nearest; an all-zero row gets scale 1."""
    w = w.float()
    s = w.abs().amax(dim=1) / QMAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(w / s[:, None]).clamp(-QMAX, QMAX).to(torch.int8), s


class W8A8Linear(nn.Module):
    """y = (int8(x / s_x) @ W_q^T) * s_x * s_w + b, in the float dtype of x."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, s = quantize_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(q, requires_grad=False)               # [N, K] int8
        self.scale = nn.Parameter(s, requires_grad=False)                # [N] f32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x):
        shape, dtype = x.shape, x.dtype
        xf = x.reshape(-1, self.in_features).float()
        sx = xf.abs().amax(dim=-1, keepdim=True) / QMAX
        sx = torch.where(sx > 0, sx, torch.ones_like(sx))
        xq = torch.round(xf / sx).clamp(-QMAX, QMAX).to(torch.int8)
        y = torch._int_mm(xq, self.weight.t()).float() * sx * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(dtype).reshape(*shape[:-1], self.out_features)


def quantize_groups4(w: torch.Tensor, group: int = GROUP):
    """(packed uint8 [N, K/2], f16 ratio d / s_c and f16 offset m / s_c [N, K/group], f32 s_c [N]):
    w ~ d q + m per group, q in 0..15 (llama.cpp's Q4_1 grid), s_c the row's int8 scale."""
    w = w.float()
    N, K = w.shape
    wg = w.reshape(N, K // group, group)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    d = (hi - lo) / Q4LEVELS
    d = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.round((wg - lo[..., None]) / d[..., None]).clamp(0, Q4LEVELS)  # [N, K/g, g]
    w4 = q * d[..., None] + lo[..., None]
    sc = w4.abs().amax(dim=(1, 2)) / QMAX
    sc = torch.where(sc > 0, sc, torch.ones_like(sc))
    ratio, offset = (d / sc[:, None]).to(torch.float16), (lo / sc[:, None]).to(torch.float16)
    u = q.to(torch.uint8).reshape(N, K)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous(), ratio, offset, sc


def expand_groups4(packed: torch.Tensor, ratio: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] = round(q ratio + offset) (in the graph: hoisted to load time). Unpacking goes
    through int16: `(p & 15).to(int8)` then arithmetic crashes IREE's torch frontend (probe)."""
    N, Kh = packed.shape
    lo = (packed & 15).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    q = torch.stack([lo, hi], dim=-1).reshape(N, ratio.shape[1], -1)      # [N, K/g, g]
    w8 = torch.round(q.to(torch.float32) * ratio.to(torch.float32)[..., None]
                     + offset.to(torch.float32)[..., None]).clamp(-QMAX, QMAX)
    return w8.to(torch.int8).reshape(N, 2 * Kh)


class W4A8Linear(W8A8Linear):
    """W8A8Linear whose int8 codes are expanded from 4-bit groups (see the module docstring)."""

    def __init__(self, linear: nn.Linear, group: int = GROUP):
        nn.Module.__init__(self)
        N, K = linear.weight.shape
        if K % group:
            raise ValueError(f"w4a8 groups of {group} do not divide K={K}")
        packed, ratio, offset, sc = quantize_groups4(linear.weight.detach(), group)
        self.in_features, self.out_features = K, N
        self.packed = nn.Parameter(packed, requires_grad=False)          # [N, K/2] uint8
        self.ratio = nn.Parameter(ratio, requires_grad=False)            # [N, K/group] f16
        self.offset = nn.Parameter(offset, requires_grad=False)          # [N, K/group] f16
        self.scale = nn.Parameter(sc, requires_grad=False)               # [N] f32
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    @property
    def weight(self):
        return expand_groups4(self.packed, self.ratio, self.offset)


def check_quant_shapes(cfg, quant: str, group: int = GROUP) -> None:
    """w4a8 needs every projection's input size (hidden, heads x head_dim, intermediate) to be a
    multiple of the group: a one-line UserError naming the one that is not."""
    if quant != "w4a8":
        return
    from ...errors import UserError
    for what, k in (("hidden_size", cfg.hidden_size), ("num_heads x head_dim", cfg.num_heads * cfg.head_dim),
                    ("intermediate_size", cfg.intermediate_size)):
        if k % group:
            raise UserError(f"--quant w4a8 quantizes weights in groups of {group} along the input; "
                            f"{what} = {k} is not a multiple of {group} (use --quant w8a8)")


def quantize_projections(model, quant: str) -> None:
    """Replace every projection of every decoder layer (q/k/v/o or qkv, gate/up/down or gate_up)."""
    if quant == "none":
        return
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}")
    Q = W4A8Linear if quant == "w4a8" else W8A8Linear
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, child in list(block.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(block, name, Q(child))
    # w4a8 keeps the LM head in int8: a checkpoint's head is often not on a 4-bit grid even when its
    # projections are (SmolLM2's Q4_1 GGUF: the projections are exactly, the tied embedding is not), and
    # its 4-bit error costs the most: agreement 85.4 % with a 4-bit head, 89.2 % with an int8 one
    # (benchmarks/quant_agreement.py, docs/FINDINGS.md)
    model.lm_head = W8A8Linear(model.lm_head)
