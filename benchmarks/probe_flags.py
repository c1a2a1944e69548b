"""IREE compile flags and HAL drivers vs build_sd's decode step time (evidence for the findings).

    python benchmarks/probe_flags.py MLIR_DIR [--variants base,ukernels,...] [--drivers local-task,local-sync]
                                     [--threads 1] [--calls 100] [--rounds 3] [--dispatches]

MLIR_DIR is a `build-sd export` folder (one `whole` module). Each variant is compiled with the
`host` preset's flags plus its own (benchmarks/.work/probe/VARIANT.vmfb, reused when the flags
are unchanged), loaded through build_sd's ModelChain with the export's .irpa, and `decode` is
timed (median ms per call, chain.step: upload token+pos, invoke, read the id) at position 16
after a prefill. Variants and drivers alternate round by round, each in its own subprocess
(IREE's worker count is process-wide). --dispatches counts the dispatches of `decode` in the
stream IR of each variant.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / ".work" / "probe"
IREE_COMPILE = None

VARIANTS = {
    "base": [],                                                         # the host preset as it is
    "ukernels": ["--iree-llvmcpu-enable-ukernels=all"],
    "O3": ["--iree-opt-level=O3"],
    "fusion": ["--iree-dispatch-creation-enable-aggressive-fusion=true"],
    "notiling": None,                                                   # host preset minus data tiling
    "ukernels+O3": ["--iree-llvmcpu-enable-ukernels=all", "--iree-opt-level=O3"],
}


def host_flags() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from build_sd.builder.targets import get_preset
    return list(get_preset("host").flags)


def flags_for(variant: str) -> list[str]:
    base = host_flags()
    if variant == "notiling":
        return [f for f in base if "data-tiling" not in f]
    extra = []
    for part in variant.split("+"):
        if part not in VARIANTS or VARIANTS[part] is None:
            raise SystemExit(f"unknown variant part {part!r}")
        extra += VARIANTS[part]
    return base + [e for e in extra if e not in base]


def compiler() -> str:
    from iree.compiler.tools.binaries import find_tool
    return find_tool("iree-compile")


def compile_variant(mlir: Path, variant: str) -> Path:
    fl = flags_for(variant)
    key = hashlib.sha256((str(mlir.resolve()) + "\0" + "\0".join(fl)).encode()).hexdigest()[:10]
    out = PROBE / f"{mlir.parent.name}-{variant}-{key}.vmfb"
    if out.exists() and out.stat().st_mtime > mlir.stat().st_mtime:
        return out
    PROBE.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    subprocess.run([compiler(), str(mlir), *fl, "-o", str(out)], check=True)
    print(f"  compiled {variant} in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return out


def count_dispatches(mlir: Path, variant: str) -> int:
    out = PROBE / f"{mlir.parent.name}-{variant}.stream.mlir"
    subprocess.run([compiler(), str(mlir), *flags_for(variant), "--compile-to=stream", "-o", str(out)], check=True)
    text = out.read_text()
    start = text.index("util.func public @decode$async(")
    end = text.index("util.func public @decode(", start)
    n = len(re.findall(r"stream\.cmd\.dispatch", text[start:end]))
    out.unlink()
    return n


def child(export_dir: Path, vmfb: Path, driver: str, threads: int, calls: int) -> dict:
    import numpy as np
    import iree.runtime as rt
    rt.flags.parse_flags(f"--task_topology_group_count={threads}")
    sys.path.insert(0, str(ROOT))
    from build_sd.contract import ExportRecord
    from build_sd.runtime.chain import ModelChain, PlacedSubgraph
    from build_sd.runtime.devices import DevicePool

    export = ExportRecord.read(export_dir / "export.json")
    sg = export.subgraphs[0]
    chain = ModelChain(DevicePool(), export, export_dir / "model.irpa", [PlacedSubgraph(sg, vmfb, driver, "host")])
    chain.warmup()
    chain.prefill(np.arange(1, 17, dtype=np.int32))
    tok = np.array([5], np.int32)
    for _ in range(10):
        chain.step(tok, 16)
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        chain.step(tok, 16)
        ts.append(time.perf_counter() - t)
    return {"ms": statistics.median(ts) * 1e3, "p10_ms": sorted(ts)[len(ts) // 10] * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir")
    ap.add_argument("--variants", default="base,ukernels,O3,notiling")
    ap.add_argument("--drivers", default="local-task,local-sync")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dispatches", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("VMFB", "DRIVER"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    ex = Path(a.export_dir)
    if a.child:
        print(json.dumps(child(ex, Path(a.child[0]), a.child[1], a.threads, a.calls)))
        return 0
    mlir = ex / "whole.mlir"
    variants = a.variants.split(",")
    vmfbs = {v: compile_variant(mlir, v) for v in variants}
    cells = [(v, d) for v in variants for d in a.drivers.split(",")]
    res = {c: [] for c in cells}
    for r in range(a.rounds):
        order = cells[r % len(cells):] + cells[:r % len(cells)]
        for v, d in order:
            p = subprocess.run([sys.executable, __file__, str(ex), "--threads", str(a.threads), "--calls",
                                str(a.calls), "--child", str(vmfbs[v]), d], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{v} {d}: failed: {p.stderr.strip()[-400:]}", flush=True)
                continue
            res[(v, d)].append(json.loads(p.stdout.strip().splitlines()[-1])["ms"])
    out = {"export": str(ex), "threads": a.threads, "rows": []}
    for (v, d), ms in res.items():
        row = {"variant": v, "driver": d, "ms_per_decode": round(statistics.median(ms), 3) if ms else None,
               "best_ms": round(min(ms), 3) if ms else None,
               "rounds": [round(x, 3) for x in ms], "flags": flags_for(v)[len(host_flags()):] if v != "notiling"
               else ["(no --iree-global-opt-data-tiling)"]}
        out["rows"].append(row)
        print(f"{v:<14} {d:<11} median {row['ms_per_decode']} best {row['best_ms']} ms/decode  "
              f"rounds {row['rounds']}", flush=True)
    if a.dispatches:
        for v in variants:
            n = count_dispatches(mlir, v)
            out.setdefault("dispatches", {})[v] = n
            print(f"{v:<14} decode dispatches: {n}", flush=True)
    (PROBE / f"flags-{ex.name}-t{a.threads}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
