"""manifest.json of a bundle (written by `build-sd bundle`, read on the board before anything
loads): placement, gamma, context, presets, and the sha256 and size of every file."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from .artifacts import Compiler, PresetRecord
from .base import Record, schema_of
from .export import Source

CpuDriver = Literal["local-task", "local-sync"]
CPU_DRIVERS: tuple[str, ...] = ("local-task", "local-sync")
Role = Literal["draft", "target"]


class BundleFile(Struct, frozen=True):
    sha256: str
    bytes: Annotated[int, Meta(ge=0)]


class ModuleRef(Struct, frozen=True):
    preset: str
    file: str


class ModelFiles(Struct, frozen=True, kw_only=True):
    irpa: str
    export: str
    # validate's numbers check (contract/golden.py), for models whose artifacts were validated
    golden: str | msgspec.UnsetType = msgspec.UNSET


class BundleModel(Struct, frozen=True, kw_only=True):
    """One model of the pair: where it came from, its weights, contract and modules."""
    source: str = ""                   # the artifacts folder it was bundled from
    files: ModelFiles
    modules: dict[str, ModuleRef]      # subgraph name -> its module
    fallback: dict[str, ModuleRef] = {}   # CPU modules for GPU-placed subgraphs (--fallback cpu)
    compiler: Compiler = Compiler()
    model_source: Source | None = None
    dtype: str = "f32"
    max_context: int = 0


class BundleModels(Struct, frozen=True):
    draft: BundleModel
    target: BundleModel

    def items(self):
        return (("draft", self.draft), ("target", self.target))

    def __getitem__(self, role: str) -> BundleModel:
        if role not in ("draft", "target"):
            raise KeyError(role)
        return getattr(self, role)


class Overlap(Struct, frozen=True, kw_only=True):
    """The overlapped loop (runtime/overlap.py): the draft drafts the next block during a verify.
    *_cpus: the cores each model's calling thread is pinned to (empty: the OS decides); under
    local-sync a model's dispatches run on that thread, so disjoint sets put the models on
    disjoint cores."""
    schedule: Literal["post-verify"] = "post-verify"
    draft_cpus: list[Annotated[int, Meta(ge=0)]] = []
    target_cpus: list[Annotated[int, Meta(ge=0)]] = []

    def cpus(self) -> dict[str, set[int]]:
        return {r: set(c) for r, c in (("draft", self.draft_cpus), ("target", self.target_cpus)) if c}


class IreeVersions(Struct, frozen=True, kw_only=True):
    compiler: str = ""
    runtime_at_build: str = ""


class BundleManifest(Record, frozen=True, kw_only=True):
    KIND = "build_sd.bundle"
    WHAT = "bundle manifest"
    NEWER = "update build_sd on the board"

    schema: int = schema_of("build_sd.bundle")
    kind: str = "build_sd.bundle"
    gamma: Annotated[int, Meta(ge=0)]
    max_context: Annotated[int, Meta(ge=2)]
    eos_token_ids: list[int] = []
    prompt_template: str = "{prompt}"
    iree: IreeVersions = IreeVersions()
    placement: dict[str, dict[str, str]] = {}
    cpu_driver: dict[Role, CpuDriver] | msgspec.UnsetType = msgspec.UNSET
    # CPU worker threads of the bundle's local-task device (None: one per core)
    threads: Annotated[int, Meta(ge=1)] | None | msgspec.UnsetType = msgspec.UNSET
    # set: the runner overlaps drafting with verification (`bundle --overlap`; `run --no-overlap`)
    overlap: Overlap | msgspec.UnsetType = msgspec.UNSET
    presets: dict[str, PresetRecord]
    models: BundleModels
    tokenizer: str
    # tokenizer_config.json of the target (its chat template, for `run --chat` and `chat`)
    tokenizer_config: str | msgspec.UnsetType = msgspec.UNSET
    files: dict[str, BundleFile]

    def check(self) -> str | None:
        """References between fields: every file named is listed, every preset known, no path
        leaves the bundle."""
        if not self.presets:
            return "field presets: no preset"
        for rel in self.files:
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or not rel:
                return f"file {rel!r} points outside the bundle"
        for role, m in self.models.items():
            for key in ("irpa", "export", "golden"):
                name = getattr(m.files, key)
                if name is not msgspec.UNSET and name not in self.files:
                    return f"models.{role}.files.{key} is not a listed file"
            for group, refs in (("modules", m.modules), ("fallback", m.fallback)):
                for sub, ref in refs.items():
                    if ref.preset not in self.presets or ref.file not in self.files:
                        return f"models.{role}.{group}[{sub!r}] names an unknown preset or file"
        if self.tokenizer not in self.files:
            return "the tokenizer is not a listed file"
        if self.tokenizer_config is not msgspec.UNSET and self.tokenizer_config not in self.files:
            return "the tokenizer_config is not a listed file"
        return None

    # ---- derived --------------------------------------------------------------------------
    @property
    def cpu_drivers(self) -> dict[str, str]:
        return {} if self.cpu_driver is msgspec.UNSET else dict(self.cpu_driver)

    @property
    def overlap_or_none(self) -> Overlap | None:
        return None if self.overlap is msgspec.UNSET else self.overlap

    @property
    def threads_or_none(self) -> int | None:
        return None if self.threads is msgspec.UNSET else self.threads

    def irpa_files(self) -> set[str]:
        return {m.files.irpa for _, m in self.models.items()}
