"""Host RAM (issue 14, item 4): the runtime lets go of the .irpa once loaded, and the planner
never emits a pair that does not fit the board's RAM."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

SHAPES = Path(__file__).resolve().parents[1] / "examples" / "shapes"


def _irpa_resident_kb(bundle: Path, release: bool) -> int:
    """Resident kB of the target's .irpa mappings after open_bundle, in a fresh process (another
    process mapping the same file would keep its pages)."""
    code = f"""
from pathlib import Path
from build_sd.runtime.session import open_bundle
s = open_bundle({str(bundle)!r}, release_weights_file={release})
irpa = str((Path({str(bundle)!r}) / s.manifest.models["target"].files.irpa).resolve())
kb, inside = 0, False
for line in open("/proc/self/smaps"):
    head = line.split()
    if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
        inside = len(head) == 6 and head[5] == irpa
    elif inside and head[0] == "Rss:":
        kb += int(head[1])
print(kb)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_the_irpa_pages_are_dropped_once_loaded(draft_art, target_whole, tmp_path):
    from helpers import cpu_bundle
    bundle = cpu_bundle(tmp_path / "b", draft_art, target_whole)
    kept = _irpa_resident_kb(bundle, release=False)
    assert kept > 0                                   # the initializers read it through a mapping
    assert _irpa_resident_kb(bundle, release=True) < kept / 4


def _plan(platform, dtype="f16"):
    from build_sd.plan.planner import make_plan
    return make_plan(SHAPES / "llama-3.2-1b", SHAPES / "llama-3.2-3b", platform, 0.8, dtype=dtype,
                     max_context=1024)


def test_the_planner_keeps_every_pair_within_the_boards_ram():
    from build_sd.plan.planner import RUNTIME_BYTES, usable_ram
    from build_sd.plan.platforms import get_platform
    board = get_platform("imx95")
    big = _plan(board)
    assert any(c.gamma > 0 for c in big.configs)                  # 16 GiB: the paper's pair fits
    assert all(0 < c.resident_bytes <= usable_ram(board) for c in big.configs)
    small_board = dataclasses.replace(board, ram_bytes=8 * 2 ** 30)
    small = _plan(small_board)             # 3B (6.4 GB) + 1B (2.5 GB) f16 exceed an 8 GiB board
    assert small.configs and all(c.gamma == 0 and c.draft is None for c in small.configs)
    assert all(c.resident_bytes <= usable_ram(small_board) for c in small.configs)
    # the target's f16 weights and caches, plus the runtime: what the plan says it holds
    t = small.configs[0]
    assert t.resident_bytes > 6.4e9 + RUNTIME_BYTES


def test_a_target_over_the_boards_ram_is_one_clear_error():
    from build_sd.errors import UserError
    from build_sd.plan.platforms import get_platform
    tiny = dataclasses.replace(get_platform("imx95"), ram_bytes=4 * 2 ** 30)
    with pytest.raises(UserError, match="GiB of RAM"):
        _plan(tiny)


def test_a_discrete_gpu_holds_its_modules_outside_the_hosts_ram():
    from build_sd.contract import ModelConfig, Placement
    from build_sd.plan.planner import resident_bytes
    from build_sd.plan.platforms import get_platform
    box = get_platform("gpubox")
    cfg = ModelConfig.from_hf(SHAPES / "llama-3.2-1b")
    gpu = next(n for n, d in box.devices.items() if d.kind == "gpu")
    cpu = next(n for n, d in box.devices.items() if d.kind == "cpu")
    on_cpu = resident_bytes(Placement(split=None, devices={"whole": cpu}, label=cpu), cfg, "f16", 1024, box)
    on_gpu = resident_bytes(Placement(split=None, devices={"whole": gpu}, label=gpu), cfg, "f16", 1024, box)
    assert on_cpu > 2e9 and on_gpu == 0
    shared = dataclasses.replace(box, shared_memory=True)        # a Mali board: one memory
    # the same weights in host RAM, the layers' GPU_LAYER_COPY included
    assert resident_bytes(Placement(split=None, devices={"whole": gpu}, label=gpu), cfg, "f16", 1024, shared) > on_cpu


def test_the_estimate_matches_the_measured_1b():
    """benchmarks/load_memory.py on the 1B cut by export (docs/FINDINGS.md), MiB without the
    runtime's own: the estimate within 3 % of each measured placement."""
    from build_sd.contract import HostInfo, ModelConfig, Placement
    from build_sd.plan.planner import resident_bytes
    from build_sd.plan.platforms import host_platform
    host = host_platform(HostInfo(arch="x86_64", cpu="x", cores=2, mem_bw_gbs=10.0, gflops_f32=50.0,
                                  vulkan_devices=["llvmpipe"], ram_bytes=24 * 2 ** 30))
    cfg = ModelConfig.from_hf(SHAPES / "llama-3.2-1b")
    measured = {("cpu", "cpu", "cpu", "cpu"): 4749, ("vulkan",) * 4: 7447,
                ("vulkan", "cpu", "cpu", "cpu"): 5786, ("cpu", "vulkan", "cpu", "cpu"): 5637}
    for devs, mib in measured.items():
        p = Placement(split=[0, 8], devices=dict(zip(("embed", "layers_0_8", "layers_8_16", "head"), devs)),
                      label="/".join(devs))
        got = resident_bytes(p, cfg, "f32", 128, host) / 2 ** 20
        assert abs(got - mib) <= 0.03 * mib, (p.label, got, mib)
