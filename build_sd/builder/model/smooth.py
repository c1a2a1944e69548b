"""SmoothQuant for W8A8 exports: move the activations' outlier channels into the weights, exactly.

W8A8 quantizes each activation row with one scale (amax|x| / 127), so a few input channels that are
always large (the outliers of LLM activations) squeeze every other channel into a few int8 codes. On
SmolLM2-135M-Instruct that is where W8A8 loses: teacher-forced top-1 agreement with f32 is 0.960 with
int8 weights alone, 0.901 with int8 activations alone, 0.884 with both (docs/FINDINGS.md).

SmoothQuant (Xiao et al., 2023) divides input channel j of a projection's activation by
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and multiplies the weight's column j by it: the product is
unchanged, the activation flatter, the weight a little less so. s is folded into whatever produces
the activation, so nothing is added to the graph:
- q/k/v (one input): into input_layernorm's weight; gate/up: into post_attention_layernorm's;
- o_proj: into v_proj's rows (one scale per v channel, shared by the query heads of a KV group:
  attention is linear in v);
- down_proj: into up_proj's rows (silu(gate) * up is linear in up);
- the LM head: into the final norm (a tied head gets its own copy first: the lookup keeps the table).
The residual stream is untouched, so split modules exchange the same hidden states as before.

max|X_j| comes from a forward pass of the f32 model over a short fixed English text
(smooth_text.txt, in the package: no download, the same on every machine) tokenized with the
checkpoint's tokenizer; on SmolLM2 alpha 0.5 lifts agreement to 0.93 (0.92-0.93 for other
calibration texts and alpha 0.5-0.6). The scales are saved beside the export (smooth.safetensors):
`validate` folds the same ones into its f32 reference, so it still checks the compiler exactly.
W4A8 is not smoothed: smoothing moves error into the weights, which 4 bits cannot afford (0.78
against 0.89 unsmoothed), and it would take a Q4_1 GGUF's projections off their exact grid.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

TEXT = Path(__file__).with_name("smooth_text.txt")
SCALES_FILE = "smooth.safetensors"
DEFAULT_ALPHA = 0.5
CALIB_TOKENS = 256          # tokens a calibration sequence (the text is ~2k tokens: a handful of them)


def calibration_ids(tokenizer_json: Path | None, vocab_size: int, n_seq: int = 8) -> list[list[int]]:
    """Token sequences of the calibration text; seeded random ids for a checkpoint without a tokenizer
    (its activations are then not a text's, but the channels that are large for every token still show)."""
    if tokenizer_json is not None and Path(tokenizer_json).is_file():
        from tokenizers import Tokenizer
        ids = Tokenizer.from_file(str(tokenizer_json)).encode(TEXT.read_text(), add_special_tokens=False).ids
        ids = [i for i in ids if i < vocab_size]
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (n_seq * CALIB_TOKENS,), generator=g).tolist()
    return [ids[i:i + CALIB_TOKENS] for i in range(0, len(ids), CALIB_TOKENS)][:n_seq]


@torch.no_grad()
def activation_amax(model, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    """max |x_j| over the calibration tokens of every projection's input, by module name (an unfused
    f32 model whose caches hold at least the longest sequence)."""
    from .llama import Subgraph
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_mod, inp, _out):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).abs().amax(0).float()
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return record
    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        whole = Subgraph(model, "whole")
        for ids in seqs:
            model.reset_cache()
            whole(torch.tensor([ids], dtype=torch.int32), torch.tensor(0, dtype=torch.int32))
    finally:
        for h in hs:
            h.remove()
    return amax


def _scale(xmax: torch.Tensor, wmax: torch.Tensor, alpha: float) -> torch.Tensor:
    s = xmax.clamp(min=1e-5) ** alpha / wmax.float().clamp(min=1e-5) ** (1 - alpha)
    return s.clamp(min=1e-5)


def _colmax(*linears) -> torch.Tensor:
    return torch.stack([lin.weight.detach().float().abs().amax(0) for lin in linears]).amax(0)


@torch.no_grad()
def smoothing_scales(model, amax: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Per-channel scales of an UNFUSED model (the one activation_amax ran on), keyed by where they fold."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        at, mlp, pre = layer.self_attn, layer.mlp, f"model.layers.{i}."
        out[f"{i}.qkv"] = _scale(amax[pre + "self_attn.q_proj"], _colmax(at.q_proj, at.k_proj, at.v_proj), alpha)
        out[f"{i}.gate_up"] = _scale(amax[pre + "mlp.gate_proj"], _colmax(mlp.gate_proj, mlp.up_proj), alpha)
        out[f"{i}.down"] = _scale(amax[pre + "mlp.down_proj"], _colmax(mlp.down_proj), alpha)
        so = _scale(amax[pre + "self_attn.o_proj"], _colmax(at.o_proj), alpha)
        out[f"{i}.v"] = so.view(at.KVH, at.G, at.Dh).amax(1).reshape(-1)   # one per v channel
    out["head"] = _scale(amax["lm_head"], _colmax(model.lm_head), alpha)
    return out


def _cols(lin: nn.Linear, s: torch.Tensor) -> None:
    lin.weight.mul_(s.to(lin.weight.dtype)[None, :])


def _rows(lin: nn.Linear, s: torch.Tensor, lo: int = 0) -> None:
    """Divide rows lo..lo+len(s) (and their bias) by s."""
    hi = lo + s.shape[0]
    lin.weight[lo:hi].div_(s.to(lin.weight.dtype)[:, None])
    if lin.bias is not None:
        lin.bias[lo:hi].div_(s.to(lin.bias.dtype))


@torch.no_grad()
def apply_smoothing(model, scales: dict[str, torch.Tensor]) -> None:
    """Fold `scales` into `model` (fused or not): the float model computes the same function, its
    projections' inputs are flatter. Before quantize_projections."""
    for i, layer in enumerate(model.model.layers):
        at, mlp = layer.self_attn, layer.mlp
        s = scales[f"{i}.qkv"]
        layer.input_layernorm.weight.div_(s.to(layer.input_layernorm.weight.dtype))
        for lin in ([at.qkv_proj] if hasattr(at, "qkv_proj") else [at.q_proj, at.k_proj, at.v_proj]):
            _cols(lin, s)
        sv = scales[f"{i}.v"]
        _cols(at.o_proj, sv.view(at.KVH, 1, at.Dh).expand(at.KVH, at.G, at.Dh).reshape(-1))
        if hasattr(at, "qkv_proj"):
            _rows(at.qkv_proj, sv, (at.H + at.KVH) * at.Dh)
        else:
            _rows(at.v_proj, sv)
        s = scales[f"{i}.gate_up"]
        layer.post_attention_layernorm.weight.div_(s.to(layer.post_attention_layernorm.weight.dtype))
        for lin in ([mlp.gate_up_proj] if hasattr(mlp, "gate_up_proj") else [mlp.gate_proj, mlp.up_proj]):
            _cols(lin, s)
        s = scales[f"{i}.down"]
        _cols(mlp.down_proj, s)
        if hasattr(mlp, "gate_up_proj"):
            _rows(mlp.gate_up_proj, s, s.shape[0])
        else:
            _rows(mlp.up_proj, s)
    if model.lm_head.weight is model.model.embed_tokens.weight:
        head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False,
                         dtype=model.lm_head.weight.dtype)
        head.weight = nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
        model.lm_head = head
    model.model.norm.weight.div_(scales["head"].to(model.model.norm.weight.dtype))
    _cols(model.lm_head, scales["head"])


def compute_scales(ckpt: Path, cfg, alpha: float, tokenizer_json: Path | None) -> dict[str, torch.Tensor]:
    """Scales for `ckpt`: its f32 model (loaded apart, caches sized to the calibration) over the text."""
    from .loader import load_checkpoint
    seqs = calibration_ids(tokenizer_json, cfg.vocab_size)
    ref = load_checkpoint(ckpt, "f32", max(map(len, seqs)) + 1, cfg)
    scales = smoothing_scales(ref, activation_amax(ref, seqs), alpha)
    del ref
    return scales


def quantize_with(model, quant: str, scales: dict[str, torch.Tensor] | None) -> None:
    """The one order export, validate and the torch studies share: fold the SmoothQuant scales (if
    any), then quantize the projections."""
    from .quant import quantize_projections
    if scales is not None:
        apply_smoothing(model, scales)
    quantize_projections(model, quant)


def quantize_as_exported(model, quant: str, ckpt: Path, cfg=None) -> None:
    """What `export --quant Q` does to the float model (torch studies: agreement, alpha): w8a8 smoothed
    with the default alpha, then the projections quantized. `quant` "w8a8-plain": w8a8 unsmoothed."""
    from ...contract.config import ModelConfig
    scales = None
    if quant == "w8a8":
        scales = compute_scales(ckpt, cfg or ModelConfig.from_hf(ckpt), DEFAULT_ALPHA, Path(ckpt) / "tokenizer.json")
    quantize_with(model, "w8a8" if quant == "w8a8-plain" else quant, scales)


def save_scales(scales: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.contiguous().float() for k, v in scales.items()}, str(path))


def load_scales(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))
