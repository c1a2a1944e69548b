"""The speculative loop: draft gamma tokens, verify gamma+1 in ONE target call, accept.

Positions (the host keeps them; rollback = not advancing them):
- `t_pos`: tokens whose K/V are valid in the target's cache. The last emitted token `x` is not
  among them yet: it is the first token of the next verify call.
- `d_pos`: the same for the draft. After an iteration the draft may lag by one (when all g
  drafts were accepted it never saw x_g); its next call catches up on [x_g, bonus] first.
Stale cache rows beyond a position are masked by attention and overwritten by the next call.

gamma = 0 is plain target decoding through the same code (one target call per token).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .chain import ModelChain
from .lookup import NgramLookup
from .metrics import Metrics
from .sampling import Sparse


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)    # generated ids (prompt excluded)
    metrics: Metrics = field(default_factory=Metrics)
    # leading tokens of prompt + token_ids whose K/V both models' caches hold at the end (the last
    # emitted token is never among them): a next turn prefills only what follows (generate's `past`)
    cached: int = 0


def _trim(new: list[int], eos: set[int], budget: int) -> tuple[list[int], str | None]:
    """Cut the tokens of one iteration at EOS (kept) or at the token budget."""
    for i, t in enumerate(new[:budget]):
        if t in eos:
            return new[:i + 1], "eos"
    if len(new) >= budget:
        return new[:budget], "max_new_tokens"
    return new, None


def generate(target: ModelChain, draft: ModelChain | None, prompt: list[int], gamma: int,
             acceptor, max_new_tokens: int, eos_ids=(), on_tokens=None, log=None, past: int = 0,
             overlap: bool = False, cpus: dict[str, set[int]] | None = None,
             lookup: NgramLookup | None = None, settle_draft: bool = False) -> Generation:
    """Generate up to max_new_tokens after `prompt`; `on_tokens(list)` streams accepted tokens.
    past: the first `past` prompt tokens are already in both caches (an earlier turn's
    Generation.cached): only the rest is prefilled, at positions past..
    overlap: the draft drafts the next block while the target verifies (runtime/overlap.py;
    cpus: the cores of each model's thread); without a draft or at gamma 0 it changes nothing.
    lookup: n-gram lookup proposes the block where the text repeats itself (runtime/lookup.py), the
    draft model where it does not; it runs in this sequential loop (an overlapped draft works ahead
    of the verify, lookup needs its result). Lookup blocks leave the draft behind; settle_draft (a
    conversation's next turn continues from both caches) feeds it what it missed before returning."""
    if lookup is not None and gamma <= 0:
        raise ValueError("lookup proposes up to gamma tokens: gamma must be >= 1")
    if overlap and gamma > 0 and draft is not None and lookup is None:
        from .overlap import generate_overlapped
        return generate_overlapped(target, draft, prompt, gamma, acceptor, max_new_tokens, eos_ids, on_tokens,
                                   log, past, cpus)
    use_draft = gamma > 0 and draft is not None
    gen, seq = start(target, draft if use_draft else None, prompt, gamma, acceptor, max_new_tokens, eos_ids,
                     on_tokens, past)
    if seq is None:
        return gen
    m = gen.metrics
    eos = set(int(e) for e in eos_ids)
    S = target.max_context if not use_draft else min(target.max_context, draft.max_context)

    # ---- the loop ---------------------------------------------------------------------------
    t_pos = d_pos = len(seq) - 1
    before = _Snapshot.take(target, draft)
    built = set(target.verify_T) | {1}
    V = target.export.config.vocab_size
    while True:
        remaining = max_new_tokens - len(gen.token_ids)
        room = S - t_pos                                   # cache slots left for this verify
        if stopped(m, remaining, room, S, log):
            break
        g = _gamma_now(gamma if use_draft else 0, remaining, room, built)
        drafts = _lookup_block(lookup, seq, g, built)
        by_lookup = bool(drafts)
        if by_lookup:   # the draft model sleeps (it catches up later); q: all mass on the proposal
            q_rows, held = [Sparse([x], [1.0], V) for x in drafts], None
        else:
            # `held`: the draft's last output stays alive through this verify. Releasing it before
            # the verify call made IREE's out-of-order semaphore signal (the lavapipe device loss,
            # docs/FINDINGS.md) more likely; native/vkguard.c removes the loss, holding costs nothing
            drafts, q_rows, d_pos, held = _draft_block(draft, acceptor, seq, d_pos, g)
        vout = target.step(np.array([seq[-1]] + drafts, np.int32), t_pos)   # x, x_1..x_g at t_pos..
        n_acc, nxt = acceptor.accept(drafts, q_rows, vout.ids, vout.logits)
        if by_lookup:
            m.lookup_blocks += 1
            m.lookup_accepted += n_acc
        if g > 0:
            m.judge(n_acc, len(drafts))
        else:
            m.iterations += 1
        t_pos += 1 + n_acc
        d_pos = min(d_pos, t_pos)           # the draft saw x_1..x_{g-1}: keep what was accepted of them
        if emit(gen, seq, drafts[:n_acc] + [nxt], eos, remaining, on_tokens)[1]:
            break
    if settle_draft and use_draft and lookup is not None and d_pos < t_pos:
        _catch_up(draft, seq[d_pos:t_pos], d_pos)
        d_pos = t_pos
    before.record_into(m, target, draft)
    gen.cached = min(t_pos, d_pos) if use_draft else t_pos
    return gen


def start(target: ModelChain, draft: ModelChain | None, prompt, gamma: int, acceptor, max_new_tokens: int,
          eos_ids, on_tokens, past: int) -> tuple[Generation, list[int] | None]:
    """Prefill both models and emit the first token: (the generation, prompt + first token), or
    (the generation, None) when it already stopped (EOS or a budget of one token)."""
    gen = Generation()
    m = gen.metrics
    m.gamma = gamma
    prompt = np.asarray(prompt, np.int32)
    if not 0 <= past < len(prompt):
        raise ValueError(f"past={past} must leave at least one of the {len(prompt)} prompt tokens to prefill")
    first = _prefill(target, draft, prompt[past:], acceptor, m, past)
    gen.token_ids.append(first)
    gen.cached = len(prompt)
    if on_tokens:
        on_tokens([first])
    is_eos = first in {int(e) for e in eos_ids}
    if is_eos or max_new_tokens <= 1:
        m.stop_reason = "eos" if is_eos else "max_new_tokens"
        return gen, None
    return gen, prompt.tolist() + [first]


def stopped(m: Metrics, remaining: int, room: int, S: int, log) -> bool:
    """Before an iteration: is the token budget spent, or the context full?"""
    if remaining <= 0:
        m.stop_reason = "max_new_tokens"
        return True
    if room < 1:
        m.stop_reason = "context"
        if log:
            log(f"stopped: reached the bundle's context size ({S} tokens)")
        return True
    return False


def emit(gen: Generation, seq: list[int], tokens: list[int], eos: set[int], remaining: int,
         on_tokens) -> tuple[list[int], str | None]:
    """An iteration's tokens, cut at EOS or the budget, into the generation and the sequence;
    (what was emitted, why it stopped or None)."""
    new, reason = _trim(tokens, eos, remaining)
    gen.token_ids.extend(new)
    seq.extend(new)
    gen.metrics.emitted += len(new)
    if on_tokens:
        on_tokens(new)
    if reason:
        gen.metrics.stop_reason = reason
    return new, reason


def _prefill(target: ModelChain, draft: ModelChain | None, prompt: np.ndarray, acceptor, m: Metrics,
             pos: int = 0) -> int:
    """Both models take the prompt (at pos..); the target's output gives the first token."""
    t0 = time.perf_counter()
    out = target.prefill(prompt, pos)
    first = acceptor.first(out.ids, out.logits)
    m.ttft_s = time.perf_counter() - t0
    if draft is not None:
        draft.prefill(prompt, pos)
    m.prefill_s = time.perf_counter() - t0
    return first


def _gamma_now(gamma: int, remaining: int, room: int, built: set[int]) -> int:
    """Never draft past the token budget or the context; fall back to a built verify size."""
    g = min(gamma, remaining - 1, room - 1)
    while g > 0 and g + 1 not in built:
        g -= 1
    return g


def _lookup_block(lookup: NgramLookup | None, seq: list[int], g: int, built: set[int]) -> list[int]:
    """Lookup's proposal, cut to a length whose verify is built ([] when none: the draft model drafts)."""
    if lookup is None or g <= 0:
        return []
    prop = lookup.propose(seq, g)
    while prop and len(prop) + 1 not in built:
        prop.pop()
    return prop


def _draft_block(draft: ModelChain, acceptor, seq: list[int], d_pos: int, g: int):
    """g draft tokens after `seq` (and their q rows when sampling); the draft first catches up
    on what it has not seen. Returns (drafts, q_rows, the draft's new position, its last output)."""
    drafts, q_rows = [], []
    if g <= 0:
        return drafts, q_rows, d_pos, None
    pending = seq[d_pos:]                          # 1 token, or 2 after a full accept
    dout = _catch_up(draft, pending, d_pos)
    d_pos += len(pending)
    for i in range(g):
        x, q = acceptor.propose(dout.ids, dout.logits)
        drafts.append(x)
        q_rows.append(q)
        if i < g - 1:
            dout = draft.step(np.array([x], np.int32), d_pos)
            d_pos += 1
    return drafts, q_rows, d_pos, dout


@dataclass
class _Snapshot:
    """The chains' counters when the loop starts: the loop's own figures are the differences.
    Device time = time inside chain.step (invocations and their uploads/downloads, logits reads
    included); host time = the rest of the loop (acceptance, sampling, bookkeeping)."""
    t0: float
    calls: int
    target_s: float
    draft_s: float
    up: int
    down: int
    transfer_s: float

    @classmethod
    def take(cls, target: ModelChain, draft: ModelChain | None) -> "_Snapshot":
        c = target.stages[0].device.counters
        return cls(time.perf_counter(), target.calls + (draft.calls if draft else 0), target.call_s,
                   draft.call_s if draft else 0.0, c.bytes_up, c.bytes_down, c.transfer_s)

    def record_into(self, m: Metrics, target: ModelChain, draft: ModelChain | None) -> None:
        now = _Snapshot.take(target, draft)
        m.decode_s = now.t0 - self.t0
        m.verify_s = now.target_s - self.target_s
        m.draft_s = now.draft_s - self.draft_s
        m.device_calls = now.calls - self.calls
        m.bytes_up, m.bytes_down = now.up - self.up, now.down - self.down
        m.transfer_s = now.transfer_s - self.transfer_s


def _catch_up(draft: ModelChain, pending: list[int], pos: int):
    """Feed the tokens the draft has not seen (1, 2 after a full accept, more after lookup blocks) in
    as few calls as the built sizes allow: each call takes the largest verify size that fits."""
    sizes = sorted(set(draft.verify_T) | {1}, reverse=True)
    out, i = None, 0
    while i < len(pending):
        k = next(k for k in sizes if k <= len(pending) - i)
        out = draft.step(np.array(pending[i:i + k], np.int32), pos + i)
        i += k
    return out
