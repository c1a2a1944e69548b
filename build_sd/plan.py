"""`build-sd plan`: enumerate placements x gamma, predict each, rank, pick.

A model's placement is either the whole model on one device, or the model split at one layer
boundary k across two devices (embed + layers[0:k] on A, layers[k:L] on B) with the head on
either side. Draft placement x target placement x gamma in 0..8 are ranked by predicted time
per token; gamma 0 (target only, draft unused) competes with the rest, so it wins when
speculation does not pay.

Latencies come from a profile (`build-sd profile`, measured on the board) wherever it covers a
subgraph function, scaled from it where it covers the device but not the exact layer range,
and from the analytic roofline (roofline.py) elsewhere; every prediction says which.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import ModelConfig
from .costmodel import ModelCosts, Transfer, predict
from .errors import UserError
from .roofline import Platform, get_platform, work

GAMMAS = range(0, 9)
STAT = "mean_ms"     # throughput pays the mean call time, stragglers included
ELT = {"f32": 4, "f16": 2}


@dataclass
class Placement:
    split: list[int] | None            # export --split (None: one whole module)
    devices: dict[str, str]            # subgraph name -> platform device name
    label: str

    def to_dict(self):
        return asdict(self)


def placements(num_layers: int, devices: list[str], same_compute: set | None = None,
               split: bool = True) -> list[Placement]:
    """same_compute: device pairs that are one processor under two drivers (cpu, cpu-sync): a
    model is never split across them (a transfer for nothing). split=False: whole models only."""
    out = [Placement(None, {"whole": d}, d) for d in devices]
    L = num_layers
    for k in range(1, L if split else 1):
        for a in devices:
            for b in devices:
                if a == b or frozenset((a, b)) in (same_compute or set()):
                    continue
                for head in (a, b):
                    out.append(Placement([0, k], {"embed": a, f"layers_0_{k}": a, f"layers_{k}_{L}": b,
                                                  "head": head},
                                         f"{a}[embed,0:{k}] {b}[{k}:{L}] head@{head}"))
    return out


def _subgraphs_of(p: Placement, L: int):
    if p.split is None:
        return [("whole", 0, L)]
    k = p.split[1]
    return [("embed", 0, 0), ("layers", 0, k), ("layers", k, L), ("head", 0, 0)]


def config_sha(ckpt: Path) -> str:
    return hashlib.sha256((Path(ckpt) / "config.json").read_bytes()).hexdigest()


class Latencies:
    """ms of one subgraph call on one device, from the profile when it covers it."""

    def __init__(self, platform: Platform, cfg: ModelConfig, dtype: str, S: int,
                 profile: dict | None, model_sha: str | None):
        self.platform, self.cfg, self.dtype, self.S = platform, cfg.to_dict(), dtype, S
        # Every profiled export of this model (whole, split at k...) is one entry; merge them so
        # a placement reads the module it will run (the whole module for a whole placement, not
        # the sum of a split export's parts), preferring figures timed inside speculative loops.
        self.entry = None
        if profile:
            merged: dict = {}
            for m in profile["models"]:
                if m["source"]["sha256"].get("config.json") != model_sha:
                    continue
                self.dtype, self.S = m["dtype"], m["max_context"]
                for preset, subs in m["latency"].items():
                    for name, fns in subs.items():
                        slot = merged.setdefault(preset, {}).setdefault(name, {})
                        for fname, st in fns.items():
                            if fname not in slot or ("in_situ_n" in st and "in_situ_n" not in slot[fname]):
                                slot[fname] = st
            self.entry = {"latency": merged} if merged else None
        self.sources: dict[str, int] = {}

    def _analytic(self, kind, a, b, T, dev, prefill):
        spec = self.platform.devices[dev]
        return spec.latency_ms(work(self.cfg, kind, a, b, T, self.S, ELT[self.dtype], prefill), self.dtype)

    def _fname(self, T, prefill):
        return f"prefill_T{T}" if prefill else ("decode" if T == 1 else f"verify_T{T}")

    def _measured(self, preset, name, fname):
        if not self.entry or preset not in self.entry["latency"]:
            return None
        return self.entry["latency"][preset].get(name, {}).get(fname, {}).get(STAT)

    def ms(self, kind: str, a: int, b: int, T: int, dev: str, prefill: bool = False) -> float:
        preset = self.platform.devices[dev].profile_key
        fname = self._fname(T, prefill)
        name = {"embed": "embed", "head": "head", "whole": "whole"}.get(kind, f"layers_{a}_{b}")
        got = self._measured(preset, name, fname)
        if got is not None:
            self._count("profile")
            return got
        if self.entry and preset in self.entry["latency"]:
            lat = self.entry["latency"][preset]
            if kind == "layers":
                # per-layer time from the profiled layer modules of this device, same function
                per = [v[fname][STAT] / (int(n.split("_")[2]) - int(n.split("_")[1]))
                       for n, v in lat.items() if n.startswith("layers_") and fname in v]
                if per:
                    self._count("profile-scaled")
                    return sum(per) / len(per) * (b - a)
            if kind == "whole":
                parts = [self._measured(preset, n, fname) for n in ("embed", "head")]
                per = [v[fname][STAT] / (int(n.split("_")[2]) - int(n.split("_")[1]))
                       for n, v in lat.items() if n.startswith("layers_") and fname in v]
                if None not in parts and per:
                    self._count("profile-sum")
                    return parts[0] + parts[1] + sum(per) / len(per) * b
        self._count("analytic")
        return self._analytic(kind, a, b, T, dev, prefill)

    def _count(self, src):
        self.sources[src] = self.sources.get(src, 0) + 1


def model_costs(lat: Latencies, p: Placement, L: int, Ts: list[int]) -> ModelCosts:
    subs = _subgraphs_of(p, L)
    names = list(p.devices.values())
    crossings = sum(1 for x, y in zip(names, names[1:]) if x != y)
    step = {}
    for T in Ts:
        step[T] = sum(lat.ms(kind, a, b, T, p.devices[_name(kind, a, b)]) for kind, a, b in subs)
    return ModelCosts(step, crossings, lat.cfg["hidden_size"] * ELT[lat.dtype])


def _name(kind, a, b):
    return f"layers_{a}_{b}" if kind == "layers" else kind


def transfer_for(platform: Platform, profile: dict | None, devs: set[str]) -> Transfer:
    """The crossing cost between the two devices of a placement (profile when measured)."""
    if len(devs) < 2:
        return Transfer()
    # local-sync buffers are host memory like local-task's: one transfer figure for both
    drivers = sorted(platform.devices[d].driver.replace("local-sync", "local-task") for d in devs)
    if len(set(drivers)) < 2:
        return Transfer()
    if profile and profile.get("transfer"):
        ts = [v for k, v in profile["transfer"].items() if sorted(k.split("->")) == drivers]
        if ts:
            return Transfer(sum(t["fixed_ms"] for t in ts) / len(ts), sum(t["ms_per_mb"] for t in ts) / len(ts))
    return Transfer(platform.transfer_fixed_ms, platform.transfer_ms_per_mb)


@dataclass
class Config:
    draft: Placement | None
    target: Placement
    gamma: int
    pred_ms_per_token: float
    expected_tokens: float
    parts: dict = field(default_factory=dict)
    speedup: float = 1.0

    def to_dict(self):
        return {"draft": self.draft.to_dict() if self.draft else None, "target": self.target.to_dict(),
                "gamma": self.gamma, "pred_ms_per_token": round(self.pred_ms_per_token, 5),
                "pred_tokens_per_s": round(1000.0 / self.pred_ms_per_token, 2),
                "expected_tokens": round(self.expected_tokens, 4), "speedup": round(self.speedup, 4),
                "parts_ms": {k: round(v, 5) for k, v in self.parts.items()}}


def make_plan(draft_ckpt: str | Path, target_ckpt: str | Path, platform_name: str | Platform,
              alpha: float | list[float], profile: dict | None = None, dtype: str = "f32",
              max_context: int = 512, gammas=GAMMAS, devices: list[str] | None = None,
              split: bool = True) -> dict:
    """split=False: every model whole on one device (no split exports to build)."""
    platform = platform_name if isinstance(platform_name, Platform) else get_platform(platform_name)
    platform_name = platform.name
    dcfg, tcfg = ModelConfig.from_hf(draft_ckpt), ModelConfig.from_hf(target_ckpt)
    if profile is not None:
        shas = {m["source"]["sha256"].get("config.json") for m in profile["models"]}
        if not shas & {config_sha(draft_ckpt), config_sha(target_ckpt)}:
            raise UserError("the profile was measured on other models (no config.json matches the "
                            "draft's or the target's): profile these models' artifacts")
        for m in profile["models"]:
            if m["source"]["sha256"].get("config.json") in (config_sha(draft_ckpt), config_sha(target_ckpt)) \
                    and (m["dtype"] != dtype or m["max_context"] != max_context):
                raise UserError(f"the profile measured {m['name']} as {m['dtype']} with context "
                                f"{m['max_context']}; the plan asks {dtype} with context {max_context} "
                                "(pass the same --dtype/--max-context, or profile again)")
    devs = devices or list(platform.devices)
    for d in devs:
        if d not in platform.devices:
            raise UserError(f"platform {platform_name} has no device {d!r} ({', '.join(platform.devices)})")
    dlat = Latencies(platform, dcfg, dtype, max_context, profile, config_sha(draft_ckpt))
    tlat = Latencies(platform, tcfg, dtype, max_context, profile, config_sha(target_ckpt))
    host = (profile or {}).get("host", {}) or {}

    def host_ms(g: int) -> float:
        """The runner's own work per iteration at this gamma (profiled per gamma where known)."""
        return host.get("by_gamma", {}).get(str(g), host.get("ms_per_iteration", platform.host_ms_per_iteration))
    gammas = list(gammas)
    tTs = sorted({1} | {g + 1 for g in gammas if g > 0})
    same = {frozenset((a, b)) for a in devs for b in devs
            if a != b and platform.devices[a].preset == platform.devices[b].preset}
    t_opts = [(p, model_costs(tlat, p, tcfg.num_layers, tTs))
              for p in placements(tcfg.num_layers, devs, same, split)]
    d_opts = [(p, model_costs(dlat, p, dcfg.num_layers, [1, 2]))
              for p in placements(dcfg.num_layers, devs, same, split)]
    configs: list[Config] = []
    for tp, tc in t_opts:
        tr_t = transfer_for(platform, profile, set(tp.devices.values()))
        base = predict(tc, None, 0, alpha, tr_t, host_ms(0))
        configs.append(Config(None, tp, 0, base.ms_per_token, 1.0, base.parts))
        for dp, dc in d_opts:
            tr = transfer_for(platform, profile, set(tp.devices.values()) | set(dp.devices.values()))
            for g in gammas:
                if g == 0:
                    continue
                pr = predict(tc, dc, g, alpha, tr, host_ms(g))
                configs.append(Config(dp, tp, g, pr.ms_per_token, pr.expected_tokens, pr.parts))
    best_ar = min(c.pred_ms_per_token for c in configs if c.gamma == 0)
    for c in configs:
        c.speedup = best_ar / c.pred_ms_per_token
    configs.sort(key=lambda c: c.pred_ms_per_token)
    return {
        "schema": 1, "kind": "build_sd.plan",
        "platform": platform_name, "platform_notes": platform.notes,
        "devices": {d: {"preset": platform.devices[d].preset, "driver": platform.devices[d].driver} for d in devs},
        "draft": {"checkpoint": str(Path(draft_ckpt).resolve()), "config_sha256": config_sha(draft_ckpt),
                  "num_layers": dcfg.num_layers, "parameters": dcfg.num_parameters()},
        "target": {"checkpoint": str(Path(target_ckpt).resolve()), "config_sha256": config_sha(target_ckpt),
                   "num_layers": tcfg.num_layers, "parameters": tcfg.num_parameters()},
        "alpha": alpha, "dtype": tlat.dtype, "max_context": tlat.S, "split": split,
        "latency_sources": {"draft": dlat.sources, "target": tlat.sources},
        "profile": bool(profile),
        "target_only_best_ms_per_token": round(best_ar, 5),
        "configs": [c.to_dict() for c in configs],
    }


def describe(cfg: dict) -> str:
    d = cfg["draft"]["label"] if cfg["draft"] else "-"
    return f"draft {d:<28} target {cfg['target']['label']:<34} gamma {cfg['gamma']}"


def print_plan(plan: dict, top: int = 10, out=print) -> None:
    out(f"platform {plan['platform']}  alpha {plan['alpha'] if not isinstance(plan['alpha'], list) else 'per position'}"
        f"  latencies: target {plan['latency_sources']['target']}, draft {plan['latency_sources']['draft']}")
    out(f"{'#':>3} {'draft':<30} {'target':<36} {'g':>2} {'E[N]':>5} {'ms/tok':>8} {'tok/s':>8} {'speedup':>8}")
    for i, c in enumerate(plan["configs"][:top], 1):
        d = c["draft"]["label"] if c["draft"] else "-"
        out(f"{i:>3} {d:<30} {c['target']['label']:<36} {c['gamma']:>2} {c['expected_tokens']:>5.2f} "
            f"{c['pred_ms_per_token']:>8.3f} {c['pred_tokens_per_s']:>8.1f} {c['speedup']:>7.2f}x")
    best0 = next(c for c in plan["configs"] if c["gamma"] == 0)
    out(f"best target-only: {best0['target']['label']} {best0['pred_tokens_per_s']:.1f} tok/s")


def read_alpha(alpha: float | None, calibration: str | None):
    if calibration:
        from .fsutil import read_json
        cal = read_json(calibration, "calibration")
        g = cal.get("greedy") or {}
        if g.get("per_position"):
            return [float(x) for x in g["per_position"] if x is not None]
        if g.get("alpha") is not None:
            return float(g["alpha"])
        raise UserError(f"{calibration}: no greedy alpha in it")
    if alpha is None:
        raise UserError("give --alpha A or --calibration calib.json")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    return alpha


def write_plan(plan: dict, path: str | Path) -> None:
    from .fsutil import write_json
    write_json(path, plan)


def load_plan(path: str | Path) -> dict:
    from .fsutil import read_json
    plan = read_json(path, "plan")
    if plan.get("kind") != "build_sd.plan":
        raise UserError(f"{path} is not a build_sd plan")
    return plan

