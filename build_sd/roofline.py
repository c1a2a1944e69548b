"""Analytic latency of a subgraph function: FLOPs and bytes from the config, a roofline from the
platform description (build_sd/platforms.json). For boards not at hand; a profile replaces it.

Per call of a subgraph on T tokens (S cache slots; letters as in config.py):
- embed: gathers T rows: bytes 2 T D e (read + write), no FLOPs;
- each layer: weights W e with W = D H Dh + 2 D KVH Dh + H Dh D + 3 D F (+ norms), read once
  per call; the KV cache: our attention reads all S slots of K and V (masked), 2 S KVH Dh e,
  and writes 2 T KVH Dh e; FLOPs 2 T W + 4 T H Dh S (QK^T and AV over S slots);
- head: T' rows (1 for prefill): weights D V e, FLOPs 2 T' D V.
latency = max(FLOPs / (peak x compute efficiency), bytes / (bandwidth x efficiency))
          + dispatches x per-dispatch overhead + a fixed per-call cost.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

PLATFORMS_FILE = Path(__file__).with_name("platforms.json")
DISPATCHES_PER_LAYER = 10      # norm, qkv, rope, cache write, scores, softmax, AV, o, norm, mlp (fused)
DISPATCHES_HEAD = 3
DISPATCHES_EMBED = 1


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float
    dispatches: int

    def __add__(self, o: "Work") -> "Work":
        return Work(self.flops + o.flops, self.bytes + o.bytes, self.dispatches + o.dispatches)


def layer_weights(cfg: dict) -> int:
    D, H, KVH, Dh, F = (cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"],
                        cfg["intermediate_size"])
    return D * H * Dh + 2 * D * KVH * Dh + H * Dh * D + 3 * D * F + 2 * D


def work(cfg: dict, kind: str, start: int, end: int, T: int, S: int, elt: int, prefill: bool = False) -> Work:
    D, H, KVH, Dh, V = (cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"],
                        cfg["vocab_size"])
    w = Work(0.0, 0.0, 0)
    if kind in ("embed", "whole"):
        w += Work(0.0, 2.0 * T * D * elt, DISPATCHES_EMBED)
    if kind in ("layers", "whole"):
        n = end - start
        W = layer_weights(cfg)
        per = Work(2.0 * T * W + 4.0 * T * H * Dh * S,
                   W * elt + 2.0 * S * KVH * Dh * elt + 2.0 * T * KVH * Dh * elt + 4.0 * T * D * elt,
                   DISPATCHES_PER_LAYER)
        w += Work(per.flops * n, per.bytes * n, per.dispatches * n)
    if kind in ("head", "whole"):
        rows = 1 if prefill else T
        w += Work(2.0 * rows * D * V, float(D * V * elt + rows * V * 4), DISPATCHES_HEAD)
    return w


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

    @property
    def profile_key(self) -> str:
        """Where a profile keeps this device's figures (runtime/profiler.py: profile_key)."""
        return f"{self.preset}@{self.driver}" if self.driver == "local-sync" else self.preset

    def latency_ms(self, w: Work, dtype: str) -> float:
        peak = self.peak_gflops.get(dtype) or self.peak_gflops.get("f32")
        t_compute = w.flops / (peak * 1e9 * self.compute_efficiency) if peak else 0.0
        t_mem = w.bytes / (self.mem_bw_gbs * 1e9 * self.bw_efficiency)
        return (max(t_compute, t_mem) * 1e3 + w.dispatches * self.dispatch_overhead_us / 1e3
                + self.call_overhead_us / 1e3)


@dataclass
class Platform:
    name: str
    devices: dict[str, DeviceSpec]          # device name -> spec
    shared_memory: bool = True
    concurrent: bool = False
    transfer_fixed_ms: float = 0.05
    transfer_ms_per_mb: float = 0.1
    host_ms_per_iteration: float = 0.02
    notes: str = ""


def load_platforms(path: Path = PLATFORMS_FILE) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _num(x, default):
    if isinstance(x, dict):                # {"value": .., "source"/"estimate": ..}
        x = x.get("value")
    return default if x is None else float(x)


def get_platform(name: str) -> Platform:
    if name == "host":
        return host_platform()
    data = load_platforms()
    if name not in data or name.startswith("_"):
        known = ", ".join(k for k in data if not k.startswith("_") and k != "host")
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
            call_overhead_us=_num(d.get("call_overhead_us"), 20.0))
    return Platform(name, devices, bool(p.get("shared_memory", True)), bool(p.get("concurrent", False)),
                    _num(p.get("transfer_fixed_ms"), 0.05), _num(p.get("transfer_ms_per_mb"), 0.1),
                    _num(p.get("host_ms_per_iteration"), 0.02), p.get("notes", ""))


def host_platform(measure: bool = True) -> Platform:
    """This machine: its CPU (under local-task: `cpu`, and local-sync: `cpu-sync`), plus lavapipe
    when present (same cores: never concurrent).

    Bandwidth and FLOP/s are fitted by a short measurement (numpy), an upper bound on what IREE
    reaches; a profile, when given, replaces these figures for everything it covers."""
    import os
    bw, gflops = (_measure_host() if measure else (20.0, 50.0))
    cores = os.cpu_count() or 1
    devices = {"cpu": DeviceSpec("cpu", "cpu", "host", "local-task", {"f32": gflops, "f16": gflops},
                                 bw, 0.8, 0.5, 3.0, 20.0),
               # the same modules under IREE's local-sync driver: one core, but no worker wake-ups
               # between dispatches (a few us each here, up to ms on a shared VM): small models
               # win, big ones lose the other cores' bandwidth. A profile decides; these figures
               # only order them without one.
               "cpu-sync": DeviceSpec("cpu-sync", "cpu", "host", "local-sync",
                                      {"f32": gflops / cores, "f16": gflops / cores}, bw, 0.8, 0.5, 0.5, 10.0)}
    from .runtime.devices import vulkan_device_names
    if any("llvmpipe" in n for n in vulkan_device_names()):
        # lavapipe runs SPIR-V on the same cores through LLVM, measured ~30x slower per call here
        devices["vulkan"] = DeviceSpec("vulkan", "gpu", "vulkan-llvmpipe", "vulkan",
                                       {"f32": gflops / 8}, bw, 0.3, 0.2, 400.0, 2000.0)
    return Platform("host", devices, True, False, 2.0, 50.0, 0.02,
                    f"fitted here: {bw:.1f} GB/s read, {gflops:.0f} GFLOP/s f32 (numpy), {cores} cores")


def _measure_host() -> tuple[float, float]:
    import time

    import numpy as np
    a = np.ones(64 * 1024 * 1024 // 8)               # 64 MB, well beyond the caches
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    bw = a.nbytes / best / 1e9
    m = np.ones((512, 512), np.float32)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        m @ m
        best = min(best, time.perf_counter() - t)
    return bw, 2 * 512 ** 3 / best / 1e9
