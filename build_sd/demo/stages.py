"""The stages both demos share (run.py: English->German, chat.py: SmolLM2 + its draft).

export + compile each model -> validate the target -> plan on this CPU (profile both IREE CPU
drivers and calibrate alpha once, cached while the modules are unchanged) -> bundle -> generate
speculatively and target-only from the same bundle, alternating, equal token for token.
Lavapipe is left out of the plan: it runs on these same cores ~30x slower per call.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

from ..errors import UserError

PLACE_HOST = {"draft": {None: "host"}, "target": {None: "host"}}


def build_models(out_dir: Path, models: dict, presets: list[str], prefill: list[int], max_context: int,
                 status, con) -> dict[str, Path]:
    """models: name -> (checkpoint folder, gammas[, quant]). Export and compile each (cached);
    artifacts per name (e.g. "target", "target-w8a8").

    A model compiles while the next one exports: iree-compile keeps ~1.4 of this VM's 2 cores busy and
    an export's single-process parts (loading, SmoothQuant's pass) fewer, so the two fill each other's
    idle cores. One compile at a time (each is a Ninja graph already parallel inside)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..builder.compile import compile_artifacts
    from ..builder.export import export_model
    arts, compiling = {}, []
    with ThreadPoolExecutor(1) as pool:
        try:
            for role, (ckpt, gammas, *quant) in models.items():
                status.update(f"[bold]export[/] {role}" + (" (SmoothQuant: a pass over its calibration text first)"
                                                            if quant == ["w8a8"] else "")
                              + (" while the previous model compiles" if compiling else ""))
                export_model(ckpt, out_dir / "mlir" / role, gammas=gammas, prefill=prefill, max_context=max_context,
                             quant=quant[0] if quant else "none", log=lambda m: con.print(f"  {m}"))
                arts[role] = out_dir / "artifacts" / role
                compiling.append(pool.submit(compile_artifacts, out_dir / "mlir" / role, presets, arts[role],
                                             log=lambda m: con.print(f"  {m}")))
            status.update(f"[bold]compile[/] for {', '.join(presets)} (minutes on a fresh machine)")
            for f in compiling:
                f.result()
        except BaseException:
            for f in compiling:
                f.cancel()
            raise
    return arts


def validate_target(art: Path, ckpt: Path, status, con) -> None:
    """Compare the target's host modules with PyTorch, once per build: a pass is remembered beside the
    artifacts (validated.json) under the hashes of their manifest (modules, compiler, flags) and export
    record (checkpoint, weights) and the IREE runtime's version, so a built demo does not run torch
    again (~8-17 s a target here)."""
    from ..builder.validate import validate
    from ..fsutil import read_json, sha256_file, write_json
    from ..runtime.checks import runtime_version
    memo = art.parent / "validated.json"
    key = {"manifest": sha256_file(art / "manifest.json"), "export": sha256_file(art / "export.json"),
           "runtime": runtime_version()}
    done = read_json(memo) if memo.exists() else {}
    if done.get(art.name, {}).get("key") == key:
        con.print(f"  {done[art.name]['line']} (validated when built; same modules and checkpoint)")
        return
    status.update("[bold]validate[/] target against PyTorch")
    lines = []
    if not validate(art, ckpt, presets=["host"], out=lines.append):
        con.print("\n".join(lines))
        raise UserError("the compiled target does not match PyTorch (see the table)")
    con.print(f"  {lines[-1]}")
    write_json(memo, {**done, art.name: {"key": key, "line": lines[-1]}})


def plan_here(out_dir: Path, arts: dict, ckpts: dict, max_context: int, calibrate_probe: Callable,
              con, what: str = "", template: str | None = None, targets: dict[str, Path] | None = None,
              min_agreement: float | None = None):
    """(gamma, CPU driver per role, the pick as a dict with a label). calibrate_probe(bundle,
    reference=None) -> the calibration of a probe bundle of the pair on the host, which drafts the
    largest gamma the target was exported for.

    targets: precision -> the target's artifacts in it (f32 first: arts["target"]): the planner
    chooses the target's precision too, each calibrated against the f32 one for its agreement, and
    min_agreement bounds it (`plan --precisions --min-agreement`). The pick's "target_precision"
    says which artifacts to bundle."""
    import msgspec

    from ..builder.bundle import make_bundle
    from ..contract import Calibration, Profile, convert
    from ..fsutil import read_json, sha256_file, write_json
    from ..plan.planner import make_plan
    from ..plan.platforms import host_platform
    from ..runtime.hostinfo import detect_host
    from ..runtime.profiler import profile
    from ..builder.compile import load_artifacts
    targets = targets or {"f32": arts["target"]}
    models = {"draft": arts["draft"], **{f"target-{p}": a for p, a in targets.items()}}
    gmax = max(load_artifacts(arts["target"])[1].gammas)    # the probes draft that far; the plan chooses up to it
    key = {r: sha256_file(a / "host" / "whole.vmfb") for r, a in models.items()}
    cache = out_dir / "plan_inputs.json"
    got = read_json(cache) if cache.exists() else {}
    prof, cals = None, []
    if got.get("key") == key:
        try:
            prof = convert(got.get("profile"), Profile, str(cache))
            cals = [convert(c, Calibration, str(cache)) for c in got.get("calibrations", [])]
        except UserError:       # written by another build_sd: measure again
            prof = None
    if prof is None or len(cals) != len(targets):
        cals, ref_probe = [], None
        for prec, art in targets.items():
            probe = out_dir / f"probe-{prec}"
            make_bundle(arts["draft"], art, PLACE_HOST, gmax, probe, prompt_template=template, link=True,
                        log=lambda m: None)
            cals.append(calibrate_probe(probe, reference=ref_probe))
            ref_probe = ref_probe or probe      # the first (f32) target is the others' reference
        # one contention round per device pair: the demo's cold path has a 10-minute budget
        prof = profile(list(models.values()), devices=["cpu"], budget_s=0.25, log=lambda m: None, contention_rounds=1)
        got = {"key": key, "calibrations": [c.to_dict() for c in cals], "profile": prof.to_dict()}
        write_json(cache, got)
    for prec, cal in zip(targets, cals):
        agree = ("" if cal.target_agreement is msgspec.UNSET else
                 f", top-1 agreement with f32 {cal.target_agreement:.3f}")
        con.print(f"  target {prec}: alpha per position {', '.join(f'{a:.2f}' for a in cal.greedy.for_planner())}"
                  f" (calibrated here{what}){agree}")
    several = len(targets) > 1
    plan = make_plan(ckpts["draft"], ckpts["target"], host_platform(detect_host()), cals[0].greedy.for_planner(),
                     prof, max_context=max_context, gammas=range(0, gmax + 1), devices=["cpu", "cpu-sync"],
                     precisions=list(targets) if several else None, calibrations=cals if several else None,
                     min_agreement=min_agreement if several else None,
                     # the draft is built in f32 only: a plan that quantized it would predict for a
                     # draft the bundle does not hold (it did: 1.34x predicted, 0.88x measured)
                     draft_precisions=["f32"] if several else None)
    for prec, why in plan.excluded.items():
        con.print(f"  target {prec} left out: {why}")
    pick = plan.configs[0]
    drivers = {}
    for role, p in (("draft", pick.draft), ("target", pick.target)):
        if p and plan.devices[p.devices["whole"]].driver == "local-sync":
            drivers[role] = "local-sync"
    if pick.gamma == 0 and plan.devices[pick.target.devices["whole"]].driver == "local-sync":
        drivers["draft"] = "local-sync"
    label = f"draft {pick.draft_label}, target {pick.target.label}" + (", overlapped" if pick.overlap else "")
    prec = pick.target_precision or "f32"
    if several:
        label += f", target in {prec}"
    return pick.gamma, drivers, dict(msgspec.to_builtins(pick), label=label, target_precision=prec)


def side_by_side(session, prompts: list[list[int]], gamma: int, max_new_tokens: int) -> dict:
    """Speculative then target-only for each prompt (ids), alternating so both see the same machine
    state; raises if the outputs differ. Medians of tokens/s, alpha over all, the outputs."""
    from ..runtime.sampling import GreedyAcceptor
    from ..runtime.speculative import generate
    spec_tps, base_tps, acc, rej, outputs = [], [], 0, 0, []
    overlap, cpus = session.schedule()          # the loop the bundle asks for (the plan's pick)
    for ids in prompts:
        spec = generate(session.target, session.draft if gamma else None, ids, gamma, GreedyAcceptor(),
                        max_new_tokens, session.eos_ids, overlap=overlap, cpus=cpus)
        base = generate(session.target, None, ids, 0, GreedyAcceptor(), max_new_tokens, session.eos_ids)
        if spec.token_ids != base.token_ids:
            raise UserError(f"speculative output differs from target-only output for prompt ids {ids[:12]}...")
        outputs.append(spec.token_ids)
        for g, tps in ((spec, spec_tps), (base, base_tps)):
            if g.metrics.tokens_per_s:          # None when nothing was generated
                tps.append(g.metrics.tokens_per_s)
        acc, rej = acc + spec.metrics.accepted, rej + spec.metrics.rejected
    s, b = statistics.median(spec_tps), statistics.median(base_tps)
    return dict(outputs=outputs, alpha=acc / max(1, acc + rej), spec=s, base=b, speedup=s / b)
