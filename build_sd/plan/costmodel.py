"""The cost model: pure functions, no torch, no IREE.

Built on Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding"):
with alpha the probability that a judged draft token is accepted (i.i.d. across positions),
one iteration that drafts g tokens emits E[N] = (1 - alpha^(g+1)) / (1 - alpha) tokens
(eq. 1; g+1 at alpha = 1, 1 at g = 0). With per-position acceptance a_1..a_g (a_i = P(draft i
accepted | drafts 1..i-1 accepted), what the runner reports) the same expectation is
E[N] = 1 + sum_k prod_{i<=k} a_i, which reduces to eq. 1 when all a_i = alpha.

One iteration of the sequential loop costs (draft, then verify; devices that share silicon,
like lavapipe on the CPU cores, are never modelled as overlapping in it):
  T_iter = T_draft_catchup + (g - 1) T_draft_step + T_verify(g+1) + T_transfers + T_host
The draft's first call of an iteration also catches up on the tokens it has not seen: one
(the last emitted token) or, after a fully accepted iteration (probability prod a_i), two.
Transfers: one per device boundary crossed inside a model per call (hidden state (T, D)),
fixed cost + bytes / bandwidth. Speedup = T_AR_best / (T_iter / E[N]) where T_AR_best is the
best target-only (g = 0) placement's time per token.

The overlapped loop (runtime/overlap.py; `predict_overlapped`) runs the draft during the verify,
each slowed by a measured contention factor while the other runs: see there.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# ---- acceptance ---------------------------------------------------------------------------------
def expected_tokens(alpha: float, gamma: int) -> float:
    """E[N] = (1 - alpha^(g+1)) / (1 - alpha): tokens emitted per iteration (Leviathan eq. 1)."""
    if gamma <= 0:
        return 1.0
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_tokens_positional(acceptance: list[float], gamma: int) -> float:
    """E[N] = 1 + sum_{k=1..g} prod_{i<=k} a_i with a_i the acceptance at draft position i
    (conditional on reaching it). Positions beyond the measured ones reuse the last figure."""
    if gamma <= 0:
        return 1.0
    if not acceptance:
        raise ValueError("no per-position acceptance figures")
    e, run = 1.0, 1.0
    for k in range(gamma):
        run *= acceptance[min(k, len(acceptance) - 1)]
        e += run
    return e


def p_all_accepted(alpha: float | list[float], gamma: int) -> float:
    if gamma <= 0:
        return 0.0
    if isinstance(alpha, list):
        p = 1.0
        for k in range(gamma):
            p *= alpha[min(k, len(alpha) - 1)]
        return p
    return alpha ** gamma


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Walltime improvement (Leviathan et al. 2023, Theorem 3.8): E[N] / (g c + 1), where c is
    the cost of a draft step relative to a target step and verify costs one target step."""
    return expected_tokens(alpha, gamma) / (gamma * c + 1.0)


# ---- latency ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    fixed_ms: float = 0.0          # per crossing (download + upload), whatever the size
    ms_per_mb: float = 0.0

    def ms(self, nbytes: int) -> float:
        return self.fixed_ms + self.ms_per_mb * nbytes / 1e6


@dataclass
class ModelCosts:
    """Latency of one model's forward calls under one placement.

    step_ms[T]: device time of one call processing T tokens (the sum over its subgraphs on their
    devices, the per-call host work of the runner included), without the transfers;
    crossings: how many times a hidden state changes device in one call;
    hidden_bytes_per_token: bytes of one token's hidden state (D * element size).
    """
    step_ms: dict[int, float]
    crossings: int = 0
    hidden_bytes_per_token: int = 0

    def scaled(self, k: float) -> "ModelCosts":
        """The same calls k times as long (transfers aside): a pair's sequential factor."""
        return self if k == 1.0 else ModelCosts({T: ms * k for T, ms in self.step_ms.items()},
                                                self.crossings, self.hidden_bytes_per_token)

    def call_ms(self, T: int, transfer: Transfer) -> float:
        if T not in self.step_ms:
            raise KeyError(f"no latency for a {T}-token call")
        return self.step_ms[T] + self.crossings * transfer.ms(T * self.hidden_bytes_per_token)


@dataclass
class Prediction:
    gamma: int
    expected_tokens: float
    iteration_ms: float
    ms_per_token: float
    parts: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 / self.ms_per_token


def predict(target: ModelCosts, draft: ModelCosts | None, gamma: int,
            alpha: float | list[float], transfer: Transfer = Transfer(),
            host_ms_per_iteration: float = 0.0, logits_ms: tuple[float, float] = (0.0, 0.0)) -> Prediction:
    """Time per token of one configuration.

    alpha: Leviathan's alpha, or per-position acceptance [a_1, a_2, ...].
    logits_ms: (draft per call, target per verify) cost of reading logits when sampling (0 for
    greedy, which reads only ids).
    """
    if gamma <= 0 or draft is None:
        verify = target.call_ms(1, transfer) + logits_ms[1]
        it = verify + host_ms_per_iteration
        return Prediction(0, 1.0, it, it, {"draft": 0.0, "verify": verify, "host": host_ms_per_iteration})
    en = (expected_tokens_positional(alpha, gamma) if isinstance(alpha, list)
          else expected_tokens(alpha, gamma))
    p_full = p_all_accepted(alpha, gamma)
    # catch-up: [x] normally, [x_g, bonus] after a fully accepted iteration (a 2-token call, or
    # two 1-token calls when the draft has no verify_T2)
    two = draft.call_ms(2, transfer) if 2 in draft.step_ms else 2 * draft.call_ms(1, transfer)
    first = (1.0 - p_full) * draft.call_ms(1, transfer) + p_full * two
    d = first + (gamma - 1) * draft.call_ms(1, transfer) + gamma * logits_ms[0]
    v = target.call_ms(gamma + 1, transfer) + logits_ms[1]
    it = d + v + host_ms_per_iteration
    return Prediction(gamma, en, it, it / en, {"draft": d, "verify": v, "host": host_ms_per_iteration})



# ---- the overlapped loop ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Contention:
    """How much each model slows while the other computes, measured as (time of its call while
    the other model calls in a loop) / (time alone), for one pair of devices: shared memory
    bandwidth, shared cores (lavapipe on the CPU's cores is the extreme case, ~2). sync_ms: handing
    a block to the draft's thread and back, per iteration."""
    target: float = 1.0
    draft: float = 1.0
    sync_ms: float = 0.0
    source: str = "measured"


def together_ms(a: float, b: float, ka: float, kb: float) -> tuple[float, float]:
    """Two works of a and b ms (alone) started at once, each running ka (kb) times slower while the
    other runs: (when both are done, when a is done)."""
    if a <= 0 or b <= 0:
        return max(a, b), a
    if a * ka <= b * kb:                    # a finishes first; b then runs alone
        t = a * ka
        return t + (b - t / kb), t
    t = b * kb                              # b finishes first; a then runs alone
    return t + (a - t / ka), t + (a - t / ka)


def predict_overlapped(target: ModelCosts, draft: ModelCosts, gamma: int, alpha: float | list[float],
                       contention: Contention, transfer: Transfer = Transfer(),
                       host_ms_per_iteration: float = 0.0,
                       logits_ms: tuple[float, float] = (0.0, 0.0)) -> Prediction:
    """Time per token of the overlapped loop (runtime/overlap.py).

    An iteration verifies [x, d_1..d_g] (work V) while the draft feeds d_g and proposes e_0..e_g
    (work W = (g+1) draft steps); e_0 is judged against the verify's last row, so g+1 drafts are
    judged and E[N] is the sequential loop's (1 + sum_k prod_{i<=k} a_i). With P = prod_{i<=g+1} a_i
    (all g+1 accepted):
    - the next block is ready with probability P; otherwise it is drafted first, alone: g steps;
    - if all are accepted the iteration waits for both works, V and W together (`together_ms`);
      otherwise for the verify (slowed while the draft runs) plus, if the draft is still busy then,
      half a draft step: the call in flight when it is told to stop.
      T_iter = (1 - P) g D + P both(V, W) + (1 - P) (verify_done(V, W) [+ D / 2]) + sync + host
    """
    if gamma <= 0:
        raise ValueError("the overlapped loop needs gamma >= 1")
    en = (expected_tokens_positional(alpha, gamma) if isinstance(alpha, list) else expected_tokens(alpha, gamma))
    p_full = p_all_accepted(alpha, gamma + 1)
    D = draft.call_ms(1, transfer) + logits_ms[0]
    V = target.call_ms(gamma + 1, transfer) + logits_ms[1]
    W = (gamma + 1) * D
    both, v_done = together_ms(V, W, contention.target, contention.draft)
    cold = (1.0 - p_full) * gamma * D
    # on a rejection the draft stops after its call in flight (alone by then: the verify is done)
    wait = p_full * both + (1.0 - p_full) * (v_done + (0.5 * D if v_done < both else 0.0))
    it = cold + wait + contention.sync_ms + host_ms_per_iteration
    return Prediction(gamma, en, it, it / en,
                      {"draft": cold, "verify": wait, "host": host_ms_per_iteration + contention.sync_ms,
                       "overlap": min(V * contention.target, W * contention.draft)})
