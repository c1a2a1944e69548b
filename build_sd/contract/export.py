"""export.json: the shape contract of one exported model (written by `build-sd export`).

It travels with the model through compile (copied into the artifacts) and bundle (one per
model), and the runner reads it to call the modules: subgraphs, their functions and argument
kinds, the KV-cache parameters, dtype, context, and the names and shapes of the weights.
"""
from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from .base import Record, schema_of
from .config import ModelConfig
from .names import SubgraphSpec

Dtype = Literal["f32", "f16"]
Positive = Annotated[int, Meta(ge=1)]


class TensorSpec(Struct, frozen=True):
    """One argument or result of a function: shape in the fixed letters' values, ABI dtype."""
    name: str
    shape: list[int]
    dtype: str


class FunctionRecord(Struct, frozen=True, kw_only=True):
    T: Positive                              # tokens per call (the bucket P for prefill)
    role: Literal["prefill", "decode", "verify"]
    gamma: int | msgspec.UnsetType = msgspec.UNSET    # verify only: verify_T{g+1} serves gamma g
    args: list[TensorSpec] = []
    results: list[TensorSpec] = []


class KVParam(Struct, frozen=True):
    """A KV cache of one layer (K or V): its parameter name, shape [S, KVH, Dh], bytes."""
    name: str
    shape: list[int]
    bytes: Annotated[int, Meta(ge=0)]


class SubgraphRecord(Struct, frozen=True, kw_only=True):
    name: str
    kind: Literal["embed", "layers", "head", "whole"]
    label: str
    start: int = 0
    end: int = 0
    mlir: str
    sha256: str
    functions: dict[str, FunctionRecord]
    kv_params: list[KVParam] = []
    # bytes of the weights this module holds (one device allocation; its KV caches are another):
    # 0 in exports made before build_sd recorded it
    parameter_bytes: int = 0

    @property
    def kv_bytes(self) -> int:
        return sum(kv.bytes for kv in self.kv_params)

    @property
    def spec(self) -> SubgraphSpec:
        return SubgraphSpec(self.kind, self.start, self.end)


class TensorShape(Struct, frozen=True):
    shape: list[int]
    dtype: str


class Parameters(Struct, frozen=True, kw_only=True):
    file: str = "model.irpa"
    scope: str = "model"
    sha256: str = ""
    # names and shapes of what the .irpa holds: the runtime's --random-weights draws these
    # instead of reading the archive (latency studies); empty in exports made before that
    tensors: dict[str, TensorShape] = {}


class Source(Struct, frozen=True):
    """Where a model came from: the checkpoint folder and the sha256 of its files."""
    path: str
    sha256: dict[str, str]

    @property
    def config_sha256(self) -> str | None:
        return self.sha256.get("config.json")


# The cache slots each call attends to (builder/model/llama.py: attended_slots): "filled", the
# pos + T written so far (a dynamic length), or "all" max_context of them, masked.
Attention = Literal["filled", "all"]
ATTENTION = get_args(Attention)


class ExportRecord(Record, frozen=True, kw_only=True):
    KIND = "build_sd.export"
    WHAT = "export"

    schema: int = schema_of("build_sd.export")
    kind: str = "build_sd.export"
    name: str
    source: Source
    fingerprint: str | None = None
    config: ModelConfig
    dtype: Dtype
    # projections in 8-bit (builder/model/quant.py); everything else stays in `dtype`
    quant: Literal["none", "w8a8", "w4a8"] = "none"
    # SmoothQuant's alpha (w8a8; 0: none) and the per-channel scales folded into the weights, saved so
    # that `validate` folds the same ones into its reference (builder/model/smooth.py)
    smooth: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    smooth_scales: str | None = None
    max_context: Annotated[int, Meta(ge=2)]
    fused_projections: bool = True
    # exports written before the choice existed attended to every slot
    attention: Attention = "all"
    gammas: list[int] = []
    prefill: list[Positive]
    subgraphs: list[SubgraphRecord]
    parameters: Parameters
    tokenizer: str | None = None
    # the checkpoint's tokenizer_config.json (its chat template), copied beside tokenizer.json
    tokenizer_config: str | None = None
    versions: dict[str, str | None] = {}

    def check(self) -> str | None:
        if not self.subgraphs:
            return "field subgraphs: no subgraph"
        if not self.prefill:
            return "field prefill: no prompt bucket"
        for sg in self.subgraphs:
            if sg.name != sg.spec.name:
                return f"subgraph {sg.name!r} does not match its kind/start/end ({sg.spec.name})"
        return None

    # ---- derived --------------------------------------------------------------------------
    @property
    def verify_T(self) -> list[int]:
        """Token counts of the verify functions every subgraph has (gamma + 1 each)."""
        return sorted({f.T for f in self.subgraphs[0].functions.values() if f.role == "verify"})

    @property
    def gammas_built(self) -> list[int]:
        return [T - 1 for T in self.verify_T]
