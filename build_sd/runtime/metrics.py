"""Counters of a generation and the figures that judge it.

alpha is Leviathan et al.'s acceptance probability: the chance that a draft token which is
judged is accepted. Each iteration judges its drafts up to and including the first rejection
(later drafts are never judged), so alpha = accepted / (accepted + rejected). This is the
alpha of E[N] = (1 - alpha^(g+1)) / (1 - alpha) in the cost model. acceptance_rate =
accepted / proposed is what llama.cpp reports; it is lower, since unjudged drafts count.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Metrics:
    gamma: int = 0
    iterations: int = 0
    proposed: int = 0
    accepted: int = 0
    rejected: int = 0
    emitted: int = 0                 # tokens emitted by the loop (after the first token)
    reached: list[int] = field(default_factory=list)     # per draft position: judged
    hits: list[int] = field(default_factory=list)        # per draft position: accepted
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0            # wall time of the loop (after the first token)
    draft_s: float = 0.0
    verify_s: float = 0.0
    transfer_s: float = 0.0
    device_calls: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    stop_reason: str = ""
    overlap: bool = False            # the overlapped loop (runtime/overlap.py) ran
    overlap_s: float = 0.0           # time both models were computing at once
    wasted_draft_tokens: int = 0     # drafted during a verify, then discarded
    ready_blocks: int = 0            # iterations whose drafts were made during the previous verify
    lookup_blocks: int = 0           # iterations whose drafts n-gram lookup proposed (runtime/lookup.py)
    lookup_accepted: int = 0         # of their drafts, accepted

    def judge(self, n_accepted: int, g: int):
        """Record one iteration that proposed g drafts and accepted the first n."""
        self.iterations += 1
        self.proposed += g
        self.accepted += n_accepted
        rejected = 1 if n_accepted < g else 0
        self.rejected += rejected
        while len(self.reached) < g:
            self.reached.append(0)
            self.hits.append(0)
        for i in range(min(g, n_accepted + rejected)):   # judged: accepted ones + the rejection
            self.reached[i] += 1
            self.hits[i] += 1 if i < n_accepted else 0

    # ---- derived figures ----------------------------------------------------------------
    @property
    def alpha(self) -> float | None:
        judged = self.accepted + self.rejected
        return self.accepted / judged if judged else None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def mean_accepted(self) -> float | None:
        return self.accepted / self.iterations if self.iterations else None

    @property
    def tokens_per_iteration(self) -> float | None:
        return self.emitted / self.iterations if self.iterations else None

    @property
    def per_position_acceptance(self) -> list[float | None]:
        return [h / r if r else None for h, r in zip(self.hits, self.reached)]

    @property
    def tokens_per_s(self) -> float | None:
        return self.emitted / self.decode_s if self.decode_s > 0 and self.emitted else None

    @property
    def host_s(self) -> float:
        """Time neither model computed: overlapped device time is counted once."""
        return max(0.0, self.decode_s - self.draft_s - self.verify_s + self.overlap_s)

    @property
    def overlap_fraction(self) -> float | None:
        return self.overlap_s / self.decode_s if self.decode_s > 0 else None

    def to_dict(self) -> dict:
        tokens = max(1, self.emitted)
        r = lambda x, n=4: None if x is None else round(x, n)   # noqa: E731
        return {
            "tokens_per_s": r(self.tokens_per_s, 2),
            "ttft_ms": r(self.ttft_s * 1e3, 2),
            "prefill_ms": r(self.prefill_s * 1e3, 2),
            "gamma": self.gamma,
            "alpha": r(self.alpha),
            "acceptance_rate": r(self.acceptance_rate),
            "mean_accepted": r(self.mean_accepted),
            "tokens_per_iteration": r(self.tokens_per_iteration),
            "iterations": self.iterations,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "decode_tokens": self.emitted,
            "per_position_acceptance": [r(x) for x in self.per_position_acceptance],
            "time_split_ms": {"draft": r(self.draft_s * 1e3, 2), "verify": r(self.verify_s * 1e3, 2),
                              "transfer": r(self.transfer_s * 1e3, 2), "host": r(self.host_s * 1e3, 2),
                              "total": r(self.decode_s * 1e3, 2)},
            "host_share": r(self.host_s / self.decode_s if self.decode_s else None),
            "device_calls_per_token": r(self.device_calls / tokens, 2),
            "bytes_per_token": {"up": r(self.bytes_up / tokens, 1), "down": r(self.bytes_down / tokens, 1)},
            "stop_reason": self.stop_reason,
            "overlap": self.overlap,
            "overlap_fraction": r(self.overlap_fraction) if self.overlap else 0.0,
            "wasted_draft_tokens": self.wasted_draft_tokens,
            "ready_blocks": self.ready_blocks,
            "lookup_blocks": self.lookup_blocks,
            "lookup_accepted": self.lookup_accepted,
        }
