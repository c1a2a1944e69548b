"""What a machine says about itself (runtime/hostinfo.py measures it on the board; the planner's
`host` platform is built from it): the one record the board side hands to the planning side."""
from __future__ import annotations

from msgspec import Struct


class HostProbe(Struct, frozen=True, kw_only=True):
    """IREE's own times on this machine (builder/hostfit.py), what the planner fits the host's
    CPU devices to when nothing was profiled: a chain of `pairs` projections k -> n -> k called on
    T rows, and a chain of tiny projections (their dispatch cost)."""
    compiler: str                                   # iree-compile --version
    pairs: int
    k: int
    n: int
    chain_ms: dict[str, dict[str, dict[int, float]]]    # driver -> dtype -> rows T -> median ms
    tiny_ms: dict[str, dict[str, float]]                # driver -> dtype -> ms per tiny projection

    def weights(self) -> int:
        """Weights the chain reads per call (elements)."""
        return 2 * self.pairs * self.k * self.n


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
    probe: HostProbe | None = None  # IREE's own figures here, where the build side measured them

    @property
    def has_lavapipe(self) -> bool:
        return any("llvmpipe" in n for n in self.vulkan_devices)
