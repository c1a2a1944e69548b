"""`build-sd demo --pair chat`: the real pair, SmolLM2-135M-Instruct (imported from the GGUF that
`make smollm2` fetches) and the draft distilled for it (build_sd/chatpair/models/draft).

Same stages as the translation demo (run.py), each cached: import -> export both -> compile for
`host` -> validate the target -> plan (profile this CPU under both IREE CPU drivers, calibrate
alpha on chat prompts the draft never saw in training; the cost model picks gamma and the drivers)
-> bundle -> answer chat questions speculatively and target-only from the same bundle, alternating,
and print the measured speedup beside the predicted one. Only what the demo runs is built: one
preset, the target's verify functions for gamma 1..4 (GAMMAS), one prompt bucket.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UserError

DRAFT_DIR = Path(__file__).resolve().parent.parent / "chatpair" / "models" / "draft"
CONTEXT = 1024             # the demo's conversations are one turn; `build` defaults chat models to 2048
# the demo's prompts (a question in the chat template) are 36-46 tokens: one 64-token bucket holds each
# in one call (with 32 and 128 they all took the 128 one, and 32 was never called)
PREFILL = [64]
# the target's verify functions serve gamma 1..4. A 5th drafted token is reached and accepted with
# probability 0.45 x 0.55 x 0.59 x 0.50 x 0.68 = 0.05 (the committed draft's alpha per position, calibrated
# here), less than what drafting it costs (c = 0.07-0.11 of a target decode on the VMs measured), so
# gamma >= 5 cannot pay; each verify function costs the cold build an export, compile and validation
GAMMAS = [1, 2, 3, 4]
# the target's precisions the planner chooses among: f32 (the reference) and smoothed W8A8, kept when
# its top-1 agreement with f32 on the calibration questions reaches MIN_AGREEMENT (issue 15's goal).
# The draft stays f32: quantizing it moved alpha by <= 0.007 (docs/FINDINGS.md), and each precision
# of a model costs the demo an export + compile
PRECISIONS = ["f32", "w8a8"]
MIN_AGREEMENT = 0.9


def chat_demo_missing(draft_dir: str | Path | None = None) -> str | None:
    """Why the chat demo cannot run here (no network for the target's GGUF, no draft), or None."""
    from ..chatpair.fetch import target_gguf
    draft = Path(draft_dir) if draft_dir else DRAFT_DIR
    if not (draft / "config.json").exists():
        return f"its draft is missing ({draft}): train it with python -m build_sd.chatpair, or give --draft DIR"
    try:
        target_gguf(download=False)
    except UserError as e:
        return f"SmolLM2's GGUF is not cached ({e}): `make smollm2` fetches it"
    return None


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
                  draft_dir: str | Path | None = None, validate_models: bool = True,
                  precisions: list[str] | None = None, min_agreement: float | None = MIN_AGREEMENT) -> dict:
    """precisions: the target precisions the planner chooses among (default PRECISIONS; the first is
    the reference the others' agreement is measured against); min_agreement bounds that agreement."""
    from rich.console import Console
    con = Console()
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    bundle, gamma, pick = _build(out_dir, gamma, Path(draft_dir) if draft_dir else DRAFT_DIR, validate_models, con,
                                 list(precisions or PRECISIONS), min_agreement)
    con.print(f"built in {time.perf_counter() - t0:.1f}s; gamma {gamma}"
              + (f", the planner's pick ({pick['label']}): predicted {pick['speedup']:.2f}x over target-only"
                 if pick else " (given)") + "\n")
    summary = _answer(bundle, gamma, questions_asked(questions), max_new_tokens, con)
    summary["predicted_speedup"] = pick["speedup"] if pick else None
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _build(out_dir: Path, gamma: int | None, draft: Path, validate_models: bool, con, precisions: list[str],
           min_agreement: float | None):
    from .stages import PLACE_HOST, build_models, plan_here, validate_target
    from ..builder.bundle import make_bundle
    from ..builder.gguf import checkpoint_dir
    from ..chatpair.fetch import target_gguf
    if not (draft / "config.json").exists():
        raise UserError(f"the chat pair's draft is missing ({draft}): train it with python -m build_sd.chatpair "
                        "(build_sd/chatpair/__main__.py), or give --draft DIR")
    target = checkpoint_dir(target_gguf())
    ckpts = {"target": target, "draft": draft}
    if precisions[0] != "f32" or any(p not in ("f32", "w8a8", "w4a8") for p in precisions):
        raise UserError(f"--precisions {','.join(precisions)}: the chat demo's are f32 first (the reference), "
                        "then any of w8a8, w4a8")
    if gamma is not None:
        precisions = precisions[:1]          # no plan: the f32 target, as given
    gammas = sorted(set(GAMMAS) | ({gamma} if gamma else set()))
    models = {"target": (target, gammas), "draft": (draft, [1])}
    models.update({f"target-{p}": (target, gammas, p) for p in precisions[1:]})
    with con.status("") as status:
        arts = build_models(out_dir, models, ["host"], PREFILL, CONTEXT, status, con)
        targets = {p: arts["target" if p == "f32" else f"target-{p}"] for p in precisions}
        if validate_models:
            for art in targets.values():
                validate_target(art, target, status, con)
        pick, drivers = None, {}
        if gamma is None:
            status.update("[bold]plan[/]: profile this CPU, calibrate alpha on chat prompts (cached)")
            gamma, drivers, pick = plan_here(out_dir, arts, ckpts, CONTEXT, _calibrate, con, what=", chat prompts",
                                             targets=targets, min_agreement=min_agreement)
        chosen = targets[pick["target_precision"]] if pick else arts["target"]
        status.update("[bold]bundle[/]")
        bundle = out_dir / "bundle"
        make_bundle(arts["draft"], chosen, PLACE_HOST, gamma, bundle, cpu_driver=drivers, link=True,
                    overlap=bool(pick and pick.get("overlap")),
                    log=lambda m: con.print(f"  {m}"))
    return bundle, gamma, pick


def _calibrate(probe: Path, reference: Path | None = None):
    """alpha on 12 held-out questions; with a reference (the f32 target's probe), the target's top-1
    agreement with it along the reference's greedy answers too."""
    from ..runtime.calibrate import calibrate
    return calibrate(str(probe), questions()[1][:12], max_new_tokens=48, log=lambda m: None, chat=True,
                     reference=reference)


def _answer(bundle: Path, gamma: int, questions: list[str], max_new_tokens: int, con) -> dict:
    """Speculative and target-only answers from the same bundle, alternating; equal token for token."""
    from rich.table import Table

    from .stages import side_by_side
    from ..runtime.chat import encode_chat, messages_for
    from ..runtime.session import open_bundle
    from ..runtime.calibrate import precision
    session = open_bundle(bundle)
    session.warmup()
    prec = precision(session.target.export)
    table = Table(title=f"SmolLM2-135M-Instruct ({prec}), greedy, gamma {gamma}", show_lines=True)
    table.add_column("question")
    table.add_column("answer (speculative = target-only)")
    r = side_by_side(session, [encode_chat(session, messages_for(q)) for q in questions], gamma, max_new_tokens)
    for q, ids in zip(questions, r["outputs"]):
        table.add_row(q, session.tokenizer.decode(ids, skip_special_tokens=True))
    con.print(table)
    alpha, s, b = r["alpha"], r["spec"], r["base"]
    con.print(f"alpha {alpha:.3f}   tokens/s: speculative {s:.1f}, target only {b:.1f}   "
              f"speedup [bold]{s / b:.2f}x[/] (medians over {len(questions)} questions, same bundle)")
    return {"pair": "chat", "target_precision": prec, "gamma": gamma, "questions": len(questions),
            "alpha": round(alpha, 3),
            "tokens_per_s_speculative": round(s, 1), "tokens_per_s_target_only": round(b, 1),
            "speedup": round(s / b, 3)}
