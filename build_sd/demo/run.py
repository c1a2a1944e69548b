"""`build-sd demo`: build the embedded English->German pair and translate with speculation.

Stages (each cached by build_sd's own incremental export/compile, so a second run only loads):
export both models -> compile for `host` (+ `vulkan-llvmpipe` when a Vulkan device exists)
-> validate the target on this machine -> bundle -> translate test sentences with gamma G and
with gamma 0 (target only) from the same bundle, alternating, and print the speedup.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _test_sentences(n: int) -> list[str]:
    from . import DATA_DIR
    rows = (DATA_DIR / "test.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [r.split("\t") for r in rows if "\t" in r and not r.startswith("#")]
    # short, ordinary UI sentences read best in a demo: pick evenly through the split
    pairs = [p for p in pairs if 4 <= len(p[0].split()) <= 12]
    step = max(1, len(pairs) // n)
    return [p[0] for p in pairs[::step][:n]]


def run_demo(out_dir: str | Path = ROOT / "artifacts" / "demo", gamma: int = 4, sentences: int = 6,
             max_new_tokens: int = 48, validate_models: bool = True) -> dict:
    from rich.console import Console
    from rich.table import Table

    from . import DRAFT_DIR, TARGET_DIR
    from ..bundle import make_bundle
    from ..compile import compile_artifacts
    from ..export import export_model
    from ..runtime.devices import vulkan_device_names

    con = Console()
    for d in (TARGET_DIR, DRAFT_DIR):
        if not (d / "config.json").exists():
            raise UserError(f"the demo pair is missing ({d}): train it with build_sd/demo/train.py")
    out_dir = Path(out_dir)
    presets = ["host"] + (["vulkan-llvmpipe"] if any("llvmpipe" in n for n in vulkan_device_names()) else [])
    t_build = time.perf_counter()
    arts = {}
    with con.status("") as status:
        for role, ck, gammas in (("target", TARGET_DIR, "1,2,3,4,5,6"), ("draft", DRAFT_DIR, "1")):
            status.update(f"[bold]export[/] {role}")
            export_model(ck, out_dir / "mlir" / role, gammas=[int(g) for g in gammas.split(",")],
                         prefill=[16, 64], max_context=256, log=lambda m: con.print(f"  {m}"))
            status.update(f"[bold]compile[/] {role} for {', '.join(presets)} (minutes on a fresh machine)")
            arts[role] = out_dir / "artifacts" / role
            compile_artifacts(out_dir / "mlir" / role, presets, arts[role], log=lambda m: con.print(f"  {m}"))
        if validate_models:
            from ..validate import validate
            status.update("[bold]validate[/] target against PyTorch")
            lines = []
            if not validate(arts["target"], TARGET_DIR, presets=["host"], out=lines.append):
                con.print("\n".join(lines))
                raise UserError("the compiled target does not match PyTorch (see the table)")
            con.print(f"  {lines[-1]}")
        status.update("[bold]bundle[/]")
        from .tokenizer import SEPARATOR, BOS
        bundle = out_dir / "bundle"
        make_bundle(arts["draft"], arts["target"], ["draft=host", "target=host"], gamma, bundle,
                    prompt_template=BOS + "{prompt}" + SEPARATOR, log=lambda m: con.print(f"  {m}"))
    con.print(f"built in {time.perf_counter() - t_build:.1f}s\n")

    from ..runtime.cli_run import encode_prompt
    from ..runtime.sampling import GreedyAcceptor
    from ..runtime.session import open_bundle
    from ..runtime.speculative import generate
    session = open_bundle(bundle)
    session.warmup()
    texts = _test_sentences(sentences)
    table = Table(title=f"English -> German, greedy, gamma {gamma} (draft and target on the CPU)", show_lines=True)
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
        german = session.tokenizer.decode(spec.token_ids, skip_special_tokens=True)
        table.add_row(text, german)
        for g, acc in ((spec, spec_tps), (base, base_tps)):
            if g.metrics.tokens_per_s:
                acc.append(g.metrics.tokens_per_s)
        totals["acc"] += spec.metrics.accepted
        totals["rej"] += spec.metrics.rejected
    con.print(table)
    alpha = totals["acc"] / max(1, totals["acc"] + totals["rej"])
    s, b = statistics.median(spec_tps), statistics.median(base_tps)
    summary = {"gamma": gamma, "sentences": len(texts), "alpha": round(alpha, 3), "tokens_per_s_speculative": round(s, 1),
               "tokens_per_s_target_only": round(b, 1), "speedup": round(s / b, 3)}
    con.print(f"alpha {alpha:.3f}   tokens/s: speculative {s:.1f}, target only {b:.1f}   "
              f"speedup [bold]{s / b:.2f}x[/] (medians over {len(texts)} sentences, same bundle)")
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
