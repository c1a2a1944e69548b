"""The overlapped speculative loop: the draft drafts the next block while the target verifies.

The sequential loop (speculative.py) leaves the draft's device idle during a verify and the
target's idle while the draft drafts. Here, while the target verifies [x, d_1..d_g] (one call,
main thread), a second thread feeds the draft d_g and keeps going: it proposes e_0 (its guess of
the token after d_g) and then e_1..e_g' after it, as if the whole block were accepted (PEARL's
"post-verify", Liu et al. ICLR 2025; AMUSD's asynchronous draft device).

Exactness. e_0 is judged as one more draft, against the verify's last row p_g (the row that gives
the bonus token in the sequential loop): accepted with min(1, p_g(e_0) / q(e_0)), else a sample
of norm(max(0, p_g - q)) is emitted (greedy: e_0 == argmax p_g). So an iteration judges g+1 drafts
with a (g+1)-token verify and emits the same E[N] = (1 - a^(g+1)) / (1 - a) tokens as the
sequential loop; the emitted law is the target's, as for any draft. When d_1..d_g and e_0 are all
accepted, e_0 is the new last token x' and e_1..e_g' -- drawn from q given a prefix that is now
the emitted one -- are the next block, ready without waiting for the draft. Otherwise the
speculative block is discarded, the draft's position rolls back to what was accepted (its stale
cache rows are masked and overwritten, as in the sequential loop) and the next block is drafted
the sequential way. The draft thread proposes with its own generator (acceptor.fork, seeded from
the main generator), so a seed gives the same output whatever the threads' timing.

Positions: as in speculative.py. A ready block of g drafts always has the draft fed up to
d_{g-1}: d_pos = t_pos + g, and the next speculation starts by feeding d_g at d_pos.

Threads: one worker (the draft), the target in the caller's thread; IREE releases the GIL during
an invocation, and under local-sync each model's dispatches run on its calling thread, so the
two models can be put on disjoint cores (`cpus`). An error in the draft thread ends the
generation with that error after the thread has stopped; no thread outlives a generation.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UserError
from .chain import ModelChain
from .speculative import Generation, _draft_block, _gamma_now, _Snapshot, emit, start, stopped


class _Speculation:
    """The draft's work during one verify: feed `first` at `pos`, propose, feed that, ... until
    n+1 tokens (e_0..e_n) are proposed or `stop` is set. Runs in the worker thread."""

    def __init__(self, draft: ModelChain, acceptor, first: int, pos: int, n: int):
        self.draft, self.acceptor, self.first, self.pos, self.n = draft, acceptor, first, pos, n
        self.tokens: list[int] = []
        self.q_rows: list = []
        self.fed = pos                          # the draft's cache is valid below this position
        self.e0 = threading.Event()             # e_0 is proposed (or the job failed)
        self.stop = threading.Event()
        self.t0 = self.t1 = 0.0

    def __call__(self):
        self.t0 = time.perf_counter()
        try:
            x = self.first
            for i in range(self.n + 1):
                if self.stop.is_set():
                    break
                out = self.draft.step(np.array([x], np.int32), self.fed)
                self.fed += 1
                x, q = self.acceptor.propose(out.ids, out.logits)
                self.tokens.append(x)
                self.q_rows.append(q)
                if i == 0:
                    self.e0.set()
        finally:
            self.t1 = time.perf_counter()
            self.e0.set()


def _pin(cpus) -> set[int] | None:
    """Restrict the calling thread to `cpus` (Linux: sched_setaffinity(0) is the calling thread);
    returns its previous set, to restore. None when nothing is asked or the OS cannot."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError as e:
        raise UserError(f"cannot pin a model to cores {sorted(cpus)}: {e}") from None
    return before


def generate_overlapped(target: ModelChain, draft: ModelChain, prompt: list[int], gamma: int,
                        acceptor, max_new_tokens: int, eos_ids=(), on_tokens=None, log=None, past: int = 0,
                        cpus: dict[str, set[int]] | None = None) -> Generation:
    """speculative.generate's contract, with the draft working during each verify.
    cpus: {"draft": {..}, "target": {..}}: the cores each model's calling thread may run on
    (meaningful under local-sync, where a model's dispatches run on that thread)."""
    if gamma < 1 or draft is None:
        raise ValueError("the overlapped loop needs a draft and gamma >= 1")
    eos = set(int(e) for e in eos_ids)
    S = min(target.max_context, draft.max_context)
    cpus = cpus or {}
    restore = _pin(cpus.get("target"))
    pool = ThreadPoolExecutor(1, thread_name_prefix="build-sd-draft",
                              initializer=_pin, initargs=(cpus.get("draft"),))
    try:
        gen, seq = start(target, draft, prompt, gamma, acceptor, max_new_tokens, eos_ids, on_tokens, past)
        gen.metrics.overlap = True
        if seq is not None:
            _loop(gen, target, draft, seq, gamma, acceptor, max_new_tokens, eos, S, on_tokens, log, pool)
        return gen
    finally:
        pool.shutdown(wait=True)          # a draft call in flight finishes; nothing outlives us
        if restore is not None:
            os.sched_setaffinity(0, restore)


def _loop(gen: Generation, target: ModelChain, draft: ModelChain, seq: list[int], gamma: int, acceptor,
          max_new_tokens: int, eos: set[int], S: int, on_tokens, log, pool: ThreadPoolExecutor) -> None:
    m = gen.metrics
    t_pos = d_pos = len(seq) - 1
    before = _Snapshot.take(target, draft)
    built = set(target.verify_T) | {1}
    ready = None                         # (drafts, q_rows) of a block e_0 made ready, or None
    job = fut = None
    try:
        while True:
            remaining = max_new_tokens - len(gen.token_ids)
            room = S - t_pos
            if stopped(m, remaining, room, S, log):
                break
            g = _gamma_now(gamma, remaining, room, built)
            if ready is not None and len(ready[0]) >= g:
                drafts, q_rows = ready[0][:g], ready[1][:g]
                m.ready_blocks += 1 if g > 0 else 0
                d_pos = t_pos + g         # fed x..d_{g-1}; what it fed beyond is re-fed
            else:
                drafts, q_rows, d_pos, _ = _draft_block(draft, acceptor, seq, d_pos, g)
            ready = None
            job = fut = None
            if g > 0:
                # the next block as if this one (and e_0) were all accepted
                g_next = max(0, _gamma_now(gamma, remaining - (g + 1), room - (g + 1), built))
                job = _Speculation(draft, acceptor.fork(_seed(acceptor)), drafts[-1], d_pos, g_next)
                fut = pool.submit(job)
            tv0 = time.perf_counter()
            vout = target.step(np.array([seq[-1]] + drafts, np.int32), t_pos)
            tv1 = time.perf_counter()
            if job is not None:
                job.e0.wait()
                if not job.tokens:        # the draft thread failed before proposing e_0
                    _result(fut)
                e0, q0 = job.tokens[0], job.q_rows[0]
                n_acc, nxt = acceptor.accept(drafts + [e0], q_rows + [q0], vout.ids, vout.logits, bonus=False)
                m.judge(n_acc, g + 1)
                if nxt is None:           # all g+1 accepted: e_0 is emitted, e_1.. are the next block
                    _result(fut)
                    new_tokens = drafts + [e0]
                    ready = (job.tokens[1:], job.q_rows[1:])
                else:
                    job.stop.set()
                    _result(fut)
                    new_tokens = drafts[:n_acc] + [nxt]
                    m.wasted_draft_tokens += len(job.tokens)
                m.overlap_s += max(0.0, min(tv1, job.t1) - max(tv0, job.t0))
                d_pos = job.fed
            else:
                n_acc, nxt = acceptor.accept([], [], vout.ids, vout.logits)
                m.iterations += 1
                new_tokens = [nxt]
            t_pos += 1 + min(n_acc, g)    # x, d_1..d_n are in the target's cache now
            d_pos = min(d_pos, t_pos)
            if emit(gen, seq, new_tokens, eos, remaining, on_tokens)[1]:
                break
    finally:
        if job is not None:
            job.stop.set()
    if ready is not None:
        m.wasted_draft_tokens += len(ready[0])
    before.record_into(m, target, draft)
    gen.cached = min(t_pos, d_pos)


def _result(fut) -> None:
    """Wait for the draft thread's job; its error becomes the caller's, in one line (exit 2)."""
    try:
        fut.result()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the draft thread ends the generation
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"the draft failed while the target verified: {type(e).__name__}: {first}") from e


def _seed(acceptor) -> int:
    """A seed for the draft thread's generator, drawn from the acceptor's own (None for greedy)."""
    rng = getattr(acceptor, "rng", None)
    return int(rng.integers(2**63)) if rng is not None else 0
