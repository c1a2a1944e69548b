"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them (the `gguf`
package; Q/K rows permuted for Llama), from the tests' random HF checkpoints, and two tokenizers:
byte-level BPE ("gpt2") and a SentencePiece-style vocabulary ("llama")."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: rotated halves -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf: str) -> str:
    if hf in _NAMES:
        return _NAMES[hf]
    _, _, i, rest = hf.split(".", 3)
    mod, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{_LAYER[mod]}.{kind}"


def quantized(a: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(what the file stores, the f32 values a reader gets back) of a 2-D weight in `qtype`."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize
    if qtype == "F32":
        return a, a
    if qtype == "F16":
        h = a.astype(np.float16)
        return h, h.astype(np.float32)
    q = quantize(a, Q[qtype])
    return q, np.asarray(dequantize(q, Q[qtype]), np.float32).reshape(a.shape)


def write_gguf(ckpt: Path, out: Path, qtype: str = "F32", tokenizer: str = "gpt2", pre: str = "gpt-2",
               chat_template: str | None = None, skip=(), extra_meta: dict | None = None) -> dict:
    """Write `ckpt` (HF Llama/Qwen2) as a GGUF with its 2-D weights in `qtype`; returns the HF state
    dict as a reader must get it back (dequantized, in HF layout). `skip`: metadata keys left out."""
    import gguf
    from safetensors.numpy import load_file
    cfg = json.loads((ckpt / "config.json").read_text())
    arch = cfg["model_type"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta") or rs.get("rope_theta") or 10000.0)      # transformers 4.x or 5.x
    w = gguf.GGUFWriter(str(out), arch)
    meta = {
        f"{arch}.context_length": cfg["max_position_embeddings"], f"{arch}.embedding_length": cfg["hidden_size"],
        f"{arch}.block_count": cfg["num_hidden_layers"], f"{arch}.feed_forward_length": cfg["intermediate_size"],
        f"{arch}.attention.head_count": H, f"{arch}.attention.head_count_kv": KV,
        f"{arch}.rope.freq_base": theta,
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
    }
    for k, v in {**meta, **(extra_meta or {})}.items():
        if k in skip:
            continue
        if isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_uint32(k, int(v))
    if "tokenizer" not in skip:
        vocab = gpt2_vocab(ckpt, cfg["vocab_size"]) if tokenizer == "gpt2" else spm_vocab(cfg["vocab_size"])
        w.add_tokenizer_model(tokenizer)
        if tokenizer == "gpt2":
            w.add_tokenizer_pre(pre)
            w.add_token_merges(vocab["merges"])
        else:
            w.add_token_scores(vocab["scores"])
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(tokenizer == "llama")
        if chat_template:
            w.add_chat_template(chat_template)
    if rs.get("rope_type") == "llama3":
        hd = cfg.get("head_dim") or cfg["hidden_size"] // H
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rs, theta, hd))
    sd = load_file(str(ckpt / "model.safetensors"))
    want = {}
    for name, a in sd.items():
        a = np.asarray(a, np.float32)
        g = a
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            g = permute(a, H if "q_proj" in name else KV)
        if a.ndim == 2:
            stored, back = quantized(g, qtype)
            if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                back = permute_back(back, H if "q_proj" in name else KV)
        else:
            stored, back = g, a                     # norms and biases stay f32, as the converter keeps them
        raw = getattr(gguf.GGMLQuantizationType, qtype) if a.ndim == 2 and qtype not in ("F32", "F16") else None
        w.add_tensor(gguf_name(name), stored, raw_dtype=raw)
        want[name] = back
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return want


def permute_back(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gpt2_vocab(ckpt: Path, vocab_size: int) -> dict:
    """The checkpoint's byte-level BPE tokenizer.json as GGUF arrays (padded to vocab_size)."""
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    special = {t["id"] for t in tj["added_tokens"] if t.get("special")}
    for t in tj["added_tokens"]:
        vocab[t["content"]] = t["id"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size                                  # UNUSED
    for s, i in vocab.items():
        tokens[i], types[i] = s, (3 if i in special else 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


SPM_WORDS = ["the", "quick", "brown", "fox", "jump", "over", "lazy", "dog", "draft", "target", "model", "token"]


def spm_vocab(vocab_size: int) -> dict:
    """A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, ▁, letters, and a few
    words built from them, each with a score (longer pieces score higher, as a trained model's do)."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores += [0.0] * 256
    types += [6] * 256                                        # BYTE
    pieces = ["\u2581"] + list("abcdefghijklmnopqrstuvwxyz")
    for wd in SPM_WORDS:
        w = "\u2581" + wd
        for k in range(2, len(w) + 1):
            if w[:k] not in pieces:
                pieces.append(w[:k])
    for i, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-float(i) if len(p) == 1 else -1000.0 + len(p) * 10 - i * 0.01)
        types.append(1)
    if len(tokens) > vocab_size:
        raise ValueError(f"spm_vocab needs vocab_size >= {len(tokens)}")
    while len(tokens) < vocab_size:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1e9)
        types.append(5)
    return {"tokens": tokens, "scores": scores, "types": types}


def llama3_rope_factors(rs: dict, theta: float, dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: Llama 3's rope scaling as divisors."""
    import math
    factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    out = []
    for f in 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wl = 2 * math.pi / f
        out.append(1.0 if wl < old / hi else factor if wl > old / lo else
                   1 / ((1 - (old / wl - lo) / (hi - lo)) / factor + (old / wl - lo) / (hi - lo)))
    return np.array(out, np.float32)
