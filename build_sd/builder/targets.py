"""Compile presets: the iree-compile flags of each target, and which machines can run them.

A preset is a compile target (llvm-cpu for one CPU, or vulkan-spirv for one GPU family); the
HAL driver follows from it (llvm-cpu -> local-task, vulkan-spirv -> vulkan). Platform
descriptions for the cost model (bandwidths, FLOP/s) live elsewhere; these are only flags.

Why the flags:
- data tiling on CPU presets: off by default in IREE 3.13; measured here it made a
  Llama-3.2-1B-shaped f32 decode 4x faster (3.0 -> 12.6 tok/s, docs/FINDINGS.md). We use the
  global-optimization path, `--iree-global-opt-data-tiling`, NOT `--iree-opt-data-tiling`:
  the latter selects the dispatch-creation path, which in 3.13 breaks modules whose matmuls read
  a mutable global (our KV cache): decode after the first position returned logits off by
  ~1e-2 (wrong attention), while prefill looked exact. Found by `build-sd validate`; see
  docs/FINDINGS.md. The global-opt path validates to ~1e-7 and keeps most of the speed-up.
- `--iree-input-demote-i64-to-i32` on Vulkan presets: Mali (Valhall) has no int64. Our ABI
  integers are int32 already (the flag reinterprets int64 buffers, see FINDINGS C).
- `--iree-vulkan-target` must match the GPU that runs the module: a valhall3 (subgroup 16)
  module loads on lavapipe (subgroup 8) and silently returns wrong numbers.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

from ..contract import PresetRecord
from ..errors import UserError

_CPU = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
        "--iree-global-opt-data-tiling"]
_VK = ["--iree-hal-target-device=vulkan", "--iree-input-demote-i64-to-i32"]


@dataclass(frozen=True)
class Preset:
    name: str
    backend: str                  # llvm-cpu | vulkan-spirv
    arch: str                     # x86_64 | aarch64 | the GPU family
    flags: tuple[str, ...]
    description: str
    # CPU features a machine must have to run llvm-cpu code for this preset (from /proc/cpuinfo)
    needs_cpu_flags: tuple[str, ...] = field(default=())
    # substring of the Vulkan device name this module is built for (None: any Vulkan device)
    vulkan_device: str | None = None
    host_specific: bool = False   # built for this very CPU (-mcpu=host)

    @property
    def driver(self) -> str:
        return "local-task" if self.backend == "llvm-cpu" else "vulkan"

    def record(self) -> PresetRecord:
        """The manifest's record of this preset: what `runtime.compat.can_run` reads back."""
        from ..runtime.hostinfo import cpu_model_name
        return PresetRecord(backend=self.backend, arch=self.arch, driver=self.driver, flags=list(self.flags),
                            description=self.description, needs_cpu_flags=list(self.needs_cpu_flags),
                            vulkan_device=self.vulkan_device, host_specific=self.host_specific,
                            # -mcpu=host code runs only on the CPU it was built on
                            built_on_cpu=cpu_model_name() if self.host_specific else None)


def _cpu(name, triple, cpu, features=None, desc="", needs=(), host=False):
    flags = _CPU + [f"--iree-llvmcpu-target-cpu={cpu}"]
    if triple:
        flags.append(f"--iree-llvmcpu-target-triple={triple}")
    if features:
        flags.append(f"--iree-llvmcpu-target-cpu-features={features}")
    arch = triple.split("-")[0] if triple else platform.machine()
    return Preset(name, "llvm-cpu", arch, tuple(flags), desc, tuple(needs), host_specific=host)


def _vk(name, target, desc, device=None):
    flags = _VK + ([f"--iree-vulkan-target={target}"] if target else [])
    return Preset(name, "vulkan-spirv", target or "vulkan-generic", tuple(flags), desc,
                  vulkan_device=device)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _cpu("host", None, "host", desc="this machine's CPU (-mcpu=host)", host=True),
    _cpu("x86-64-v3", "x86_64-linux-gnu", "x86-64-v3", desc="portable x86-64 with AVX2/FMA",
         needs=("avx2", "fma", "bmi2")),
    _cpu("a55", "aarch64-linux-gnu", "cortex-a55", "+neon,+dotprod,+fullfp16",
         desc="Arm Cortex-A55 (i.MX 95, RK3588 little cores)", needs=("asimd",)),
    _cpu("a76", "aarch64-linux-gnu", "cortex-a76", "+neon,+dotprod,+fullfp16",
         desc="Arm Cortex-A76 (RK3588 big cores)", needs=("asimd",)),
    _vk("vulkan-llvmpipe", "llvmpipe", "Mesa lavapipe (software Vulkan, subgroup 8)", "llvmpipe"),
    _vk("vulkan-generic", None, "IREE's portable Vulkan default (any device)"),
    _vk("vulkan-ampere", "ampere", "NVIDIA Ampere/Hopper through Vulkan (the GPU box)", "NVIDIA"),
    _vk("valhall3", "valhall3", "Mali-G310/G510/G610/G710 (compile-checked here)", "Mali"),
    _vk("valhall", "valhall", "Mali-G57/G77 (compile-checked here)", "Mali"),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
