"""`build-sd demo`: build the embedded English->German pair and translate with speculation.

Stages (each cached by build_sd's own incremental export/compile, so a second run only loads):
export both models -> compile for `host` (the plan leaves lavapipe out: stages.py) -> validate the
target on this machine -> plan (profile this CPU under both IREE CPU drivers and calibrate alpha,
cached; the cost model picks gamma and the drivers) -> bundle -> translate test
sentences with that gamma and with gamma 0 (target only) from the same bundle, alternating, and
print the speedup.
"""
from __future__ import annotations

import json
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


def _calibrate(probe: Path, reference: Path | None = None):
    from ..runtime.calibrate import calibrate
    # calibration sentences: the test split's, not the ones the demo translates
    texts = _test_sentences(64)[1::2][:24]
    return calibrate(str(probe), texts, max_new_tokens=32, log=lambda m: None, reference=reference)


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
    from .stages import PLACE_HOST, build_models, plan_here, validate_target
    from ..builder.bundle import make_bundle
    for d in (TARGET_DIR, DRAFT_DIR):
        if not (d / "config.json").exists():
            raise UserError(f"the demo pair is missing ({d}): train it with build_sd/demo/train.py")
    ckpts = {"target": TARGET_DIR, "draft": DRAFT_DIR}
    with con.status("") as status:
        arts = build_models(out_dir, {"target": (TARGET_DIR, [1, 2, 3, 4, 5, 6]), "draft": (DRAFT_DIR, [1])},
                            ["host"], [16, 64], 256, status, con)
        if validate_models:
            validate_target(arts["target"], TARGET_DIR, status, con)
        from .tokenizer import SEPARATOR, BOS
        template = BOS + "{prompt}" + SEPARATOR
        if gamma is None:
            status.update("[bold]plan[/]: profile this CPU, calibrate alpha (cached)")
            gamma, drivers, pick = plan_here(out_dir, arts, ckpts, 256, _calibrate, con, template=template)
            how = f"the planner's pick ({pick['label']}): predicted {_x(pick)}"
        else:
            drivers, how = {}, "--gamma given: draft and target on the CPU's worker pool"
        status.update("[bold]bundle[/]")
        bundle = out_dir / "bundle"
        make_bundle(arts["draft"], arts["target"], PLACE_HOST, gamma, bundle, prompt_template=template,
                    overlap=bool(pick and pick.get("overlap")),
                    cpu_driver=drivers, link=True, log=lambda m: con.print(f"  {m}"))
    return bundle, gamma, how


def _translate(bundle: Path, gamma: int, sentences: int, max_new_tokens: int, con) -> dict:
    """Speculative and target-only from the same bundle, alternating; the table and the speedup."""
    from rich.table import Table

    from .stages import side_by_side
    from ..runtime.prompts import encode_prompt
    from ..runtime.session import open_bundle
    session = open_bundle(bundle)
    session.warmup()
    texts = _test_sentences(sentences)
    where = {r: session.manifest.cpu_drivers.get(r, "local-task") for r in ("draft", "target")}
    table = Table(title=f"English -> German, greedy, gamma {gamma} (on the CPU: draft {where['draft']}, "
                        f"target {where['target']})", show_lines=True)
    table.add_column("English")
    table.add_column("German (speculative)")
    r = side_by_side(session, [encode_prompt(session, t) for t in texts], gamma, max_new_tokens)
    for text, ids in zip(texts, r["outputs"]):
        table.add_row(text, session.tokenizer.decode(ids, skip_special_tokens=True))
    con.print(table)
    alpha, s, b = r["alpha"], r["spec"], r["base"]
    con.print(f"alpha {alpha:.3f}   tokens/s: speculative {s:.1f}, target only {b:.1f}   "
              f"speedup [bold]{s / b:.2f}x[/] (medians over {len(texts)} sentences, same bundle)")
    return {"gamma": gamma, "cpu_driver": where, "sentences": len(texts), "alpha": round(alpha, 3),
            "tokens_per_s_speculative": round(s, 1), "tokens_per_s_target_only": round(b, 1),
            "speedup": round(s / b, 3)}
