"""manifest.json of an artifacts folder (written by `build-sd compile`), and the preset record
that both the artifacts and the bundle manifests carry for every compile target."""
from __future__ import annotations

from typing import Literal

from msgspec import Struct

from .base import Record, schema_of

Backend = Literal["llvm-cpu", "vulkan-spirv"]


class PresetRecord(Struct, frozen=True, kw_only=True):
    """A compile preset as the files record it; what `runtime.compat.can_run` reads back."""
    backend: Backend
    arch: str
    driver: Literal["local-task", "vulkan"]
    flags: list[str] = []
    description: str = ""
    # CPU features a machine must have to run llvm-cpu code of this preset (/proc/cpuinfo)
    needs_cpu_flags: list[str] = []
    # substring of the Vulkan device name this module is built for (None: any Vulkan device)
    vulkan_device: str | None = None
    host_specific: bool = False             # built for this very CPU (-mcpu=host)
    built_on_cpu: str | None = None         # the CPU a host-specific module was built on

    @property
    def device_class(self) -> str:
        return "cpu" if self.backend == "llvm-cpu" else "vulkan"


class Compiler(Struct, frozen=True, kw_only=True):
    version: str = ""
    iree_compile: str = ""


class ModuleFile(Struct, frozen=True, kw_only=True):
    subgraph: str
    preset: str
    file: str
    sha256: str
    bytes: int
    mtime_ns: int | None = None
    compile_s: float | None = None


class FileInfo(Struct, frozen=True, kw_only=True):
    sha256: str
    bytes: int
    mtime_ns: int | None = None


class ArtifactsManifest(Record, frozen=True, kw_only=True):
    KIND = "build_sd.artifacts"
    WHAT = "artifacts manifest"

    schema: int = schema_of("build_sd.artifacts")
    kind: str = "build_sd.artifacts"
    name: str
    compiler: Compiler
    presets: dict[str, PresetRecord]
    inputs: dict[str, str] = {}
    modules: list[ModuleFile] = []
    files: dict[str, FileInfo] = {}
    export: str = "export.json"

    def check(self) -> str | None:
        for m in self.modules:
            if m.preset not in self.presets:
                return f"module {m.file!r} names an unknown preset {m.preset!r}"
        return None

    def presets_of(self, backend: str) -> list[str]:
        return [p for p, info in self.presets.items() if info.backend == backend]
