"""HAL devices and the host<->device copies the speculative loop needs (no torch).

One `Device` per driver (local-task, vulkan), shared by every module placed on it. What works
with IREE 3.13 (docs/FINDINGS.md; benchmarks/gpubox/README.md for the GPU box):
- upload: `allocator.allocate_buffer_copy` copies from any numpy array (rt.asdevicearray of an
  unaligned array fails on Vulkan: "minImportedHostPointerAlignment 4096");
- download on CPU (local-task): results live in host-visible memory: map and copy;
- download on Vulkan: device buffers are not mappable: queue_copy into a HOST_LOCAL staging
  buffer and wait on a semaphore. Staging buffers are cached per byte size and one timeline
  semaphore serves every read, so a read allocates nothing after the first of its size.
Every crossing is counted (calls, bytes each way) for the metrics.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import iree.runtime as rt
from iree.runtime import BufferUsage, HalElementType, HalFence, MemoryType

from ..errors import UserError

_ELT = {
    np.dtype(np.float32): HalElementType.FLOAT_32,
    np.dtype(np.float16): HalElementType.FLOAT_16,
    np.dtype(np.int32): HalElementType.SINT_32,
}
DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "i32": np.dtype(np.int32),
          "i8": np.dtype(np.int8), "u8": np.dtype(np.uint8)}


class Counters:
    """Host<->device traffic and time spent moving data, for metrics."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.uploads = self.downloads = 0
        self.bytes_up = self.bytes_down = 0
        self.transfer_s = 0.0


def _use_vkguard() -> str | None:
    """Put native/vkguard.c's loader shim in front of Vulkan when BUILD_SD_VKGUARD names it.

    IREE 3.13 can signal its queue's wake-up timeline semaphore out of order from two threads,
    and Mesa's emulated timelines (lavapipe) then lose the device (docs/FINDINGS.md, "lavapipe
    DEVICE_LOST: the root cause"); the shim drops such signals. It has to be set before IREE
    creates its Vulkan driver, hence at import. `make` builds it into the checkout's build/vkguard/,
    which is used when the variable is unset; BUILD_SD_VKGUARD=off turns it off."""
    path = os.environ.get("BUILD_SD_VKGUARD")
    if path is None:
        built = Path(__file__).resolve().parents[2] / "build" / "vkguard" / "libbuild_sd_vkguard.so"
        path = str(built) if built.is_file() else None
    if not path or path == "off":
        return None
    if not os.path.isfile(path):
        print(f"build-sd: BUILD_SD_VKGUARD={path}: no such file; Vulkan runs without the guard",
              file=sys.stderr)
        return None
    rt.flags.parse_flags(f"--vulkan_libvulkan_search_path={path}")
    return path


VKGUARD = _use_vkguard()

# One HAL device per driver for the whole process, as rt.Config(driver) keeps, but held here so
# that a lost Vulkan device can be replaced (renew_hal_device).
_HAL_DEVICES: dict[str, object] = {}


def _hal_device(driver: str):
    if driver not in _HAL_DEVICES:
        _HAL_DEVICES[driver] = rt.get_device(driver, cache=False)
    return _HAL_DEVICES[driver]


def renew_hal_device(driver: str) -> None:
    """Forget the process's device for `driver`: the next Device made for it gets a new one."""
    _HAL_DEVICES.pop(driver, None)


def release_vulkan() -> None:
    """Let the process's Vulkan device go once nothing uses it any more: on lavapipe an idle
    device keeps two threads spinning (two cores on a 2-core machine) until it is destroyed
    (docs/FINDINGS.md). Chains still holding it keep working; the next one gets a new device."""
    import gc
    renew_hal_device("vulkan")
    gc.collect()


def device_lost(driver: str, err: Exception) -> bool:
    """A load failed because lavapipe lost its VkDevice (VK_ERROR_DEVICE_LOST, which IREE reports
    as DATA_LOSS, also through a failed fence). Mesa keeps such a device lost for good: every
    later call on it fails (docs/FINDINGS.md, "lavapipe DEVICE_LOST: the root cause")."""
    msg = str(err)
    return driver == "vulkan" and ("VK_ERROR_DEVICE_LOST" in msg or "DATA_LOSS" in msg)


class DeviceLost(UserError):
    """A model could not load, or a call could not finish, because its Vulkan device was lost
    (see device_lost)."""

    def __init__(self, driver: str, what: str, detail: str, doing: str = "loading"):
        hint = "" if VKGUARD else ("; on lavapipe (Mesa's emulated timelines) run with BUILD_SD_VKGUARD="
                                   "<path of libbuild_sd_vkguard.so, built by `make`>: docs/FINDINGS.md")
        super().__init__(f"the {driver} device was lost {doing} {what} ({detail}){hint}")
        self.driver = driver


def retry_if_lost(load, what: str):
    """load(), and once more on a new device if it lost its Vulkan device.

    Without native/vkguard.c's shim, lavapipe loses its VkDevice now and then, at a load or a call,
    when IREE signals a timeline semaphore out of order; a lost device stays lost but a new one
    works (docs/FINDINGS.md). With the shim no loss is known; this stays for other drivers.
    Every chain on the lost device is broken, so `load` must rebuild all of them: a new
    DevicePool, whose get() then makes a new device. A second loss is the user's error."""
    try:
        return load()
    except DeviceLost as e:
        print(f"build-sd: {e}; loading {what} again on a new device", file=sys.stderr)
        release_vulkan()
        return load()


class Device:
    def __init__(self, driver: str, counters: Counters | None = None):
        self.driver = driver
        self.hal = _hal_device(driver)   # the process's device when this one was made
        self.config = rt.Config(device=self.hal)
        self.allocator = self.hal.allocator
        self.instance = self.config.vm_instance
        self.mappable = driver.startswith("local")
        self.counters = counters or Counters()
        self._staging: dict[int, object] = {}
        self._sem = None
        self._sem_value = 0
        # the overlapped loop calls two models from two threads: the staging buffers, the read
        # semaphore's timeline and the counters are shared by every model on this device
        self._lock = threading.Lock()
        self.name = driver
        if driver == "vulkan":
            try:
                devs = rt.get_driver("vulkan").query_available_devices()
                self.name = devs[0]["name"] if devs else "vulkan"
            except Exception:  # noqa: BLE001 - the name is informative only
                pass

    # ---- host -> device -----------------------------------------------------------------
    def upload(self, a: np.ndarray):
        """A device buffer view holding a copy of `a` (i32/f32/f16)."""
        t = time.perf_counter()
        shape = list(np.shape(a))            # before ascontiguousarray, which makes 0-d 1-d
        a = np.ascontiguousarray(a)
        buf = self.allocator.allocate_buffer_copy(
            memory_type=int(MemoryType.DEVICE_LOCAL), allowed_usage=int(BufferUsage.DEFAULT),
            device=self.hal, buffer=a.reshape(-1))
        # an explicit view: a 0-d numpy array would otherwise arrive with shape (1,)
        bv = rt.HalBufferView(buf, shape, _ELT[a.dtype])
        with self._lock:
            c = self.counters
            c.uploads += 1
            c.bytes_up += a.nbytes
            c.transfer_s += time.perf_counter() - t
        return bv

    # ---- device -> host -----------------------------------------------------------------
    def download(self, bv, dtype: np.dtype) -> np.ndarray:
        """A numpy copy of a result buffer view."""
        t = time.perf_counter()
        shape = tuple(bv.shape)
        if self.mappable:
            out = np.array(bv.map().asarray(shape, dtype))
        else:
            with self._lock:
                out = self._staged(bv, shape, dtype)
        with self._lock:
            c = self.counters
            c.downloads += 1
            c.bytes_down += out.nbytes
            c.transfer_s += time.perf_counter() - t
        return out

    def _staged(self, bv, shape, dtype) -> np.ndarray:
        src = bv.get_buffer()
        n = src.byte_length()
        hb = self._staging.get(n)
        if hb is None:
            hb = self.allocator.allocate_buffer(
                memory_type=int(MemoryType.HOST_LOCAL | MemoryType.DEVICE_VISIBLE),
                allowed_usage=int(BufferUsage.TRANSFER_TARGET | BufferUsage.MAPPING_SCOPED),
                allocation_size=n)
            self._staging[n] = hb
        if self._sem is None:
            self._sem = self.hal.create_semaphore(0)
        v = self._sem_value
        self.hal.queue_copy(src, hb, wait_semaphores=HalFence.create_at(self._sem, v),
                            signal_semaphores=HalFence.create_at(self._sem, v + 1))
        HalFence.create_at(self._sem, v + 1).wait()
        self._sem_value = v + 1
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return np.array(hb.map().asarray((nbytes,), np.dtype(np.uint8))).view(dtype).reshape(shape)

    def transfer_from(self, other: "Device", bv, dtype: np.dtype):
        """Move a result of `other` onto this device (the only way hidden states cross)."""
        if other is self:
            return bv
        return self.upload(other.download(bv, dtype))


class DevicePool:
    """One Device per driver, created on first use and shared by draft and target.

    threads: worker threads of the CPU (local-task) device; None = IREE's default (one per
    core). A process-wide runtime flag, so it must be set before the first CPU device exists.
    """

    def __init__(self, threads: int | None = None):
        self.counters = Counters()
        self._devices: dict[str, Device] = {}
        self.threads = threads

    def get(self, driver: str) -> Device:
        d = self._devices.get(driver)
        # after release_vulkan() the process's device is a new one: so is the pool's
        if d is None or d.hal is not _HAL_DEVICES.get(driver):
            if driver.startswith("local") and self.threads:
                rt.flags.parse_flags(f"--task_topology_group_count={int(self.threads)}")
            self._devices[driver] = d = Device(driver, self.counters)
        return d

    @property
    def devices(self) -> dict[str, Device]:
        return dict(self._devices)


# Vulkan device name -> the largest single buffer it allocated in a probe (None: no limit
# below 1 TiB). The limit belongs to the physical device, so it outlives renewed HAL devices.
_MAX_ALLOCATION: dict[str, int | None] = {}


def max_allocation_bytes(driver: str) -> int | None:
    """The largest single buffer this process's `driver` device allocates (Vulkan's
    maxMemoryAllocationSize, which IREE does not expose), found by allocations that back off:
    a few ms, nothing kept. None for the CPU drivers, whose limit is memory itself."""
    if driver != "vulkan":
        return None
    names = vulkan_device_names()
    key = names[0] if names else driver
    if key not in _MAX_ALLOCATION:
        _MAX_ALLOCATION[key] = _probe_allocation(_hal_device(driver))
    return _MAX_ALLOCATION[key]


def _probe_allocation(hal, step: int = 1 << 20, ceiling: int = 1 << 40) -> int | None:
    def fits(n: int) -> bool:
        try:
            hal.allocator.allocate_buffer(memory_type=int(MemoryType.DEVICE_LOCAL),
                                          allowed_usage=int(BufferUsage.DEFAULT), allocation_size=n)
            return True          # the buffer is released at once: nothing stays allocated
        except Exception:  # noqa: BLE001 - RESOURCE_EXHAUSTED and kin: it does not fit
            return False
    lo, hi = 0, step
    while fits(hi):              # double until one fails...
        lo, hi = hi, hi * 2
        if hi > ceiling:
            return None
    while hi - lo > step:        # ...then bisect to `step`
        mid = (lo + hi) // 2 // step * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def available_drivers() -> list[str]:
    return list(rt.query_available_drivers())


def vulkan_device_names() -> list[str]:
    """Names of the Vulkan devices present (empty when there is no loader or ICD)."""
    try:
        return [d["name"] for d in rt.get_driver("vulkan").query_available_devices()]
    except Exception:  # noqa: BLE001 - no loader/ICD: simply no device
        return []
