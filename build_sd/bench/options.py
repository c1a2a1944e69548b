"""The options of `build-sd bench` (the CLI's flags, checked once here)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class BenchOptions:
    top: int = 5                           # the plan's top N configurations...
    configs: list[int] | None = None       # ...or these plan indexes (0-based)
    rounds: int = 4
    max_new_tokens: int = 48
    simulate_alpha: float | None = None
    warmup: int = 1                        # untimed passes over the prompts per configuration
    link: bool = True                      # bundles hard-link the artifacts' weights and modules
    prompt_template: str | None = None
    chat: bool = False                     # prompts are user messages in the model's chat template
    reprofile: bool = True                 # in-situ re-profile around every round
    build: str = "yes"                     # yes | only (build and stop) | no (measure what was built)
    random_weights: int | None = None

    def __post_init__(self):
        if self.simulate_alpha is not None and not 0 <= self.simulate_alpha <= 1:
            raise UserError("--simulate-alpha must be in [0, 1]")
        if self.random_weights is not None and self.simulate_alpha is None:
            raise UserError("--random-weights makes the tokens noise: give --simulate-alpha A too")
        if self.warmup < 0 or self.rounds < 1:
            raise UserError("--warmup must be >= 0 and --rounds >= 1")
        if self.build not in ("yes", "only", "no"):
            raise ValueError(f"build must be yes, only or no, got {self.build!r}")
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise UserError("--prompt-template must contain {prompt}")
