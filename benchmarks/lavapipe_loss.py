"""How often does lavapipe lose its device while build_sd loads modules? (issue 14, item 6)

The repro of the report: a never-seen 3-layer Qwen2 checkpoint, `export --split 0,1,2`, compiled
for host + vulkan-llvmpipe, then N runs of `build-sd validate --preset vulkan-llvmpipe`, each in
its own process (a lost VkDevice stays lost for the process). Counts the runs in which a load
lost the device (the runtime retries once on a new device and says so on stderr) and the runs
that failed. Env for an experiment is passed through (e.g. MESA_SHADER_CACHE_DISABLE=true;
BUILD_SD_VKGUARD=off for the runs without native/vkguard.c, which a checkout uses by default).
Measured 2026-11-30: 3 of 40 runs lost the device without the guard, 0 of 40 with it.

    python benchmarks/lavapipe_loss.py [N] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=40)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "loss"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_checkpoint   # the tests' tiny-checkpoint maker (transformers)
    ck = work / "qwen2"
    if not (ck / "config.json").exists():
        make_checkpoint(ck, kind="qwen2", vocab=151, hidden=48, layers=3, heads=6, kv_heads=2, ffn=72, seed=17)
    bsd = [sys.executable, "-m", "build_sd.cli"]
    for cmd in (["export", "--model", ck, "--out", work / "m", "--split", "0,1,2", "--gammas", "1,2",
                 "--prefill", "8", "--max-context", "64"],
                ["compile", work / "m", "--preset", "host", "--preset", "vulkan-llvmpipe", "--out", work / "a"]):
        subprocess.run(bsd + [str(c) for c in cmd], check=True, capture_output=True)
    lost = failed = 0
    t0 = time.time()
    for i in range(a.n):
        r = subprocess.run(bsd + ["validate", str(work / "a"), "--model", str(ck), "--preset", "vulkan-llvmpipe"],
                           capture_output=True, text=True, env=dict(os.environ))
        lost += "device was lost" in r.stderr
        failed += r.returncode != 0
        if r.returncode != 0 or "device was lost" in r.stderr:
            print(f"run {i + 1}: rc {r.returncode}: {r.stderr.strip().splitlines()[-1][:160]}", flush=True)
    from build_sd.runtime.devices import VKGUARD      # what the validate processes will use
    guard = VKGUARD or "none"
    print(f"{a.n} runs ({a.n * 4} module loads, vkguard: {guard}) in {time.time() - t0:.0f} s: {lost} with a lost device, "
          f"{failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
