"""GGUF import: a llama.cpp model file -> a Hugging Face checkpoint folder build_sd builds from.

    build-sd import MODEL.gguf --out CKPT_DIR [--dtype f32|f16|bf16]

writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
template), generation_config.json (the EOS ids) and import.json (where it came from). The build
commands also take a .gguf wherever they take a checkpoint folder: `checkpoint_dir` imports it once
into a cache folder keyed by the file's sha256 (f32, the dequantized values exactly).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...fsutil import cache_dir, sha256_file, write_json
from .reader import architecture, field, hf_config, open_gguf, tensors
from .vocab import adds_bos, build_tokenizer

DTYPES = ("f32", "f16", "bf16")
IMPORTER_VERSION = 1          # bump when the output for the same file changes (cache key)


def import_gguf(src: str | Path, out: str | Path, dtype: str = "f32", quiet: bool = False) -> Path:
    """Write the Hugging Face layout of `src` into `out` (replaced whole, atomically)."""
    import torch
    from safetensors.torch import save_file
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    src, out = Path(src), Path(out)
    source = str(src)
    t0 = time.perf_counter()
    reader = open_gguf(src)
    architecture(reader, source)              # the most basic refusal first
    tok = build_tokenizer(reader, source)
    cfg = hf_config(reader, source)
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    cfg["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]

    staging = out.with_name(f".{out.name}.importing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        state, kinds, nbytes = {}, {}, 0
        for name, w in tensors(reader, cfg, source):
            state[name] = torch.from_numpy(np.array(w, np.float32)).to(torch_dtype)   # a copy: the reader maps the file read-only
            nbytes += state[name].numel() * state[name].element_size()
        for t in reader.tensors:
            kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        del state
        write_json(staging / "config.json", cfg)
        tok.save(str(staging / "tokenizer.json"))
        write_json(staging / "tokenizer_config.json", _tokenizer_config(reader, cfg))
        write_json(staging / "generation_config.json", {
            k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None})
        write_json(staging / "import.json", {
            "source": src.name, "sha256": sha256_file(src), "importer_version": IMPORTER_VERSION,
            "name": field(reader, "general.name"), "tensor_types": kinds, "dtype": dtype,
            "tokenizer": {"model": field(reader, "tokenizer.ggml.model"), "pre": field(reader, "tokenizer.ggml.pre")}})
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        kinds_s = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        print(f"import: {src.name} -> {out} ({cfg['model_type']}, {cfg['num_hidden_layers']} layers, "
              f"{len(reader.tensors)} tensors: {kinds_s}; {nbytes / 1e6:.0f} MB {dtype}; "
              f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return out


def _tokenizer_config(reader, cfg: dict) -> dict:
    tokens = field(reader, "tokenizer.ggml.tokens")

    def tok(key):
        i = field(reader, f"tokenizer.ggml.{key}")
        return None if i is None else tokens[int(i)]

    out = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": adds_bos(reader),
           "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
           "bos_token": tok("bos_token_id"), "eos_token": tok("eos_token_id"), "unk_token": tok("unknown_token_id"),
           "pad_token": tok("padding_token_id"), "model_max_length": cfg["max_position_embeddings"],
           "clean_up_tokenization_spaces": False}
    template = field(reader, "tokenizer.chat_template")
    if template:
        out["chat_template"] = template
    return {k: v for k, v in out.items() if v is not None}


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def cache_root() -> Path:
    return cache_dir() / "gguf"


def checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder for `path`: itself, or for a .gguf its import in the cache (made once)."""
    p = Path(path)
    if not is_gguf(p):
        return p
    if not p.is_file():
        raise UserError(f"GGUF file not found: {p}")
    digest = sha256_file(p)
    out = cache_root() / f"{p.stem}-{digest[:16]}-v{IMPORTER_VERSION}"
    record = out / "import.json"
    if record.exists():
        try:
            if json.loads(record.read_text()).get("sha256") == digest:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    print(f"import: {p.name} is a GGUF; importing it once into {out}", file=sys.stderr)
    return import_gguf(p, out, "f32")
