"""The process's memory on the board: what it holds, and letting go of the .irpa once loaded.

IREE maps a model's .irpa and its initializers read every parameter from that mapping into the
modules' own buffers: packed copies for llvm-cpu (data tiling), device buffers for Vulkan. The
mapping's pages then stay resident as file pages though nothing reads them again: a 1B f32 target
on the CPU held 4.77 GB of copies plus 4.74 GB of .irpa pages (benchmarks/load_memory.py,
docs/FINDINGS.md). They are clean and reclaimable, but they count against a board's RAM in every
tool and crowd out the page cache of everything else, so the runtime drops them after loading
(madvise MADV_PAGEOUT; a page read later is simply read again from the file).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

MADV_PAGEOUT = 21          # Linux 5.4+; older kernels answer EINVAL and keep the pages


def resident_mb() -> dict[str, int]:
    """{"anon", "file", "peak"} resident MB of this process (/proc/self/status); {} elsewhere."""
    keys = {"RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in keys:
                    out[keys[key]] = int(val.split()[0]) // 1024
    except OSError:
        pass
    return out


def ram_bytes() -> int:
    """This machine's RAM (MemTotal), 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def release_file_pages(path: Path) -> int:
    """Ask the kernel to drop this process's resident pages of every mapping of `path`; the
    bytes of the mappings asked for (0 when none, or off Linux)."""
    target = str(Path(path).resolve())
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as f:
            maps = f.read().splitlines()
    except (OSError, AttributeError):
        return 0
    total = 0
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == target:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
                total += hi - lo
    return total
