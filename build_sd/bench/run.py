"""`build-sd bench`: run the plan's configurations for real; predicted vs measured.

In ONE run, because this machine's memory bandwidth drifts by up to 1.5x within minutes:
1. build (incrementally) a bundle for each chosen configuration of the plan (`build_bundles`);
2. profile the artifacts they use and calibrate alpha on the prompts, or take --simulate-alpha A:
   accept/reject drawn from Bernoulli(A), every kernel still runs (`profile_and_alpha`);
3. predict each configuration from a profile and alpha (the cost model, unchanged: `Predictor`);
4. measure tokens/s, alternating configurations round by round (A B C, B C A, ...), each round
   bracketed by in-situ re-profiles and predicted from their mean (`measure_rounds`);
5. summarise: predicted vs measured per configuration, the error, whether the planner's pick is
   the measured best (`summarise`), the table and the PNG (report.py).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

from ..contract import ArtifactsManifest, Plan, PlanConfig, Profile
from ..errors import UserError
from ..fsutil import write_json
from .measure import Rounds, Runner, bandwidth_gbs, measure_rounds
from .options import BenchOptions
from .predict import Predictor, overlay
from .report import plot, print_result


def run_bench(root: str | Path, plan: Plan, plan_path: str, prompts: list[str], opts: BenchOptions,
              platform: Callable, png: str | None = None, log=print) -> dict:
    """platform(): the plan's platform (called once measuring starts: `host` measures this machine).
    build "only" returns what it built; otherwise the result that --json writes."""
    root = Path(root)
    if opts.build != "only":
        _check_runnable_here(plan)
    chosen = choose(plan, opts)
    bundles = build_bundles(root, plan, chosen, opts, log)
    if opts.build == "only":
        log(f"built {len(bundles)} bundles under {root / 'bench'}")
        return {"built": [str(b) for b in bundles], "configs": [list(c.key) for c in chosen]}
    prof, alpha, cpu_drivers, bw_before = profile_and_alpha(root, plan, chosen, bundles, prompts, opts, log)
    predictor = Predictor(root, plan, platform(), alpha)
    runner = Runner(chosen, bundles, prompts, opts)
    rounds = measure_rounds(runner, predictor, prof, _reprofiler(root, plan, chosen, prof, cpu_drivers, opts),
                            opts, log)
    result = summarise(plan, plan_path, chosen, rounds, runner, prof, alpha,
                       bw_before, prompts, opts)
    print_result(result, log)
    if png:
        plot(result, png)
        log(f"wrote {png}")
    return result


# ---- 1. what to measure, and its bundles ------------------------------------------------------------
def choose(plan: Plan, opts: BenchOptions) -> list[PlanConfig]:
    """The chosen configurations, and always the best target-only one: the speedup baseline."""
    if plan.precisions:
        # the predictor re-ranks at the plan's dtype alone, with one calibrated alpha: a precision
        # dimension would need alpha per precision pair, which bench does not calibrate
        raise UserError(f"bench measures plans of one precision; this one ranks {','.join(plan.precisions)} "
                        f"(plan --precisions): plan again with --dtype f32 or f16 and no --precisions")
    if opts.configs and max(opts.configs) >= len(plan.configs):
        raise UserError(f"--configs: the plan has {len(plan.configs)} configurations")
    chosen = [plan.configs[i] for i in (opts.configs or range(min(opts.top, len(plan.configs))))]
    base = plan.best_target_only()
    if all(c.key != base.key for c in chosen):
        chosen.append(base)
    return chosen


def _check_runnable_here(plan: Plan) -> None:
    """Every device of the plan must be here: bench measures on this machine."""
    from ..builder.targets import PRESETS
    from ..runtime.compat import can_run
    for name, d in plan.devices.items():
        pr = PRESETS.get(d.preset)
        if pr is None:
            continue     # a preset from a newer build_sd: opening its bundle will say more
        ok, why = can_run(pr.record())
        if not ok:
            raise UserError(f"the plan is for {plan.platform}, whose device {name!r} ({d.preset}) "
                            f"this machine cannot run ({why}): bench measures here")


def build_bundles(root: Path, plan: Plan, chosen: list[PlanConfig], opts: BenchOptions, log) -> list[Path]:
    """ROOT/bench/cI for each configuration; bench/configs.json records which configuration each
    holds, so that `--no-build` on another machine measures exactly what was built."""
    import json
    keys = [list(c.key) for c in chosen]
    built = root / "bench" / "configs.json"
    bundles = [root / "bench" / f"c{i}" for i in range(len(chosen))]
    if opts.build == "no":
        try:
            have = json.loads(built.read_text())
        except (OSError, ValueError):
            raise UserError(f"--no-build: {built} not found: run `bench --build-only` with the same "
                            "plan and --top/--configs first") from None
        if have != keys:
            raise UserError(f"--no-build: {root / 'bench'} holds other configurations than these "
                            "(same plan and --top/--configs as the --build-only run?)")
        return bundles
    from ..builder.pipeline import build_config
    for i, (cfg, b) in enumerate(zip(chosen, bundles)):
        log(f"[build {i + 1}/{len(chosen)}] target {cfg.target.label} draft {cfg.draft_label} gamma {cfg.gamma}"
            f"{' overlapped' if cfg.overlap else ''}")
        build_config(cfg, plan, root, b, validate_models=(i == 0), log=lambda m: None, link=opts.link,
                     prompt_template=opts.prompt_template)
    write_json(built, keys)
    return bundles


# ---- 2. profile and alpha ----------------------------------------------------------------------------
def _devices_of(plan: Plan, cfg: PlanConfig):
    """The plan's device records a configuration's models run on."""
    return [plan.devices[d] for p in (cfg.draft, cfg.target) if p for d in p.devices.values()]


def _artifacts(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "artifacts").iterdir() if (p / "manifest.json").exists())


def profile_and_alpha(root: Path, plan: Plan, chosen: list[PlanConfig], bundles: list[Path], prompts: list[str],
                      opts: BenchOptions, log):
    """Profile every artifacts folder the configurations use (only the CPU drivers they run on),
    and calibrate alpha on the workload itself, with the longest draft any uses."""
    from ..runtime.calibrate import calibrate
    from ..runtime.devices import release_vulkan
    from ..runtime.profiler import profile
    arts = _artifacts(root)
    # the CPU drivers the measured configurations use (a 1B model under local-sync on a 16-core
    # box would only spend minutes profiling a device no configuration runs on)
    used = {d.driver for c in chosen for d in _devices_of(plan, c)}
    cpu_drivers = tuple(d for d in ("local-task", "local-sync") if d in used) or ("local-task",)
    log(f"profiling {len(arts)} artifacts folders")
    bw_before = bandwidth_gbs()
    # in-situ loops as long as the measured generations (the calls after a prefill cost more)
    prof = profile(arts, log=lambda m: log(f"  {m}"), cpu_drivers=cpu_drivers, in_situ_tokens=opts.max_new_tokens,
                   random_weights=opts.random_weights)
    if opts.simulate_alpha is not None:
        return prof, opts.simulate_alpha, cpu_drivers, bw_before
    cal_bundle = next((b for b, c in zip(bundles, chosen) if c.gamma > 0), None)
    if cal_bundle is None:
        return prof, 0.0, cpu_drivers, bw_before
    log(f"calibrating alpha on {len(prompts)} prompts (gamma 8)")
    # in the format the timed passes use (bench --chat: user messages in the chat template)
    cal = calibrate(str(cal_bundle), prompts, gamma=8, max_new_tokens=opts.max_new_tokens,
                    log=lambda m: log(f"  {m}"), chat=opts.chat)
    release_vulkan()        # in case that bundle used lavapipe (see Runner)
    return prof, cal.greedy.for_planner(), cpu_drivers, bw_before


def _reprofiler(root: Path, plan: Plan, chosen: list[PlanConfig], prof: Profile, cpu_drivers, opts: BenchOptions):
    """The in-situ re-profile of one round, laid over the full profile (None: --no-reprofile).

    This machine's speed drifts by up to 1.5x within minutes, so each round re-profiles the CPU
    in situ, and lavapipe too when a configuration uses it (it runs on the same cores, so it
    drifts with them: its step-2 figures were 29 ms for a layer the loop later took 47 ms for,
    docs/FINDINGS.md); a discrete GPU keeps its step-2 figures."""
    from ..runtime.profiler import profile
    lavapipe = any(d.preset == "vulkan-llvmpipe" for c in chosen for d in _devices_of(plan, c))
    arts = [a for a in _artifacts(root)
            if any(p.backend == "llvm-cpu" or (lavapipe and p.backend == "vulkan-spirv")
                   for p in ArtifactsManifest.read(Path(a) / "manifest.json").presets.values())]
    if not (opts.reprofile and arts):
        return None
    devices = ["cpu", "vulkan"] if lavapipe else ["cpu"]
    return lambda: overlay(prof, profile(arts, devices=devices, budget_s=0.15, log=lambda m: None,
                                         cpu_drivers=cpu_drivers, isolated=False,
                                         in_situ_tokens=opts.max_new_tokens, random_weights=opts.random_weights))


# ---- 5. the result -------------------------------------------------------------------------------------
def summarise(plan: Plan, plan_path: str, chosen: list[PlanConfig], rounds: Rounds, runner: Runner,
              prof: Profile, alpha, bw_before: float, prompts: list[str], opts: BenchOptions) -> dict:
    """Per configuration: predicted (median over rounds) vs measured, the paired error, the
    cost model's terms; the planner's pick against the measured best."""
    rows = []
    for i, cfg in enumerate(chosen):
        last, sp = rounds.last[cfg.key], runner.split[i]
        # error: paired per round (prediction and measurement of the same minutes), median
        err = statistics.median((pp - mm) / mm for pp, mm in zip(rounds.preds[i], rounds.tps[i]))
        rows.append({"rank_in_plan": plan.configs.index(cfg) + 1 if cfg in plan.configs else None,
                     "draft": cfg.draft_label, "target": cfg.target.label, "gamma": cfg.gamma,
                     "overlap": cfg.overlap,
                     "predicted_tokens_per_s": round(statistics.median(rounds.preds[i]), 2),
                     "measured_tokens_per_s": round(statistics.median(rounds.tps[i]), 2),
                     "rounds": [round(x, 2) for x in rounds.tps[i]],
                     "predicted_rounds": [round(x, 2) for x in rounds.preds[i]],
                     "error": round(err, 4),
                     # the cost model's terms, predicted (last round's profile) and measured, ms
                     # per iteration, and tokens per iteration (E[N] vs what the loop emitted)
                     "predicted_parts_ms": last.parts_ms,
                     "predicted_tokens_per_iteration": last.expected_tokens,
                     "measured_parts_ms": sp.parts_ms(),
                     "measured_tokens_per_iteration": round(sp.emitted / max(1, sp.iterations), 4)})
    # speedups over the best measured target-only row, each side against its own figure for it:
    # the plan's best target-only (its ranking at plan time) or the cost model's best over all
    # configurations can be another row (a table once read 1.65x measured vs 1.11x predicted for
    # 38.2 vs 37.2 tok/s: the measured figure was over the slower local-sync target)
    base = max((r for r in rows if r["gamma"] == 0), key=lambda r: r["measured_tokens_per_s"])
    for r in rows:
        r["measured_speedup"] = round(r["measured_tokens_per_s"] / base["measured_tokens_per_s"], 4)
        r["predicted_speedup"] = round(r["predicted_tokens_per_s"] / base["predicted_tokens_per_s"], 4)
    best_meas = max(r["measured_tokens_per_s"] for r in rows)
    pick = max(rows, key=lambda r: r["predicted_tokens_per_s"])
    bws = rounds.bandwidth
    return {
        "plan": plan_path, "alpha": alpha, "simulate_alpha": opts.simulate_alpha,
        "prompts": len(prompts), "rounds": opts.rounds, "warmup": opts.warmup, "max_new_tokens": opts.max_new_tokens,
        "bandwidth_gbs": {"before_profile": round(bw_before, 2), "per_round": [round(b, 2) for b in bws],
                          "drift": round(max(bws) / min(bws), 3)},
        "rows": rows,
        "median_abs_error": round(statistics.median(abs(r["error"]) for r in rows), 4),
        "pick": {"draft": pick["draft"], "target": pick["target"], "gamma": pick["gamma"], "overlap": pick["overlap"],
                 "measured_tokens_per_s": pick["measured_tokens_per_s"],
                 "gap_to_measured_best": round(1 - pick["measured_tokens_per_s"] / best_meas, 4)},
        "profile": prof.to_dict(),
    }
