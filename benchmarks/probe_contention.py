"""The profile's contention fit, repeated, and one call's jitter: is the machine steady enough to check the cost model?

    python benchmarks/probe_contention.py BUNDLE [--repeats 3] [--pairs local-sync/local-task,local-sync/local-sync]
                                                 [--jitter 200]

For each pair DRAFT_DRIVER/TARGET_DRIVER (the bundle's CPU modules under each IREE CPU driver), runs
runtime/profiler.py's _measure_contention REPEATS times: the contention factors (target, draft), the
per-call times in the pair's sequential loop (alone) and in the overlapped loop (together). Then,
with --jitter N, the target's decode timed N times at each of a few positions under both drivers,
twice: on a steady machine the medians agree within a few percent (docs/FINDINGS.md, "Contention
timed in the overlapped loop itself": here 1.8 vs 4.0 ms a few seconds apart).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from build_sd.runtime import profiler as P
from build_sd.runtime.chain import ModelChain, PlacedSubgraph
from build_sd.runtime.devices import DevicePool


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", default="local-sync/local-task,local-sync/local-sync,local-task/local-sync")
    ap.add_argument("--preset", default="host")
    ap.add_argument("--budget", type=float, default=0.4, help="the profile's budget per function (s)")
    ap.add_argument("--jitter", type=int, default=0, help="decode calls per position (0: skip)")
    a = ap.parse_args(argv)
    srcs = {s.name: s for s in P.load_model_source(Path(a.bundle))}
    pool = DevicePool()

    def chain(role: str, driver: str) -> ModelChain:
        src = srcs[role]
        placed = [PlacedSubgraph(sg, src.dir / src.module_file(a.preset, sg.name), driver, a.preset)
                  for sg in src.export.subgraphs]
        c = ModelChain(pool, src.export, src.irpa, placed, None)
        c.warmup()
        return c
    pairs = [p.split("/") for p in a.pairs.split(",") if p]
    print(f"{'rep':>3} {'draft':<10} {'target':<10} {'k_target':>8} {'k_draft':>8} "
          f"{'alone V/D ms':>16} {'together V/D ms':>16}")
    for rep in range(a.repeats):
        for dd, td in pairs:
            f = P._measure_contention(chain("draft", dd), chain("target", td), a.budget, 0.0)
            print(f"{rep:>3} {dd:<10} {td:<10} {f.target:>8.2f} {f.draft:>8.2f} "
                  f"{f.alone_ms[0]:>8.3f}/{f.alone_ms[1]:<7.3f} {f.together_ms[0]:>8.3f}/{f.together_ms[1]:<7.3f}",
                  flush=True)
    if a.jitter:
        tok = np.ones(1, np.int32)
        for driver in ("local-sync", "local-task"):
            c = chain("target", driver)
            S = c.max_context
            for rep in range(2):
                row = []
                for pos in sorted({4, S // 8, S // 2, S - 8}):
                    ts = []
                    for _ in range(a.jitter):
                        t = time.perf_counter()
                        c.step(tok, pos)
                        ts.append(time.perf_counter() - t)
                    row.append(f"pos {pos}: {np.median(ts) * 1e3:.3f} ms")
                print(f"target decode, {driver}, pass {rep + 1}: " + ", ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
