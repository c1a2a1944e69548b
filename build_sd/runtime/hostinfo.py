"""This machine, as the board side sees it: CPU model and features, cores, a quick bandwidth and
FLOP/s fit, the Vulkan devices present. compat.py reads the CPU part to decide whether a module
runs here; the planner's `host` platform is built from `detect_host()` (contract.HostInfo)."""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from ..contract import HostInfo
from .memory import ram_bytes


def host_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_bandwidth_gbs(mbytes: int = 64, reps: int = 5) -> float:
    """GB/s of a numpy sum over `mbytes` (well beyond the caches): best of `reps`."""
    a = np.ones(mbytes * 1024 * 1024 // 8)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def measure_gflops_f32(n: int = 512, reps: int = 5) -> float:
    m = np.ones((n, n), np.float32)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        m @ m
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def detect_host(measure: bool = True) -> HostInfo:
    """measure=False: fixed figures instead of the fit (tests; a profile replaces them anyway)."""
    from .devices import vulkan_device_names
    bw, gflops = (measure_bandwidth_gbs(), measure_gflops_f32()) if measure else (20.0, 50.0)
    return HostInfo(arch=platform.machine(), cpu=cpu_model_name(), cores=os.cpu_count() or 1,
                    mem_bw_gbs=bw, gflops_f32=gflops, vulkan_devices=vulkan_device_names(),
                    ram_bytes=ram_bytes())
