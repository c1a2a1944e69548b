"""Per-dispatch time of build_sd's `decode` (IREE HAL profiling), grouped by kind.

    python benchmarks/profile_dispatches.py ARTIFACTS_DIR [--vmfb FILE] [--threads 1] [--reps 20]
                                            [--driver local-task] [--pos 16]

Runs iree-benchmark-module on the artifacts' host module (or --vmfb) with the export's .irpa and
a zero-splat parameter file for the KV caches (iree-create-parameters), with
--device_profiling_mode=host-execution (the local HAL's mode; dispatch-events is GPU-only), then `iree-profile statistics` and sums the time
per dispatch kind (matmul = mmt4d, pack/unpack, attention softmax, argmax, elementwise, copies).
The sum of dispatch times against the wall time per call shows what the dispatches cost and
what lies between them.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / ".work" / "probe"

KINDS = [("matmul (mmt4d)", r"mmt4d|matmul|matvec"), ("pack", r"_pack_"), ("unpack", r"unpack"),
         ("softmax", r"softmax"), ("argmax", r"arg_compare|argmax"), ("reduction", r"reduction"),
         ("copy", r"memcpy|slow_memcpy|copy"), ("elementwise", r"elementwise|generic")]


def kind_of(name: str) -> str:
    for k, pat in KINDS:
        if re.search(pat, name):
            return k
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts")
    ap.add_argument("--vmfb")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--driver", default="local-task")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--pos", type=int, default=16)
    ap.add_argument("--function", default="decode")
    ap.add_argument("--mode", default="host-execution", help="--device_profiling_mode (local HAL: host-execution)")
    a = ap.parse_args(argv)
    art = Path(a.artifacts)
    sys.path.insert(0, str(ROOT))
    from build_sd.contract import ExportRecord
    export = ExportRecord.read(art / "export.json")
    sg = export.subgraphs[0]
    vmfb = Path(a.vmfb) if a.vmfb else art / "host" / f"{sg.name}.vmfb"
    OUT.mkdir(parents=True, exist_ok=True)
    kv = OUT / f"{art.name}-kv.irpa"
    elt = {"f32": "f32", "f16": "f16"}[export.dtype]
    splats = [f"--splat={p.name}={'x'.join(map(str, p.shape))}x{elt}=0" for p in sg.kv_params]
    subprocess.run([BIN / "iree-create-parameters", *splats, f"--output={kv}"], check=True)
    prof = OUT / f"{art.name}-{a.function}-{a.driver}-t{a.threads}.ireeprof"
    fn = sg.functions[a.function]
    args = []
    for arg in fn.args:
        shape = "x".join(map(str, arg.shape))
        val = a.pos if arg.name == "pos" else (len(arg.shape) and 5)
        args.append(f"--input={shape + 'x' if shape else ''}i32={val}")
    cmd = [BIN / "iree-benchmark-module", f"--module={vmfb}", f"--parameters=model={art / 'model.irpa'}",
           f"--parameters=model={kv}", f"--function={a.function}", *args, f"--device={a.driver}",
           f"--task_topology_group_count={a.threads}", f"--benchmark_min_time={a.reps}x",
           f"--device_profiling_mode={a.mode}", f"--device_profiling_output={prof}"]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-2000:], r.stderr[-2000:])
        return 1
    wall = re.findall(r"BM_\S+\s+([\d.]+) ms\s+([\d.]+) ms", r.stdout)
    st = subprocess.run([BIN / "iree-profile", "statistics", "--format=jsonl", str(prof)], capture_output=True,
                        text=True)
    rows = [json.loads(x) for x in st.stdout.splitlines() if x.strip().startswith("{")]
    by_kind = defaultdict(lambda: [0.0, 0])
    per = []
    total_ns = 0.0
    n_calls = a.reps
    prefix = a.function + "$async_dispatch_"
    for row in rows:
        name = row.get("function_name") or ""
        if row.get("row_type") != "host_execution_function" or not name.startswith(prefix):
            continue
        t, c = row["total_duration_ns"], row["sample_count"]
        by_kind[kind_of(name)][0] += t
        by_kind[kind_of(name)][1] += c
        total_ns += t
        per.append((t, c, name))
    # the first dispatch of the function runs once per call
    calls = next((c for t, c, n in per if n.startswith(prefix + "0_")), n_calls) or 1
    out = {"artifacts": str(art), "function": a.function, "driver": a.driver, "threads": a.threads,
           "wall_ms_per_call": [float(w[0]) for w in wall], "profile": str(prof),
           "dispatches_per_call": round(sum(c for _, c, _ in per) / calls, 1),
           "device_ms_per_call": round(total_ns / calls / 1e6, 3),
           "by_kind_ms_per_call": {k: round(v[0] / calls / 1e6, 3) for k, v in
                                   sorted(by_kind.items(), key=lambda kv: -kv[1][0])},
           "top": [{"ms_per_call": round(t / calls / 1e6, 3), "count_per_call": round(c / calls, 1), "name": n}
                   for t, c, n in sorted(per, reverse=True)[:12]]}
    if not per:
        out["raw_statistics_head"] = st.stdout[:3000] or st.stderr[:2000]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
