"""How build_sd names the parts of a model: subgraphs, their functions, KV-cache parameters.

One place for the naming scheme that export writes, compile and bundle file, the runtime looks
up, the planner predicts and the profiler times (letters as in contract/config.py):
- subgraphs: `embed`, `layers_{a}_{b}` (layers a..b-1), `head`, or `whole` (all of them); users
  write the label form in placements: `embed`, `layers[a:b]`, `head`, `whole`;
- functions of every subgraph: `prefill_T{P}` (a prompt bucket of P tokens), `decode` (T = 1),
  `verify_T{g+1}` (g drafts and the token before them, for gamma g);
- KV caches: one parameter per layer and K/V, `kvcache.{layer}.{k|v}`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

KINDS = ("embed", "layers", "head", "whole")
ROLES = ("draft", "target")          # the two models of a pair
PARAM_SCOPE = "model"                # the parameter scope of every .irpa and every module

_LAYERS_NAME = re.compile(r"^layers_(\d+)_(\d+)$")
_LAYERS_LABEL = re.compile(r"^layers\[(\d+):(\d+)\]$")


@dataclass(frozen=True)
class SubgraphSpec:
    """One module of a model: embed, layers [start, end), head, or the whole model."""
    kind: str          # embed | layers | head | whole
    start: int = 0
    end: int = 0

    @property
    def name(self) -> str:
        """The file and module name: embed, layers_0_4, head, whole."""
        return f"layers_{self.start}_{self.end}" if self.kind == "layers" else self.kind

    @property
    def label(self) -> str:
        """The name users write in placements: embed, layers[0:4], head, whole."""
        return f"layers[{self.start}:{self.end}]" if self.kind == "layers" else self.kind

    @property
    def has_tokens_in(self) -> bool:      # takes token ids (else a hidden state)
        return self.kind in ("embed", "whole")

    @property
    def has_layers(self) -> bool:         # owns KV caches and takes a position
        return self.kind in ("layers", "whole")

    @property
    def has_head(self) -> bool:           # returns ids and logits (else a hidden state)
        return self.kind in ("head", "whole")

    @classmethod
    def from_name(cls, name: str) -> "SubgraphSpec":
        m = _LAYERS_NAME.match(name)
        if m:
            return cls("layers", int(m.group(1)), int(m.group(2)))
        if name in ("embed", "head", "whole"):
            return cls(name)
        raise ValueError(f"not a subgraph name: {name!r}")

    @classmethod
    def from_label(cls, label: str) -> "SubgraphSpec":
        m = _LAYERS_LABEL.match(label)
        if m:
            return cls("layers", int(m.group(1)), int(m.group(2)))
        return cls.from_name(label)


def subgraph_specs(num_layers: int, split: list[int] | None) -> list[SubgraphSpec]:
    """`--split 0,4,8` on 12 layers -> embed, layers[0:4], [4:8], [8:12], head; none -> whole."""
    if not split:
        return [SubgraphSpec("whole", 0, num_layers)]
    starts = sorted(set(split))
    if starts[0] < 0 or starts[-1] >= num_layers:
        raise UserError(f"--split: layer starts must be in 0..{num_layers - 1}, got {split}")
    if starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [num_layers]
    return ([SubgraphSpec("embed")] + [SubgraphSpec("layers", a, b) for a, b in zip(starts, ends)]
            + [SubgraphSpec("head")])


def layout_name(split: list[int] | None) -> str:
    """The folder name of an export layout: `whole`, or `split4` for [0, 4] (`split4-8`...)."""
    return "whole" if not split else "split" + "-".join(str(k) for k in split[1:])


# ---- functions ------------------------------------------------------------------------------
def function_name(role: str, T: int) -> str:
    """prefill of a P-token bucket -> prefill_T{P}; one token -> decode; T tokens -> verify_T{T}."""
    if role == "prefill":
        return f"prefill_T{T}"
    return "decode" if T == 1 else f"verify_T{T}"


def kv_param_name(layer: int, kv: str) -> str:
    return f"kvcache.{layer}.{kv}"
