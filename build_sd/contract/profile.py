"""profile.json (written by `build-sd profile` on the machine that will run): the latency of
every subgraph function on every device, transfers between devices, the runner's host work."""
from __future__ import annotations

from msgspec import Struct

from .base import Record, schema_of
from .config import ModelConfig
from .export import Source


class FnStats(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One function's time in ms. mean_ms is what the planner reads: the in-situ mean (timed
    inside speculative loops) where measured, else the isolated mean."""
    mean_ms: float
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    n: int | None = None
    isolated_mean_ms: float | None = None    # the isolated mean an in-situ figure replaced
    in_situ_n: int | None = None             # calls timed in situ (None: isolated only)

    @property
    def in_situ(self) -> bool:
        return self.in_situ_n is not None


# preset key (PRESET, or PRESET@local-sync) -> subgraph name -> function name -> stats
LatencyTable = dict[str, dict[str, dict[str, FnStats]]]


class ProfiledSubgraph(Struct, frozen=True, kw_only=True):
    name: str
    label: str
    kind: str
    start: int = 0
    end: int = 0


class ProfiledModel(Struct, frozen=True, kw_only=True):
    name: str
    source: Source
    fingerprint: str | None = None
    dtype: str
    quant: str = "none"                     # w8a8 | w4a8: another precision of the same model
    max_context: int
    config: ModelConfig
    subgraphs: list[ProfiledSubgraph] = []
    modules: dict[str, str] = {}            # module file -> sha256 (to refuse a rebuilt module)
    latency: LatencyTable = {}
    step: dict[str, dict[str, FnStats]] = {}   # whole-model step per preset key and function
    skipped: dict[str, str] = {}            # preset -> why it could not run here


class TransferFit(Struct, frozen=True, kw_only=True):
    """download(A) + upload(B) of a hidden state, fitted as fixed + per MB."""
    fixed_ms: float
    ms_per_mb: float
    points: list[list[float]] = []


class HostCost(Struct, frozen=True, kw_only=True):
    ms_per_iteration: float
    by_gamma: dict[str, float] = {}

    def ms(self, gamma: int) -> float:
        """The runner's own work per iteration at this gamma (the overall median elsewhere)."""
        return self.by_gamma.get(str(gamma), self.ms_per_iteration)


class ContentionFit(Struct, frozen=True, kw_only=True):
    """One pair of devices, the draft on one and the target on the other (runtime/profiler.py:
    _measure_contention, from the overlapped and the sequential loop timed side by side).
    target/draft: the rate at which each model computes while the other runs, relative to the
    pair's sequential loop (> 1: slower); sync_ms: a block handed to the draft's thread and back.
    sequential: [target, draft], what each model's calls cost in this pair's sequential loop over
    the same calls in the sequential loop of its own device (both models there), the loops timed in
    turn in the same rounds (older profiles: over the in-situ phase's figures): the other model's
    driver between calls changes it (a local-task pool's workers asleep after a local-sync draft's
    calls, or spinning beside a local-sync target after a local-task draft's); empty: 1, 1 (one key).
    Keyed DRAFT_KEY|TARGET_KEY (profile keys: PRESET or PRESET@local-sync)."""
    target: float
    draft: float
    sync_ms: float = 0.0
    verify_T: int = 1                 # the target function timed (the draft times its decode)
    alone_ms: list[float] = []        # [target's verify, draft's step] per call, the sequential loop
    together_ms: list[float] = []     # the same in the overlapped loop
    sequential: list[float] = []
    rounds: int = 0                   # A B (C D) rounds timed (0: not recorded)


class Machine(Struct, frozen=True, kw_only=True):
    cpu: str = ""
    arch: str = ""
    node: str = ""
    devices: dict[str, str] = {}
    # driver -> the largest single buffer the device allocated in a probe (GPU drivers only)
    max_allocation_bytes: dict[str, int] = {}
    ram_bytes: int = 0              # MemTotal of the board; 0: unknown (older profiles)


class Profile(Record, frozen=True, kw_only=True):
    KIND = "build_sd.profile"
    WHAT = "profile"

    schema: int = schema_of("build_sd.profile")
    kind: str = "build_sd.profile"
    date: str = ""
    machine: Machine = Machine()
    iree_runtime: str = ""
    models: list[ProfiledModel]
    transfer: dict[str, TransferFit] = {}
    host: HostCost | None = None
    contention: dict[str, ContentionFit] = {}

    def models_of(self, config_sha256: str | None) -> list[ProfiledModel]:
        return [m for m in self.models if m.source.config_sha256 == config_sha256]
