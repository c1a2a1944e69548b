"""Platform descriptions for the cost model: devices (preset, driver, peak FLOP/s, bandwidth,
overheads), transfer costs, host work. The boards are in platforms.json beside this file, each
figure with its source; `host` is this machine, built from what the board side measured of it
(contract.HostInfo: runtime/hostinfo.py), so planning itself needs no IREE."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..contract import HostInfo
from ..errors import UserError
from .roofline import Work

PLATFORMS_FILE = Path(__file__).with_name("platforms.json")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str                  # cpu | gpu
    preset: str
    driver: str
    peak_gflops: dict          # dtype -> GFLOP/s
    mem_bw_gbs: float
    bw_efficiency: float = 0.7
    compute_efficiency: float = 0.5
    dispatch_overhead_us: float = 5.0
    call_overhead_us: float = 20.0   # the runner's per-call host work (args, readback)
    # the largest single buffer the device allocates (Vulkan maxMemoryAllocationSize); None: no
    # limit that matters (CPU drivers). A module's weights, and its KV caches, must each fit.
    max_allocation_bytes: int | None = None

    @property
    def profile_key(self) -> str:
        """Where a profile keeps this device's figures (runtime/profiler.py: profile_key)."""
        return f"{self.preset}@{self.driver}" if self.driver == "local-sync" else self.preset

    def latency_ms(self, w: Work, dtype: str) -> float:
        """The roofline: max(compute, memory) + dispatches x overhead + the per-call cost."""
        peak = self.peak_gflops.get(dtype) or self.peak_gflops.get("f32")
        t_compute = w.flops / (peak * 1e9 * self.compute_efficiency) if peak else 0.0
        t_mem = w.bytes / (self.mem_bw_gbs * 1e9 * self.bw_efficiency)
        return (max(t_compute, t_mem) * 1e3 + w.dispatches * self.dispatch_overhead_us / 1e3
                + self.call_overhead_us / 1e3)


@dataclass
class Platform:
    name: str
    devices: dict[str, DeviceSpec]          # device name -> spec
    # the overlapped loop (plan/planner.py: contention_for): can two devices compute at once, and
    # do they share the memory bus (then each slows the other)
    shared_memory: bool = True
    concurrent: bool = False
    transfer_fixed_ms: float = 0.05
    transfer_ms_per_mb: float = 0.1
    host_ms_per_iteration: float = 0.02
    notes: str = ""
    # the board's RAM; None: unknown (nothing is refused for it). With shared_memory the GPU's
    # buffers are in it too (plan/planner.py: resident_bytes)
    ram_bytes: int | None = None
    cores: int = 1                 # CPU cores: two local-sync threads can run on two of them


def load_platforms(path: Path = PLATFORMS_FILE) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _num(x, default):
    if isinstance(x, dict):                # {"value": .., "source"/"estimate": ..}
        x = x.get("value")
    return default if x is None else float(x)


def _int(x) -> int | None:
    v = _num(x, None)
    return None if v is None else int(v)


# What lavapipe (Mesa's software Vulkan) reports as maxMemoryAllocationSize; measured here: a
# 2147484672-byte KV cache allocation was refused, a 2147483648-byte one loaded (docs/FINDINGS.md).
LAVAPIPE_MAX_ALLOCATION = 2 ** 31


def default_max_module_bytes() -> int:
    """`export --max-module-bytes` when not given: the smallest allocation limit measured or
    sourced among the GPUs the platform descriptions know (lavapipe included), less the margin
    (contract/layout.usable), so an export made without a plan loads on any of them. Guessed
    limits (marked "estimate", e.g. Mali's) are left out: the plan for such a board cuts to
    them, and a profile on the board replaces them with the real one."""
    from ..contract.layout import usable
    limits = [LAVAPIPE_MAX_ALLOCATION]
    for p in load_platforms().values():
        for d in (p.get("devices") or {}).values() if isinstance(p, dict) else ():
            x = d.get("max_allocation_bytes")
            if _int(x) and not (isinstance(x, dict) and "estimate" in x):
                limits.append(_int(x))
    return usable(min(limits))


def get_platform(name: str, host: HostInfo | None = None) -> Platform:
    """A board of platforms.json, or `host` (this machine: give its HostInfo)."""
    if name == "host":
        if host is None:
            raise UserError("the host platform is this machine: plan it where build_sd's runtime "
                            "can measure it (build-sd plan --platform host does)")
        return host_platform(host)
    data = load_platforms()
    if name not in data or name.startswith("_"):
        known = ", ".join(k for k in data if not k.startswith("_"))
        raise UserError(f"unknown platform {name!r} (known: {known}, host)")
    p = data[name]
    devices = {}
    for dname, d in p["devices"].items():
        peaks = {k: _num(v, None) for k, v in (d.get("peak_gflops") or {}).items()}
        devices[dname] = DeviceSpec(
            name=dname, kind=d["kind"], preset=d["preset"], driver=d["driver"],
            peak_gflops={k: v for k, v in peaks.items() if v},
            mem_bw_gbs=_num(d.get("mem_bw_gbs"), _num(p.get("mem_bw_gbs"), 10.0)),
            bw_efficiency=_num(d.get("bw_efficiency"), 0.7),
            compute_efficiency=_num(d.get("compute_efficiency"), 0.5),
            dispatch_overhead_us=_num(d.get("dispatch_overhead_us"), 5.0),
            call_overhead_us=_num(d.get("call_overhead_us"), 20.0),
            max_allocation_bytes=_int(d.get("max_allocation_bytes")))
    return Platform(name, devices, bool(p.get("shared_memory", True)), bool(p.get("concurrent", False)),
                    _num(p.get("transfer_fixed_ms"), 0.05), _num(p.get("transfer_ms_per_mb"), 0.1),
                    _num(p.get("host_ms_per_iteration"), 0.02), p.get("notes", ""), _int(p.get("ram_bytes")),
                    max([_int(d.get("cores")) or 1 for d in p["devices"].values()] + [1]))


def host_platform(host: HostInfo) -> Platform:
    """This machine: its CPU (under local-task: `cpu`, and local-sync: `cpu-sync`), plus lavapipe
    when present (same cores: never concurrent).

    Bandwidth and FLOP/s are the board side's quick fit (numpy), an upper bound on what IREE
    reaches; a profile, when given, replaces these figures for everything it covers."""
    bw, gflops, cores = host.mem_bw_gbs, host.gflops_f32, max(1, host.cores)
    devices = {"cpu": DeviceSpec("cpu", "cpu", "host", "local-task", {"f32": gflops, "f16": gflops},
                                 bw, 0.8, 0.5, 3.0, 20.0),
               # the same modules under IREE's local-sync driver: one core, but no worker wake-ups
               # between dispatches (a few us each here, up to ms on a shared VM): small models
               # win, big ones lose the other cores' bandwidth. A profile decides; these figures
               # only order them without one.
               "cpu-sync": DeviceSpec("cpu-sync", "cpu", "host", "local-sync",
                                      {"f32": gflops / cores, "f16": gflops / cores}, bw, 0.8, 0.5, 0.5, 10.0)}
    if host.has_lavapipe:
        # lavapipe runs SPIR-V on the same cores through LLVM, measured ~30x slower per call here
        devices["vulkan"] = DeviceSpec("vulkan", "gpu", "vulkan-llvmpipe", "vulkan",
                                       {"f32": gflops / 8}, bw, 0.3, 0.2, 400.0, 2000.0,
                                       host.max_allocation_bytes.get("vulkan", LAVAPIPE_MAX_ALLOCATION))
    return Platform("host", devices, True, False, 2.0, 50.0, 0.02,
                    f"fitted here: {bw:.1f} GB/s read, {gflops:.0f} GFLOP/s f32 (numpy), {cores} cores",
                    host.ram_bytes or None, cores)
