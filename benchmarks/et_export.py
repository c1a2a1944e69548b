"""HF Llama checkpoint -> ExecuTorch .pte (XNNPACK), decode graph with a static KV cache.

Runs in benchmarks/.venv-et (executorch pins its own torchao; see benchmarks/README.md). The
model is transformers' TorchExportableModuleForDecoderOnlyLM (static cache of max_cache_len
slots, one token per call: input_ids [1, 1], cache_position [1]), lowered with the XNNPACK
partitioner; the KV cache stays a mutable buffer of the program.

    benchmarks/.venv-et/bin/python benchmarks/et_export.py CKPT OUT.pte [--dtype f32|f16] [--max-cache 512]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path


def export(ckpt: str, out: str, dtype: str = "f32", max_cache: int = 512) -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    warnings.filterwarnings("ignore")
    t = time.perf_counter()
    dt = {"f32": torch.float32, "f16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dt, attn_implementation="sdpa").eval()
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static",
        cache_config={"batch_size": 1, "max_cache_len": max_cache})
    wrapped = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache)
    with torch.no_grad():
        ep = wrapped.export(input_ids=torch.tensor([[1]], dtype=torch.long),
                            cache_position=torch.tensor([0], dtype=torch.long), strict=False)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    prog = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
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
    a = ap.parse_args(argv)
    export(a.ckpt, a.out, a.dtype, a.max_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
