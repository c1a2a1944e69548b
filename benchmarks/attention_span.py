"""What attending to the filled cache slots saves: `export --attention filled` against `all`, on the
real chat pair (SmolLM2-135M-Instruct + the committed draft), side by side in one run.

    python benchmarks/attention_span.py [--contexts 1024,2048] [--gammas 0,2] [--rounds 4]
                                        [--questions 6] [--max-new-tokens 48] [--work DIR] [--build-only]

For each context S, both models are exported and compiled for the host twice (filled, all; skipped
when up to date), bundled (draft under local-sync, as the planner usually places it), and asked the
chat demo's questions. Each round runs every (attention, gamma) once per question, alternating
filled / all so the machine's drifts hit both alike. Prints medians of tokens/s over the rounds and
the ratio filled / all per gamma. Greedy outputs must be identical across the two exports and
across gammas (the same target), or the run stops.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from build_sd.builder.compile import compile_artifacts  # noqa: E402
from build_sd.builder.export import export_model  # noqa: E402
from build_sd.builder.gguf import checkpoint_dir  # noqa: E402
from build_sd.chatpair.fetch import target_gguf  # noqa: E402
from build_sd.demo.chat import questions_asked  # noqa: E402

DRAFT = ROOT / "build_sd" / "chatpair" / "models" / "draft"
ATTENTIONS = ("filled", "all")


def build(work: Path, S: int, gammas: list[int], log) -> dict[str, Path]:
    from build_sd.builder.bundle import make_bundle
    target = checkpoint_dir(target_gguf())
    out = {}
    for att in ATTENTIONS:
        arts = {}
        for role, ckpt, gs in (("target", target, [g for g in gammas if g] or [1]), ("draft", DRAFT, [1])):
            mlir, art = work / f"S{S}-{att}" / "mlir" / role, work / f"S{S}-{att}" / "artifacts" / role
            export_model(ckpt, mlir, gammas=gs, prefill=[64], max_context=S, attention=att, log=log)
            compile_artifacts(mlir, ["host"], art, log=log)
            arts[role] = art
        out[att] = work / f"S{S}-{att}" / "bundle"
        make_bundle(arts["draft"], arts["target"], {"draft": {None: "host"}, "target": {None: "host"}}, max(gammas),
                    out[att], link=True, cpu_driver={"draft": "local-sync"}, log=log)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,2048")
    ap.add_argument("--gammas", default="0,2")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--build-only", action="store_true", help="export, compile and bundle, then stop")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "attention_span"))
    a = ap.parse_args(argv)
    from build_sd.runtime.chat import encode_chat, messages_for
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.session import open_bundle
    from build_sd.runtime.speculative import generate
    gammas = [int(g) for g in a.gammas.split(",")]
    work = Path(a.work)
    rows = []
    for S in [int(s) for s in a.contexts.split(",")]:
        bundles = build(work, S, gammas, log=lambda m: print(f"  {m}", flush=True))
        if a.build_only:
            continue
        sessions = {att: open_bundle(b) for att, b in bundles.items()}
        for s in sessions.values():
            s.warmup()
        s0 = sessions["filled"]
        prompts = [encode_chat(s0, messages_for(q)) for q in questions_asked(a.questions)]
        tps = {(att, g): [] for att in ATTENTIONS for g in gammas}
        want: dict[int, list[int]] = {}
        for r in range(a.rounds):
            order = ATTENTIONS if r % 2 == 0 else ATTENTIONS[::-1]
            per = {k: [] for k in tps}
            for i, ids in enumerate(prompts):
                for att in order:
                    s = sessions[att]
                    for g in gammas:
                        res = generate(s.target, s.draft if g else None, ids, g, GreedyAcceptor(), a.max_new_tokens,
                                       s.eos_ids)
                        if want.setdefault(i, res.token_ids) != res.token_ids:
                            raise SystemExit(f"S={S} {att} gamma {g}: question {i}'s output differs")
                        if res.metrics.tokens_per_s:
                            per[(att, g)].append(res.metrics.tokens_per_s)
            for k, v in per.items():
                tps[k].append(statistics.median(v))
            print(f"S={S} round {r + 1}: " + ", ".join(f"{att} g{g} {statistics.median(per[(att, g)]):.1f}"
                                                       for att in ATTENTIONS for g in gammas), flush=True)
        last = max(len(p) for p in prompts) + a.max_new_tokens
        for g in gammas:
            f, al = statistics.median(tps[("filled", g)]), statistics.median(tps[("all", g)])
            ratios = [x / y for x, y in zip(tps[("filled", g)], tps[("all", g)])]
            rows.append((S, g, al, f, statistics.median(ratios), min(ratios), max(ratios), last))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {a.rounds} rounds x {a.questions} questions, "
          f"{a.max_new_tokens} new tokens (positions up to the last column)")
    print("| context S | gamma | all slots tok/s | filled tok/s | filled / all (min-max over rounds) | last position |")
    print("|---:|---:|---:|---:|---|---:|")
    for S, g, al, f, med, lo, hi, last in rows:
        print(f"| {S} | {g} | {al:.1f} | {f:.1f} | **{med:.2f}x** ({lo:.2f}-{hi:.2f}) | {last} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
