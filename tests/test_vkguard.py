"""native/vkguard.c: the hazard it removes, shown on lavapipe itself, and that it is in use.

IREE 3.13 can signal a timeline semaphore from the host below its current value (two threads
waking its queue); Mesa's emulated timelines then lose the device for good. These tests make
that signal by hand through ctypes: the real loader loses the device, the shim drops the signal.
"""
import ctypes as C
import os
import subprocess
import sys

import pytest

from conftest import needs_vulkan

VK_SUCCESS, VK_ERROR_DEVICE_LOST = 0, -4


class AppInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("pApplicationName", C.c_char_p),
                ("applicationVersion", C.c_uint32), ("pEngineName", C.c_char_p),
                ("engineVersion", C.c_uint32), ("apiVersion", C.c_uint32)]


class InstanceInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("flags", C.c_uint32),
                ("pApplicationInfo", C.POINTER(AppInfo)), ("enabledLayerCount", C.c_uint32),
                ("ppEnabledLayerNames", C.c_void_p), ("enabledExtensionCount", C.c_uint32),
                ("ppEnabledExtensionNames", C.c_void_p)]


class QueueInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("flags", C.c_uint32),
                ("queueFamilyIndex", C.c_uint32), ("queueCount", C.c_uint32),
                ("pQueuePriorities", C.POINTER(C.c_float))]


class TimelineFeatures(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("timelineSemaphore", C.c_uint32)]


class DeviceInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("flags", C.c_uint32),
                ("queueCreateInfoCount", C.c_uint32), ("pQueueCreateInfos", C.POINTER(QueueInfo)),
                ("enabledLayerCount", C.c_uint32), ("ppEnabledLayerNames", C.c_void_p),
                ("enabledExtensionCount", C.c_uint32), ("ppEnabledExtensionNames", C.c_void_p),
                ("pEnabledFeatures", C.c_void_p)]


class SemaphoreType(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("semaphoreType", C.c_int),
                ("initialValue", C.c_uint64)]


class SemaphoreInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("flags", C.c_uint32)]


class SignalInfo(C.Structure):
    _fields_ = [("sType", C.c_int), ("pNext", C.c_void_p), ("semaphore", C.c_uint64),
                ("value", C.c_uint64)]


class Vulkan:
    """The few calls the test needs, all taken through `library`'s vkGetInstanceProcAddr, as
    IREE takes them (so the shim is exercised exactly as IREE meets it)."""

    def __init__(self, library: str):
        lib = C.CDLL(library)
        self.gipa = lib.vkGetInstanceProcAddr
        self.gipa.restype, self.gipa.argtypes = C.c_void_p, [C.c_void_p, C.c_char_p]
        self.instance = C.c_void_p()
        app = AppInfo(0, None, b"vkguard-test", 1, None, 0, (1 << 22) | (2 << 12))   # Vulkan 1.2
        assert self._fn(None, "vkCreateInstance", C.c_void_p, C.c_void_p, C.c_void_p)(
            C.byref(InstanceInfo(1, None, 0, C.pointer(app), 0, None, 0, None)), None,
            C.byref(self.instance)) == VK_SUCCESS
        self.device = C.c_void_p(self._llvmpipe_device())

    def _fn(self, instance, name, *argtypes):
        ptr = self.gipa(instance, name.encode())
        assert ptr, name
        return C.CFUNCTYPE(C.c_int, *argtypes)(ptr)

    def _llvmpipe_device(self):
        enum = self._fn(self.instance, "vkEnumeratePhysicalDevices", C.c_void_p, C.c_void_p, C.c_void_p)
        n = C.c_uint32(0)
        enum(self.instance, C.byref(n), None)
        phys = (C.c_void_p * n.value)()
        enum(self.instance, C.byref(n), phys)
        props = self.gipa(self.instance, b"vkGetPhysicalDeviceProperties")
        props = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p)(props)
        for p in phys:
            buf = C.create_string_buffer(4096)
            props(p, buf)
            if b"llvmpipe" in buf.raw[20:276]:          # deviceName follows five uint32s
                break
        else:
            pytest.skip("no llvmpipe device")
        prio = C.c_float(1.0)
        q = QueueInfo(2, None, 0, 0, 1, C.pointer(prio))
        feat = TimelineFeatures(1000207000, None, 1)
        dev = C.c_void_p()
        create = self._fn(self.instance, "vkCreateDevice", C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p)
        assert create(p, C.byref(DeviceInfo(3, C.cast(C.pointer(feat), C.c_void_p), 0, 1, C.pointer(q),
                                            0, None, 0, None, None)), None, C.byref(dev)) == VK_SUCCESS
        return dev.value

    def timeline(self) -> int:
        sem = C.c_uint64()
        kind = SemaphoreType(1000207002, None, 1, 0)
        create = self._fn(self.instance, "vkCreateSemaphore", C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p)
        assert create(self.device, C.byref(SemaphoreInfo(9, C.cast(C.pointer(kind), C.c_void_p), 0)),
                      None, C.byref(sem)) == VK_SUCCESS
        return sem.value

    def signal(self, sem: int, value: int) -> int:
        # as IREE does: the device-level entry point from vkGetDeviceProcAddr
        gdpa = C.CFUNCTYPE(C.c_void_p, C.c_void_p, C.c_char_p)(self.gipa(self.instance, b"vkGetDeviceProcAddr"))
        fn = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p)(gdpa(self.device, b"vkSignalSemaphore"))
        return fn(self.device, C.byref(SignalInfo(1000207005, None, sem, value)))

    def value(self, sem: int) -> tuple[int, int]:
        v = C.c_uint64()
        fn = self._fn(self.instance, "vkGetSemaphoreCounterValue", C.c_void_p, C.c_uint64, C.c_void_p)
        return fn(self.device, C.c_uint64(sem), C.byref(v)), v.value


def _in_subprocess(library: str) -> list[int]:
    """Signal 5, then 3 (out of order), then 6 on a fresh device; the results and the value."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_vkguard as t\n"
            f"vk = t.Vulkan({library!r}); s = vk.timeline()\n"
            "r = [vk.signal(s, 5), vk.signal(s, 3), vk.signal(s, 6)]; rc, v = vk.value(s)\n"
            "print(*r, rc, v)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [int(x) for x in out.stdout.split()]


@needs_vulkan
def test_an_out_of_order_host_signal_loses_lavapipe_without_the_guard():
    # the hazard itself: Mesa's emulated timelines take a signal at or below the value as fatal
    first, out_of_order, _, query, _ = _in_subprocess("libvulkan.so.1")
    assert (first, out_of_order) == (VK_SUCCESS, VK_ERROR_DEVICE_LOST)
    assert query == VK_ERROR_DEVICE_LOST        # and it stays lost: every later wait fails


@needs_vulkan
def test_the_guard_drops_the_out_of_order_signal_and_the_device_lives():
    assert _in_subprocess(os.environ["BUILD_SD_VKGUARD"]) == [VK_SUCCESS] * 4 + [6]


@needs_vulkan
def test_the_runtime_puts_the_guard_in_front_of_iree():
    code = ("import build_sd.runtime.devices as d, iree.runtime as rt\n"
            "dev = rt.get_device('vulkan', cache=False)\n"
            "print(d.VKGUARD, any('vkguard' in l for l in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [os.environ["BUILD_SD_VKGUARD"], "True"]
