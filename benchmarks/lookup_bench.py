"""N-gram lookup drafting on a chat bundle: target only vs the draft model vs the draft model + lookup,
side by side, on prompts whose answers copy their context (summaries, edits, extraction, code) and on
open chat questions (the chat demo's asked ones, which its draft never saw).

Per prompt group: median tokens/s of each mode over rounds that alternate the modes (A B C A B C:
this machine is shared and noisy), the ratios to target only, tokens per verify, and the share of
blocks lookup proposed. Greedy: the three modes' tokens must be identical (checked, not assumed);
--temperature T samples (seed 0 per prompt): each mode's tokens must repeat from round to round.

    .venv/bin/python benchmarks/lookup_bench.py --bundle BUNDLE [--gamma 3] [--rounds 3] [--max-new 96]
        [--temperature 0.8]

A bundle of the real pair (f32 target, sequential loop):
    build-sd build --draft build_sd/chatpair/models/draft \\
        --target ~/.cache/build_sd/models/SmolLM2-135M-Instruct.Q4_1.gguf --platform host --out build/lk
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PASSAGE = ("The James Webb Space Telescope launched on 25 December 2021 on an Ariane 5 rocket from Kourou, "
           "French Guiana. It reached the second Lagrange point in January 2022 and released its first "
           "full-colour images in July 2022. Its primary mirror is made of 18 hexagonal segments of "
           "gold-plated beryllium, 6.5 metres across in all.")
CODE = ("def moving_average(values, window):\n    out = []\n    for i in range(len(values) - window + 1):\n"
        "        chunk = values[i:i + window]\n        out.append(sum(chunk) / window)\n    return out\n")
GROUNDED = [
    f"Summarize this text in two sentences: {PASSAGE}",
    "Fix the grammar of this text and return it: "
    + PASSAGE.replace("reached", "reach").replace("is made", "are made"),
    f"Add a docstring and comments to this Python function:\n{CODE}",
    f"Rename the variable chunk to window_values in this code:\n{CODE}",
    f"Answer from the text: when did the telescope launch, and what is its mirror made of? Text: {PASSAGE}",
    f"Rewrite this function to use a list comprehension:\n{CODE}",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--lookup", type=int, default=4, help="the longest n-gram lookup matches")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--chat-questions", type=int, default=6, help="how many of the chat demo's asked questions")
    a = ap.parse_args()
    from build_sd.demo.chat import questions_asked
    from build_sd.runtime.lookup import NgramLookup
    from build_sd.runtime.prompts import encode_as
    from build_sd.runtime.run import make_acceptor
    from build_sd.runtime.sampling import SamplingParams
    from build_sd.runtime.session import open_bundle
    from build_sd.runtime.speculative import generate

    params = SamplingParams(a.temperature)
    s = open_bundle(a.bundle)
    s.warmup()
    groups = {"grounded": GROUNDED, "open chat": questions_asked(a.chat_questions)}
    modes = {"target only": (0, False), f"draft g={a.gamma}": (a.gamma, False),
             f"draft + lookup g={a.gamma}": (a.gamma, True)}
    stats = {(g, m): {"tps": [], "tpi": [], "looked": 0, "iters": 0} for g in groups for m in modes}
    tokens: dict[tuple[str, int], dict[str, list[int]]] = {}
    for r in range(a.rounds):
        for gname, prompts in groups.items():
            for i, p in enumerate(prompts):
                ids = encode_as(s, p, chat=True)
                for mname, (gamma, lk) in modes.items():
                    gen = generate(s.target, s.draft if gamma else None, ids, gamma, make_acceptor(params, 0), a.max_new,
                                   s.eos_ids, lookup=NgramLookup(a.lookup) if lk else None)
                    m = gen.metrics
                    st = stats[(gname, mname)]
                    st["tps"].append(m.tokens_per_s or 0.0)
                    st["tpi"].append(m.tokens_per_iteration or 0.0)
                    st["looked"] += m.lookup_blocks
                    st["iters"] += m.iterations
                    tokens.setdefault((gname, i), {}).setdefault(mname, gen.token_ids)
                    if tokens[(gname, i)][mname] != gen.token_ids:
                        raise SystemExit(f"{mname} on {gname} prompt {i}: tokens changed between rounds")
            print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    bad = [(k, {m: len(t) for m, t in v.items()}) for k, v in tokens.items()
           if params.greedy and len({tuple(t) for t in v.values()}) > 1]
    print(f"bundle {a.bundle}, {a.rounds} rounds, <= {a.max_new} new tokens, "
          + (f"greedy; identical tokens in every mode: {'yes' if not bad else 'NO ' + str(bad)}" if params.greedy
             else f"temperature {a.temperature}, seed 0 per prompt (each mode repeated its tokens every round)"))
    print(f"| prompts | mode | tok/s (median of per-prompt medians) | x target only | tokens/verify | lookup blocks |")
    print("|---|---|---:|---:|---:|---:|")
    for gname, prompts in groups.items():
        n = len(prompts)
        med = {}
        for mname in modes:
            st = stats[(gname, mname)]
            per_prompt = [statistics.median(st["tps"][i::n]) for i in range(n)]
            med[mname] = statistics.median(per_prompt)
        base = med["target only"]
        for mname in modes:
            st = stats[(gname, mname)]
            share = f"{st['looked'] / st['iters']:.0%}" if st["iters"] and modes[mname][1] else "-"
            print(f"| {gname} ({n}) | {mname} | {med[mname]:.1f} | {med[mname] / base:.2f}x | "
                  f"{statistics.median(st['tpi']):.2f} | {share} |")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
