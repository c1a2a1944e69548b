"""The configurations the GPU-box study measures, as plan ranks for `bench --configs`: for each
mapping of the pair onto the box's devices (target alone on the CPU, on the GPU; draft and
target on CPU/GPU in the four combinations, the paper's winning one being draft GPU + target
CPU), the configuration the plan ranks best, at its gamma.

    python benchmarks/gpubox/pick.py PLAN.json [GPU]  # prints e.g. 1,4,9,12,20,31 (1-based ranks)

GPU: the plan's name of the GPU device (gpubox: gpu; the host platform's lavapipe: vulkan).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from build_sd.contract import Plan  # noqa: E402

MAPPINGS = [("-", "cpu"), ("-", "gpu"), ("cpu", "cpu"), ("cpu", "gpu"), ("gpu", "cpu"), ("gpu", "gpu")]


def mapping(c) -> tuple[str, str]:
    """(draft device, target device) of a whole-model configuration; None parts when split."""
    def dev(p):
        devs = set(p.devices.values())
        return devs.pop() if len(devs) == 1 else None
    return ("-" if c.draft is None or c.gamma == 0 else dev(c.draft), dev(c.target))


def pick(plan: Plan, gpu: str = "gpu") -> list[tuple[tuple[str, str], int]]:
    out = []
    for d, t in MAPPINGS:
        want = tuple(gpu if x == "gpu" else x for x in (d, t))
        rank = next((i for i, c in enumerate(plan.configs, 1) if mapping(c) == want), None)
        if rank is not None:
            out.append(((d, t), rank))
    return out


if __name__ == "__main__":
    chosen = pick(Plan.read(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "gpu")
    for (d, t), rank in chosen:
        c = Plan.read(sys.argv[1]).configs[rank - 1]
        print(f"draft {d:>3} target {t:>3}: rank {rank:>3}, gamma {c.gamma}, predicted {c.pred_tokens_per_s} tok/s",
              file=sys.stderr)
    print(",".join(str(r) for _, r in chosen))
