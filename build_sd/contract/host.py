"""What a machine says about itself (runtime/hostinfo.py measures it on the board; the planner's
`host` platform is built from it): the one record the board side hands to the planning side."""
from __future__ import annotations

from msgspec import Struct


class HostInfo(Struct, frozen=True, kw_only=True):
    arch: str                       # platform.machine(): x86_64, aarch64
    cpu: str                        # the CPU's model name
    cores: int
    mem_bw_gbs: float               # a numpy read of 64 MB: an upper bound on what IREE reaches
    gflops_f32: float               # numpy 512x512 f32 matmul
    vulkan_devices: list[str] = []  # names of the Vulkan devices present
    # driver -> the largest single buffer its device allocates, where probed (runtime/devices.py)
    max_allocation_bytes: dict[str, int] = {}
    ram_bytes: int = 0              # MemTotal; 0: unknown

    @property
    def has_lavapipe(self) -> bool:
        return any("llvmpipe" in n for n in self.vulkan_devices)
