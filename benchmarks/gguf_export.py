"""HF Llama checkpoint (safetensors + tokenizer.json) -> GGUF, with the `gguf` package directly.

llama.cpp's convert_hf_to_gguf.py refuses tokenizers whose pre-tokenizer hash it does not know
(ours: byte-level BPE trained here), so the file is written by hand, as that script would:
- llama.* hyperparameters (context, embedding, blocks, FFN, heads, KV heads, RoPE, RMS eps);
- tokenizer: model "gpt2", pre "gpt-2" (byte-level, GPT-2 regex, no prefix space: what
  build_sd/demo/tokenizer.py trains), the vocabulary by id (padded with [PADn] up to the model's
  vocab_size), merges, bos/eos/pad ids, no automatic BOS (our prompts carry "<s>" themselves);
- tensors in GGUF naming; Q and K rows permuted for llama.cpp's RoPE layout (HF rotates halves,
  llama.cpp pairs; convert_hf_to_gguf.py LlamaModel.permute); rope_freqs for llama3 scaling;
- f32, or f16 for the 2-D weights (norms and rope_freqs stay f32, as the converter does), or
  q8_0 / q4_0 for them (the gguf package's reference quantizers, llama.cpp's own block formats;
  every 2-D weight incl. the embedding, like `llama-quantize --pure`).

    python benchmarks/gguf_export.py CKPT_DIR OUT.gguf [--dtype f32|f16|q8_0|q4_0]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute (n_head = the heads of this projection)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def rope_params(cfg: dict) -> dict:
    """theta and scaling from either config dialect (rope_theta+rope_scaling or rope_parameters)."""
    rp = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" not in rp:
        rp["rope_theta"] = cfg.get("rope_theta", 10000.0)
    sc = cfg.get("rope_scaling") or {}
    for k, v in sc.items():
        rp.setdefault(k, v)
    if "type" in rp and "rope_type" not in rp:
        rp["rope_type"] = rp["type"]
    return rp


def llama3_rope_factors(rp: dict, dim: int) -> np.ndarray:
    base = rp["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi = rp.get("factor", 8.0), rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, np.float32)


def tensors(ckpt: Path):
    from safetensors import safe_open
    idx = ckpt / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else \
        [p.name for p in sorted(ckpt.glob("*.safetensors"))]
    for f in files:
        with safe_open(str(ckpt / f), framework="numpy") as st:
            for k in st.keys():
                yield k, st.get_tensor(k)


def export(ckpt: Path, out: Path, dtype: str = "f32") -> Path:
    import gguf
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg.get("model_type", "llama") != "llama":
        raise SystemExit(f"{ckpt}: only Llama checkpoints (model_type {cfg.get('model_type')})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    add_hparams(w, ckpt.name, cfg, dtype)
    add_tokenizer(w, ckpt, cfg)
    add_tensors(w, ckpt, cfg, dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    return out


def shape(cfg: dict) -> tuple[int, int, int]:
    """(attention heads, KV heads, head dim)."""
    H = cfg["num_attention_heads"]
    return H, cfg.get("num_key_value_heads", H), cfg.get("head_dim") or cfg["hidden_size"] // H


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def add_hparams(w, name: str, cfg: dict, dtype: str) -> None:
    """llama.* hyperparameters and the file type."""
    import gguf
    D = cfg["hidden_size"]
    H, KV, hd = shape(cfg)
    w.add_name(name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(D)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(hd)
    if hd != D // H:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_freq_base(float(rope_params(cfg)["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))


def add_tokenizer(w, ckpt: Path, cfg: dict) -> None:
    """tokenizer.json's byte-level BPE as llama.cpp's "gpt2" model, padded to vocab_size; special ids."""
    import gguf
    V = cfg["vocab_size"]
    tj = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj["model"]
    if model.get("type") != "BPE":
        raise SystemExit(f"{ckpt}/tokenizer.json: BPE expected, got {model.get('type')}")
    vocab = dict(model["vocab"])
    special = {}
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        special[t["id"]] = bool(t.get("special"))
    n_tok = max(vocab.values()) + 1
    if n_tok > V:
        raise SystemExit(f"tokenizer has {n_tok} tokens, the model's vocab_size is {V}")
    toks = [f"[PAD{i}]" for i in range(V)]
    types = [gguf.TokenType.UNUSED] * V
    for s, i in vocab.items():
        toks[i] = s
        types[i] = gguf.TokenType.CONTROL if special.get(i) else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    bos, eos = _ids(cfg.get("bos_token_id")), _ids(cfg.get("eos_token_id"))
    if bos:
        w.add_bos_token_id(int(bos[0]))
    if eos:
        w.add_eos_token_id(int(eos[0]))
    if cfg.get("pad_token_id") is not None:
        w.add_pad_token_id(int(cfg["pad_token_id"]))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


def _ids(x):
    return x if isinstance(x, list) else ([] if x is None else [x])


NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
PER_LAYER = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight"}


def add_tensors(w, ckpt: Path, cfg: dict, dtype: str) -> None:
    """The weights under GGUF names (Q/K permuted), rope_freqs for llama3 scaling; 2-D ones in dtype."""
    import gguf
    H, KV, hd = shape(cfg)
    rp = rope_params(cfg)
    if str(rp.get("rope_type", "")).lower() == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rp, hd))
    for name, a in tensors(ckpt):
        a = np.asarray(a, np.float32)
        if name in NAMES:
            g = NAMES[name]
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            if rest not in PER_LAYER:
                raise SystemExit(f"unexpected tensor {name}")
            g = f"blk.{i}.{PER_LAYER[rest]}"
            if rest == "self_attn.q_proj.weight":
                a = permute(a, H)
            elif rest == "self_attn.k_proj.weight":
                a = permute(a, KV)
        else:
            raise SystemExit(f"unexpected tensor {name}")
        if dtype == "f16" and a.ndim == 2:
            a = a.astype(np.float16)
        elif dtype in ("q8_0", "q4_0") and a.ndim == 2:
            qt = getattr(gguf.GGMLQuantizationType, dtype.upper())
            w.add_tensor(g, gguf.quants.quantize(np.ascontiguousarray(a), qt), raw_dtype=qt)
            continue
        w.add_tensor(g, np.ascontiguousarray(a))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="f32", choices=list(FILE_TYPES))
    a = ap.parse_args(argv)
    print(export(Path(a.ckpt), Path(a.out), a.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
