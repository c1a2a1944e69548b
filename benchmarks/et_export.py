"""HF Llama checkpoint -> ExecuTorch .pte (XNNPACK), ExecuTorch's own Llama with a KV cache.

Runs in benchmarks/.venv-et (executorch from PyPI; see benchmarks/README.md). The model is
ExecuTorch's examples/models/llama Transformer (what its export_llama builds) with the HF
checkpoint's weights under Meta's names and `use_hf_rope` (HF's rotate-half RoPE, so no
permutation), a static KV cache (mutable buffers, use_kv_cache) of --max-cache slots, one token
per call (tokens [1, 1], input_pos [1]), lowered with the XNNPACK partitioner.
(transformers' TorchExportableModuleForDecoderOnlyLM exported, but its program failed in
executorch's run_decompositions with torch 2.13: "expected compiled_fn to be GraphModule".)

    benchmarks/.venv-et/bin/python benchmarks/et_export.py CKPT OUT.pte [--dtype f32|f16] [--max-cache 512]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path


def model_args(cfg: dict, max_cache: int, sdpa_op: bool):
    from executorch.examples.models.llama.model_args import ModelArgs
    rp = dict(cfg.get("rope_parameters") or {})
    rp.update({k: v for k, v in (cfg.get("rope_scaling") or {}).items() if k not in rp})
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kw = dict(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
              n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"],
              hidden_dim=cfg["intermediate_size"], head_dim=cfg.get("head_dim"),
              norm_eps=cfg.get("rms_norm_eps", 1e-5), max_batch_size=1, max_seq_len=max_cache,
              max_context_len=max_cache, use_kv_cache=True, use_sdpa_with_kv_cache_op=sdpa_op,
              use_hf_rope=True, rope_theta=theta, rope_freq_base=theta, enable_dynamic_shape=False)
    if str(rp.get("rope_type", "")).lower() == "llama3":
        kw.update(use_scaled_rope=True, rope_scale_factor=int(rp.get("factor", 8)),
                  high_freq_factor=int(rp.get("high_freq_factor", 4)))
    return ModelArgs(**kw)


def load_weights(ckpt: Path, tie: bool) -> dict:
    from safetensors.torch import load_file
    sd = {}
    idx = ckpt / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else \
        [p.name for p in sorted(ckpt.glob("*.safetensors"))]
    for f in files:
        sd.update(load_file(str(ckpt / f)))
    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
             "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
             "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
             "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight"}
    out = {}
    for k, v in sd.items():
        if k in names:
            out[names[k]] = v
        else:
            _, _, i, rest = k.split(".", 3)
            out[f"layers.{i}.{layer[rest]}"] = v
    if tie or "output.weight" not in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def export(ckpt: str, out: str, dtype: str = "f32", max_cache: int = 512, sdpa_op: bool = False) -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    if sdpa_op:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - registers llama::sdpa
    warnings.filterwarnings("ignore")
    t = time.perf_counter()
    ckpt = Path(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    model = construct_transformer(model_args(cfg, max_cache, sdpa_op))
    sd = load_weights(ckpt, bool(cfg.get("tie_word_embeddings")))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "cache" not in m and "freqs" not in m and "mask" not in m]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    del sd
    dt = {"f32": torch.float32, "f16": torch.float16}[dtype]
    model = model.to(dt).eval()
    tokens = torch.tensor([[1]], dtype=torch.long)
    pos = torch.tensor([0], dtype=torch.long)
    with torch.no_grad():
        ep = torch.export.export(model, (tokens, {"input_pos": pos}), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    prog = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out + ".tmp")
    with open(tmp, "wb") as f:
        prog.write_to_file(f)
    tmp.rename(out)
    print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    ap.add_argument("--max-cache", type=int, default=512)
    ap.add_argument("--sdpa-op", action="store_true", help="executorch's fused llama::sdpa_with_kv_cache")
    a = ap.parse_args(argv)
    export(a.ckpt, a.out, a.dtype, a.max_cache, a.sdpa_op)
    return 0


if __name__ == "__main__":
    sys.exit(main())
