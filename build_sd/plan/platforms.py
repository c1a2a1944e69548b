"""Platform descriptions for the cost model: devices (preset, driver, peak FLOP/s, bandwidth,
overheads), transfer costs, host work. The boards are in platforms.json beside this file, each
figure with its source; `host` is this machine, built from what the board side measured of it
(contract.HostInfo: runtime/hostinfo.py), so planning itself needs no IREE."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..contract import HostInfo, HostProbe
from ..contract.layout import ELT
from ..errors import UserError
from .roofline import Work

PLATFORMS_FILE = Path(__file__).with_name("platforms.json")


@dataclass(frozen=True)
class Fitted:
    """A roofline fitted to one driver's measured times (fit_probe): effective GB/s and GFLOP/s
    (no efficiency factors: they are what was reached) and how the two overlap: a call costs
    (t_mem^p + t_compute^p)^(1/p); p = inf is the plain max, p = 1 their sum."""
    gbs: float
    gflops: float
    p: float


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
    # dtype -> the roofline fitted to IREE's own times here (host CPU devices with a probe)
    fitted: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def profile_key(self) -> str:
        """Where a profile keeps this device's figures (runtime/profiler.py: profile_key)."""
        return f"{self.preset}@{self.driver}" if self.driver == "local-sync" else self.preset

    def latency_ms(self, w: Work, dtype: str) -> float:
        """The roofline: max(compute, memory) + dispatches x overhead + the per-call cost."""
        fit = self.fitted.get(dtype)
        if fit is not None:
            tm, tc = w.bytes / (fit.gbs * 1e9), w.flops / (fit.gflops * 1e9)
            t = max(tm, tc) if math.isinf(fit.p) else (tm ** fit.p + tc ** fit.p) ** (1.0 / fit.p)
        else:
            peak = self.peak_gflops.get(dtype) or self.peak_gflops.get("f32")
            t = max(w.flops / (peak * 1e9 * self.compute_efficiency) if peak else 0.0,
                    w.bytes / (self.mem_bw_gbs * 1e9 * self.bw_efficiency))
        return t * 1e3 + w.dispatches * self.dispatch_overhead_us / 1e3 + self.call_overhead_us / 1e3


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


# the overlap exponents fit_probe tries: 1 (memory and compute add up) .. inf (the plain max)
FIT_P = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, math.inf)


def fit_probe(probe: HostProbe, driver: str, dtype: str) -> tuple[Fitted, float] | None:
    """The roofline that best explains the probe's chain times under one driver (least squares
    of the log error over its rows T), and the cost of one projection's dispatches in us; None
    where the probe did not time this driver and dtype. The chain's weights are read once a call
    (bytes B) and each row costs 2 W FLOPs: t(T) = (t_mem^p + t_compute(T)^p)^(1/p) + dispatches."""
    ms = (probe.chain_ms.get(driver) or {}).get(dtype)
    tiny = (probe.tiny_ms.get(driver) or {}).get(dtype)
    if not ms or 1 not in ms or tiny is None or dtype not in ELT:
        return None
    W = probe.weights()
    over = 2 * probe.pairs * tiny
    t = {T: max(v - over, 1e-6) for T, v in sorted(ms.items())}
    # a call on fewer rows is never slower: a noisy high sample takes its larger neighbour's time
    for T in sorted(t, reverse=True)[1:]:
        t[T] = min(t[T], min(v for T2, v in t.items() if T2 > T))
    Tmax = max(t)
    gf_min = 2.0 * W * Tmax / (t[Tmax] * 1e6)     # compute alone cannot take longer than the call
    best = None
    for p in FIT_P:
        for i in range(120):
            gf = gf_min * 1.08 ** i
            tc = {T: 2.0 * W * T / (gf * 1e6) for T in t}
            for j in range(-12, 4):                  # the memory time: free, near the one-row call
                tm = t[1] * 1.02 ** j
                err = 0.0
                for T, got in t.items():
                    model = max(tm, tc[T]) if math.isinf(p) else (tm ** p + tc[T] ** p) ** (1.0 / p)
                    err += math.log(model / got) ** 2
                if best is None or err < best[0] - 1e-12:
                    best = (err, Fitted(W * ELT[dtype] / (tm * 1e6), gf, p))
    return None if best is None else (best[1], tiny * 1e3)


def _probed(probe: HostProbe | None, driver: str) -> tuple[dict, float | None]:
    """{dtype: Fitted} and the per-dispatch us of one CPU driver, from the probe (f32's tiny chain,
    else f16's)."""
    got = {dt: fit_probe(probe, driver, dt) for dt in ("f32", "f16")} if probe is not None else {}
    got = {dt: g for dt, g in got.items() if g}
    return {dt: g[0] for dt, g in got.items()}, next((g[1] for g in got.values()), None)


def host_platform(host: HostInfo) -> Platform:
    """This machine: its CPU (under local-task: `cpu`, and local-sync: `cpu-sync`), plus lavapipe
    when present (same cores: never concurrent).

    Where the build side timed IREE's own kernels here (host.probe: builder/hostfit.py), each CPU
    driver's roofline is fitted to those times; else bandwidth and FLOP/s are the board side's
    quick fit (numpy), an upper bound on what IREE reaches, alike for both drivers. A profile,
    when given, replaces these figures for everything it covers."""
    bw, gflops, cores = host.mem_bw_gbs, host.gflops_f32, max(1, host.cores)
    task_fit, task_us = _probed(host.probe, "local-task")
    sync_fit, sync_us = _probed(host.probe, "local-sync")
    devices = {"cpu": DeviceSpec("cpu", "cpu", "host", "local-task", {"f32": gflops, "f16": gflops},
                                 bw, 0.8, 0.5, 3.0 if task_us is None else task_us, 20.0, fitted=task_fit),
               # the same modules under IREE's local-sync driver: one core, but no worker wake-ups
               # between dispatches (a few us each here, up to ms on a shared VM): small models
               # win, big ones lose the other cores' bandwidth. A profile decides; these figures
               # only order them without one.
               "cpu-sync": DeviceSpec("cpu-sync", "cpu", "host", "local-sync",
                                      {"f32": gflops / cores, "f16": gflops / cores}, bw, 0.8, 0.5,
                                      0.5 if sync_us is None else sync_us, 10.0, fitted=sync_fit)}
    if host.has_lavapipe:
        # lavapipe runs SPIR-V on the same cores through LLVM, measured ~30x slower per call here
        devices["vulkan"] = DeviceSpec("vulkan", "gpu", "vulkan-llvmpipe", "vulkan",
                                       {"f32": gflops / 8}, bw, 0.3, 0.2, 400.0, 2000.0,
                                       host.max_allocation_bytes.get("vulkan", LAVAPIPE_MAX_ALLOCATION))
    fitted = "; ".join(f"{d} f32 {f['f32'].gbs:.1f} GB/s, {f['f32'].gflops:.0f} GFLOP/s, p {f['f32'].p:g}"
                       for d, f in (("local-task", task_fit), ("local-sync", sync_fit)) if "f32" in f)
    return Platform("host", devices, True, False, 2.0, 50.0, 0.02,
                    f"fitted here: {bw:.1f} GB/s read, {gflops:.0f} GFLOP/s f32 (numpy), {cores} cores"
                    + (f"; IREE's kernels: {fitted}" if fitted else ""),
                    host.ram_bytes or None, cores)
