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
"""
from __future__ import annotations

import torch
import torch.nn as nn

QUANTS = ("none", "w8a8")
QMAX = 127.0


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


def quantize_projections(model, quant: str) -> None:
    """Replace every projection of every decoder layer (q/k/v/o or qkv, gate/up/down or gate_up)."""
    if quant == "none":
        return
    if quant != "w8a8":
        raise ValueError(f"unknown quantization {quant!r}")
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, child in list(block.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(block, name, W8A8Linear(child))
    model.lm_head = W8A8Linear(model.lm_head)
