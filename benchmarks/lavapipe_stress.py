"""The fast repro of the lavapipe device loss (docs/FINDINGS.md, "lavapipe DEVICE_LOST: the root
cause"): loop the test suite's bundles' greedy generations (3 prompts x gamma 0-6, a new session
each round) for SECONDS and count lost devices. Without native/vkguard.c (BUILD_SD_VKGUARD=off)
the `mixed` bundle lost its device 3 times in 121 s on the 2-core VM; with it, none in 306 s.
BUILD_SD_VKGUARD_VERBOSE=1 makes the shim say each signal it drops.

    python benchmarks/lavapipe_stress.py SECONDS [mixed|vulkan]   (after `make test` built the bundles)
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_sd.runtime.devices import VKGUARD, DeviceLost, release_vulkan  # noqa: E402
from build_sd.runtime.sampling import GreedyAcceptor  # noqa: E402
from build_sd.runtime.session import open_bundle  # noqa: E402
from build_sd.runtime.speculative import generate  # noqa: E402

PROMPTS = ["the quick brown fox", "hello world, this is", "a small draft model proposes and"]


def main() -> int:
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 120
    place = sys.argv[2] if len(sys.argv) > 2 else "mixed"
    bundle = ROOT / "build" / "tests" / "bundles" / place
    if not bundle.exists():
        sys.exit(f"{bundle}: missing (make test builds it)")
    t0, gens, losses = time.time(), 0, 0
    while time.time() - t0 < secs:
        s = open_bundle(bundle)
        s.warmup()
        try:
            for text in PROMPTS:
                ids = s.tokenizer.encode(text).ids
                for g in range(7):
                    generate(s.target, s.draft if g else None, ids, g, GreedyAcceptor(), 24, [])
                    gens += 1
        except DeviceLost as e:
            losses += 1
            print(f"lost at {time.time() - t0:.0f} s: {str(e)[:160]}", flush=True)
        del s
        release_vulkan()
    print(f"{place}, vkguard {VKGUARD or 'off'}: {gens} generations in {time.time() - t0:.0f} s, "
          f"{losses} lost devices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
