"""Probe: can the sampling of speculative decoding run on the device, and what does each piece cost?

One module, functions on a logits row of V (49152: SmolLM2) compiled for the host CPU:
  sample_t    temperature softmax + inverse-CDF sample with a host uniform (no sort): x, q row
  accept_g4   the target side for gamma 4: p rows, p_i(x_i) vs u_i q_i(x_i), residual sample: (n, next)
  topk64      torch.topk(z, 64) (a top-k mask or a top-p candidate set)
  sort        torch.sort(z, descending) (an exact top-p nucleus)
Each is compared with numpy and timed (median of 200 calls) beside numpy's host version.

    python benchmarks/probe_sampling.py [V [topk64] [sort]]    # topk/sort: slow to compile (see FINDINGS)
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")


class Sampler(torch.nn.Module):
    def sample_t(self, z, knobs):
        # z (1, V) logits; knobs (2,) = (1/temperature, u)
        q = torch.softmax(z * knobs[0], dim=-1)
        c = torch.cumsum(q, dim=-1)
        x = (c < knobs[1] * c[:, -1:]).sum(dim=-1).clamp(max=z.shape[-1] - 1)
        return x.to(torch.int32), q

    def accept_g4(self, z, q, xs, u, knobs):
        # z (5, V) target logits; q (4, V) draft rows; xs (4,) drafts; u (5,) uniforms; knobs (1,) 1/T
        p = torch.softmax(z * knobs[0], dim=-1)
        idx = torch.arange(4)
        px, qx = p[idx, xs.long()], q[idx, xs.long()]
        ok = (u[:4] * qx < px).to(torch.int32)
        n = torch.cumprod(ok, 0).sum()                          # accepted before the first rejection
        qn = torch.cat([q, torch.zeros_like(q[:1])])[n]         # the bonus row corrects nothing
        r = torch.clamp(p[n] - qn, min=0.0)
        r = torch.where(r.sum() > 0, r, p[n])
        c = torch.cumsum(r, dim=-1)
        nxt = (c < u[4] * c[-1]).sum().clamp(max=z.shape[-1] - 1)
        return torch.stack([n, nxt]).to(torch.int32)

    def topk64(self, z):
        v, i = torch.topk(z, 64, dim=-1)
        return v, i.to(torch.int32)

    def sort(self, z):
        v, i = torch.sort(z, dim=-1, descending=True)
        return v, i.to(torch.int32)


def main(V: int, fns: list[str]) -> None:
    import iree.compiler as ic
    import iree.runtime as rt
    import iree.turbine.aot as aot
    m = Sampler()
    fxb = aot.FxProgramsBuilder(m)
    z1, z5, q4 = torch.zeros(1, V), torch.zeros(5, V), torch.zeros(4, V)
    fxb.export_program(name="sample_t", args=(z1, torch.zeros(2)), strict=False)(lambda mod, z, k: mod.sample_t(z, k))
    fxb.export_program(name="accept_g4", args=(z5, q4, torch.zeros(4, dtype=torch.int32), torch.zeros(5),
                                               torch.zeros(1)), strict=False)(
        lambda mod, z, q, xs, u, k: mod.accept_g4(z, q, xs, u, k))
    if "topk64" in fns:
        fxb.export_program(name="topk64", args=(z1,), strict=False)(lambda mod, z: mod.topk64(z))
    if "sort" in fns:
        fxb.export_program(name="sort", args=(z1,), strict=False)(lambda mod, z: mod.sort(z))
    tmp = Path(tempfile.mkdtemp())
    aot.export(fxb, module_name="sampler").save_mlir(tmp / "s.mlir")
    t = time.perf_counter()
    vmfb = ic.compile_file(str(tmp / "s.mlir"), target_backends=["llvm-cpu"],
                           extra_args=["--iree-llvmcpu-target-cpu=host", "--iree-global-opt-data-tiling"])
    print(f"compiled in {time.perf_counter() - t:.1f}s", flush=True)
    cfg = rt.Config("local-sync")
    ctx = rt.SystemContext(config=cfg)
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    f = ctx.modules.sampler
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((5, V)) * 3).astype(np.float32)
    z[:, :20] += 10
    dev = ctx.config.device

    def timed(fn, n=200):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    zd1, zd5 = rt.asdevicearray(dev, z[:1]), rt.asdevicearray(dev, z)
    knobs = np.array([1 / 0.8, 0.37], np.float32)
    x, q = f.sample_t(zd1, knobs)
    qn = np.exp((z[0] - z[0].max()) / 0.8)
    qn /= qn.sum()
    want = int(np.searchsorted(np.cumsum(qn, dtype=np.float64), 0.37, side="right"))
    print(f"sample_t: x {int(np.asarray(x)[0])} (numpy {want}), |q - numpy| {np.abs(np.asarray(q)[0] - qn).max():.1e}, "
          f"{timed(lambda: f.sample_t(zd1, knobs)):.3f} ms", flush=True)
    qd = rt.asdevicearray(dev, np.tile(qn, (4, 1)).astype(np.float32))
    print(f"accept_g4: {np.asarray(f.accept_g4(zd5, qd, np.array([0, 1, 2, 3], np.int32), np.full(5, 0.5, np.float32), knobs[:1])).tolist()}, "
          f"{timed(lambda: f.accept_g4(zd5, qd, np.array([0, 1, 2, 3], np.int32), np.full(5, 0.5, np.float32), knobs[:1])):.3f} ms", flush=True)
    if "topk64" in fns:
        v, i = f.topk64(zd1)
        ok = set(np.asarray(i)[0].tolist()) == set(np.argsort(-z[0])[:64].tolist())
        print(f"topk64: same set as numpy {ok}, {timed(lambda: f.topk64(zd1)):.3f} ms", flush=True)
    if "sort" in fns:
        v, i = f.sort(zd1)
        ok = np.array_equal(np.asarray(v)[0], np.sort(z[0])[::-1])
        print(f"sort: same order as numpy {ok}, {timed(lambda: f.sort(zd1), 20):.3f} ms", flush=True)
    from build_sd.runtime.sampling import SamplingParams, probs, sample
    print(f"numpy host, one row (temperature): {timed(lambda: sample(probs(z[0], SamplingParams(0.8))[0], rng)):.3f} ms; "
          f"top-p 0.95: {timed(lambda: sample(probs(z[0], SamplingParams(0.8, 0, 0.95))[0], rng)):.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 49152, sys.argv[2:])
