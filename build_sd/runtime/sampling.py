"""Acceptance: greedy, and exact speculative (rejection) sampling, on the host with numpy.

Notation as in Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative
Decoding", Algorithm 1) and Chen et al. 2023: the draft proposes x_1..x_g from q, the target
gives p at the g+1 positions in one call.
- greedy: accept the longest prefix where x_i == argmax p_i, then emit argmax p at the first
  mismatch (or the bonus position g+1). The output is the target's greedy output.
- sampling: accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection
  emit a sample of norm(max(0, p_i - q_i)); if all g are accepted emit a sample of p_{g+1}.
  The emitted tokens are distributed exactly as sampling from p alone.
Temperature, top-k and top-p transform p and q the same way before acceptance, so the result
is exact for the transformed target distribution.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probs(logits: np.ndarray, sp: SamplingParams) -> np.ndarray:
    """Row-wise distributions (N, V) float32 after temperature, top-k and top-p.

    O(V) passes per row, no full sort: this runs on the host once per drafted token and once per
    verify, on rows of the whole vocabulary (49152 for SmolLM2), so its cost is the host share of
    sampled decoding. Top-k takes the k-th largest by partition; top-p sorts only the candidates
    that can be in the nucleus (_nucleus)."""
    z = np.asarray(logits, np.float32)
    if z.ndim == 1:
        z = z[None]
    z = z * np.float32(1.0 / sp.temperature)
    V = z.shape[-1]
    if 0 < sp.top_k < V:
        kth = np.partition(z, V - sp.top_k, axis=-1)[:, V - sp.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(-1, keepdims=True)
    pr = np.exp(z, out=z)
    pr /= pr.sum(-1, keepdims=True)
    if sp.top_p < 1.0:
        for i in range(pr.shape[0]):
            _nucleus(pr[i], sp.top_p)
    return pr


def _nucleus(p: np.ndarray, top_p: float) -> None:
    """Keep, in place, the smallest set of most likely tokens whose mass reaches top_p (the top token
    always stays), renormalised; ties at the boundary go by token id, as a stable sort of the whole row
    (HF's warper) breaks them. Only tokens with p >= c are sorted, for the first threshold c whose
    tokens hold top_p of the mass: every token below c has at least that mass before it, so it is
    outside the nucleus anyway."""
    for c in (1e-2, 1e-3, 1e-4, 1e-5, 0.0):
        cand = np.flatnonzero(p >= c)
        if c == 0.0 or p[cand].sum(dtype=np.float64) >= top_p:
            break
    order = cand[np.argsort(-p[cand], kind="stable")]
    sorted_p = p[order].astype(np.float64)
    before = np.cumsum(sorted_p) - sorted_p                 # mass strictly before each token
    keep = order[before < top_p]
    kept = p[keep]
    p[:] = 0.0
    p[keep] = kept / kept.sum(dtype=np.float64)


BLOCK = 256


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from a distribution p (V,) (unnormalised is fine) by inverse CDF in two levels: the
    block of BLOCK ids by the cumulative block sums, then the id within it. A float64 cumsum of the
    whole row was the largest host cost of sampled decoding at V = 49152 (0.48 ms a draw); the block
    sums are one vectorised reduction. A token of probability 0 is never drawn (the first cumulative
    sum above the uniform is a token with mass; float round-off at the very top falls back to the last
    token with mass)."""
    V = len(p)
    if V <= BLOCK:
        return _inverse_cdf(p, rng.random())
    starts = _block_starts(V)
    bs = np.add.reduceat(p, starts, dtype=np.float64)
    cb = np.cumsum(bs)
    u = rng.random() * cb[-1]
    b = int(np.searchsorted(cb, u, side="right"))
    if b >= len(bs) or bs[b] <= 0.0:
        b = int(np.flatnonzero(bs)[-1])
        return int(starts[b]) + _last_nonzero(p[starts[b]:starts[b] + BLOCK])
    block = p[starts[b]:starts[b] + BLOCK]
    return int(starts[b]) + _inverse_cdf(block, (u - (cb[b] - bs[b])) / bs[b])


@functools.lru_cache(maxsize=8)
def _block_starts(V: int) -> np.ndarray:
    return np.arange(0, V, BLOCK)


def _inverse_cdf(p: np.ndarray, frac: float) -> int:
    """The id whose cumulative mass first exceeds frac of p's total."""
    c = np.cumsum(p, dtype=np.float64)
    i = int(np.searchsorted(c, frac * c[-1], side="right"))
    return i if i < len(p) and p[i] > 0 else _last_nonzero(p)


def _last_nonzero(p: np.ndarray) -> int:
    return int(np.flatnonzero(p)[-1])


class GreedyAcceptor:
    """Deterministic: draft argmax vs target argmax. Reads only ids, never logits."""

    def propose(self, ids: np.ndarray, logits_fn) -> tuple[int, None]:
        return int(ids[-1]), None

    def first(self, ids: np.ndarray, logits_fn) -> int:
        return int(ids[-1])

    def fork(self, seed: int) -> "GreedyAcceptor":
        """The acceptor a second thread proposes with (runtime/overlap.py): greedy draws nothing."""
        return self

    def accept(self, drafts: list[int], q_rows, target_ids: np.ndarray, target_logits_fn, bonus: bool = True):
        """-> (n accepted, next token). target_ids[i] is the target's token after draft i.
        bonus=False: the target gave one row per draft (no row after the last one); when every
        draft is accepted there is no next token: (len(drafts), None)."""
        n = 0
        while n < len(drafts) and drafts[n] == int(target_ids[n]):
            n += 1
        return n, (int(target_ids[n]) if n < len(target_ids) else None)


class RejectionSampler:
    """Exact speculative sampling (Leviathan et al. 2023, Chen et al. 2023)."""

    def __init__(self, params: SamplingParams, rng: np.random.Generator):
        self.params, self.rng = params, rng

    def fork(self, seed: int) -> "RejectionSampler":
        """The same sampler on its own generator, for proposals made in another thread
        (runtime/overlap.py): a generator shared by two threads would draw in a timing-dependent
        order, and the output of a seed would no longer be reproducible."""
        return type(self)(self.params, np.random.default_rng(seed))

    def propose(self, ids: np.ndarray, logits_fn) -> tuple[int, np.ndarray]:
        q = probs(logits_fn()[-1], self.params)[0]
        return sample(q, self.rng), q

    def first(self, ids: np.ndarray, logits_fn) -> int:
        return sample(probs(logits_fn()[-1], self.params)[0], self.rng)

    def accept(self, drafts: list[int], q_rows: list[np.ndarray], target_ids, target_logits_fn,
               bonus: bool = True):
        """bonus=False: one target row per draft (the overlapped loop judges one draft more than its
        verify call took tokens); all accepted -> (len(drafts), None)."""
        logits = target_logits_fn()                              # (g+1, V), read once
        # p row by row: the rows after the first rejection are never needed
        for i, x in enumerate(drafts):
            p = probs(logits[i], self.params)[0]
            q = q_rows[i]
            # accept x with probability min(1, p(x)/q(x)); q(x) > 0 because x was drawn from q
            if self.rng.random() * q[x] < p[x]:
                continue
            residual = np.maximum(p - q, 0.0)                    # norm(max(0, p - q))
            if residual.sum() <= 0.0:                            # p == q: nothing to correct
                residual = p
            return i, sample(residual, self.rng)
        if not bonus:
            return len(drafts), None
        return len(drafts), sample(probs(logits[len(drafts)], self.params)[0], self.rng)   # bonus from p_{g+1}


class SimulatedAcceptor(GreedyAcceptor):
    """For latency studies with random weights: every kernel runs as usual, but the number of
    accepted drafts is drawn from Bernoulli(alpha) trials (stop at the first failure), so the
    timing is real and the acceptance is controlled. The emitted tokens mean nothing."""

    def __init__(self, alpha: float, rng: np.random.Generator):
        self.alpha, self.rng = alpha, rng

    def accept(self, drafts, q_rows, target_ids, target_logits_fn, bonus: bool = True):
        n = 0
        while n < len(drafts) and self.rng.random() < self.alpha:
            n += 1
        return n, (int(target_ids[n]) if n < len(target_ids) else None)
