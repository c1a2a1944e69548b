"""`build-sd plan`: enumerate placements x gamma, predict each, rank, pick.

A model's placement is either the whole model on one device, or the model split at one layer
boundary k across two devices (embed + layers[0:k] on A, layers[k:L] on B) with the head on
either side. Draft placement x target placement x gamma in 0..8 are ranked by predicted time
per token; gamma 0 (target only, draft unused) competes with the rest, so it wins when
speculation does not pay.

Latencies come from a profile (`build-sd profile`, measured on the board) wherever it covers a
subgraph function, scaled from it where it covers the device but not the exact layer range,
and from the analytic roofline (roofline.py) elsewhere; every prediction says which.
Pure Python: no torch, no IREE (a board's plan is made from config.json files alone).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..contract import (Calibration, FnStats, ModelConfig, Placement, Plan, PlanConfig, PlanDevice, PlanModel,
                        Profile, SubgraphSpec, function_name, subgraph_specs)
from ..contract.layout import cut, kv_bytes, usable, weight_bytes
from ..errors import UserError
from .precision import WEIGHT_BYTES, allowed_targets, alpha_for, dtype_and_quant
from .costmodel import Contention, ModelCosts, Transfer, predict, predict_overlapped
from .platforms import Platform, get_platform
from .roofline import work

GAMMAS = range(0, 9)
STAT = "mean_ms"     # throughput pays the mean call time, stragglers included
ELT = {"f32": 4, "f16": 2}


def placements(num_layers: int, devices: list[str], same_compute: set | None = None,
               split: bool = True) -> list[Placement]:
    """same_compute: device pairs that are one processor under two drivers (cpu, cpu-sync): a
    model is never split across them (a transfer for nothing). split=False: whole models only."""
    out = [Placement(split=None, devices={"whole": d}, label=d) for d in devices]
    L = num_layers
    for k in range(1, L if split else 1):
        for a in devices:
            for b in devices:
                if a == b or frozenset((a, b)) in (same_compute or set()):
                    continue
                lo, hi = SubgraphSpec("layers", 0, k).name, SubgraphSpec("layers", k, L).name
                for head in (a, b):
                    out.append(Placement(split=[0, k], devices={"embed": a, lo: a, hi: b, "head": head},
                                         label=f"{a}[embed,0:{k}] {b}[{k}:{L}] head@{head}"))
    return out


def fit_to_limits(p: Placement, cfg: ModelConfig, dtype: str, S: int, platform: Platform) -> Placement | None:
    """The placement with its model cut so that every module placed on a device with an
    allocation limit fits it (contract/layout.py: cuts are added, each new module runs where its
    layers ran); None when some part cannot fit at all (the planner never emits it). A model
    with a module over the limit does not load: `RESOURCE_EXHAUSTED` (docs/FINDINGS.md)."""
    limits = [platform.devices[d].max_allocation_bytes for d in p.device_set]
    limits = [x for x in limits if x]
    if not limits:
        return p
    try:
        split = cut(cfg, dtype, S, usable(min(limits)), p.split)
    except UserError:
        return None
    if split == p.split:
        return p
    specs = subgraph_specs(cfg.num_layers, split)
    return Placement(split=split, devices={s.name: _device_of(p, s) for s in specs}, label=p.label)


def _device_of(p: Placement, spec: SubgraphSpec) -> str:
    """Where a module of a finer cut runs: where the module of `p` that contains it runs."""
    if "whole" in p.devices:
        return p.devices["whole"]
    if spec.kind != "layers":
        return p.devices[spec.kind]
    for name, dev in p.devices.items():
        if name.startswith("layers_"):
            outer = SubgraphSpec.from_name(name)
            if outer.start <= spec.start and spec.end <= outer.end:
                return dev
    raise ValueError(f"{spec.label} lies in no module of {p.label}")


# What the runner holds besides the models' weights and caches: Python, numpy, the IREE runtime,
# the tokenizer, activations. Measured: 0.06 GB for a 1B f32 target on the CPU (4.77 GB resident,
# 4.71 GB of weights; benchmarks/load_memory.py); rounded up.
RUNTIME_BYTES = 2 ** 28


# A Vulkan module's decoder layers hold more than their weights once loaded: on lavapipe
# (vulkan-spirv), the 1B's layers[0:8] (1856 MiB of weights) moved from the CPU to lavapipe added
# 888 MiB beyond the CPU's packed copy, while its embed (1002 MiB) added 1037 MiB (the device's
# own ~35); all four modules on lavapipe: 7447 MiB against 5992 MiB of module weights
# (benchmarks/load_memory.py, docs/FINDINGS.md). Which copies the layers keep (relayouts the
# initializer hoists?) is not known, nor whether a Mali target does the same: measured on one
# GPU, applied to all, erring towards refusing a pair rather than planning one that cannot load.
GPU_LAYER_COPY = 1.48


def resident_bytes(p: Placement, cfg: ModelConfig, dtype: str, S: int, platform: Platform,
                   quant: str = "none") -> int:
    """Host RAM a model placed as `p` holds once loaded: each module's weights and KV caches,
    on the CPU (llvm-cpu packs its own copy; the .irpa's pages are dropped after loading,
    runtime/memory.py) and on a GPU that shares the board's memory (Mali, lavapipe); a discrete
    GPU's buffers are not in it. While loading, the .irpa is read through the page cache too, but
    those pages are clean and the kernel reclaims them: a 1B f32 target (4.7 GB) loaded and ran
    under a 5 GiB memory cgroup (docs/FINDINGS.md), so they are not counted. An `embed` module on
    the CPU gathers its rows straight from the mapping (measured: no copy of the table), so its
    table is not counted either; on a GPU it is a buffer like any other. A GPU's decoder layers
    hold GPU_LAYER_COPY times their weights (measured on lavapipe, below)."""
    total = 0
    for spec in p.specs(cfg.num_layers):
        dev = platform.devices[_device_of(p, spec)]
        if dev.kind == "cpu" or platform.shared_memory:
            weights = 0 if (dev.kind == "cpu" and spec.kind == "embed") else weight_bytes(cfg, spec, dtype, quant)
            if dev.kind == "gpu" and spec.kind in ("layers", "whole"):
                layers = spec if spec.kind == "layers" else SubgraphSpec("layers", 0, cfg.num_layers)
                weights += int(weight_bytes(cfg, layers, dtype, quant) * (GPU_LAYER_COPY - 1))
            total += weights + kv_bytes(cfg, spec, dtype, S)
    return total



def usable_ram(platform: Platform) -> int | None:
    """What a board's RAM leaves to build_sd: less the OS, its services and a page cache
    (max(1 GiB, 1/8): an estimate, not a measurement); None: RAM unknown."""
    if not platform.ram_bytes:
        return None
    return platform.ram_bytes - max(2 ** 30, platform.ram_bytes // 8)


def with_measured_limits(platform: Platform, profile: Profile | None) -> Platform:
    """The platform with the allocation limits the profile probed on its devices, and the
    board's RAM it recorded."""
    if profile is not None and profile.machine.ram_bytes:
        platform = dataclasses.replace(platform, ram_bytes=profile.machine.ram_bytes)
    measured = profile.machine.max_allocation_bytes if profile is not None else {}
    if not measured:
        return platform
    devices = {n: (dataclasses.replace(d, max_allocation_bytes=measured[d.driver]) if d.driver in measured else d)
               for n, d in platform.devices.items()}
    return dataclasses.replace(platform, devices=devices)


def config_sha(ckpt: str | Path) -> str:
    """What ties a profile and a plan to a model: the sha256 of its config.json."""
    return hashlib.sha256((Path(ckpt) / "config.json").read_bytes()).hexdigest()


class Latencies:
    """ms of one subgraph call on one device, from the profile when it covers it."""

    def __init__(self, platform: Platform, cfg: ModelConfig, dtype: str, S: int,
                 profile: Profile | None, model_sha: str | None, quant: str = "none"):
        self.platform, self.cfg, self.dtype, self.S, self.quant = platform, cfg, dtype, S, quant
        # Every profiled export of this model (whole, split at k...) is one entry; merge them so
        # a placement reads the module it will run (the whole module for a whole placement, not
        # the sum of a split export's parts), preferring figures timed inside speculative loops.
        self.table: dict[str, dict[str, dict[str, FnStats]]] | None = None
        if profile:
            merged: dict = {}
            for m in profile.models_of(model_sha):
                if (m.dtype, m.quant) != (dtype, quant):    # another precision of the same model
                    continue
                self.S = m.max_context
                for preset, subs in m.latency.items():
                    for name, fns in subs.items():
                        slot = merged.setdefault(preset, {}).setdefault(name, {})
                        for fname, st in fns.items():
                            if fname not in slot or (st.in_situ and not slot[fname].in_situ):
                                slot[fname] = st
            self.table = merged or None
        self.sources: dict[str, int] = {}

    def _measured(self, preset: str, name: str, fname: str) -> float | None:
        st = ((self.table or {}).get(preset) or {}).get(name, {}).get(fname)
        return None if st is None else getattr(st, STAT)

    def _per_layer(self, lat: dict, fname: str) -> list[float]:
        """ms per layer of every profiled layer module of a device, for one function."""
        out = []
        for n, fns in lat.items():
            if n.startswith("layers_") and fname in fns:
                spec = SubgraphSpec.from_name(n)
                out.append(getattr(fns[fname], STAT) / (spec.end - spec.start))
        return out

    def ms(self, spec: SubgraphSpec, T: int, dev: str, prefill: bool = False) -> float:
        preset = self.platform.devices[dev].profile_key
        fname = function_name("prefill" if prefill else "verify", T)
        got = self._measured(preset, spec.name, fname)
        if got is not None:
            self._count("profile")
            return got
        lat = (self.table or {}).get(preset)
        if lat:
            per = self._per_layer(lat, fname)
            if spec.kind == "layers" and per:
                self._count("profile-scaled")       # per-layer time from the device's layer modules
                return sum(per) / len(per) * (spec.end - spec.start)
            if spec.kind == "whole" and per:
                parts = [self._measured(preset, n, fname) for n in ("embed", "head")]
                if None not in parts:
                    self._count("profile-sum")
                    return parts[0] + parts[1] + sum(per) / len(per) * spec.end
        # "analytic (IREE probe)": the roofline of a host CPU driver fitted to IREE's kernels here
        self._count("analytic (IREE probe)" if self.dtype in self.platform.devices[dev].fitted else "analytic")
        # exports attend to the filled slots (builder/model/llama.py): half the context on average
        w = work(self.cfg, spec.kind, spec.start, spec.end, T, max(1, self.S // 2), ELT[self.dtype], prefill,
                 weight_elt=WEIGHT_BYTES.get(self.quant))
        return self.platform.devices[dev].latency_ms(w, self.dtype)

    def _count(self, src):
        self.sources[src] = self.sources.get(src, 0) + 1


def model_costs(lat: Latencies, p: Placement, L: int, Ts: list[int]) -> ModelCosts:
    names = list(p.devices.values())
    crossings = sum(1 for x, y in zip(names, names[1:]) if x != y)
    specs = p.specs(L)
    step = {T: sum(lat.ms(s, T, p.devices[s.name]) for s in specs) for T in Ts}
    return ModelCosts(step, crossings, lat.cfg.hidden_size * ELT[lat.dtype])


def transfer_for(platform: Platform, profile: Profile | None, devs: set[str]) -> Transfer:
    """The crossing cost between the two devices of a placement (profile when measured)."""
    if len(devs) < 2:
        return Transfer()
    # local-sync buffers are host memory like local-task's: one transfer figure for both
    drivers = sorted(platform.devices[d].driver.replace("local-sync", "local-task") for d in devs)
    if len(set(drivers)) < 2:
        return Transfer()
    if profile and profile.transfer:
        ts = [v for k, v in profile.transfer.items() if sorted(k.split("->")) == drivers]
        if ts:
            return Transfer(sum(t.fixed_ms for t in ts) / len(ts), sum(t.ms_per_mb for t in ts) / len(ts))
    return Transfer(platform.transfer_fixed_ms, platform.transfer_ms_per_mb)


def check_profile_fits(profile: Profile, shas: dict[str, str], dtype: str, max_context: int,
                       asked: set[tuple[str, str]] | None = None) -> None:
    """The profile must have measured these models (config.json), with this context, in one of the
    (dtype, quant) precisions asked (default: the dtype alone); precisions it lacks are planned from
    the roofline."""
    asked = asked or {(dtype, "none")}
    have = {m.source.config_sha256 for m in profile.models}
    if not have & set(shas.values()):
        raise UserError("the profile was measured on other models (no config.json matches the "
                        "draft's or the target's): profile these models' artifacts")
    ours = [m for m in profile.models if m.source.config_sha256 in shas.values()]
    for m in ours:
        if m.max_context != max_context or not any((x.dtype, x.quant) in asked for x in ours):
            what = m.dtype if m.quant == "none" else f"{m.quant} ({m.dtype})"
            want = ", ".join(d if q == "none" else q for d, q in sorted(asked))
            raise UserError(f"the profile measured {m.name} as {what} with context "
                            f"{m.max_context}; the plan asks {want} with context {max_context} "
                            "(pass the same --dtype/--max-context/--precisions, or profile again)")


# Two devices on one shared memory bus, both streaming weights: how much each slows while the other
# computes, until a profile on the board measures it (`build-sd profile`: contention). An estimate.
SHARED_BUS_SLOWDOWN = 1.15
HANDOFF_MS = 0.05        # the overlapped loop's thread handoff per iteration (measured here: ~0.03-0.06)


def contention_for(platform: Platform, profile: Profile | None, d_dev: str, t_dev: str) -> Contention | None:
    """How the two models slow each other when the draft on d_dev computes during the target's
    verify on t_dev: the profile's measurement, else an estimate; None when the overlapped loop
    cannot run them at once (one device serving one model at a time)."""
    dk, tk = platform.devices[d_dev].profile_key, platform.devices[t_dev].profile_key
    if d_dev == t_dev and not (platform.devices[d_dev].driver == "local-sync" and platform.cores >= 2):
        # two local-sync threads take a core each; one local-task pool or one GPU queue serves a
        # model at a time (nothing to overlap)
        return None
    fit = (profile.contention.get(f"{dk}|{tk}") if profile is not None else None)
    if fit is not None:
        return Contention(fit.target, fit.draft, fit.sync_ms, "profile")
    if d_dev == t_dev:
        return Contention(SHARED_BUS_SLOWDOWN, SHARED_BUS_SLOWDOWN, HANDOFF_MS, "estimate")
    if not platform.concurrent:        # e.g. lavapipe on the CPU's cores: time-sliced
        return Contention(2.0, 2.0, HANDOFF_MS, "estimate: time-sliced")
    k = SHARED_BUS_SLOWDOWN if platform.shared_memory else 1.0
    return Contention(k, k, HANDOFF_MS, "estimate")


def pair_factors(platform: Platform, profile: Profile | None, d_dev: str, t_dev: str) -> tuple[float, float]:
    """(target, draft): how much longer each model's calls take in the sequential loop of this pair
    of devices than in its own device's in-situ loops (ContentionFit.sequential), 1 when the two
    share one device key or nothing measured it: e.g. a local-task target after a local-sync
    draft's calls wakes its workers, a local-sync model runs beside the still-spinning workers of
    the other's local-task pool (demo pair here: 1.15-1.26, docs/FINDINGS.md)."""
    dk, tk = platform.devices[d_dev].profile_key, platform.devices[t_dev].profile_key
    fit = profile.contention.get(f"{dk}|{tk}") if profile is not None and dk != tk else None
    if fit is None or len(fit.sequential) != 2:
        return 1.0, 1.0
    return fit.sequential[0], fit.sequential[1]


@dataclass
class _Ranked:
    draft: Placement | None
    target: Placement
    gamma: int
    ms_per_token: float
    expected_tokens: float
    parts: dict
    resident: int = 0
    overlap: bool = False
    draft_precision: str = ""
    target_precision: str = ""
    alpha_source: str = ""

    def record(self, best_ar: float) -> PlanConfig:
        return PlanConfig(draft=self.draft, target=self.target, gamma=self.gamma, resident_bytes=self.resident,
                          overlap=self.overlap, draft_precision=self.draft_precision if self.gamma else "",
                          target_precision=self.target_precision, alpha_source=self.alpha_source,
                          pred_ms_per_token=round(self.ms_per_token, 5),
                          pred_tokens_per_s=round(1000.0 / self.ms_per_token, 2),
                          expected_tokens=round(self.expected_tokens, 4),
                          speedup=round(best_ar / self.ms_per_token, 4),
                          parts_ms={k: round(v, 5) for k, v in self.parts.items()})


def make_plan(draft_ckpt: str | Path, target_ckpt: str | Path, platform: str | Platform,
              alpha: float | list[float] | None, profile: Profile | None = None, dtype: str = "f32",
              max_context: int = 512, gammas=GAMMAS, devices: list[str] | None = None,
              split: bool = True, keep_top: int | None = None, overlap: bool = True,
              precisions: list[str] | None = None, calibrations: list[Calibration] | None = None,
              min_agreement: float | None = None, draft_precisions: list[str] | None = None) -> Plan:
    """Rank every configuration; split=False: every model whole on one device; overlap=False:
    the sequential loop only. precisions: each model's precision is a dimension too (plan/precision.py;
    None: `dtype` alone), alpha per pair from `calibrations` (else `alpha` for all), and
    min_agreement keeps the target precisions whose measured agreement with f32 reaches it.
    draft_precisions: the draft's, when the caller builds fewer for it (default: `precisions`); a
    plan must not pick a draft precision that is not going to be built (the chat demo's draft is f32).
    keep_top: how many of
    the best the plan keeps besides the best of each device mapping (default KEEP_TOP; 0: all).
    platform: a preset name, or a Platform (the `host` one is built from this machine's
    HostInfo by the caller: plan/platforms.host_platform)."""
    platform = with_measured_limits(platform if isinstance(platform, Platform) else get_platform(platform), profile)
    cfgs = {r: ModelConfig.from_hf(c) for r, c in (("draft", draft_ckpt), ("target", target_ckpt))}
    shas = {"draft": config_sha(draft_ckpt), "target": config_sha(target_ckpt)}
    explicit = precisions is not None
    precs = list(precisions) if explicit else [dtype]
    d_precs = list(draft_precisions) if explicit and draft_precisions else precs
    if explicit and not set(d_precs) <= set(precs):
        raise UserError(f"draft precisions {','.join(d_precs)} must be among --precisions {','.join(precs)}")
    calibrations = list(calibrations or [])
    t_precs, excluded = allowed_targets(precs, calibrations, min_agreement)
    if profile is not None:
        check_profile_fits(profile, shas, dtype, max_context, {dtype_and_quant(p, dtype) for p in precs})
    devs = devices or list(platform.devices)
    for d in devs:
        if d not in platform.devices:
            raise UserError(f"platform {platform.name} has no device {d!r} ({', '.join(platform.devices)})")

    def latencies(role: str, prec: str) -> Latencies:
        fdtype, quant = dtype_and_quant(prec, dtype)
        return Latencies(platform, cfgs[role], fdtype, max_context, profile, shas[role], quant)
    ranked, sources = [], {"draft": {}, "target": {}}
    for tp in t_precs:
        for i, dp in enumerate(d_precs):
            lat = {"target": latencies("target", tp), "draft": latencies("draft", dp)}
            pa = alpha_for(dp, tp, calibrations, alpha) if (calibrations or alpha is not None) else None
            if pa is None:
                raise UserError("give --alpha A or --calibration calib.json")
            got = _rank(platform, profile, cfgs, lat, pa.alpha, list(gammas), devs, split, overlap)
            for c in got:
                if c.gamma == 0 and i > 0:
                    continue            # target only: once per target precision
                if explicit:
                    c.draft_precision, c.target_precision = dp, tp
                    c.alpha_source = pa.source if c.gamma else ""
                ranked.append(c)
            for r in ("draft", "target"):
                for k, n in lat[r].sources.items():
                    sources[r][k] = sources[r].get(k, 0) + n
    if alpha is None:
        alpha = alpha_for(d_precs[0], t_precs[0], calibrations, None).alpha
    best_ar = min(c.ms_per_token for c in ranked if c.gamma == 0)
    ranked.sort(key=lambda c: c.ms_per_token)
    n_ranked = len(ranked)
    if keep_top != 0:
        ranked = keep_ranked(ranked, KEEP_TOP if keep_top is None else keep_top)
    return Plan(
        platform=platform.name, platform_notes=platform.notes,
        devices={d: PlanDevice(platform.devices[d].preset, platform.devices[d].driver) for d in devs},
        draft=_model_record(draft_ckpt, shas["draft"], cfgs["draft"]),
        target=_model_record(target_ckpt, shas["target"], cfgs["target"]),
        alpha=alpha, dtype=dtype, max_context=max_context, split=split,
        precisions=precs if explicit else [], min_agreement=min_agreement, excluded=excluded,
        latency_sources=sources,
        profile=bool(profile), target_only_best_ms_per_token=round(best_ar, 5), configs_ranked=n_ranked,
        configs=[c.record(best_ar) for c in ranked])


KEEP_TOP = 100


def keep_ranked(ranked: list[_Ranked], top: int = KEEP_TOP) -> list[_Ranked]:
    """What plan.json keeps of a sorted ranking: the top `top`, and the best configuration of every
    (target devices, draft devices, gamma), so that `bench` and the GPU study can still pick the best
    of each mapping (draft on GPU + target on CPU, ...). A 3-device board ranks ~10^5 placements;
    all of them made a 92 MB plan.json."""
    keep, seen = list(ranked[:top]), set()
    for c in ranked:
        key = (frozenset(c.target.device_set), frozenset(c.draft.device_set) if c.draft else None, c.gamma,
               c.overlap)
        if key not in seen:
            seen.add(key)
            keep.append(c)
    out, ids = [], set()
    for c in sorted(keep, key=lambda c: c.ms_per_token):
        if id(c) not in ids:
            ids.add(id(c))
            out.append(c)
    return out


def _model_record(ckpt, sha: str, cfg: ModelConfig) -> PlanModel:
    return PlanModel(checkpoint=str(Path(ckpt).resolve()), config_sha256=sha, num_layers=cfg.num_layers,
                     parameters=cfg.num_parameters())


def _rank(platform: Platform, profile: Profile | None, cfgs: dict, lat: dict, alpha, gammas: list[int],
          devs: list[str], split: bool, overlap: bool = True) -> list[_Ranked]:
    """Every (target placement, draft placement, gamma) with its prediction, unsorted."""
    def host_ms(g: int) -> float:
        """The runner's own work per iteration at this gamma (profiled per gamma where known)."""
        if profile is not None and profile.host is not None:
            return profile.host.ms(g)
        return platform.host_ms_per_iteration
    tTs = sorted({1} | {g + 1 for g in gammas if g > 0})
    same = {frozenset((a, b)) for a in devs for b in devs
            if a != b and platform.devices[a].preset == platform.devices[b].preset}
    def options(role: str, Ts: list[int]):
        """Every placement of the model that loads (cut to its devices' limits), with its costs
        and the RAM it holds."""
        cfg, lt = cfgs[role], lat[role]
        fitted = (fit_to_limits(p, cfg, lt.dtype, lt.S, platform) for p in placements(cfg.num_layers, devs, same, split))
        return [(p, model_costs(lt, p, cfg.num_layers, Ts), resident_bytes(p, cfg, lt.dtype, lt.S, platform, lt.quant))
                for p in fitted if p is not None]
    t_opts, d_opts = options("target", tTs), options("draft", [1, 2])
    if not t_opts:
        raise UserError(f"no placement of the target on {', '.join(devs)} fits these devices' allocation "
                        "limits (a single layer, or the embedding or head, is larger)")
    ram = usable_ram(platform)
    fits = (lambda n: True) if ram is None else (lambda n: n + RUNTIME_BYTES <= ram)
    out: list[_Ranked] = []
    for tp, tc, t_ram in t_opts:
        if not fits(t_ram):
            continue
        base = predict(tc, None, 0, alpha, transfer_for(platform, profile, tp.device_set), host_ms(0))
        out.append(_Ranked(None, tp, 0, base.ms_per_token, 1.0, base.parts, t_ram + RUNTIME_BYTES))
        for dp, dc, d_ram in d_opts:
            if not fits(t_ram + d_ram):
                continue
            tr = transfer_for(platform, profile, tp.device_set | dp.device_set)
            # the overlapped loop: each model whole on one device, the two computing at once
            whole = len(dp.device_set) == 1 and len(tp.device_set) == 1
            dd, td = next(iter(dp.device_set)), next(iter(tp.device_set))
            ovl = contention_for(platform, profile, dd, td) if overlap and whole else None
            # each model's calls as the sequential loop of this pair of devices times them; the
            # overlapped loop's contention factors are relative to those
            ft, fd = pair_factors(platform, profile, dd, td) if whole else (1.0, 1.0)
            tcp, dcp = tc.scaled(ft), dc.scaled(fd)
            for g in gammas:
                if g > 0:
                    pr = predict(tcp, dcp, g, alpha, tr, host_ms(g))
                    out.append(_Ranked(dp, tp, g, pr.ms_per_token, pr.expected_tokens, pr.parts,
                                       t_ram + d_ram + RUNTIME_BYTES))
                    if ovl is not None:
                        pr = predict_overlapped(tcp, dcp, g, alpha, ovl, tr, host_ms(g))
                        out.append(_Ranked(dp, tp, g, pr.ms_per_token, pr.expected_tokens, pr.parts,
                                           t_ram + d_ram + RUNTIME_BYTES, overlap=True))
    if not out:
        least = min(t_ram for _, _, t_ram in t_opts) + RUNTIME_BYTES
        raise UserError(f"the target alone needs {least / 2**30:.1f} GiB of RAM in its smallest placement; "
                        f"platform {platform.name} leaves {ram / 2**30:.1f} GiB of its "
                        f"{platform.ram_bytes / 2**30:.1f} GiB (plan/planner.py: usable_ram): a smaller dtype "
                        "or model, or a board with more RAM")
    return out


def print_plan(plan: Plan, top: int = 10, out=print) -> None:
    alpha = plan.alpha if not isinstance(plan.alpha, list) else "per position"
    out(f"platform {plan.platform}  alpha {alpha}  latencies: target {plan.latency_sources.get('target')}, "
        f"draft {plan.latency_sources.get('draft')}")
    prec = bool(plan.precisions)
    out(f"{'#':>3} {'draft':<30} {'target':<36} {'g':>2} {'loop':>7} " + (f"{'precision':>10} " if prec else "")
        + f"{'E[N]':>5} {'ms/tok':>8} {'tok/s':>8} {'speedup':>8} {'RAM GiB':>7}")
    for i, c in enumerate(plan.configs[:top], 1):
        loop = "overlap" if c.overlap else ("seq" if c.gamma else "-")
        pr = (f"{(c.draft_precision + '/') if c.gamma else ''}{c.target_precision}"
              + ("*" if c.alpha_source.startswith("estimated") else ""))
        out(f"{i:>3} {c.draft_label:<30} {c.target.label:<36} {c.gamma:>2} {loop:>7} " + (f"{pr:>10} " if prec else "")
            + f"{c.expected_tokens:>5.2f} "
            f"{c.pred_ms_per_token:>8.3f} {c.pred_tokens_per_s:>8.1f} {c.speedup:>7.2f}x {c.resident_bytes / 2**30:>7.2f}")
    if prec and any(c.alpha_source.startswith("estimated") for c in plan.configs[:top]):
        out("*: no calibration of that draft/target precision pair: alpha estimated from another pair")
    for p, why in plan.excluded.items():
        out(f"target precision {p} left out: {why}")
    best0 = plan.best_target_only()
    out(f"best target-only: {best0.target.label} {best0.pred_tokens_per_s:.1f} tok/s")
    if plan.configs_ranked > len(plan.configs):
        out(f"ranked {plan.configs_ranked} configurations; the plan keeps {len(plan.configs)} (the top "
            f"{KEEP_TOP} and the best of each device mapping and gamma)")


def read_calibrations(paths) -> list[Calibration]:
    return [Calibration.read(p) for p in (paths or [])]


def read_alpha(alpha: float | None, calibration: str | Path | list | None) -> float | list[float]:
    """--alpha A, or the per-position (else overall) greedy acceptance of a calib.json (the first,
    when several are given: make_plan reads each pair's own from `calibrations`)."""
    if isinstance(calibration, (list, tuple)):
        calibration = calibration[0] if calibration else None
    if calibration:
        cal = Calibration.read(calibration)
        got = cal.greedy.for_planner() if cal.greedy else None
        if got is None:
            raise UserError(f"{calibration}: no greedy alpha in it")
        return got
    if alpha is None:
        raise UserError("give --alpha A or --calibration calib.json")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    return alpha
