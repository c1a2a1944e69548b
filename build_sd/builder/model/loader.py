"""Load a Hugging Face checkpoint folder into `Transformer` (build machine only).

Reads config.json + model.safetensors, or the shards named by model.safetensors.index.json;
weights in f32, f16 or bf16 are converted to the compute dtype chosen at export. Every tensor
the architecture needs must be present with its exact shape, or a UserError names it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..checkpoint import checkpoint_files
from ...contract.config import ModelConfig, rope_inv_freq
from ...errors import UserError
from .head import HEAD_IDS
from .llama import Transformer

DTYPES = {"f32": torch.float32, "f16": torch.float16}
# Checkpoint tensors we know and deliberately ignore (older HF exports kept RoPE tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(ckpt):
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    sd[k] = f.get_tensor(k)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return sd


def expected_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
    # named_parameters() lists a tied lm_head once, under model.embed_tokens.weight
    return {k: tuple(v.shape) for k, v in model.named_parameters()}


def load_checkpoint(ckpt: str | Path, dtype: str = "f32", max_context: int = 512,
                    cfg: ModelConfig | None = None, zero_caches: bool = True,
                    attention: str = "filled") -> Transformer:
    """Build the model for `ckpt` in `dtype` and fill it with the checkpoint's weights.
    zero_caches=False leaves the KV-cache buffers unwritten (export: they become runtime
    parameters, and untouched pages cost no memory: 2 GiB of cache at a long context).
    attention: the cache slots each call attends to (model/llama.py: attended_slots)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise UserError(f"checkpoint folder not found: {ckpt}")
    if dtype not in DTYPES:
        raise UserError(f"unsupported dtype {dtype!r} (use {' or '.join(DTYPES)})")
    cfg = cfg or ModelConfig.from_hf(ckpt)
    torch_dtype = DTYPES[dtype]
    with torch.device("meta"):
        model = Transformer(cfg, max_context, torch_dtype, attention)
    sd = read_state_dict(ckpt)
    want = expected_shapes(model)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)     # some tied checkpoints still store a copy
    elif "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        raise UserError(f"{ckpt}: lm_head.weight is missing and tie_word_embeddings is false")
    for name, shape in want.items():
        if name not in sd:
            raise UserError(f"{ckpt}: missing tensor {name} (expected shape {list(shape)})")
        got = tuple(sd[name].shape)
        if got != shape:
            raise UserError(f"{ckpt}: tensor {name} has shape {list(got)}, expected {list(shape)}")
        if not sd[name].is_floating_point():
            raise UserError(f"{ckpt}: tensor {name} has dtype {sd[name].dtype}, expected a float")
    head_ids = _head_ids(ckpt, cfg, sd.pop(HEAD_IDS, None))
    extra = [k for k in sd if k not in want and not k.endswith(_IGNORED_SUFFIXES)]
    if extra:
        print(f"warning: {ckpt}: {len(extra)} tensors not used by the model, e.g. {extra[0]}",
              file=sys.stderr)
    state = {k: sd[k].to(torch_dtype) for k in want}
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers were created on meta: make them real (zero caches, the RoPE frequencies)
    model.inv_freq = torch.tensor(rope_inv_freq(cfg), dtype=torch.float32)
    if head_ids is not None:
        model.head_ids = head_ids
        model.head_map = torch.full((cfg.vocab_size,), cfg.head_rows, dtype=torch.int32)
        model.head_map[head_ids.long()] = torch.arange(cfg.head_rows, dtype=torch.int32)
    if zero_caches:
        model.reset_cache()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _head_ids(ckpt: Path, cfg: ModelConfig, t: torch.Tensor | None) -> torch.Tensor | None:
    """The ids a restricted head scores: K distinct ids in 0..V-1 (int32), or None for a full head."""
    K = cfg.head_vocab_size
    if K is None:
        if t is not None:
            raise UserError(f"{ckpt}: tensor {HEAD_IDS} given but config.json has no draft_vocab_size")
        return None
    if t is None:
        raise UserError(f"{ckpt}: draft_vocab_size {K} needs the tensor {HEAD_IDS} (the {K} ids the head scores)")
    if t.is_floating_point() or tuple(t.shape) != (K,):
        raise UserError(f"{ckpt}: tensor {HEAD_IDS} must be {K} integers, got {t.dtype} {list(t.shape)}")
    t = t.long()
    if int(t.min()) < 0 or int(t.max()) >= cfg.vocab_size or len(torch.unique(t)) != K:
        raise UserError(f"{ckpt}: tensor {HEAD_IDS} must hold {K} distinct ids in 0..{cfg.vocab_size - 1}")
    return t.to(torch.int32)
