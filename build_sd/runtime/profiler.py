"""`build-sd profile`: measure, on the machine that will run, what the cost model needs (no torch).

For every artifacts folder (or both models of a bundle), on every preset this machine can run:
- the median latency (and p10/p90) of every subgraph function, called as the runner calls it
  (its pos/length uploads and, for the head, the ids readback included), after a warm-up;
- the whole-model step (all subgraphs on that preset) for each function, as a cross-check;
- the cost of moving a hidden state between two devices (download + upload), fitted as
  fixed + per-byte over several sizes;
- the host's per-iteration overhead of the speculative loop (acceptance, bookkeeping).
The profile names the machine, the device names, the IREE runtime version and the sha256 of
every module it measured, so a profile that does not match the artifacts can be refused.
"""
from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fsutil import write_json
from ..targets import cpu_model_name
from .chain import ModelChain, PlacedSubgraph
from .compat import can_run
from .devices import DTYPES, DevicePool, release_vulkan, retry_if_lost

PROFILE_SCHEMA = 1


def _stats(samples_s: list[float]) -> dict:
    a = np.array(samples_s) * 1e3
    # the mean is what a throughput pays (stragglers included); the median is for reading
    return {"mean_ms": round(float(a.mean()), 5), "median_ms": round(float(np.median(a)), 5), "p10_ms": round(float(np.percentile(a, 10)), 5),
            "p90_ms": round(float(np.percentile(a, 90)), 5), "n": len(a)}


def _reps_for(first_ms: float, budget_s: float, lo: int = 7, hi: int = 200) -> int:
    """Enough repetitions for a stable median within a time budget per function."""
    return int(max(lo, min(hi, budget_s * 1e3 / max(first_ms, 1e-3))))


def load_model_source(path: Path) -> list[dict]:
    """[{name, dir, manifest, meta, presets}] for an artifacts folder or a bundle's two models."""
    from ..compile import load_artifacts
    if (path / "manifest.json").exists():
        man = json.loads((path / "manifest.json").read_text())
        if man.get("kind") == "build_sd.bundle":
            out = []
            for role in ("draft", "target"):
                m = man["models"][role]
                meta = json.loads((path / m["files"]["export"]).read_text())
                modules = {sub: info["file"] for sub, info in m["modules"].items()}
                presets = {info["preset"]: man["presets"][info["preset"]] for info in m["modules"].values()}
                out.append({"name": role, "dir": path, "meta": meta, "irpa": path / m["files"]["irpa"],
                            "presets": presets, "module_file": lambda preset, sub, mods=modules: mods[sub],
                            "only": {info["preset"] for info in m["modules"].values()}})
            return out
    man, meta = load_artifacts(path)
    return [{"name": meta["name"], "dir": path, "meta": meta, "irpa": path / "model.irpa",
             "presets": man["presets"], "module_file": lambda preset, sub: f"{preset}/{sub}.vmfb",
             "only": None}]


def profile_key(preset: str, driver: str) -> str:
    """Where a profile files a preset's figures: PRESET for its own driver, PRESET@local-sync for
    llvm-cpu modules run on the calling thread."""
    return f"{preset}@{driver}" if driver == "local-sync" else preset


def profile(paths: list[str | Path], devices: list[str] | None = None, budget_s: float = 0.4,
            log=print, cpu_drivers: tuple[str, ...] = ("local-task", "local-sync"),
            isolated: bool = True, in_situ_tokens: int = 64) -> dict:
    """isolated=False: only the in-situ loops (and the host, transfers), for a quick re-profile
    laid over a full one (bench): the isolated calls take most of a profile's time.
    in_situ_tokens: tokens each in-situ loop generates. The first calls after a prefill cost
    more (demo pair: loops of 24 tokens timed verify_T2 4 % and decode 2.5 % above loops of 64),
    so the loops should be as long as the workload's generations; 64 by default."""
    try:
        # a lost lavapipe device breaks every chain on it: the whole profile runs again
        return retry_if_lost(lambda: _profile(paths, devices, budget_s, log, cpu_drivers, isolated,
                                              in_situ_tokens),
                             "the profile")
    finally:
        release_vulkan()        # every chain of the profile is gone: lavapipe spins while its device lives


def _profile(paths, devices, budget_s, log, cpu_drivers, isolated=True, in_situ_tokens=64) -> dict:
    from ..fsutil import sha256_file
    import iree.runtime as rt

    pool = DevicePool()
    sources = [src for p in paths for src in load_model_source(Path(p))]
    models = []
    for src in sources:
        meta = src["meta"]
        models.append({"name": src["name"], "source": meta["source"], "fingerprint": meta.get("fingerprint"),
                       "dtype": meta["dtype"], "max_context": meta["max_context"],
                       "config": meta["config"], "subgraphs": [
                           {k: sg[k] for k in ("name", "label", "kind", "start", "end")} for sg in meta["subgraphs"]],
                       "modules": {}, "latency": {}, "step": {}, "skipped": {}})
    host_ms = []
    # One device class after the other, the CPU first: an idle lavapipe device keeps two threads
    # spinning for as long as it lives (docs/FINDINGS.md), so the CPU is timed before one exists.
    for cls_now in ("cpu", "vulkan"):
        if devices and cls_now not in devices:
            continue
        chains_by_preset: dict[str, list[tuple[dict, ModelChain]]] = {}
        for src, entry in zip(sources, models):
            meta = src["meta"]
            for preset, info in src["presets"].items():
                cls = "cpu" if info["backend"] == "llvm-cpu" else "vulkan"
                if cls != cls_now:
                    continue
                ok, why = can_run(info)
                if not ok:
                    entry["skipped"][preset] = why
                    continue
                # a CPU preset is measured under each CPU driver asked for: local-task (IREE's
                # worker pool, the preset's own) keyed by the preset, local-sync (the calling
                # thread) keyed PRESET@local-sync; the planner treats them as two devices
                variants = [(preset, info["driver"])]
                if cls == "cpu":
                    variants = [(profile_key(preset, d), d) for d in cpu_drivers]
                for key, driver in variants:
                    placed = []
                    for sg in meta["subgraphs"]:
                        rel = src["module_file"](preset, sg["name"])
                        entry["modules"][rel] = sha256_file(src["dir"] / rel)
                        placed.append(PlacedSubgraph(sg, src["dir"] / rel, driver, preset))
                    chain = ModelChain(pool, meta, src["irpa"], placed)
                    chain.warmup()
                    if isolated:
                        log(f"profiling {src['name']} on {key} ({pool.get(driver).name}): isolated calls")
                        entry["latency"][key], entry["step"][key] = _profile_chain(chain, budget_s)
                    else:
                        entry["latency"][key], entry["step"][key] = {}, {}
                    chains_by_preset.setdefault(key, []).append((entry, chain))
        # In situ: the same functions timed inside real speculative loops (draft and target taking
        # turns, the runner's host work between calls): what a generation pays. These replace the
        # isolated means the planner reads; the isolated figures stay beside them.
        for preset, group in chains_by_preset.items():
            group = sorted(group, key=lambda ec: ec[1].meta["config"]["hidden_size"] * ec[1].meta["config"]["num_layers"])
            draft_e, draft = group[0]
            target_e, target = group[-1]
            if target is draft:                  # one model: its second instance drafts (own caches)
                draft = ModelChain(pool, target.meta, target.irpa, target.placed)
                draft.warmup()
            log(f"profiling on {preset}: in situ (speculative loops, gamma 0..{max(target.verify_T) - 1})")
            times, host = _in_situ(target, draft, budget_s, in_situ_tokens)
            host_ms += host
            for e, c in ((target_e, target), (draft_e, draft)):
                for (stage, fname), (sec, n) in times[id(c)].items():
                    slot = e["latency"][preset].setdefault(stage, {}).setdefault(fname, {})
                    slot["isolated_mean_ms"] = slot.get("mean_ms")
                    slot["mean_ms"] = round(sec / n * 1e3, 5)
                    slot["in_situ_n"] = n
    if not any(m["latency"] for m in models):
        raise UserError("nothing in these artifacts can run on this machine")
    transfer = _profile_transfers(pool, models, log)
    # the host's work per iteration grows with gamma (one acceptance test per drafted token):
    # 0.015 ms at gamma 0 against 0.06 at gamma 4 for the demo pair, 3 % of a token there
    host = None
    if host_ms:
        host = {"ms_per_iteration": round(float(np.median([ms for _, ms in host_ms])), 5),
                "by_gamma": {str(g): round(float(np.median([ms for gg, ms in host_ms if gg == g])), 5)
                             for g in sorted({g for g, _ in host_ms})}}
    return {
        "schema": PROFILE_SCHEMA,
        "kind": "build_sd.profile",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model_name(), "arch": platform.machine(), "node": platform.node(),
                    "devices": {drv: d.name for drv, d in pool.devices.items()}},
        "iree_runtime": _runtime_version(rt),
        "models": models,
        "transfer": transfer,
        "host": host,
    }


def _runtime_version(rt) -> str:
    try:
        from importlib.metadata import version
        return version("iree-base-runtime")
    except Exception:  # noqa: BLE001
        return getattr(rt, "__version__", "unknown")


def _in_situ(target: ModelChain, draft: ModelChain, budget_s: float, tokens: int = 64):
    """Run speculative loops for every gamma and prompt bucket; per-stage mean times."""
    from .sampling import GreedyAcceptor, SimulatedAcceptor
    from .speculative import generate
    rng = np.random.default_rng(0)
    V = min(target.meta["config"]["vocab_size"], draft.meta["config"]["vocab_size"])
    target.stage_times, draft.stage_times = {}, {}
    gammas = [0] + [T - 1 for T in target.verify_T]
    prompts = [rng.integers(3, V, size=max(1, P - 1)).astype(np.int32) for P in target.prefill_buckets
               if P <= min(target.max_context, draft.max_context) - 12]
    host = []
    t_end = time.perf_counter() + budget_s * len(gammas) * max(1, len(prompts))
    rounds = 0
    # one round at least (a slow device, e.g. lavapipe, gets no more), then up to the budget
    while rounds < 1 or (time.perf_counter() < t_end and rounds < 8):
        for prompt in prompts:
            for g in gammas:
                n = min(tokens, min(target.max_context, draft.max_context) - len(prompt) - g - 2)
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


def _profile_chain(chain: ModelChain, budget_s: float):
    """Per subgraph function latency and whole-step latency, all subgraphs on one device."""
    D = chain.meta["config"]["hidden_size"]
    rng = np.random.default_rng(0)
    fnames = {f"prefill_T{P}": ("prefill", P) for P in chain.prefill_buckets}
    fnames["decode"] = ("decode", 1)
    for T in chain.verify_T:
        fnames[f"verify_T{T}"] = ("verify", T)
    lat: dict[str, dict] = {sg.meta["name"]: {} for sg in chain.stages}
    step: dict[str, dict] = {}
    S = chain.max_context
    for fname, (role, T) in fnames.items():
        positions = [p for p in range(0, S - T, max(1, (S - T) // 16))][:16] or [0]
        for st in chain.stages:
            dev, kind = st.device, st.meta["kind"]
            if kind in ("embed", "whole"):
                x = dev.upload(rng.integers(0, 8, size=(1, T)).astype(np.int32))
            else:
                x = dev.upload(rng.standard_normal((1, T, D)).astype(chain.dtype))
            samples: list[float] = []

            def once(i):
                t = time.perf_counter()
                pos_bv = dev.upload(np.array(positions[i % len(positions)], np.int32)) \
                    if kind in ("layers", "whole") else None
                length_bv = dev.upload(np.array(T, np.int32)) if role == "prefill" and kind in ("head", "whole") else None
                res = chain.invoke(st, fname, x, pos_bv, length_bv)
                if len(res) == 2:
                    dev.download(res[0], DTYPES["i32"])
                return time.perf_counter() - t
            first = once(0)
            for i in range(_reps_for(first * 1e3, budget_s)):
                samples.append(once(i + 1))
            lat[st.meta["name"]][fname] = _stats(samples)
        # the whole step, as the runner calls it
        samples = []
        toks = np.ones(T, np.int32)
        first = None
        for i in range(200):
            t = time.perf_counter()
            if role == "prefill":
                chain.step(toks, 0, role="prefill", length=T)
            else:
                chain.step(toks, positions[i % len(positions)])
            dt = time.perf_counter() - t
            if first is None:
                first = dt
                n = _reps_for(first * 1e3, budget_s)
                continue
            samples.append(dt)
            if len(samples) >= n:
                break
        step[fname] = _stats(samples)
    return lat, step


def _profile_transfers(pool: DevicePool, models: list[dict], log) -> dict:
    """download(A) + upload(B) of hidden-state sized buffers for each ordered device pair."""
    devs = pool.devices
    if len(devs) < 2:
        return {}
    D = max(m["config"]["hidden_size"] for m in models)
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
            out[f"{a_name}->{b_name}"] = {"fixed_ms": round(max(0.0, float(intercept)), 5),
                                          "ms_per_mb": round(max(0.0, float(slope)), 5),
                                          "points": [[int(n), round(ms, 5)] for n, ms in points]}
            log(f"transfer {a_name}->{b_name}: {out[f'{a_name}->{b_name}']['fixed_ms']:.3f} ms + "
                f"{out[f'{a_name}->{b_name}']['ms_per_mb']:.3f} ms/MB")
    return out


def run_profile_cli(paths, devices, out, budget_s=0.4) -> dict:
    prof = profile(paths, devices, budget_s)
    write_json(out, prof)
    print(f"wrote {out}")
    return prof


def load_profile(path: str | Path) -> dict:
    from ..fsutil import read_json
    prof = read_json(path, "profile")
    if prof.get("kind") != "build_sd.profile":
        raise UserError(f"{path} is not a build_sd profile")
    if not isinstance(prof.get("schema"), int) or prof["schema"] > PROFILE_SCHEMA:
        raise UserError(f"{path} has profile schema {prof.get('schema')!r}, newer than this build_sd reads")
    return prof


def check_profile_matches(prof: dict, artifacts_dir: str | Path) -> int:
    """Refuse a profile measured on other modules than these artifacts' (same model, same
    module file, different sha256: rebuilt with another compiler or flags). Returns how many
    modules were checked."""
    from ..fsutil import sha256_file
    artifacts_dir = Path(artifacts_dir)
    meta = json.loads((artifacts_dir / "export.json").read_text())
    sha = meta["source"]["sha256"].get("config.json")
    checked = 0
    for m in prof.get("models", []):
        if m["source"]["sha256"].get("config.json") != sha:
            continue
        for rel, want in m.get("modules", {}).items():
            f = artifacts_dir / rel
            if not f.exists():
                continue
            checked += 1
            if sha256_file(f) != want:
                raise UserError(f"the profile ({m['name']}, {prof.get('date', '?')}) was measured on a "
                                f"different {rel} than {artifacts_dir} holds: the module was rebuilt "
                                "(compiler or flags changed); run build-sd profile again")
    return checked
