"""`build-sd bench`: run the plan's top configurations for real; predicted vs measured.

In ONE run, because this machine's memory bandwidth drifts by up to 1.5x within minutes:
1. build (incrementally) a bundle for each of the top N configurations of the plan;
2. profile the artifacts they use and calibrate alpha on the prompts (or take
   --simulate-alpha A: accept/reject drawn from Bernoulli(A), every kernel still runs);
3. predict each configuration from that fresh profile and alpha (the cost model, unchanged);
4. measure tokens/s, alternating configurations round by round (A B C, B C A, ...), with the
   memory bandwidth read before each round (the drift is reported);
5. print predicted vs measured per configuration, the error, whether the planner's pick is
   the measured best, and draw the PNG (predicted vs measured; speedup vs gamma per placement).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .errors import UserError


def _key(cfg: dict) -> tuple:
    return (cfg["draft"]["label"] if cfg["draft"] else None, cfg["target"]["label"], cfg["gamma"])


def _check_runnable_here(plan: dict) -> None:
    """Every device of the plan must be here: bench measures on this machine."""
    from .runtime.compat import can_run
    from .targets import PRESETS
    for name, d in plan["devices"].items():
        pr = PRESETS.get(d["preset"])
        if pr is None:
            continue     # a preset from a newer build_sd: opening its bundle will say more
        ok, why = can_run(pr.record())
        if not ok:
            raise UserError(f"the plan is for {plan['platform']}, whose device {name!r} ({d['preset']}) "
                            f"this machine cannot run ({why}): bench measures here")


def _devices_of(plan: dict, cfg: dict) -> list[dict]:
    """The plan's device records ({preset, driver}) a configuration's models run on."""
    return [plan["devices"][d] for p in (cfg["draft"], cfg["target"]) if p for d in p["devices"].values()]


def _ckpt(plan: dict, role: str, root: Path) -> str:
    """The plan's checkpoint folder, else ROOT/checkpoints/ROLE (a copy of its config.json is
    enough to predict: bench --no-build on a machine the weights did not travel to)."""
    p = Path(plan[role]["checkpoint"])
    if (p / "config.json").exists():
        return str(p)
    alt = root / "checkpoints" / role
    if (alt / "config.json").exists():
        return str(alt)
    raise UserError(f"the plan's {role} checkpoint {p} is not here (nor {alt}/config.json)")


def _bandwidth_gbs() -> float:
    a = np.ones(32 * 1024 * 1024 // 8)
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def _presets_of(art: str) -> dict:
    import json
    return json.loads((Path(art) / "manifest.json").read_text())["presets"]


def _overlay(base: dict, fresh: dict) -> dict:
    """base with the presets, host figures and transfers that `fresh` measured replaced."""
    import copy
    out = copy.deepcopy(base)
    by_name = {m["name"]: m for m in fresh["models"]}
    for m in out["models"]:
        f = by_name.get(m["name"])
        if f:      # function by function: an in-situ-only profile leaves the prefills to base
            for key, stages in f["latency"].items():
                for stage, fns in stages.items():
                    for fname, slot in fns.items():
                        m["latency"].setdefault(key, {}).setdefault(stage, {}).setdefault(fname, {}).update(
                            {k: v for k, v in slot.items() if v is not None})
            m["step"].update({k: v for k, v in f.get("step", {}).items() if v})
    if fresh.get("host"):
        out["host"] = fresh["host"]
    return out


def _mean_predictions(a: dict, b: dict) -> dict:
    """Per configuration, the mean of two predictions (tokens/s and the cost model's terms)."""
    return {k: dict(v, pred_tokens_per_s=(v["pred_tokens_per_s"] + b[k]["pred_tokens_per_s"]) / 2,
                    parts_ms={p: (ms + b[k]["parts_ms"][p]) / 2 for p, ms in v["parts_ms"].items()})
            for k, v in a.items()}


def run_bench(root: str | Path, plan_path: str | Path, top: int, prompts: list[str], rounds: int = 4,
              max_new_tokens: int = 48, simulate_alpha: float | None = None, png: str | None = None,
              configs: list[int] | None = None, warmup: int = 1, link: bool = True,
              prompt_template: str | None = None, reprofile: bool = True, build: str = "yes",
              log=print) -> dict:
    """warmup: untimed passes over the prompts per configuration before the timed rounds (0: only
    one call of every function); link: the per-configuration bundles hard-link the artifacts'
    weights and modules instead of copying them (N bundles of one pair cost no extra disk);
    reprofile: profile the CPU again (in-situ loops only) before every round and after the last,
    and predict each round from the mean of the two profiles around it.
    build: "yes" (build what is missing, then measure), "only" (build the bundles and stop: for a
    machine without the compiler, e.g. the GPU box), "no" (measure the bundles an earlier "only"
    left in ROOT/bench; needs neither torch nor iree-compile)."""
    from .pipeline import build_config
    from .plan import load_plan, make_plan
    from .runtime.calibrate import calibrate
    from .runtime.cli_run import encode_prompt
    from .runtime.profiler import profile
    from .runtime.sampling import GreedyAcceptor, SimulatedAcceptor
    from .runtime.devices import release_vulkan
    from .runtime.session import open_bundle
    from .runtime.speculative import generate

    from .runtime import chain as chain_mod
    root = Path(root)
    plan = load_plan(plan_path)
    if build != "only":
        _check_runnable_here(plan)
    if chain_mod.RANDOM_WEIGHTS is not None and simulate_alpha is None:
        raise UserError("--random-weights makes the tokens noise: give --simulate-alpha A too")
    if configs and max(configs) >= len(plan["configs"]):
        raise UserError(f"--configs: the plan has {len(plan['configs'])} configurations")
    chosen = [plan["configs"][i] for i in (configs or range(min(top, len(plan["configs"]))))]
    # always measure the best target-only configuration too: the speedup baseline
    base = next(c for c in plan["configs"] if c["gamma"] == 0)
    if all(_key(c) != _key(base) for c in chosen):
        chosen.append(base)

    # 1. bundles (bench/configs.json records which configuration each bench/cI holds, so that
    #    `--no-build` on another machine measures exactly what was built)
    import json
    keys = [list(_key(c)) for c in chosen]
    built = root / "bench" / "configs.json"
    bundles = [root / "bench" / f"c{i}" for i in range(len(chosen))]
    if build == "no":
        try:
            have = json.loads(built.read_text())
        except (OSError, ValueError):
            raise UserError(f"--no-build: {built} not found: run `bench --build-only` with the same "
                            "plan and --top/--configs first") from None
        if have != keys:
            raise UserError(f"--no-build: {root / 'bench'} holds other configurations than these "
                            "(same plan and --top/--configs as the --build-only run?)")
    else:
        for i, (cfg, b) in enumerate(zip(chosen, bundles)):
            log(f"[build {i + 1}/{len(chosen)}] target {cfg['target']['label']} draft "
                f"{cfg['draft']['label'] if cfg['draft'] else '-'} gamma {cfg['gamma']}")
            build_config(cfg, plan, root, b, validate_models=(i == 0), log=lambda m: None, link=link,
                         prompt_template=prompt_template)
        from .fsutil import write_json
        write_json(built, keys)
        if build == "only":
            log(f"built {len(bundles)} bundles under {root / 'bench'}")
            return {"built": [str(b) for b in bundles], "configs": keys}

    # 2. profile every artifacts folder used, and calibrate alpha, now
    arts = sorted({str(p) for p in (root / "artifacts").iterdir() if (p / "manifest.json").exists()})
    # the CPU drivers the measured configurations use (a 1B model under local-sync on a 16-core
    # box would only spend minutes profiling a device no configuration runs on)
    used = {d["driver"] for c in chosen for d in _devices_of(plan, c)}
    # an idle lavapipe device spins two threads for as long as it lives (docs/FINDINGS.md)
    on_lavapipe = [any(d["preset"] == "vulkan-llvmpipe" for d in _devices_of(plan, c)) for c in chosen]
    cpu_drivers = tuple(d for d in ("local-task", "local-sync") if d in used) or ("local-task",)
    log(f"profiling {len(arts)} artifacts folders")
    bw_before = _bandwidth_gbs()
    # in-situ loops as long as the measured generations (the calls after a prefill cost more)
    prof = profile(arts, log=lambda m: log(f"  {m}"), cpu_drivers=cpu_drivers, in_situ_tokens=max_new_tokens)
    if simulate_alpha is not None:
        alpha = simulate_alpha
    else:
        # calibrate on the workload itself, with the longest draft any configuration uses
        cal_bundle = next((b for b, c in zip(bundles, chosen) if c["gamma"] > 0), None)
        if cal_bundle is None:
            alpha = 0.0
        else:
            log(f"calibrating alpha on {len(prompts)} prompts (gamma 8)")
            cal = calibrate(str(cal_bundle), prompts, gamma=8, max_new_tokens=max_new_tokens, log=lambda m: log(f"  {m}"))
            alpha = [x for x in cal["greedy"]["per_position"] if x is not None] or cal["greedy"]["alpha"]
            release_vulkan()        # in case that bundle used lavapipe (see step 4)
    # 3. predictions from a profile and alpha, for exactly these configurations (the cost model,
    #    unchanged); made again each round from that round's CPU profile, see 4.
    def predict_all(pr: dict) -> dict:
        fresh = make_plan(_ckpt(plan, "draft", root), _ckpt(plan, "target", root), plan["platform"], alpha, pr,
                          dtype=plan["dtype"], max_context=plan["max_context"], devices=list(plan["devices"]),
                          split=plan.get("split", True))
        return {_key(c): c for c in fresh["configs"]}
    pred0 = predict_all(prof)

    # 4. measure, alternating. A configuration with a module on lavapipe opens its session for
    #    its own passes only: an idle lavapipe device spins two threads for as long as it lives
    #    and slowed the CPU configurations measured beside it by 20-50 % (docs/FINDINGS.md).
    sessions = []
    for b, lvp in zip(bundles, on_lavapipe):
        s = None if lvp else open_bundle(b)
        if s:
            s.warmup()
        sessions.append(s)
    enc_session = next((s for s in sessions if s), None) or open_bundle(bundles[0])
    enc = [encode_prompt(enc_session, p) for p in prompts]
    del enc_session
    release_vulkan()

    # per configuration, over the timed rounds: iterations, tokens and seconds by part, to say
    # which term of the cost model an error comes from
    split = [{"iterations": 0, "emitted": 0, "draft_s": 0.0, "verify_s": 0.0, "host_s": 0.0} for _ in chosen]

    def one_pass(i: int, seed: int, record: bool = False) -> float:
        s, g = sessions[i], chosen[i]["gamma"]
        if s is None:                   # lavapipe: load for this pass, let the device go after
            s = open_bundle(bundles[i])
            s.warmup()
        try:
            return _pass(i, s, g, seed, record)
        finally:
            if sessions[i] is None:
                del s
                release_vulkan()

    def _pass(i: int, s, g: int, seed: int, record: bool) -> float:
        toks, secs = 0, 0.0
        for j, ids in enumerate(enc):
            acc = (SimulatedAcceptor(simulate_alpha, np.random.default_rng(1000 * seed + j))
                   if simulate_alpha is not None and g > 0 else GreedyAcceptor())
            m = generate(s.target, s.draft if g else None, ids, g, acc, max_new_tokens, s.eos_ids).metrics
            toks += m.emitted
            secs += m.decode_s
            if record:
                sp = split[i]
                sp["iterations"] += m.iterations
                sp["emitted"] += m.emitted
                sp["draft_s"] += m.draft_s
                sp["verify_s"] += m.verify_s
                sp["host_s"] += m.host_s
        return toks / secs

    # untimed: page in weights, grow the allocator pools, settle the CPU's clocks
    for w in range(warmup):
        t = time.perf_counter()
        for i in range(len(chosen)):
            one_pass(i, 10_000 + w)     # seeds apart from the timed rounds
        log(f"warm-up {w + 1}/{warmup}: {time.perf_counter() - t:.1f}s")
    # 4. measure, alternating. This machine's speed drifts by up to 1.5x within minutes, so each
    #    round first re-profiles the CPU (the isolated and in-situ figures the planner reads), and
    #    lavapipe too when a configuration uses it (it runs on the same cores, so it drifts with
    #    them: its figures from step 2 were 29 ms for a layer the loop later took 47 ms for,
    #    docs/FINDINGS.md); a discrete GPU keeps its step-2 figures. Then it predicts from that
    #    profile and measures every configuration: a prediction is compared with the
    #    measurement of the same minutes.
    lavapipe = any(on_lavapipe)
    reprofile_devices = ["cpu", "vulkan"] if lavapipe else ["cpu"]
    reprofile_arts = [a for a in arts if any(pr_["backend"] == "llvm-cpu" or (lavapipe and pr_["backend"] == "vulkan-spirv")
                                             for pr_ in _presets_of(a).values())]
    tps = [[] for _ in chosen]
    preds = [[] for _ in chosen]
    bws = []

    def round_profile() -> dict:
        """Predictions from an in-situ re-profile now (the isolated figures stay those of step 2)."""
        if not (reprofile and reprofile_arts):
            return pred0
        return predict_all(_overlay(prof, profile(reprofile_arts, devices=reprofile_devices, budget_s=0.15,
                                                  log=lambda m: None, cpu_drivers=cpu_drivers,
                                                  isolated=False, in_situ_tokens=max_new_tokens)))
    # Each round is bracketed by two profiles (the one after round r opens round r + 1) and
    # predicted from their mean: a drift that is linear over the round cancels.
    pr_next = round_profile()
    for r in range(rounds):
        bws.append(_bandwidth_gbs())
        pr_start = pr_next
        order = list(range(len(chosen)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            tps[i].append(one_pass(i, r, record=True))
        pr_next = round_profile()
        pr_pred = pr_start if pr_next is pr_start else _mean_predictions(pr_start, pr_next)
        for i in range(len(chosen)):
            preds[i].append(pr_pred[_key(chosen[i])]["pred_tokens_per_s"])
        errs = [(preds[i][-1] - tps[i][-1]) / tps[i][-1] for i in range(len(chosen))]
        log(f"round {r + 1}/{rounds}: bandwidth {bws[-1]:.1f} GB/s, median |error| "
            f"{100 * statistics.median(abs(e) for e in errs):.1f}%")
    bws.append(_bandwidth_gbs())
    pred = {_key(c): dict(pred0[_key(c)], pred_tokens_per_s=round(statistics.median(preds[i]), 2))
            for i, c in enumerate(chosen)}

    rows = []
    for i, cfg in enumerate(chosen):
        p = pred[_key(cfg)]
        meas = statistics.median(tps[i])
        # error: paired per round (prediction and measurement of the same minutes), median
        err = statistics.median((pp - mm) / mm for pp, mm in zip(preds[i], tps[i]))
        rows.append({"rank_in_plan": plan["configs"].index(cfg) + 1 if cfg in plan["configs"] else None,
                     "draft": cfg["draft"]["label"] if cfg["draft"] else "-", "target": cfg["target"]["label"],
                     "gamma": cfg["gamma"], "predicted_tokens_per_s": p["pred_tokens_per_s"],
                     "measured_tokens_per_s": round(meas, 2), "rounds": [round(x, 2) for x in tps[i]],
                     "predicted_rounds": [round(x, 2) for x in preds[i]],
                     "error": round(err, 4),
                     "predicted_speedup": p["speedup"],
                     # the cost model's terms, predicted (last round's profile) and measured, ms
                     # per iteration, and tokens per iteration (E[N] vs what the loop emitted)
                     "predicted_parts_ms": pr_pred[_key(cfg)]["parts_ms"],
                     "predicted_tokens_per_iteration": pr_pred[_key(cfg)]["expected_tokens"],
                     "measured_parts_ms": _parts(split[i]),
                     "measured_tokens_per_iteration": round(split[i]["emitted"] / max(1, split[i]["iterations"]), 4)})
    base_meas = next(r["measured_tokens_per_s"] for r, c in zip(rows, chosen) if _key(c) == _key(base))
    for r in rows:
        r["measured_speedup"] = round(r["measured_tokens_per_s"] / base_meas, 4)
    best_meas = max(r["measured_tokens_per_s"] for r in rows)
    pick = max(rows, key=lambda r: r["predicted_tokens_per_s"])
    result = {
        "plan": str(plan_path), "alpha": alpha, "simulate_alpha": simulate_alpha,
        "prompts": len(prompts), "rounds": rounds, "warmup": warmup, "max_new_tokens": max_new_tokens,
        "bandwidth_gbs": {"before_profile": round(bw_before, 2), "per_round": [round(b, 2) for b in bws],
                          "drift": round(max(bws) / min(bws), 3)},
        "rows": rows,
        "median_abs_error": round(statistics.median(abs(r["error"]) for r in rows), 4),
        "pick": {"draft": pick["draft"], "target": pick["target"], "gamma": pick["gamma"],
                 "measured_tokens_per_s": pick["measured_tokens_per_s"],
                 "gap_to_measured_best": round(1 - pick["measured_tokens_per_s"] / best_meas, 4)},
        "profile": prof,
    }
    _print(result, log)
    if png:
        _plot(result, png)
        log(f"wrote {png}")
    return result


def _parts(sp: dict) -> dict:
    n = max(1, sp["iterations"])
    return {k: round(sp[f"{k}_s"] * 1e3 / n, 5) for k in ("draft", "verify", "host")}


def _print(res: dict, log):
    log(f"{'draft':<26} {'target':<34} {'g':>2} {'pred tok/s':>10} {'meas tok/s':>10} {'error':>7} "
        f"{'pred x':>7} {'meas x':>7}")
    for r in res["rows"]:
        log(f"{r['draft']:<26} {r['target']:<34} {r['gamma']:>2} {r['predicted_tokens_per_s']:>10.1f} "
            f"{r['measured_tokens_per_s']:>10.1f} {100 * r['error']:>6.1f}% {r['predicted_speedup']:>6.2f}x "
            f"{r['measured_speedup']:>6.2f}x")
    log("where it comes from (ms per iteration, predicted / measured; tokens per iteration):")
    for r in res["rows"]:
        pp, mp = r.get("predicted_parts_ms"), r.get("measured_parts_ms")
        if not pp or not mp:
            continue
        log(f"  {r['draft']:<24} {r['target']:<24} g{r['gamma']}: draft {pp['draft']:.3f}/{mp['draft']:.3f}  "
            f"verify {pp['verify']:.3f}/{mp['verify']:.3f}  host {pp['host']:.3f}/{mp['host']:.3f}  "
            f"tokens {r['predicted_tokens_per_iteration']:.2f}/{r['measured_tokens_per_iteration']:.2f}")
    bw = res["bandwidth_gbs"]
    log(f"median |error| {100 * res['median_abs_error']:.1f}%; planner's pick is "
        f"{100 * res['pick']['gap_to_measured_best']:.1f}% behind the measured best; bandwidth "
        f"{min(bw['per_round']):.1f}-{max(bw['per_round']):.1f} GB/s over the rounds (drift {bw['drift']:.2f}x)")


def _plot(res: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    xs = [r["predicted_tokens_per_s"] for r in res["rows"]]
    ys = [r["measured_tokens_per_s"] for r in res["rows"]]
    a1.scatter(xs, ys)
    lo, hi = min(xs + ys) * 0.9, max(xs + ys) * 1.1
    a1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    for r in res["rows"]:
        a1.annotate(f"g{r['gamma']}", (r["predicted_tokens_per_s"], r["measured_tokens_per_s"]), fontsize=7)
    a1.set_xlabel("predicted tokens/s")
    a1.set_ylabel("measured tokens/s")
    a1.set_title(f"median |error| {100 * res['median_abs_error']:.1f}%")
    by = {}
    for r in res["rows"]:
        by.setdefault(f"{r['draft']} / {r['target']}" if r["gamma"] else r["target"], []).append(r)
    for label, rs in by.items():
        rs = sorted(rs, key=lambda r: r["gamma"])
        a2.plot([r["gamma"] for r in rs], [r["measured_speedup"] for r in rs], "o-", label=f"{label} measured")
        a2.plot([r["gamma"] for r in rs], [r["predicted_speedup"] for r in rs], "x--", label=f"{label} predicted")
    a2.axhline(1.0, color="k", lw=0.6)
    a2.set_xlabel("gamma")
    a2.set_ylabel("speedup over target-only")
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_bench_cli(a) -> int:
    from .fsutil import write_json
    from .runtime.cli_run import read_prompts
    prompts = read_prompts(a.prompts, a.limit)
    if a.simulate_alpha is not None and not 0 <= a.simulate_alpha <= 1:
        raise UserError("--simulate-alpha must be in [0, 1]")
    from .pipeline import check_template
    check_template(a.prompt_template)
    if a.warmup < 0 or a.rounds < 1:
        raise UserError("--warmup must be >= 0 and --rounds >= 1")
    configs = None
    if a.configs:
        try:
            configs = [int(x) - 1 for x in a.configs.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--configs: plan ranks like 1,2,9 expected, got {a.configs!r}") from None
        if not configs or min(configs) < 0:
            raise UserError("--configs: ranks start at 1")
    if a.build_only and a.no_build:
        raise UserError("--build-only and --no-build exclude each other")
    res = run_bench(a.root, a.plan, a.top, prompts, a.rounds, a.max_new_tokens, a.simulate_alpha, a.png,
                    configs=configs, warmup=a.warmup, link=not a.no_link, prompt_template=a.prompt_template,
                    reprofile=not a.no_reprofile,
                    build="only" if a.build_only else "no" if a.no_build else "yes")
    if a.json:
        write_json(a.json, res)
    return 0

