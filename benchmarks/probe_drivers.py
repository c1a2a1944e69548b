"""build_sd's decode tokens/s under IREE runtime settings, side by side (evidence for the findings).

    python benchmarks/probe_drivers.py BUNDLE [--gamma G] [--prompts N] [--rounds R] [--max-new N] [--ignore-eos]

Rows (alternating run by run, bandwidth around each run, as bench.py does): the bundle as built
(local-task) with 2 and 1 IREE workers, and under local-sync (no worker threads: every dispatch
runs on the calling thread); plus llama.cpp (bsd-llama) with 2 and 1 threads when --gguf is given.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--gamma", type=int, default=0)
    ap.add_argument("--prompts", default=str(B.WORK / "prompts-24.ids"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--gguf", help="target GGUF for llama.cpp rows")
    ap.add_argument("--gguf-draft")
    ap.add_argument("--warmup", type=int, default=0)
    a = ap.parse_args(argv)
    eos = ["--ignore-eos"] if a.ignore_eos else []
    W = [B.PY, B.BENCH / "workers.py", "bsd", "--bundle", a.bundle, "--gamma", a.gamma, "--prompts", a.prompts,
         "--max-new", a.max_new, "--warmup", a.warmup] + eos
    rows = []
    for name, extra in (("local-task, 2 workers", ["--threads", 2]), ("local-task, 1 worker", ["--threads", 1]),
                        ("local-sync (caller thread)", ["--threads", 1, "--driver", "local-sync"])):
        r = B.Row(name, "probe", "probe", "build_sd", Path(a.bundle).name, "-", f"g={a.gamma}")
        r.start = (lambda cmd=W + extra, n=name: B.Worker(cmd, B.WORK / "logs" / "probe-drivers.log", 1800))
        rows.append(r)
    if a.gguf and B.LLAMA_BIN.exists():
        for t in (2, 1):
            cmd = [B.LLAMA_BIN, "-m", a.gguf, "--prompts", a.prompts, "-t", t, "-n", a.max_new, "--kv", "f32",
                   "--warmup", a.warmup] + eos
            if a.gamma:
                cmd += ["-md", a.gguf_draft, "--gamma", a.gamma]
            r = B.Row(f"llama.cpp, {t} threads", "probe", "probe", "llama.cpp", "-", "-", f"g={a.gamma}")
            r.start = (lambda cmd=cmd: B.Worker(cmd, B.WORK / "logs" / "probe-drivers.log", 1800))
            rows.append(r)
    bw = B.Bandwidth(B.setup_membw(), 2)
    try:
        B.measure(rows, a.rounds, bw, 1800, 1800)
    finally:
        bw.close()
    print(f"\n{'configuration':<28} {'tok/s':>8} {'ms/token':>9}  runs")
    for r in rows:
        if not r.runs:
            print(f"{r.id:<28} did not run: {r.why}")
            continue
        t = statistics.median(x["tps"] for x in r.runs)
        print(f"{r.id:<28} {t:8.1f} {1e3 / t:9.3f}  {[round(x['tps'], 1) for x in r.runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
