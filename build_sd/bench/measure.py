"""Step 4 of `build-sd bench`: the timed passes. Configurations alternate round by round (A B C,
B C A, ...), each round bracketed by in-situ re-profiles and predicted from their mean."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import PlanConfig, Profile
from .options import BenchOptions
from .predict import Predictor, mean_predictions


def bandwidth_gbs() -> float:
    from ..runtime.hostinfo import measure_bandwidth_gbs
    return measure_bandwidth_gbs(32, 3)


@dataclass
class Split:
    """One configuration's timed rounds summed: iterations, tokens and seconds by part, to say
    which term of the cost model an error comes from."""
    iterations: int = 0
    emitted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    host_s: float = 0.0

    def add(self, m) -> None:
        self.iterations += m.iterations
        self.emitted += m.emitted
        self.draft_s += m.draft_s
        self.verify_s += m.verify_s
        self.host_s += m.host_s

    def parts_ms(self) -> dict:
        n = max(1, self.iterations)
        return {k: round(getattr(self, f"{k}_s") * 1e3 / n, 5) for k in ("draft", "verify", "host")}


class Runner:
    """Runs a configuration's pass over the prompts. A configuration with a module on lavapipe
    opens its session for its own passes only: an idle lavapipe device spins two threads for as
    long as it lives and slowed the CPU configurations measured beside it by 20-50 %
    (docs/FINDINGS.md)."""

    def __init__(self, chosen: list[PlanConfig], bundles: list[Path], prompts: list[str], opts: BenchOptions):
        from ..runtime.devices import release_vulkan
        from ..runtime.prompts import encode_as
        self.chosen, self.bundles, self.opts = chosen, bundles, opts
        self.lavapipe = [self._on_lavapipe(b) for b in bundles]
        self.sessions = [None if lvp else self._open(b) for b, lvp in zip(bundles, self.lavapipe)]
        enc_session = next((s for s in self.sessions if s), None) or self._open(bundles[0])
        self.prompts = [encode_as(enc_session, p, opts.chat) for p in prompts]
        del enc_session
        release_vulkan()
        self.split = [Split() for _ in chosen]

    @staticmethod
    def _on_lavapipe(bundle: Path) -> bool:
        from ..runtime.checks import read_bundle_manifest
        return "vulkan-llvmpipe" in read_bundle_manifest(bundle).presets

    def _open(self, bundle: Path):
        from ..runtime.session import open_bundle
        s = open_bundle(bundle, random_weights=self.opts.random_weights)
        s.warmup()
        return s

    def one_pass(self, i: int, seed: int, record: bool = False) -> float:
        """Tokens/s of configuration i over the prompts (lavapipe: loaded for this pass only)."""
        from ..runtime.devices import release_vulkan
        s = self.sessions[i] or self._open(self.bundles[i])
        try:
            return self._pass(i, s, seed, record)
        finally:
            if self.sessions[i] is None:
                del s
                release_vulkan()

    def _pass(self, i: int, s, seed: int, record: bool) -> float:
        from ..runtime.sampling import GreedyAcceptor, SimulatedAcceptor
        from ..runtime.speculative import generate
        g, alpha = self.chosen[i].gamma, self.opts.simulate_alpha
        toks, secs = 0, 0.0
        for j, ids in enumerate(self.prompts):
            acc = (SimulatedAcceptor(alpha, np.random.default_rng(1000 * seed + j))
                   if alpha is not None and g > 0 else GreedyAcceptor())
            m = generate(s.target, s.draft if g else None, ids, g, acc, self.opts.max_new_tokens, s.eos_ids,
                         overlap=self.chosen[i].overlap).metrics
            toks += m.emitted
            secs += m.decode_s
            if record:
                self.split[i].add(m)
        return toks / secs


@dataclass
class Rounds:
    tps: list[list[float]]                 # per configuration: measured tokens/s per round
    preds: list[list[float]]               # per configuration: predicted tokens/s per round
    bandwidth: list[float]                 # GB/s before each round and after the last
    last: dict = field(default_factory=dict)   # the last round's predictions (key -> PlanConfig)


def measure_rounds(runner: Runner, predictor: Predictor, prof: Profile, reprofile, opts: BenchOptions,
                   log) -> Rounds:
    """Warm-up passes, then the alternating rounds. Each round is bracketed by two profiles (the
    one after round r opens round r + 1) and predicted from their mean: a drift that is linear
    over the round cancels."""
    n = len(runner.chosen)
    for w in range(opts.warmup):       # untimed: page in weights, grow pools, settle the clocks
        t = time.perf_counter()
        for i in range(n):
            runner.one_pass(i, 10_000 + w)     # seeds apart from the timed rounds
        log(f"warm-up {w + 1}/{opts.warmup}: {time.perf_counter() - t:.1f}s")
    keys = [c.key for c in runner.chosen]
    pred0 = predictor.predict(prof)
    out = Rounds([[] for _ in keys], [[] for _ in keys], [])
    pr_next = predictor.predict(reprofile()) if reprofile else pred0
    for r in range(opts.rounds):
        out.bandwidth.append(bandwidth_gbs())
        pr_start = pr_next
        order = list(range(n))
        for i in order[r % n:] + order[:r % n]:
            out.tps[i].append(runner.one_pass(i, r, record=True))
        pr_next = predictor.predict(reprofile()) if reprofile else pred0
        out.last = pr_start if pr_next is pr_start else mean_predictions(pr_start, pr_next)
        for i, k in enumerate(keys):
            out.preds[i].append(out.last[k].pred_tokens_per_s)
        errs = [(out.preds[i][-1] - out.tps[i][-1]) / out.tps[i][-1] for i in range(n)]
        log(f"round {r + 1}/{opts.rounds}: bandwidth {out.bandwidth[-1]:.1f} GB/s, median |error| "
            f"{100 * statistics.median(abs(e) for e in errs):.1f}%")
    out.bandwidth.append(bandwidth_gbs())
    return out
