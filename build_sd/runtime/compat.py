"""Can this machine run a module built for a preset? (read from a manifest, no torch)."""
from __future__ import annotations

import platform

from ..contract import PresetRecord
from .devices import available_drivers, vulkan_device_names
from .hostinfo import cpu_model_name, host_cpu_flags


def can_run(preset: PresetRecord) -> tuple[bool, str]:
    """(runnable, reason) for a manifest's preset record (backend, arch, needs, device)."""
    if preset.backend == "llvm-cpu":
        here = platform.machine()
        if preset.arch != here:
            return False, f"built for {preset.arch}, this machine is {here}"
        missing = [f for f in preset.needs_cpu_flags if f not in host_cpu_flags()]
        if missing:
            return False, f"this CPU lacks {', '.join(missing)}"
        built_on = preset.built_on_cpu
        if preset.host_specific and built_on and built_on != cpu_model_name():
            return False, f"built with -mcpu=host on '{built_on}', this CPU is '{cpu_model_name()}'"
        return True, ""
    if "vulkan" not in available_drivers():
        return False, "this IREE runtime has no vulkan driver"
    names = vulkan_device_names()
    if not names:
        return False, "no Vulkan device (install a driver, e.g. mesa-vulkan-drivers for lavapipe)"
    want = preset.vulkan_device
    if want and not any(want.lower() in n.lower() for n in names):
        return False, f"built for a {want} GPU; Vulkan devices here: {', '.join(names)}"
    return True, ""
