"""Host memory of loading a bundle (issue 14, item 4): where a 1B-class model's RAM goes.

Opens BUNDLE's target alone in this process and prints, after each stage, its resident memory
split into anonymous pages (the runtime's own copies: packed CPU weights, GPU allocations of a
unified-memory or software device, KV caches) and file pages (the .irpa, which IREE maps), the
high-water mark and the time. By default the runtime drops the .irpa's pages once the modules
are loaded (runtime/memory.py); --keep-file-pages shows the process without that.

    python benchmarks/load_memory.py BUNDLE [--keep-file-pages] [--steps 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--keep-file-pages", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args(argv)
    import numpy as np
    from build_sd.runtime.memory import resident_mb
    from build_sd.runtime.session import open_bundle
    t0 = time.time()

    def say(stage):
        m = resident_mb()
        print(f"{stage:>26}: {time.time() - t0:6.1f} s  anon {m['anon']:6d} MB  file {m['file']:6d} MB"
              f"  peak {m['peak']:6d} MB", flush=True)

    say("start")
    session = open_bundle(a.bundle, load_draft=False, check_hashes=False,
                          release_weights_file=not a.keep_file_pages)
    say("loaded" + (" (file pages kept)" if a.keep_file_pages else ""))
    chain = session.target
    prompt = np.array([1, 2, 3, 4], np.int32)
    toks = np.zeros(chain.prefill_bucket(len(prompt)), np.int32)
    toks[:len(prompt)] = prompt
    out = chain.step(toks, 0, role="prefill", length=len(prompt))
    for i in range(a.steps):
        out = chain.step(np.array([int(out.ids[-1])], np.int32), 4 + i)
    say(f"prefill + {a.steps} decodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
