"""Load a bundle on the board: check it, then build the draft and target chains (no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract import CPU_DRIVERS, ROLES, BundleManifest, ExportRecord
from ..errors import UserError
from .chain import ModelChain, PlacedSubgraph
from .checks import problems, read_bundle_manifest, recover_interrupted_swap
from .compat import can_run
from .devices import DevicePool, retry_if_lost
from .memory import release_file_pages
from .tokenizer import load_tokenizer


@dataclass
class Session:
    path: Path
    manifest: BundleManifest
    target: ModelChain
    draft: ModelChain | None
    tokenizer: object
    pool: DevicePool

    @property
    def gamma(self) -> int:
        return self.manifest.gamma

    @property
    def eos_ids(self) -> list[int]:
        return list(self.manifest.eos_token_ids)

    def warmup(self) -> float:
        return sum(c.warmup() for c in (self.target, self.draft) if c is not None)

    def schedule(self, overlap: bool | None = None, pin: dict[str, set[int]] | None = None):
        """(overlap on?, {role: cores}): the bundle's `overlap` unless `overlap` overrides it;
        `pin` replaces the bundle's cores."""
        sched = self.manifest.overlap_or_none
        on = sched is not None if overlap is None else overlap
        cpus = pin if pin else (sched.cpus() if sched is not None else {})
        if pin and not on:
            raise UserError("--pin goes with an overlapped run (--overlap, or a bundle made with it)")
        return on, cpus

    def max_gamma(self) -> int:
        return max([T - 1 for T in self.target.verify_T] + [0])

    def chat_template(self):
        """The bundle's chat template (read once); UserError when the bundle has none."""
        if getattr(self, "_chat", None) is None:
            from .chat import load_chat_template
            self._chat = load_chat_template(self.path, self.manifest)
        return self._chat


def check_cpu_driver(cpu_driver: dict[str, str]) -> dict[str, str]:
    """{role: local-task|local-sync}, or a UserError naming what is wrong."""
    for role, drv in cpu_driver.items():
        if role not in ROLES or drv not in CPU_DRIVERS:
            raise UserError(f"--cpu-driver {role}={drv}: expected [draft=|target=]{'|'.join(CPU_DRIVERS)}")
    return dict(cpu_driver)


def open_bundle(path: str | Path, load_draft: bool = True, check_hashes: bool = True,
                fallback: str | None = None, threads: int | None = None,
                cpu_driver: dict[str, str] | None = None, random_weights: int | None = None,
                release_weights_file: bool = True) -> Session:
    """Check the bundle (files, schema, this machine: `build-sd verify`), then load it.

    fallback="cpu": subgraphs placed on a device this machine lacks run on the CPU modules the
    bundle carries for them (bundles made with `bundle --fallback cpu`).
    cpu_driver: {role: driver}: run a model's llvm-cpu modules under local-sync (every dispatch
    on the calling thread) instead of local-task (a worker pool): for a small model, such as
    most drafts, the pool's wake-ups cost more than the second core gives (benchmarks/FINDINGS.md,
    section 1). Same executables, either driver; default: the bundle's `cpu_driver`, else
    local-task.
    random_weights: draw the weights (seeded) instead of reading the .irpa files, which may then
    be absent (runtime/weights.py).
    release_weights_file: once loaded, drop the .irpa pages the initializers read (the modules
    hold their own copies; runtime/memory.py): a 1B f32 target on the CPU 9.5 -> 4.8 GB resident."""
    bundle = Path(path)
    recover_interrupted_swap(bundle)
    man = read_bundle_manifest(bundle)
    found = problems(bundle, man, check_hashes=check_hashes, fallback=fallback, random_weights=random_weights)
    if found:
        raise UserError(f"{bundle}: {found[0]}" + (f" (+{len(found) - 1} more: build-sd verify)" if len(found) > 1 else ""))
    drivers = {**man.cpu_drivers, **check_cpu_driver(cpu_driver or {})}
    placement = {role: _placement(bundle, man, role, fallback, drivers)
                 for role in ("target", "draft") if role == "target" or load_draft}

    def load():
        pool = DevicePool(threads if threads is not None else man.threads_or_none)
        chains = {role: ModelChain(pool, export, bundle / man.models[role].files.irpa, placed, random_weights)
                  for role, (export, placed) in placement.items()}
        return pool, chains
    pool, chains = retry_if_lost(load, bundle.name)
    if release_weights_file and random_weights is None:
        for irpa in {bundle / man.models[role].files.irpa for role in placement}:
            release_file_pages(irpa)
    tok = load_tokenizer(bundle / man.tokenizer)
    return Session(bundle, man, chains["target"], chains.get("draft"), tok, pool)


def _placement(bundle: Path, man: BundleManifest, role: str, fallback: str | None,
               drivers: dict[str, str]) -> tuple[ExportRecord, list[PlacedSubgraph]]:
    """A model's export.json and where each of its subgraphs runs (module file, driver)."""
    m = man.models[role]
    export = ExportRecord.read(bundle / m.files.export)
    placed = []
    for sg in export.subgraphs:
        mod = m.modules.get(sg.name)
        if mod is None:
            raise UserError(f"{bundle}: the {role}'s export.json has a subgraph {sg.name!r} that the "
                            "manifest places nowhere")
        if fallback == "cpu" and not can_run(man.presets[mod.preset])[0]:
            mod = m.fallback.get(sg.name)
            if mod is None:
                raise UserError(f"{bundle}: no CPU fallback module for the {role}'s {sg.label}")
        driver = man.presets[mod.preset].driver
        if driver in CPU_DRIVERS and role in drivers:
            driver = drivers[role]
        placed.append(PlacedSubgraph(sg, bundle / mod.file, driver, mod.preset))
    return export, placed
