"""N-gram lookup drafting (prompt lookup decoding; llama.cpp's `lookup`, transformers'
`prompt_lookup_num_tokens`): where the text's last n tokens occurred before, in the prompt or in what
was generated, propose the tokens that followed them. No model runs, so a proposal costs microseconds;
the target verifies it like any draft, so greedy output is unchanged and sampled output keeps the
target's law (a proposal is a draft whose q puts all its mass on the proposed token).

It pays where answers copy from their context: summaries, edits, extraction, code (benchmarks/
probe_lookup.py: 2.0-2.9 tokens per verify on such prompts against the chat draft's 1.3), and little
on open chat (+5-8 % as the draft's partner: docs/FINDINGS.md).

The index is incremental: each n-gram is stored once, mapped to where its most recent continuation
starts, when the token after it arrives. The text's own last n-gram has no continuation yet and is
therefore never its own match.
"""
from __future__ import annotations

MIN_NGRAM = 2         # a single repeated token is mostly noise (punctuation, "the")


class NgramLookup:
    def __init__(self, max_ngram: int = 4, min_ngram: int = MIN_NGRAM):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram sizes {min_ngram}..{max_ngram}: need 1 <= min <= max")
        self.max_n, self.min_n = max_ngram, min_ngram
        self.seq: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}      # n-gram -> start of its latest continuation

    def _sync(self, seq: list[int]) -> None:
        """Index what `seq` added since the last call (a new sequence when it is not a continuation)."""
        n_old = len(self.seq)
        if n_old > len(seq) or seq[:n_old] != self.seq:  # O(len) check: a host-side trifle per verify
            self.seq, self.index, n_old = [], {}, 0
        self.seq = list(seq)
        for j in range(max(1, n_old), len(seq)):          # token j arrived: the n-grams ending at j-1
            for n in range(self.min_n, min(self.max_n, j) + 1):
                self.index[tuple(seq[j - n:j])] = j

    def propose(self, seq: list[int], gamma: int) -> list[int]:
        """Up to gamma tokens that followed the latest earlier occurrence of seq's longest matching
        suffix (max_ngram down to min_ngram tokens); [] when none occurred."""
        self._sync(seq)
        if gamma <= 0:
            return []
        L = len(seq)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            j = self.index.get(tuple(seq[L - n:]))
            if j is not None:
                return list(seq[j:j + gamma])
        return []
