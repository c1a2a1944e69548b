"""`build-sd profile`: measure, on the machine that will run, what the cost model needs (no torch).

For every artifacts folder (or both models of a bundle), on every preset this machine can run:
- the mean and median latency (and p10/p90) of every subgraph function, called as the runner
  calls it (its pos/length uploads and, for the head, the ids readback included), after a
  warm-up ("isolated");
- the same functions timed inside real speculative loops, draft and target taking turns with
  the runner's host work between calls ("in situ"): what a generation pays, and what the
  planner reads where measured;
- the whole-model step (all subgraphs on that preset) for each function, as a cross-check;
- the cost of moving a hidden state between two devices (download + upload), fitted as
  fixed + per-byte over several sizes;
- the host's per-iteration overhead of the speculative loop, per gamma;
- for every pair of devices (the draft on one, the target on the other, the same device
  included), how much each model's calls slow while the other model computes (contention: shared
  memory bandwidth, shared cores), and the thread handoff of the overlapped loop.
The profile (contract.Profile) names the machine, the device names, the IREE runtime version
and the sha256 of every module it measured, so a profile that does not match the artifacts can
be refused (check_profile_matches).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import numpy as np

from ..contract import (ArtifactsManifest, BundleManifest, ContentionFit, ExportRecord, FnStats, HostCost, Machine, PresetRecord,
                        ProfiledModel, ProfiledSubgraph, Profile, TransferFit, function_name)
from ..errors import UserError
from ..fsutil import sha256_file
from .chain import ModelChain, PlacedSubgraph
from .checks import runtime_version
from .compat import can_run
from .devices import DTYPES, DevicePool, max_allocation_bytes, release_vulkan, retry_if_lost
from .memory import ram_bytes
from .hostinfo import cpu_model_name


def _stats(samples_s: list[float]) -> FnStats:
    a = np.array(samples_s) * 1e3
    # the mean is what a throughput pays (stragglers included); the median is for reading
    return FnStats(mean_ms=round(float(a.mean()), 5), median_ms=round(float(np.median(a)), 5),
                   p10_ms=round(float(np.percentile(a, 10)), 5), p90_ms=round(float(np.percentile(a, 90)), 5),
                   n=len(a))


def _reps_for(first_ms: float, budget_s: float, lo: int = 7, hi: int = 200) -> int:
    """Enough repetitions for a stable median within a time budget per function."""
    return int(max(lo, min(hi, budget_s * 1e3 / max(first_ms, 1e-3))))


@dataclass
class ModelSource:
    """One model to profile: an artifacts folder, or one of a bundle's two models."""
    name: str
    dir: Path
    export: ExportRecord
    irpa: Path
    presets: dict[str, PresetRecord]
    modules: dict[str, str] | None = None     # bundle: subgraph -> module file (one preset each)

    def module_file(self, preset: str, sub: str) -> str:
        return self.modules[sub] if self.modules is not None else f"{preset}/{sub}.vmfb"


def load_model_source(path: Path) -> list[ModelSource]:
    """The models of an artifacts folder (one) or of a bundle (draft and target)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"artifacts folder or bundle not found: {path}")
    kind = _kind_of(path / "manifest.json")
    if kind == "build_sd.bundle":
        man = BundleManifest.read(path / "manifest.json")
        out = []
        for role, m in man.models.items():
            out.append(ModelSource(role, path, ExportRecord.read(path / m.files.export), path / m.files.irpa,
                                   {ref.preset: man.presets[ref.preset] for ref in m.modules.values()},
                                   {sub: ref.file for sub, ref in m.modules.items()}))
        return out
    man = ArtifactsManifest.read(path / "manifest.json", "run `build-sd compile` first")
    export = ExportRecord.read(path / "export.json", "run `build-sd export` first")
    return [ModelSource(export.name, path, export, path / "model.irpa", dict(man.presets))]


def _kind_of(manifest: Path) -> str | None:
    try:
        return msgspec.json.decode(manifest.read_bytes()).get("kind")
    except (OSError, msgspec.DecodeError, AttributeError):
        return None


def profile_key(preset: str, driver: str) -> str:
    """Where a profile files a preset's figures: PRESET for its own driver, PRESET@local-sync for
    llvm-cpu modules run on the calling thread."""
    return f"{preset}@{driver}" if driver == "local-sync" else preset


def profile(paths: list[str | Path], devices: list[str] | None = None, budget_s: float = 0.4,
            log=print, cpu_drivers: tuple[str, ...] = ("local-task", "local-sync"),
            isolated: bool = True, in_situ_tokens: int = 64, random_weights: int | None = None,
            contention_rounds: int = 3) -> Profile:
    """isolated=False: only the in-situ loops (and the host, transfers), for a quick re-profile
    laid over a full one (bench): the isolated calls take most of a profile's time.
    contention_rounds: the least rounds of each device pair's contention loops (_measure_contention;
    fewer where they would take over 40 s).
    in_situ_tokens: tokens each in-situ loop generates. The first calls after a prefill cost
    more (demo pair: loops of 24 tokens timed verify_T2 4 % and decode 2.5 % above loops of 64),
    so the loops should be as long as the workload's generations; 64 by default.
    random_weights: draw the weights (seeded) instead of reading the .irpa files."""
    for d in devices or []:
        if d not in ("cpu", "vulkan"):
            raise UserError(f"--devices: unknown device class {d!r} (cpu, vulkan)")
    try:
        # a lost lavapipe device breaks every chain on it: the whole profile runs again
        return retry_if_lost(lambda: _Profiler(paths, budget_s, log, cpu_drivers, isolated, in_situ_tokens,
                                               random_weights, contention_rounds).run(devices), "the profile")
    finally:
        release_vulkan()        # every chain of the profile is gone: lavapipe spins while its device lives


class _Profiler:
    def __init__(self, paths, budget_s, log, cpu_drivers, isolated, in_situ_tokens, random_weights,
                 contention_rounds: int):
        self.budget_s, self.log, self.cpu_drivers = budget_s, log, cpu_drivers
        self.contention_rounds = contention_rounds
        self.isolated, self.in_situ_tokens, self.random_weights = isolated, in_situ_tokens, random_weights
        self.pool = DevicePool()
        self.sources = [src for p in paths for src in load_model_source(Path(p))]
        self.models = [ProfiledModel(
            name=s.name, source=s.export.source, fingerprint=s.export.fingerprint, dtype=s.export.dtype,
            quant=s.export.quant,
            max_context=s.export.max_context, config=s.export.config,
            subgraphs=[ProfiledSubgraph(name=sg.name, label=sg.label, kind=sg.kind, start=sg.start, end=sg.end)
                       for sg in s.export.subgraphs]) for s in self.sources]
        self.host_ms: list[tuple[int, float]] = []
        self.contention: dict[str, ContentionFit] = {}
        self._twins: dict[int, ModelChain] = {}      # a model drafting for itself: its second instance

    def run(self, devices: list[str] | None) -> Profile:
        # One device class after the other, the CPU first: an idle lavapipe device keeps two
        # threads spinning for as long as it lives (docs/FINDINGS.md), so the CPU is timed
        # before one exists (the CPU pairs' contention too).
        done: dict[str, list[tuple[ProfiledModel, ModelChain]]] = {}
        for cls in ("cpu", "vulkan"):
            if not devices or cls in devices:
                by_key = self._isolated(cls)
                for key, group in by_key.items():
                    self._in_situ(key, group)
                done.update(by_key)
                if self.isolated:         # a quick re-profile (bench) keeps the full one's figures
                    self._contention(done, set(by_key))
        if not any(m.latency for m in self.models):
            raise UserError("nothing in these artifacts can run on this machine")
        return Profile(
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            machine=Machine(cpu=cpu_model_name(), arch=platform.machine(), node=platform.node(),
                            devices={drv: d.name for drv, d in self.pool.devices.items()},
                            # what the planner cuts models to for this board's GPU
                            max_allocation_bytes={drv: n for drv in self.pool.devices
                                                  if (n := max_allocation_bytes(drv)) is not None},
                            ram_bytes=ram_bytes()),
            iree_runtime=runtime_version(), models=self.models,
            transfer=_profile_transfers(self.pool, self.models, self.log), host=self._host(),
            contention=self.contention)

    def _isolated(self, cls: str) -> dict[str, list[tuple[ProfiledModel, ModelChain]]]:
        """Load every model on every preset of this device class that runs here; time each
        function alone (unless isolated=False). Returns the chains by profile key."""
        by_key: dict[str, list[tuple[ProfiledModel, ModelChain]]] = {}
        for src, entry in zip(self.sources, self.models):
            for preset, info in src.presets.items():
                if info.device_class != cls:
                    continue
                ok, why = can_run(info)
                if not ok:
                    entry.skipped[preset] = why
                    continue
                # a CPU preset is measured under each CPU driver asked for: local-task (IREE's
                # worker pool, the preset's own) keyed by the preset, local-sync (the calling
                # thread) keyed PRESET@local-sync; the planner treats them as two devices
                variants = ([(profile_key(preset, d), d) for d in self.cpu_drivers] if cls == "cpu"
                            else [(preset, info.driver)])
                for key, driver in variants:
                    chain = self._chain(src, entry, preset, driver)
                    if self.isolated:
                        self.log(f"profiling {src.name} on {key} ({self.pool.get(driver).name}): isolated calls")
                        entry.latency[key], entry.step[key] = _profile_chain(chain, self.budget_s)
                    else:
                        entry.latency[key], entry.step[key] = {}, {}
                    by_key.setdefault(key, []).append((entry, chain))
        return by_key

    def _chain(self, src: ModelSource, entry: ProfiledModel, preset: str, driver: str) -> ModelChain:
        placed = []
        for sg in src.export.subgraphs:
            rel = src.module_file(preset, sg.name)
            entry.modules[rel] = sha256_file(src.dir / rel)
            placed.append(PlacedSubgraph(sg, src.dir / rel, driver, preset))
        chain = ModelChain(self.pool, src.export, src.irpa, placed, self.random_weights)
        chain.warmup()
        return chain

    def _in_situ(self, key: str, group: list[tuple[ProfiledModel, ModelChain]]) -> None:
        """The same functions timed inside real speculative loops (draft and target taking turns,
        the runner's host work between calls): what a generation pays. These replace the
        isolated means the planner reads; the isolated figures stay beside them."""
        group = sorted(group, key=lambda ec: ec[1].export.config.hidden_size * ec[1].export.config.num_layers)
        draft_e, draft = group[0]
        target_e, target = group[-1]
        if target is draft:                  # one model: its second instance drafts (own caches)
            draft = ModelChain(self.pool, target.export, target.irpa, target.placed, self.random_weights)
            draft.warmup()
        self.log(f"profiling on {key}: in situ (speculative loops, gamma 0..{max(target.verify_T) - 1})")
        times, host = _in_situ(target, draft, self.budget_s, self.in_situ_tokens)
        self.host_ms += host
        for e, c in ((target_e, target), (draft_e, draft)):
            for (stage, fname), (sec, n) in times[id(c)].items():
                fns = e.latency[key].setdefault(stage, {})
                isolated, mean = fns.get(fname), round(sec / n * 1e3, 5)
                fns[fname] = (msgspec.structs.replace(isolated, mean_ms=mean, in_situ_n=n,
                                                      isolated_mean_ms=isolated.mean_ms)
                              if isolated else FnStats(mean_ms=mean, in_situ_n=n))

    def _contention(self, by_key: dict, new: set[str]) -> None:
        """Each (draft key, target key) pair not measured yet with one of them among `new`: the draft
        is the smallest model profiled, the target the largest (one model: it plays both, as two
        instances with their own caches)."""
        models = sorted({id(c): (e, c) for g in by_key.values() for e, c in g}.values(),
                        key=lambda ec: ec[1].export.config.hidden_size * ec[1].export.config.num_layers)
        if not models:
            return
        small, big = models[0][1].export.source.config_sha256, models[-1][1].export.source.config_sha256
        sync = _handoff_ms()
        for dk, dgroup in by_key.items():
            for tk, tgroup in by_key.items():
                if (dk not in new and tk not in new) or f"{dk}|{tk}" in self.contention:
                    continue
                if dk == tk and not dk.endswith("@local-sync"):
                    continue        # one worker pool or one GPU queue serves a model at a time

                draft, target = self._loop_pair(dgroup, tgroup, small, big)
                if draft is None or target is None:
                    continue
                # each model's own device's loop (both models there), timed in the same rounds:
                # ContentionFit.sequential is the pair's loop over those, side by side
                own = None
                if dk != tk:
                    own_t, own_d = self._loop_pair(tgroup, tgroup, small, big), self._loop_pair(dgroup, dgroup, small, big)
                    if None not in own_t + own_d:
                        own = (own_t, own_d)
                fit = _measure_contention(draft, target, self.budget_s, sync, own=own,
                                          min_rounds=self.contention_rounds)
                if dk != tk and not fit.sequential:
                    fit = msgspec.structs.replace(fit, sequential=_pair_factors(fit, by_key, dk, tk, small, big))
                self.contention[f"{dk}|{tk}"] = fit
                seq = (f"; sequential: target x{fit.sequential[0]:.2f}, draft x{fit.sequential[1]:.2f}"
                       if fit.sequential else "")
                self.log(f"contention draft@{dk} + target@{tk}: target x{fit.target:.2f}, draft x{fit.draft:.2f}{seq}"
                         f" ({fit.rounds} rounds)")
        self._twins.clear()

    def _loop_pair(self, dgroup, tgroup, small: str, big: str) -> tuple[ModelChain | None, ModelChain | None]:
        """(draft, target): the smallest model's chain in dgroup, the largest's in tgroup; one model
        on one key plays both as a second instance with its own caches (made once, kept)."""
        draft = next((c for e, c in dgroup if c.export.source.config_sha256 == small), None)
        target = next((c for e, c in tgroup if c.export.source.config_sha256 == big), None)
        if draft is not None and draft is target:
            twin = self._twins.get(id(target))
            if twin is None:
                twin = self._twins[id(target)] = ModelChain(self.pool, target.export, target.irpa, target.placed,
                                                            self.random_weights)
                twin.warmup()
            draft = twin
        return draft, target

    def _host(self) -> HostCost | None:
        # the host's work per iteration grows with gamma (one acceptance test per drafted token):
        # 0.015 ms at gamma 0 against 0.06 at gamma 4 for the demo pair, 3 % of a token there
        if not self.host_ms:
            return None
        return HostCost(ms_per_iteration=round(float(np.median([ms for _, ms in self.host_ms])), 5),
                        by_gamma={str(g): round(float(np.median([ms for gg, ms in self.host_ms if gg == g])), 5)
                                  for g in sorted({g for g, _ in self.host_ms})})


def _in_situ(target: ModelChain, draft: ModelChain, budget_s: float, tokens: int = 64):
    """Run speculative loops for every gamma and prompt bucket; per-stage mean times."""
    from .sampling import GreedyAcceptor, SimulatedAcceptor
    from .speculative import generate
    rng = np.random.default_rng(0)
    V = min(target.export.config.vocab_size, draft.export.config.vocab_size)
    target.stage_times, draft.stage_times = {}, {}
    gammas = [0] + [T - 1 for T in target.verify_T]
    S = min(target.max_context, draft.max_context)
    prompts = [rng.integers(3, V, size=max(1, P - 1)).astype(np.int32) for P in target.prefill_buckets
               if P <= S - 12]
    host = []
    t_end = time.perf_counter() + budget_s * len(gammas) * max(1, len(prompts))
    rounds = 0
    # one round at least (a slow device, e.g. lavapipe, gets no more), then up to the budget
    while rounds < 1 or (time.perf_counter() < t_end and rounds < 8):
        for prompt in prompts:
            for g in gammas:
                n = min(tokens, S - len(prompt) - g - 2)
                if n < 2:
                    continue
                acc = SimulatedAcceptor(0.7, rng) if g else GreedyAcceptor()
                m = generate(target, draft if g else None, prompt, g, acc, n, []).metrics
                if m.iterations:
                    host.append((g, m.host_s * 1e3 / m.iterations))
        rounds += 1
    times = {id(target): target.stage_times, id(draft): draft.stage_times}
    target.stage_times = draft.stage_times = None
    return times, host


def _handoff_ms(n: int = 200) -> float:
    """A no-op handed to a worker thread and waited for, as the overlapped loop does once an
    iteration (median ms)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        pool.submit(int).result()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            pool.submit(int).result()
            ts.append(time.perf_counter() - t)
    return round(float(np.median(ts)) * 1e3, 5)


def _measure_contention(draft: ModelChain, target: ModelChain, budget_s: float, sync_ms: float,
                        tokens: int = 64, own: tuple | None = None, min_rounds: int = 3,
                        min_rounds_s: float = 40.0) -> ContentionFit:
    """The overlapped loop itself (overlap.py), timed beside the sequential loop (speculative.py),
    alternating A B A B over the in-situ loops' prompts at one gamma (a middle one), simulated
    acceptance 0.7: what each model's calls cost when the other computes at once, as the loop lives
    it, and in the pair's sequential loop (ContentionFit.sequential).

    own: ((draft, target) on the target's device, (draft, target) on the draft's device) when the
    two are different devices: their sequential loops join the rotation (A B C D), and
    `sequential` is the pair's per-call time over theirs. Computed from figures taken minutes apart
    (the in-situ phase, then this one) that ratio read the machine's drift, not the pair: the real
    pair's target x1.19 / draft x1.34 in one run, 0.99 / 0.95 in the next (docs/FINDINGS.md).

    Rounds: up to the budget and at least `min_rounds` while they take under `min_rounds_s` in
    all (one round of a real model's loops is a few seconds, a single window of this noisy
    machine; a slow device, e.g. lavapipe, gets one).

    The cost model's rate model (costmodel.together_ms) says a model computing beside the other for
    O ms runs 1/k as fast meanwhile, so its call takes its alone time + O (1 - 1/k). Over all the
    overlapped loop's calls: 1 - 1/k = (their total time - as many calls' sequential time) / (the
    total time both computed), a regression through the origin over every iteration. An earlier
    form timed one verify against one draft job and inverted the rate model per pattern: when the
    verify slowed by about the job's length the inversion divided by ~0 (the demo pair's local-sync
    pair came out 4.9 while its loop's verify did not slow at all: docs/FINDINGS.md)."""
    from .overlap import generate_overlapped
    from .sampling import SimulatedAcceptor
    from .speculative import generate
    T = target.verify_T[len(target.verify_T) // 2] if target.verify_T else 1
    g = T - 1
    if g < 1:                   # no verify function: no overlapped loop can run on this pair
        return ContentionFit(target=1.0, draft=1.0, sync_ms=sync_ms, verify_T=T)
    rng = np.random.default_rng(0)
    V = min(target.export.config.vocab_size, draft.export.config.vocab_size)
    S = min(target.max_context, draft.max_context)
    # the in-situ loops' prompts (one per prefill bucket), so that `sequential` compares like with like
    prompts = [rng.integers(3, V, size=max(1, P - 1)).astype(np.int32) for P in target.prefill_buckets
               if P <= S - 12 and S - P - g - 1 >= 2] or [np.ones(1, np.int32)]
    fv, fd = function_name("verify", T), function_name("verify", 1)
    # the rotation, in order: sequential, overlapped, then each model's own device's sequential loop
    loops = {"seq": (draft, target), "ovl": (draft, target), **({"own_t": own[0], "own_d": own[1]} if own else {})}
    acc = {name: {"v": [0.0, 0], "d": [0.0, 0]} for name in loops if name != "ovl"}
    ovl = {"v": [0.0, 0], "d": [0.0, 0], "both": 0.0}

    def add(into, tt, td):
        for key, times, fname in (("v", tt, fv), ("d", td, fd)):
            s, c = _per_call(times, fname)
            into[key][0] += s
            into[key][1] += c

    def once(name: str, prompt):
        d, t = loops[name]
        n = min(tokens, S - len(prompt) - g - 2)
        t.stage_times, d.stage_times = {}, {}
        try:
            if name == "ovl":
                m = generate_overlapped(t, d, list(prompt), g, SimulatedAcceptor(0.7, rng), n).metrics
                ovl["both"] += m.overlap_s
                add(ovl, t.stage_times, d.stage_times)
            else:
                generate(t, d, prompt, g, SimulatedAcceptor(0.7, rng), n, [])
                add(acc[name], t.stage_times, d.stage_times)
        finally:
            t.stage_times = d.stage_times = None
    order = list(loops)
    for name in order[:2]:      # warm-up: the worker thread, both loops' first calls (the own loops
        once(name, prompts[0])  # ran in the in-situ phase)
    for a in acc.values():
        a.update(v=[0.0, 0], d=[0.0, 0])
    ovl.update(v=[0.0, 0], d=[0.0, 0], both=0.0)
    # A B (C D) A B (C D) over the prompts, then up to the budget
    t0 = time.perf_counter()
    t_end = t0 + budget_s * 2 * len(order) * len(prompts)
    rounds = 0
    while rounds < 1 or (rounds < 12 and (time.perf_counter() < t_end
                                          or (rounds < min_rounds and time.perf_counter() - t0 < min_rounds_s))):
        for prompt in prompts:
            for name in order:
                once(name, prompt)
        rounds += 1

    def per_call(a, key):
        return a[key][0] / max(a[key][1], 1)
    vs, ds = per_call(acc["seq"], "v"), per_call(acc["seq"], "d")
    vm, dm = per_call(ovl, "v"), per_call(ovl, "d")

    def factor(extra_s: float) -> float:
        # running beside another model cannot make one faster: below 1 is noise; nor is it ever 20
        slope = extra_s / ovl["both"] if ovl["both"] > 0 else 0.0
        return round(min(20.0, 1.0 / (1.0 - min(max(slope, 0.0), 0.95))), 4)
    own_v, own_d = (per_call(acc["own_t"], "v"), per_call(acc["own_d"], "d")) if own else (0.0, 0.0)
    sequential = [round(vs / own_v, 4), round(ds / own_d, 4)] if own_v > 0 and own_d > 0 else []
    return ContentionFit(target=factor(ovl["v"][0] - ovl["v"][1] * vs), draft=factor(ovl["d"][0] - ovl["d"][1] * ds),
                         sync_ms=sync_ms, verify_T=T, alone_ms=[round(vs * 1e3, 5), round(ds * 1e3, 5)],
                         together_ms=[round(vm * 1e3, 5), round(dm * 1e3, 5)], sequential=sequential,
                         rounds=rounds)


def _pair_factors(fit: ContentionFit, by_key: dict, dk: str, tk: str, small: str, big: str) -> list[float]:
    """[target, draft]: the pair's sequential per-call times over each model's in-situ figures on
    its own device (the same function, the same prompts and lengths). The fallback when a model
    was not profiled on the other's device: those figures were taken minutes earlier."""
    def insitu(key: str, sha: str, fname: str) -> float | None:
        e = next((e for e, c in by_key[key] if c.export.source.config_sha256 == sha), None)
        stats = [fns.get(fname) for fns in (e.latency.get(key, {}) if e else {}).values()]
        return sum(s.mean_ms for s in stats) if stats and all(stats) else None
    t = insitu(tk, big, function_name("verify", fit.verify_T))
    d = insitu(dk, small, function_name("verify", 1))
    if not t or not d or len(fit.alone_ms) != 2:
        return []
    return [round(fit.alone_ms[0] / t, 4), round(fit.alone_ms[1] / d, 4)]


def _per_call(times: dict, fname: str) -> tuple[float, int]:
    """(total seconds, calls) of one function over a chain's stages (stage_times of ModelChain.step)."""
    hits = [v for (stage, f), v in times.items() if f == fname]
    return sum(s for s, _ in hits), max((c for _, c in hits), default=0)


def _functions_of(chain: ModelChain) -> dict[str, tuple[str, int]]:
    """function name -> (role, T) for every function the chain's modules have."""
    fns = {function_name("prefill", P): ("prefill", P) for P in chain.prefill_buckets}
    for T in [1] + chain.verify_T:
        fns[function_name("verify", T)] = ("decode" if T == 1 else "verify", T)
    return fns


def _profile_chain(chain: ModelChain, budget_s: float):
    """Per subgraph function latency and whole-step latency, all subgraphs on one device."""
    lat: dict[str, dict[str, FnStats]] = {st.meta.name: {} for st in chain.stages}
    step: dict[str, FnStats] = {}
    S = chain.max_context
    for fname, (role, T) in _functions_of(chain).items():
        positions = [p for p in range(0, S - T, max(1, (S - T) // 16))][:16] or [0]
        for st in chain.stages:
            lat[st.meta.name][fname] = _time_stage(chain, st, fname, role, T, positions, budget_s)
        step[fname] = _time_step(chain, role, T, positions, budget_s)
    return lat, step


def _time_stage(chain: ModelChain, st, fname: str, role: str, T: int, positions: list[int],
                budget_s: float) -> FnStats:
    """One subgraph function alone, with the uploads and readback the runner does around it."""
    rng = np.random.default_rng(0)
    dev, spec = st.device, st.spec
    D = chain.export.config.hidden_size
    if spec.has_tokens_in:
        x = dev.upload(rng.integers(0, 8, size=(1, T)).astype(np.int32))
    else:
        x = dev.upload(rng.standard_normal((1, T, D)).astype(chain.dtype))

    def once(i):
        t = time.perf_counter()
        pos_bv = dev.upload(np.array(positions[i % len(positions)], np.int32)) if spec.has_layers else None
        length_bv = dev.upload(np.array(T, np.int32)) if role == "prefill" and spec.has_head else None
        res = chain.invoke(st, fname, x, pos_bv, length_bv)
        if len(res) == 2:
            dev.download(res[0], DTYPES["i32"])
        return time.perf_counter() - t
    first = once(0)
    return _stats([once(i + 1) for i in range(_reps_for(first * 1e3, budget_s))])


def _time_step(chain: ModelChain, role: str, T: int, positions: list[int], budget_s: float) -> FnStats:
    """The whole step, as the runner calls it; the first call sets the repetitions."""
    toks = np.ones(T, np.int32)

    def once(i):
        t = time.perf_counter()
        if role == "prefill":
            chain.step(toks, 0, role="prefill", length=T)
        else:
            chain.step(toks, positions[i % len(positions)])
        return time.perf_counter() - t
    n = _reps_for(once(0) * 1e3, budget_s)
    return _stats([once(i + 1) for i in range(n)])


def _profile_transfers(pool: DevicePool, models: list[ProfiledModel], log) -> dict[str, TransferFit]:
    """download(A) + upload(B) of hidden-state sized buffers for each ordered device pair."""
    devs = pool.devices
    if len(devs) < 2:
        return {}
    D = max(m.config.hidden_size for m in models)
    out = {}
    for a_name, a in devs.items():
        for b_name, b in devs.items():
            if a is b:
                continue
            points = []
            for T in (1, 2, 5, 9, 16, 64):
                nbytes = T * D * 4
                src = a.upload(np.zeros((1, T, D), np.float32))
                a.transfer_from(b, b.upload(np.zeros(4, np.float32)), DTYPES["f32"])   # warm both paths
                ts = []
                for _ in range(15):
                    t = time.perf_counter()
                    b.transfer_from(a, src, DTYPES["f32"])
                    ts.append(time.perf_counter() - t)
                points.append((nbytes, float(np.median(ts)) * 1e3))
            x = np.array([p[0] for p in points]) / 1e6
            y = np.array([p[1] for p in points])
            slope, intercept = np.polyfit(x, y, 1)
            fit = TransferFit(fixed_ms=round(max(0.0, float(intercept)), 5), ms_per_mb=round(max(0.0, float(slope)), 5),
                              points=[[int(n), round(ms, 5)] for n, ms in points])
            out[f"{a_name}->{b_name}"] = fit
            log(f"transfer {a_name}->{b_name}: {fit.fixed_ms:.3f} ms + {fit.ms_per_mb:.3f} ms/MB")
    return out


def check_profile_matches(prof: Profile, artifacts_dir: str | Path) -> int:
    """Refuse a profile measured on other modules than these artifacts' (same model, same
    module file, different sha256: rebuilt with another compiler or flags). Returns how many
    modules were checked."""
    artifacts_dir = Path(artifacts_dir)
    export = ExportRecord.read(artifacts_dir / "export.json")
    checked = 0
    for m in prof.models_of(export.source.config_sha256):
        for rel, want in m.modules.items():
            f = artifacts_dir / rel
            if not f.exists():
                continue
            checked += 1
            if sha256_file(f) != want:
                raise UserError(f"the profile ({m.name}, {prof.date or '?'}) was measured on a "
                                f"different {rel} than {artifacts_dir} holds: the module was rebuilt "
                                "(compiler or flags changed); run build-sd profile again")
    return checked
