"""Where a build_sd decode step spends its time (the evidence behind benchmarks/README.md's findings).

    python benchmarks/probe_bsd.py BUNDLE [--threads 1,2] [--steps 200]

For each HAL driver (local-task with each IREE worker count --task_topology_group_count, and
local-sync, which runs the dispatches inline on the calling thread), in a subprocess each:
- invoke: VmContext.invoke of `decode` alone, arguments prebuilt (the device time floor);
- step:   ModelChain.step (uploads of token and position, invoke, download of the id);
- loop:   speculative.generate with gamma 0 (the whole host loop), per emitted token.
Prints one JSON line per worker count.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(bundle: str, threads: int, steps: int, driver: str | None = None) -> dict:
    import numpy as np
    import iree.runtime as rt
    rt.flags.parse_flags(f"--task_topology_group_count={threads}")
    sys.path.insert(0, str(ROOT))
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.session import open_bundle
    from build_sd.runtime.speculative import generate

    # the same llvm-cpu modules under the driver asked for (local-sync: the calling thread)
    s = open_bundle(bundle, load_draft=False, check_hashes=False,
                    cpu_driver={"target": driver} if driver else None)
    s.warmup()
    ch = s.target
    st = ch.stages[0]
    dev = st.device
    prompt = np.array([1, 100, 200, 300, 400, 500, 600, 700], np.int32)
    ch.prefill(prompt)
    tok = dev.upload(np.array([[5]], np.int32))
    pos = dev.upload(np.array(8, np.int32))
    fn = st.functions["decode"]
    args = rt.VmVariantList(2)
    args.push_ref(tok)
    args.push_ref(pos)

    def timeit(f, n):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    def inv():
        rets = rt.VmVariantList(2)
        st.context.vm_context.invoke(fn, args, rets)

    def step():
        ch.step(np.array([5], np.int32), 8)

    for _ in range(20):
        inv()
    out = {"threads": threads, "driver": driver or "local-task", "invoke_ms": timeit(inv, steps), "step_ms": timeit(step, steps)}
    g = generate(ch, None, list(prompt), 0, GreedyAcceptor(), steps, ())
    out["loop_ms_per_token"] = g.metrics.decode_s / max(1, g.metrics.emitted) * 1e3
    out["host_share"] = g.metrics.host_s / g.metrics.decode_s if g.metrics.decode_s else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--drivers", default="local-task,local-sync")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--driver", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.bundle, a.child, a.steps, a.driver)))
        return 0
    for d in a.drivers.split(","):
        for t in (a.threads.split(",") if d == "local-task" else ["1"]):
            r = subprocess.run([sys.executable, __file__, a.bundle, "--steps", str(a.steps), "--child", t,
                                "--driver", d], capture_output=True, text=True)
            print(r.stdout.strip() or r.stderr.strip()[-800:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
