"""plan.json (written by `build-sd plan` and `build-sd build`): every configuration the cost
model ranked, best first, with what it predicts and from which latencies."""
from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from .base import Record, schema_of
from .names import SubgraphSpec, subgraph_specs


class Placement(Struct, frozen=True, kw_only=True):
    """Where one model runs: export --split points (None: one whole module) and the platform
    device of each subgraph (subgraph name -> device name)."""
    split: list[int] | None
    devices: dict[str, str]
    label: str

    def specs(self, num_layers: int) -> list[SubgraphSpec]:
        return subgraph_specs(num_layers, self.split)

    @property
    def device_set(self) -> set[str]:
        return set(self.devices.values())


class PlanConfig(Struct, frozen=True, kw_only=True):
    draft: Placement | None            # None: target only (gamma 0)
    target: Placement
    gamma: Annotated[int, Meta(ge=0)]
    pred_ms_per_token: float
    pred_tokens_per_s: float
    expected_tokens: float
    speedup: float = 1.0
    parts_ms: dict[str, float] = {}
    # host RAM the pair holds once loaded (plan/planner.py: resident_bytes); 0: older plans
    resident_bytes: int = 0
    # the overlapped loop: the draft drafts the next block while the target verifies
    overlap: bool = False
    # each model's precision (f32, f16, w8a8, w4a8) in a plan made with --precisions; "": the plan's dtype
    draft_precision: str = ""
    target_precision: str = ""
    alpha_source: str = ""             # calibrated | given | estimated from D/T (plan/precision.py)

    @property
    def key(self) -> tuple:
        """What identifies a configuration across plans: (draft label, target label, gamma[,
        "overlap"][, "draft/target precisions"])."""
        k = (self.draft.label if self.draft else None, self.target.label, self.gamma)
        k = k + ("overlap",) if self.overlap else k
        return k + (f"{self.draft_precision}/{self.target_precision}",) if self.target_precision else k

    def precision(self, role: str, dtype: str) -> str:
        """The model's precision in this configuration (the plan's dtype unless --precisions)."""
        return (self.draft_precision if role == "draft" else self.target_precision) or dtype

    @property
    def draft_label(self) -> str:
        return self.draft.label if self.draft else "-"


class PlanDevice(Struct, frozen=True):
    preset: str
    driver: str


class PlanModel(Struct, frozen=True, kw_only=True):
    checkpoint: str
    config_sha256: str
    num_layers: int
    parameters: int


class Plan(Record, frozen=True, kw_only=True):
    KIND = "build_sd.plan"
    WHAT = "plan"

    schema: int = schema_of("build_sd.plan")
    kind: str = "build_sd.plan"
    platform: str
    platform_notes: str = ""
    devices: dict[str, PlanDevice]
    draft: PlanModel
    target: PlanModel
    alpha: float | list[float]
    dtype: str
    max_context: int
    split: bool = True
    precisions: list[str] = []          # plan --precisions ([]: the dtype alone)
    min_agreement: float | None = None
    excluded: dict[str, str] = {}       # target precision -> why --min-agreement left it out
    latency_sources: dict[str, dict[str, int]] = {}
    profile: bool = False
    target_only_best_ms_per_token: float
    # how many configurations were ranked; `configs` keeps the best ones (plan.planner.keep_ranked)
    configs_ranked: int = 0
    configs: list[PlanConfig]

    def check(self) -> str | None:
        if not self.configs:
            return "field configs: no configuration"
        for i, c in enumerate(self.configs):
            for p in (c.draft, c.target):
                for d in (p.devices.values() if p else ()):
                    if d not in self.devices:
                        return f"configs[{i}] places a subgraph on an unknown device {d!r}"
        return None

    def model(self, role: str) -> PlanModel:
        return self.draft if role == "draft" else self.target

    def best_target_only(self) -> PlanConfig:
        return next(c for c in self.configs if c.gamma == 0)
