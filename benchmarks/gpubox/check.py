"""On the GPU box, before timing: are the numbers right there? (no torch, no .irpa needed)

The weights are drawn at run time (--random-weights), identically on every device, so:
1. the target's GPU module (vulkan-ampere) is compared with its CPU module (x86-64-v3, which
   `build-sd validate` compared with PyTorch on the build machine): logits of a prefill and
   of decode steps, max |diff| relative to the logits' scale, and the greedy ids;
2. greedy speculative output (draft on CPU, target on GPU) must equal target-only greedy output
   token for token.

    python benchmarks/gpubox/check.py ROOT SEED [GPU]   (ROOT: a `bench --build-only` folder;
                                                          GPU: the plan's GPU device, default gpu)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from build_sd.runtime.sampling import GreedyAcceptor  # noqa: E402
from build_sd.runtime.session import open_bundle  # noqa: E402
from build_sd.runtime.speculative import generate  # noqa: E402


def bundles_by_config(root: Path) -> dict:
    keys = json.loads((root / "bench" / "configs.json").read_text())
    return {tuple(k): root / "bench" / f"c{i}" for i, k in enumerate(keys)}


def main() -> int:
    root, seed = Path(sys.argv[1]), int(sys.argv[2])
    gpu = sys.argv[3] if len(sys.argv) > 3 else "gpu"
    by = bundles_by_config(root)
    cpu_t = open_bundle(by[(None, "cpu", 0)], load_draft=False, random_weights=seed).target
    spec = open_bundle(next(b for (d, t, g), b in by.items() if d == "cpu" and t == gpu and g > 0),
                       random_weights=seed)
    gpu_t = spec.target
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, 4000, size=12).astype(np.int32)
    P = cpu_t.prefill_bucket(len(prompt))
    toks = np.zeros(P, np.int32)
    toks[:len(prompt)] = prompt
    worst, agree, n = 0.0, 0, 0
    outs = [c.step(toks, 0, role="prefill", length=len(prompt)) for c in (cpu_t, gpu_t)]
    nxt = int(outs[0].ids[-1])
    for i in range(8):
        la, lb = outs[0].logits()[-1], outs[1].logits()[-1]
        worst = max(worst, float(np.max(np.abs(la - lb)) / (np.max(np.abs(la)) + 1e-9)))
        agree += int(np.argmax(la) == np.argmax(lb))
        n += 1
        outs = [c.step(np.array([nxt], np.int32), len(prompt) + i) for c in (cpu_t, gpu_t)]
        nxt = int(outs[0].ids[-1])
    print(f"target GPU vs CPU module, same weights: max |logit diff| / max |logit| = {worst:.2e}, "
          f"greedy ids agree {agree}/{n}")
    ok = worst < 1e-3 and agree == n
    g = spec.manifest.gamma
    for j in range(2):
        ids = rng.integers(3, 4000, size=10).tolist()
        ref = generate(gpu_t, None, ids, 0, GreedyAcceptor(), 24, []).token_ids
        got = generate(gpu_t, spec.draft, ids, g, GreedyAcceptor(), 24, []).token_ids
        same = ref == got
        ok &= same
        print(f"prompt {j}: speculative (draft cpu, target gpu, gamma {g}) == target-only: {same}")
    print("CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
