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

import bisect
import functools
import itertools
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
    """Row-wise distributions (N, V) float64 after temperature, top-k and top-p: the dense form of
    `dist`, which defines the law (tests compute the exact law from this)."""
    z = np.asarray(logits, np.float32)
    rows = z[None] if z.ndim == 1 else z
    return np.stack([dist(r, sp).dense() for r in rows])


def dist(row: np.ndarray, sp: SamplingParams) -> "Dense | Sparse":
    """The distribution of one row of logits (V,) after temperature, top-k and top-p.

    This runs on the host once per drafted token and once per judged target row, so its cost is
    the host share of sampled decoding. At V = 4096 numpy's per-call overhead is most of it, and
    it doubles when the call follows a device call (caches cold: ~50 us for what takes ~25 us in
    a loop), so what counts is the number of numpy calls: argmax, scale, exp, a dot for the sum
    (and for top-p one compare + nonzero), nothing shifted (unless exp could overflow),
    normalised or zero-filled over V. With top-k or top-p the result is Sparse: the kept ids and
    their weights in Python lists (the nucleus is ~10 ids on the demo pair; 18 % of the rows keep
    the top id alone), and sampling, p(x) and
    the residual then cost a few Python operations. Top-k keeps every id tied with the k-th
    largest logit; top-p keeps the smallest set of most likely ids whose mass reaches top_p (the
    top id always stays), ties at the boundary by id."""
    z = np.asarray(row, np.float32)
    V = z.shape[-1]
    top = int(z.argmax())
    inv_t = np.float32(1.0 / sp.temperature)
    zt = float(z[top]) * float(inv_t)
    if -EXP_SAFE < zt < EXP_SAFE:    # exp(z / T) cannot overflow, even summed over V: no shift pass
        w = np.multiply(z, inv_t) if inv_t != 1.0 else z.copy()
    else:
        w = np.subtract(z, z[top])
        if inv_t != 1.0:
            w *= inv_t
    np.exp(w, out=w)
    if 0 < sp.top_k < V:
        kth = np.partition(z, V - sp.top_k)[V - sp.top_k]
        w[z < kth] = 0.0
    total = float(w.dot(_ones(V)))   # one BLAS call: faster than w.sum(), measured 44 vs 50 us a row in the loop
    if sp.top_p >= 1.0:
        if 0 < sp.top_k < V:                            # top-k alone: sparse as well
            ids = np.flatnonzero(w)
            return Sparse(ids.tolist(), w[ids].tolist(), V)
        return Dense(w, total)
    if total * sp.top_p <= float(w[top]):               # the top id alone holds top_p
        return Sparse([top], [1.0], V)
    return _nucleus(w, total, V, sp.top_p)


EXP_SAFE = 60.0     # |max logit / T| below this: exp(z / T) < 1.2e26, V of them well within float32


@functools.lru_cache(maxsize=8)
def _ones(V: int) -> np.ndarray:
    return np.ones(V, np.float32)


def _nucleus(w: np.ndarray, total: float, V: int, top_p: float) -> "Sparse":
    """The smallest set of most likely ids whose mass reaches top_p of `total`; ties at the boundary
    go by id, as a stable sort of the whole row (HF's warper) breaks them. Only ids with weight
    >= c * total are sorted, for the first threshold c whose ids hold top_p of the mass: every id
    below c has at least that mass before it, so it is outside the nucleus anyway. c = 1e-3 first:
    on the demo pair at temperature 0.8, top-p 0.95 its ~20 ids hold the nucleus in 92 % of the
    rows (1e-2: 43 %, and a second pass costs more than sorting a few more ids)."""
    need = top_p * total
    for c in (1e-3, 1e-5, 0.0):
        cand = (w >= c * total).nonzero()[0] if c else w.nonzero()[0]
        if len(cand) == 0:                               # a flat row: no id reaches c (c = 0 has the top)
            continue
        if len(cand) <= 256:                             # few: Python's stable sort beats numpy's calls
            pairs = sorted(zip(w[cand].tolist(), cand.tolist()), key=_neg_weight)
            ws = [p[0] for p in pairs]
            ids = [p[1] for p in pairs]
        else:
            order = np.argsort(-w[cand], kind="stable")
            ws, ids = w[cand[order]].tolist(), cand[order].tolist()
        cum = list(itertools.accumulate(ws))
        if c == 0.0 or cum[-1] >= need:
            break
    # mass strictly before the i-th id = cum[i-1]: keep ids 0..n-1 where cum[n-2] < need <= cum[n-1]
    n = min(len(cum), bisect.bisect_left(cum, need) + 1)
    return Sparse(ids[:n], ws[:n], V, cum[:n])


def _neg_weight(pair):
    return -pair[0]


class Dense:
    """A distribution over all V ids: probability = w[i] / total (w float32 or float64)."""
    __slots__ = ("w", "total")
    ids = None

    def __init__(self, w: np.ndarray, total: float):
        self.w, self.total = w, total

    def __getitem__(self, x: int) -> float:
        return float(self.w[x]) / self.total

    def probs_of(self, ids: list[int]) -> list[float]:
        return (self.w[ids] / self.total).tolist()

    def dense(self) -> np.ndarray:
        """(V,) float64 probabilities."""
        return self.w.astype(np.float64) / self.total

    def sample(self, rng: np.random.Generator) -> int:
        return sample(self.w, rng)

    def residual(self, q: "Dense | Sparse | np.ndarray") -> "Dense":
        """norm(max(0, self - q)), the law a rejected position is resampled from; self when the two
        are equal (no mass left)."""
        q = _as_dist(q)
        r = self.dense()
        if isinstance(q, Dense):
            r -= q.w / q.total
        else:
            r[q.ids] -= np.asarray(q.w) / q.total
        np.maximum(r, 0.0, out=r)
        total = float(r.sum())
        return Dense(r, total) if total > 0.0 else self


class Sparse:
    """A distribution over a few ids (unique, most likely first): probability = w[i] / total.
    Python lists, not arrays: for ~10 ids every numpy call would cost more than the work."""
    __slots__ = ("ids", "w", "V", "_cum", "_map")

    def __init__(self, ids: list[int], w: list[float], V: int, cum: list[float] | None = None):
        self.ids, self.w, self.V, self._cum, self._map = ids, w, V, cum, None

    @property
    def cum(self) -> list[float]:
        if self._cum is None:
            self._cum = list(itertools.accumulate(self.w))
        return self._cum

    @property
    def total(self) -> float:
        return self.cum[-1]

    def _weights(self) -> dict[int, float]:
        if self._map is None:
            self._map = dict(zip(self.ids, self.w))
        return self._map

    def __getitem__(self, x: int) -> float:
        return self._weights().get(int(x), 0.0) / self.total

    def probs_of(self, ids: list[int]) -> list[float]:
        inv, get = 1.0 / self.total, self._weights().get
        return [get(i, 0.0) * inv for i in ids]

    def dense(self) -> np.ndarray:
        """(V,) float64 probabilities."""
        out = np.zeros(self.V)
        out[self.ids] = np.asarray(self.w) / self.total
        return out

    def sample(self, rng: np.random.Generator) -> int:
        """The first id whose cumulative weight exceeds u * total: an id of weight 0 never is (its
        sum equals the one before it); round-off at the very top falls back to the last with mass."""
        cum = self.cum
        i = bisect.bisect_right(cum, rng.random() * cum[-1])
        if i < len(cum):
            return self.ids[i]
        return next(self.ids[j] for j in range(len(self.w) - 1, -1, -1) if self.w[j] > 0)

    def residual(self, q: "Dense | Sparse | np.ndarray") -> "Sparse":
        """norm(max(0, self - q)); self when the two are equal (no mass left). Its ids are within
        self's: max(0, 0 - q) = 0 elsewhere."""
        inv = 1.0 / self.total
        r = [max(a * inv - b, 0.0) for a, b in zip(self.w, _as_dist(q).probs_of(self.ids))]
        return Sparse(self.ids, r, self.V) if sum(r) > 0.0 else self


def _as_dist(q) -> "Dense | Sparse":
    """A q row given as a dense (V,) array (the tests' synthetic rows) as a Dense."""
    if isinstance(q, np.ndarray):
        return Dense(q, float(q.sum(dtype=np.float64)))
    return q


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

    def propose(self, ids: np.ndarray, logits_fn) -> tuple[int, "Dense | Sparse"]:
        q = dist(logits_fn()[-1], self.params)
        return q.sample(self.rng), q

    def first(self, ids: np.ndarray, logits_fn) -> int:
        return dist(logits_fn()[-1], self.params).sample(self.rng)

    def accept(self, drafts: list[int], q_rows: list, target_ids, target_logits_fn, bonus: bool = True):
        """q_rows: the draft's distributions (Dense / Sparse, or dense (V,) arrays). bonus=False: one
        target row per draft (the overlapped loop judges one draft more than its verify call took
        tokens); all accepted -> (len(drafts), None)."""
        logits = target_logits_fn()                              # (g+1, V), read once
        # p row by row: the rows after the first rejection are never needed (computing all of a
        # verify's rows in one numpy call per pass was slower at V = 4096: measured 234 vs 207 us
        # of host time per token on the demo pair)
        for i, x in enumerate(drafts):
            p = dist(logits[i], self.params)
            q = q_rows[i]
            # accept x with probability min(1, p(x)/q(x)); q(x) > 0 because x was drawn from q
            if self.rng.random() * q[x] < p[x]:
                continue
            return i, p.residual(q).sample(self.rng)             # norm(max(0, p - q))
        if not bonus:
            return len(drafts), None
        return len(drafts), dist(logits[len(drafts)], self.params).sample(self.rng)   # bonus from p_{g+1}


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
