"""`build-sd demo --pair chat`: the real pair, SmolLM2-135M-Instruct (imported from the GGUF that
`make smollm2` fetches) and the draft distilled for it (build_sd/chatpair/models/draft).

Same stages as the translation demo (run.py), each cached: import -> export both -> compile for
`host` -> validate the target -> plan (profile this CPU under both IREE CPU drivers, calibrate
alpha on chat prompts the draft never saw in training; the cost model picks gamma and the drivers)
-> bundle -> answer chat questions speculatively and target-only from the same bundle, alternating,
and print the measured speedup beside the predicted one. Only what the demo runs is built: one
preset, the target's verify functions for gamma 1..6, two prompt buckets.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..errors import UserError

DRAFT_DIR = Path(__file__).resolve().parent.parent / "chatpair" / "models" / "draft"
CONTEXT = 1024             # the demo's conversations are one turn; `build` defaults chat models to 2048
PREFILL = [32, 128]


def questions() -> tuple[list[str], list[str]]:
    """(the questions the demo answers, the prompts it calibrates alpha on): both from the draft's
    held-out prompts (subjects, and half the template families, that its training never saw;
    build_sd/chatpair/prompts.py), disjoint."""
    from ..chatpair.prompts import heldout_prompts
    held = heldout_prompts(40, seed=1)
    return held[0::2], held[1::2]


def questions_asked(n: int) -> list[str]:
    return questions()[0][:n]


def run_chat_demo(out_dir: str | Path, gamma: int | None = None, questions: int = 4, max_new_tokens: int = 64,
                  draft_dir: str | Path | None = None, validate_models: bool = True) -> dict:
    from rich.console import Console
    con = Console()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    bundle, gamma, pick = _build(out_dir, gamma, Path(draft_dir) if draft_dir else DRAFT_DIR, validate_models, con)
    con.print(f"built in {time.perf_counter() - t0:.1f}s; gamma {gamma}"
              + (f", the planner's pick ({pick['label']}): predicted {pick['speedup']:.2f}x over target-only"
                 if pick else " (given)") + "\n")
    summary = _answer(bundle, gamma, questions_asked(questions), max_new_tokens, con)
    summary["predicted_speedup"] = pick["speedup"] if pick else None
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _build(out_dir: Path, gamma: int | None, draft: Path, validate_models: bool, con):
    from ..builder.bundle import make_bundle
    from ..builder.compile import compile_artifacts
    from ..builder.export import export_model
    from ..builder.gguf import checkpoint_dir
    from ..chatpair.fetch import target_gguf
    if not (draft / "config.json").exists():
        raise UserError(f"the chat pair's draft is missing ({draft}): train it with python -m build_sd.chatpair "
                        "(build_sd/chatpair/__main__.py), or give --draft DIR")
    target = checkpoint_dir(target_gguf())
    ckpts = {"target": target, "draft": draft}
    arts = {}
    with con.status("") as status:
        for role, gammas in (("target", list(range(1, 7))), ("draft", [1])):
            status.update(f"[bold]export[/] {role}")
            export_model(ckpts[role], out_dir / "mlir" / role, gammas=gammas, prefill=PREFILL, max_context=CONTEXT,
                         log=lambda m: con.print(f"  {m}"))
            status.update(f"[bold]compile[/] {role} for host (a minute or two on a fresh machine)")
            arts[role] = out_dir / "artifacts" / role
            compile_artifacts(out_dir / "mlir" / role, ["host"], arts[role], log=lambda m: con.print(f"  {m}"))
        if validate_models:
            from ..builder.validate import validate
            status.update("[bold]validate[/] target against PyTorch")
            lines = []
            if not validate(arts["target"], target, presets=["host"], out=lines.append):
                con.print("\n".join(lines))
                raise UserError("the compiled target does not match PyTorch (see the table)")
            con.print(f"  {lines[-1]}")
        pick, drivers = None, {}
        if gamma is None:
            status.update("[bold]plan[/]: profile this CPU, calibrate alpha on chat prompts (cached)")
            gamma, drivers, pick = _plan(out_dir, arts, ckpts, con)
        status.update("[bold]bundle[/]")
        bundle = out_dir / "bundle"
        make_bundle(arts["draft"], arts["target"], {"draft": {None: "host"}, "target": {None: "host"}}, gamma,
                    bundle, cpu_driver=drivers, link=True, log=lambda m: con.print(f"  {m}"))
    return bundle, gamma, pick


def _plan(out_dir: Path, arts: dict, ckpts: dict, con):
    """Profile and calibrate once (cached while the modules are unchanged), then plan over the CPU
    (worker pool or calling thread) x gamma 0..6."""
    import msgspec

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
        except UserError:
            prof = None
    if prof is None:
        probe = out_dir / "probe"
        make_bundle(arts["draft"], arts["target"], {"draft": {None: "host"}, "target": {None: "host"}}, 6, probe,
                    link=True, log=lambda m: None)
        cal = calibrate(str(probe), questions()[1][:12], gamma=6, max_new_tokens=48, log=lambda m: None, chat=True)
        prof = profile([arts["draft"], arts["target"]], devices=["cpu"], budget_s=0.25, log=lambda m: None)
        got = {"key": key, "alpha": cal.greedy.for_planner(), "profile": prof.to_dict()}
        write_json(cache, got)
    con.print(f"  alpha per position {', '.join(f'{a:.2f}' for a in got['alpha'])} (calibrated here, chat prompts)")
    plan = make_plan(ckpts["draft"], ckpts["target"], host_platform(detect_host()), got["alpha"], prof,
                     max_context=CONTEXT, gammas=range(0, 7), devices=["cpu", "cpu-sync"])
    pick = plan.configs[0]
    drivers = {}
    for role, p in (("draft", pick.draft), ("target", pick.target)):
        if p and plan.devices[p.devices["whole"]].driver == "local-sync":
            drivers[role] = "local-sync"
    label = f"draft {pick.draft_label}, target {pick.target.label}"
    return pick.gamma, drivers, dict(msgspec.to_builtins(pick), label=label)


def _answer(bundle: Path, gamma: int, questions: list[str], max_new_tokens: int, con) -> dict:
    """Speculative and target-only answers from the same bundle, alternating; equal token for token."""
    from rich.table import Table

    from ..runtime.chat import encode_chat, messages_for
    from ..runtime.sampling import GreedyAcceptor
    from ..runtime.session import open_bundle
    from ..runtime.speculative import generate
    session = open_bundle(bundle)
    session.warmup()
    table = Table(title=f"SmolLM2-135M-Instruct, greedy, gamma {gamma}", show_lines=True)
    table.add_column("question")
    table.add_column("answer (speculative = target-only)")
    spec_tps, base_tps, acc, rej = [], [], 0, 0
    for q in questions:
        ids = encode_chat(session, messages_for(q))
        spec = generate(session.target, session.draft if gamma else None, ids, gamma, GreedyAcceptor(),
                        max_new_tokens, session.eos_ids)
        base = generate(session.target, None, ids, 0, GreedyAcceptor(), max_new_tokens, session.eos_ids)
        if spec.token_ids != base.token_ids:
            raise UserError(f"speculative output differs from target-only output for {q!r}")
        table.add_row(q, session.tokenizer.decode(spec.token_ids, skip_special_tokens=True))
        spec_tps.append(spec.metrics.tokens_per_s or 0.0)
        base_tps.append(base.metrics.tokens_per_s or 0.0)
        acc, rej = acc + spec.metrics.accepted, rej + spec.metrics.rejected
    con.print(table)
    alpha = acc / max(1, acc + rej)
    s, b = statistics.median(spec_tps), statistics.median(base_tps)
    con.print(f"alpha {alpha:.3f}   tokens/s: speculative {s:.1f}, target only {b:.1f}   "
              f"speedup [bold]{s / b:.2f}x[/] (medians over {len(questions)} questions, same bundle)")
    return {"pair": "chat", "gamma": gamma, "questions": len(questions), "alpha": round(alpha, 3),
            "tokens_per_s_speculative": round(s, 1), "tokens_per_s_target_only": round(b, 1),
            "speedup": round(s / b, 3)}
