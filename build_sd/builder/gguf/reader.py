"""Read a GGUF file (llama.cpp's format) with ggml's own `gguf` package: the architecture as a Hugging
Face config.json, and the weights as f32 numpy arrays under Hugging Face names.

What llama.cpp's converter (convert_hf_to_gguf.py) changed on the way in is undone here:
- tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`);
- Llama's Q and K rows, which the converter permuted from the halves layout Hugging Face rotates
  to the interleaved pairs llama.cpp rotates (`LlamaModel.permute`); Qwen2 rotates halves in both
  (llama.cpp's NEOX rope), so its rows stay as they are;
- quantized blocks (Q8_0, Q4_0, Q4_1) are dequantized to f32; keeping them quantized waits for the
  W8A8 path;
- a tied embedding has no `output.weight`, so `tie_word_embeddings` is read from its absence.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...errors import UserError

# architectures build_sd's model implements, GGUF name -> Hugging Face model_type
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
# tensor types we read; others (K-quants, IQ*) are refused by name
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_PER_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias", "ffn_down.bias": "mlp.down_proj.bias",
}


def open_gguf(path: str | Path):
    """A GGUFReader on `path`, or a one-line UserError for what is not a readable GGUF."""
    from gguf import GGUFReader
    p = Path(path)
    if not p.is_file():
        raise UserError(f"GGUF file not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"{p}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        return GGUFReader(str(p))
    except (ValueError, IndexError, KeyError, OSError, TypeError) as e:
        # a truncated file fails inside numpy's memmap/frombuffer with a shape or offset message
        raise UserError(f"{p}: unreadable GGUF, truncated or corrupt "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'})") from None


def field(reader, key: str, default=None):
    """The value of metadata `key` (str, number, bool or list), or `default`."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def architecture(reader, source: str) -> str:
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(f"{source}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    return arch


def _f32(x: float) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def hf_config(reader, source: str) -> dict:
    """config.json for the file's model (Hugging Face keys, the dialect of transformers 4.x)."""
    arch = architecture(reader, source)

    def need(key: str):
        v = field(reader, f"{arch}.{key}")
        if v is None:
            raise UserError(f"{source}: missing metadata {arch}.{key}")
        return v

    names = {t.name for t in reader.tensors}
    D, H = int(need("embedding_length")), int(need("attention.head_count"))
    KVH = int(field(reader, f"{arch}.attention.head_count_kv", H))
    head_dim = int(field(reader, f"{arch}.attention.key_length", 0) or field(reader, f"{arch}.rope.dimension_count", 0)
                   or D // H)
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = field(reader, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        raise UserError(f"{source}: no {arch}.vocab_size and no tokenizer.ggml.tokens to count")
    cfg = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": ARCHITECTURES[arch],
        "vocab_size": int(vocab),
        "hidden_size": D,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": H,
        "num_key_value_heads": KVH,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(field(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": _f32(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    rope = _rope_scaling(reader, arch, source, head_dim, cfg["rope_theta"], names)
    if rope:
        cfg["rope_scaling"] = rope
    if arch == "llama":
        q_bias, o_bias = "blk.0.attn_q.bias" in names, "blk.0.attn_output.bias" in names
        if q_bias != o_bias:
            raise UserError(f"{source}: a Llama with {'q/k/v' if q_bias else 'output'} biases only is not supported")
        cfg["attention_bias"] = q_bias
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in names
    elif "blk.0.attn_q.bias" not in names:
        raise UserError(f"{source}: a qwen2 model without q/k/v biases is not supported")
    for key, meta in (("bos_token_id", "bos_token_id"), ("pad_token_id", "padding_token_id")):
        v = field(reader, f"tokenizer.ggml.{meta}")
        if v is not None:
            cfg[key] = int(v)
    cfg["eos_token_id"] = eos_ids(reader)
    return cfg


def eos_ids(reader) -> list[int] | int | None:
    """Every id that ends a turn: eos, and eot/eom where the file names them (Llama 3's <|eot_id|>)."""
    ids = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        v = field(reader, f"tokenizer.ggml.{key}")
        if v is not None and int(v) not in ids:
            ids.append(int(v))
    return None if not ids else (ids[0] if len(ids) == 1 else ids)


def _rope_scaling(reader, arch: str, source: str, head_dim: int, theta: float, names: set) -> dict | None:
    kind = field(reader, f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in names:
        return _llama3_from_factors(reader, source, head_dim, theta)
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "type": "linear", "factor": _f32(field(reader, f"{arch}.rope.scaling.factor"))}
    raise UserError(f"{source}: unsupported rope scaling {kind!r} (supported: linear, llama3)")


def llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as rope_freqs.weight for Llama 3's rope scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < original / high:
            out.append(1.0)
        elif wl > original / low:
            out.append(factor)
        else:
            s = (original / wl - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, np.float32)


def _llama3_from_factors(reader, source: str, head_dim: int, theta: float) -> dict:
    """GGUF keeps Llama 3's rope scaling only as its divisors; find the published parameters that give
    exactly these (Llama 3.1/3.2: factor 8 or 32, low 1, high 4, original context 8192)."""
    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    got = np.asarray(t.data, np.float32).reshape(-1)
    factor = float(got.max())
    for low, high, original in ((1.0, 4.0, 8192), (1.0, 4.0, 4096), (1.0, 4.0, 16384)):
        want = llama3_factors(theta, head_dim, factor, low, high, original)
        if want.shape == got.shape and np.allclose(want, got, rtol=1e-5, atol=1e-6):
            return {"rope_type": "llama3", "factor": _f32(factor), "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": original}
    raise UserError(f"{source}: rope_freqs.weight matches no Llama 3 rope scaling build_sd knows "
                    f"(factor {factor}; tried low 1 / high 4 at 4096, 8192, 16384)")


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_LAYER:
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute: interleaved pairs -> rotated halves."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(reader, cfg: dict, source: str):
    """Yield (Hugging Face name, f32 array) for every weight, dequantized and un-permuted."""
    from gguf.quants import dequantize
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":          # already turned into cfg["rope_scaling"]
            continue
        name = _hf_name(t.name)
        if name is None:
            raise UserError(f"{source}: unexpected tensor {t.name} for a {cfg['model_type']} model")
        kind = t.tensor_type.name
        if kind not in TENSOR_TYPES:
            raise UserError(f"{source}: tensor {t.name} has type {kind}; supported: {', '.join(TENSOR_TYPES)}")
        shape = tuple(int(x) for x in reversed(t.shape))     # GGUF lists dimensions fastest first
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shape)
        except ValueError as e:
            raise UserError(f"{source}: tensor {t.name}: {e}") from None
        if cfg["model_type"] == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            heads = cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"]
            w = _unpermute(w, heads)
        yield name, w
