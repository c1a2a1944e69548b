"""`build-sd demo`: build the embedded English->German pair and translate with speculation.

Stages (each cached by build_sd's own incremental export/compile, so a second run only loads):
export both models -> compile for `host` (+ `vulkan-llvmpipe` when a Vulkan device exists)
-> validate the target on this machine -> plan (profile this CPU under both IREE CPU drivers and
calibrate alpha, cached; the cost model picks gamma and the drivers) -> bundle -> translate test
sentences with that gamma and with gamma 0 (target only) from the same bundle, alternating, and
print the speedup.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..errors import UserError

DEFAULT_OUT = Path("artifacts") / "demo"      # under the current folder, never beside the package


def _test_sentences(n: int) -> list[str]:
    from . import DATA_DIR
    rows = (DATA_DIR / "test.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [r.split("\t") for r in rows if "\t" in r and not r.startswith("#")]
    # short, ordinary UI sentences read best in a demo: pick evenly through the split
    pairs = [p for p in pairs if 4 <= len(p[0].split()) <= 12]
    step = max(1, len(pairs) // n)
    return [p[0] for p in pairs[::step][:n]]


def _x(pick) -> str:
    return f"{pick['pred_tokens_per_s']:.0f} tok/s, {pick['speedup']:.2f}x over target-only"


def _plan(out_dir: Path, arts: dict, template: str, con):
    """Profile (both CPU drivers) and calibrate once, cached while the modules are unchanged;
    plan over the CPU (worker pool or calling thread) x gamma 0..6. Lavapipe is left out: it
    runs on these same cores ~30x slower per call (the planner would never pick it)."""
    import msgspec

    from . import DRAFT_DIR, TARGET_DIR
    from ..builder.bundle import make_bundle
    from ..contract import Profile, convert
    from ..fsutil import read_json, sha256_file, write_json
    from ..plan.planner import make_plan
    from ..plan.platforms import host_platform
    from ..runtime.calibrate import calibrate
    from ..runtime.hostinfo import detect_host
    from ..runtime.profiler import profile
    key = {r: sha256_file(arts[r] / "host" / "whole.vmfb") for r in arts}
    cache = out_dir / "plan_inputs.json"
    got = read_json(cache) if cache.exists() else {}
    prof = None
    if got.get("key") == key:
        try:
            prof = convert(got.get("profile"), Profile, str(cache))
        except UserError:       # written by another build_sd: measure again
            prof = None
    if prof is None:
        probe = out_dir / "probe"
        make_bundle(arts["draft"], arts["target"], {"draft": {None: "host"}, "target": {None: "host"}}, 6, probe,
                    prompt_template=template, link=True, log=lambda m: None)
        # calibration sentences: the test split's, not the ones the demo translates
        texts = _test_sentences(64)[1::2][:24]
        cal = calibrate(str(probe), texts, gamma=6, max_new_tokens=32, log=lambda m: None)
        prof = profile([arts["draft"], arts["target"]], devices=["cpu"], budget_s=0.25, log=lambda m: None)
        got = {"key": key, "alpha": cal.greedy.for_planner(), "profile": prof.to_dict()}
        write_json(cache, got)
    con.print(f"  alpha per position {', '.join(f'{a:.2f}' for a in got['alpha'])} (calibrated here)")
    plan = make_plan(DRAFT_DIR, TARGET_DIR, host_platform(detect_host()), got["alpha"], prof, max_context=256,
                     gammas=range(0, 7), devices=["cpu", "cpu-sync"])
    pick = plan.configs[0]
    drivers = {}
    for role, p in (("draft", pick.draft), ("target", pick.target)):
        if p and plan.devices[p.devices["whole"]].driver == "local-sync":
            drivers[role] = "local-sync"
    if pick.gamma == 0 and plan.devices[pick.target.devices["whole"]].driver == "local-sync":
        drivers["draft"] = "local-sync"
    label = f"draft {pick.draft_label}, target {pick.target.label}"
    return pick.gamma, drivers, dict(msgspec.to_builtins(pick), label=label)


def run_demo(out_dir: str | Path = DEFAULT_OUT, gamma: int | None = None, sentences: int = 6,
             max_new_tokens: int = 48, validate_models: bool = True) -> dict:
    """Build the pair into out_dir (cached), then translate `sentences` test sentences."""
    from rich.console import Console
    con = Console()
    out_dir = Path(out_dir)
    t_build = time.perf_counter()
    bundle, gamma, how = _build(out_dir, gamma, validate_models, con)
    con.print(f"built in {time.perf_counter() - t_build:.1f}s; gamma {gamma}, {how}\n")
    summary = _translate(bundle, gamma, sentences, max_new_tokens, con)
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _build(out_dir: Path, gamma: int | None, validate_models: bool, con):
    """export -> compile -> validate -> plan -> bundle, each cached; (bundle, gamma, why that gamma)."""
    from . import DRAFT_DIR, TARGET_DIR
    from ..builder.bundle import make_bundle
    from ..builder.compile import compile_artifacts
    from ..builder.export import export_model
    from ..runtime.devices import vulkan_device_names
    for d in (TARGET_DIR, DRAFT_DIR):
        if not (d / "config.json").exists():
            raise UserError(f"the demo pair is missing ({d}): train it with build_sd/demo/train.py")
    presets = ["host"] + (["vulkan-llvmpipe"] if any("llvmpipe" in n for n in vulkan_device_names()) else [])
    arts = {}
    with con.status("") as status:
        for role, ck, gammas in (("target", TARGET_DIR, [1, 2, 3, 4, 5, 6]), ("draft", DRAFT_DIR, [1])):
            status.update(f"[bold]export[/] {role}")
            export_model(ck, out_dir / "mlir" / role, gammas=gammas, prefill=[16, 64], max_context=256,
                         log=lambda m: con.print(f"  {m}"))
            status.update(f"[bold]compile[/] {role} for {', '.join(presets)} (minutes on a fresh machine)")
            arts[role] = out_dir / "artifacts" / role
            compile_artifacts(out_dir / "mlir" / role, presets, arts[role], log=lambda m: con.print(f"  {m}"))
        if validate_models:
            from ..builder.validate import validate
            status.update("[bold]validate[/] target against PyTorch")
            lines = []
            if not validate(arts["target"], TARGET_DIR, presets=["host"], out=lines.append):
                con.print("\n".join(lines))
                raise UserError("the compiled target does not match PyTorch (see the table)")
            con.print(f"  {lines[-1]}")
        from .tokenizer import SEPARATOR, BOS
        template = BOS + "{prompt}" + SEPARATOR
        if gamma is None:
            status.update("[bold]plan[/]: profile this CPU, calibrate alpha (cached)")
            gamma, drivers, pick = _plan(out_dir, arts, template, con)
            how = f"the planner's pick ({pick['label']}): predicted {_x(pick)}"
        else:
            drivers, how = {}, "--gamma given: draft and target on the CPU's worker pool"
        status.update("[bold]bundle[/]")
        bundle = out_dir / "bundle"
        make_bundle(arts["draft"], arts["target"], {"draft": {None: "host"}, "target": {None: "host"}}, gamma,
                    bundle, prompt_template=template, cpu_driver=drivers, link=True,
                    log=lambda m: con.print(f"  {m}"))
    return bundle, gamma, how


def _translate(bundle: Path, gamma: int, sentences: int, max_new_tokens: int, con) -> dict:
    """Speculative and target-only from the same bundle, alternating; the table and the speedup."""
    from rich.table import Table

    from ..runtime.prompts import encode_prompt
    from ..runtime.sampling import GreedyAcceptor
    from ..runtime.session import open_bundle
    from ..runtime.speculative import generate
    session = open_bundle(bundle)
    session.warmup()
    texts = _test_sentences(sentences)
    where = {r: session.manifest.cpu_drivers.get(r, "local-task") for r in ("draft", "target")}
    table = Table(title=f"English -> German, greedy, gamma {gamma} (on the CPU: draft {where['draft']}, "
                        f"target {where['target']})", show_lines=True)
    table.add_column("English")
    table.add_column("German (speculative)")
    spec_tps, base_tps, totals = [], [], {"acc": 0, "rej": 0}
    for text in texts:
        ids = encode_prompt(session, text)
        # alternate A B so both see the same machine state (bandwidth drifts here)
        spec = generate(session.target, session.draft, ids, gamma, GreedyAcceptor(), max_new_tokens,
                        session.eos_ids)
        base = generate(session.target, None, ids, 0, GreedyAcceptor(), max_new_tokens, session.eos_ids)
        if spec.token_ids != base.token_ids:
            raise UserError(f"speculative output differs from target-only output for {text!r}")
        table.add_row(text, session.tokenizer.decode(spec.token_ids, skip_special_tokens=True))
        for g, acc in ((spec, spec_tps), (base, base_tps)):
            if g.metrics.tokens_per_s:
                acc.append(g.metrics.tokens_per_s)
        totals["acc"] += spec.metrics.accepted
        totals["rej"] += spec.metrics.rejected
    con.print(table)
    alpha = totals["acc"] / max(1, totals["acc"] + totals["rej"])
    s, b = statistics.median(spec_tps), statistics.median(base_tps)
    con.print(f"alpha {alpha:.3f}   tokens/s: speculative {s:.1f}, target only {b:.1f}   "
              f"speedup [bold]{s / b:.2f}x[/] (medians over {len(texts)} sentences, same bundle)")
    return {"gamma": gamma, "cpu_driver": where, "sentences": len(texts), "alpha": round(alpha, 3),
            "tokens_per_s_speculative": round(s, 1), "tokens_per_s_target_only": round(b, 1),
            "speedup": round(s / b, 3)}
