"""Tokens/s for gamma 0..G from one bundle, under each CPU driver variant, and the host share.

    python benchmarks/spec_gamma.py BUNDLE [--gammas 0,1,2,3,4,5,6] [--rounds 5] [--prompts FILE]
                                           [--variants task,draft-sync,sync]
                                           [--temperature T [--top-p P] [--top-k K]]

Speed lives here, not in tests. Everything is measured side by side in one process: each
round runs every (variant, gamma) once per prompt, in rotating order (A B C.. then B C.. A), so
drifts of this shared machine's memory bandwidth hit all of them alike; medians over rounds are
printed with the ratio to target-only (gamma 0) under the first variant in the same round.
Greedy by default; --temperature > 0 samples (exact speculative sampling; the seed is the round and
prompt number, so every configuration draws from the same seeds). The host share is the time of the
loop outside the models' calls (acceptance, sampling, bookkeeping) over its wall time.
Variants: task = every CPU module under local-task (IREE's worker pool; the default),
draft-sync = the draft under local-sync (calling thread), sync = both under local-sync.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from build_sd.runtime.prompts import encode_prompt, read_prompts  # noqa: E402
from build_sd.runtime.run import make_acceptor  # noqa: E402
from build_sd.runtime.sampling import GreedyAcceptor, SamplingParams  # noqa: E402
from build_sd.runtime.session import open_bundle  # noqa: E402
from build_sd.runtime.speculative import generate  # noqa: E402

DEFAULT_PROMPTS = ["Could not open the file", "Show hidden files in the folder",
                   "The connection to the server was lost", "Select the printer to use"]
VARIANTS = {"task": {"draft": "local-task", "target": "local-task"},
            "draft-sync": {"draft": "local-sync", "target": "local-task"},
            "target-sync": {"draft": "local-task", "target": "local-sync"},
            "sync": {"draft": "local-sync", "target": "local-sync"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--gammas", default="0,1,2,3,4,5,6")
    ap.add_argument("--variants", default="task", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", help="file with one prompt per line (a TSV's first column)")
    ap.add_argument("--limit", type=int, help="use the first N prompts")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    a = ap.parse_args(argv)
    sampling = SamplingParams(a.temperature, a.top_k, a.top_p)
    variants = a.variants.split(",")
    sessions = {}
    for v in variants:
        sessions[v] = open_bundle(a.bundle, cpu_driver=VARIANTS[v])
        sessions[v].warmup()
    gammas = [int(g) for g in a.gammas.split(",")]
    first = sessions[variants[0]]
    texts = read_prompts(a.prompts, a.limit) if a.prompts else DEFAULT_PROMPTS[:a.limit or None]
    prompts = [encode_prompt(first, p) for p in texts]
    combos = [(v, g) for v in variants for g in gammas]
    for v, g in combos:                      # warm-up pass: every combination once, untimed
        s = sessions[v]
        generate(s.target, s.draft if g else None, prompts[0], g, GreedyAcceptor(), a.max_new_tokens, s.eos_ids)
    rows = {c: {"tps": [], "ratio": [], "host": [], "alpha": [], "tpi": []} for c in combos}
    for r in range(a.rounds):
        order = combos[r % len(combos):] + combos[:r % len(combos)]
        tokens = {c: 0 for c in combos}
        secs = {c: 0.0 for c in combos}
        host = {c: 0.0 for c in combos}
        acc = {c: [0, 0, 0, 0] for c in combos}
        for i, ids in enumerate(prompts):
            for c in order:
                s, g = sessions[c[0]], c[1]
                m = generate(s.target, s.draft if g else None, ids, g, make_acceptor(sampling, 1000 * r + i),
                             a.max_new_tokens, s.eos_ids).metrics
                tokens[c] += m.emitted
                secs[c] += m.decode_s
                host[c] += m.host_s
                acc[c][0] += m.accepted
                acc[c][1] += m.rejected
                acc[c][2] += m.emitted
                acc[c][3] += m.iterations
        base = (variants[0], 0)
        for c in combos:
            tps = tokens[c] / secs[c]
            rows[c]["tps"].append(tps)
            rows[c]["ratio"].append(tps / (tokens[base] / secs[base]) if base in combos else float("nan"))
            rows[c]["host"].append(host[c] / secs[c])
            judged = acc[c][0] + acc[c][1]
            rows[c]["alpha"].append(acc[c][0] / judged if judged else float("nan"))
            rows[c]["tpi"].append(acc[c][2] / max(1, acc[c][3]))
    how = ("greedy" if sampling.greedy else
           f"sampled (temperature {a.temperature}, top-p {a.top_p}, top-k {a.top_k})")
    print(f"bundle {a.bundle}: {len(prompts)} prompts x {a.rounds} rounds, {how}, "
          f"max {a.max_new_tokens} new tokens; medians over rounds; x = ratio to {variants[0]} gamma 0")
    print(f"{'variant':>11} {'gamma':>5} {'tok/s':>9} {'x':>7} {'alpha':>7} {'tok/iter':>9} {'host share':>11}")
    out = {}
    for c in combos:
        med = {k: statistics.median(v) for k, v in rows[c].items()}
        out[f"{c[0]}/{c[1]}"] = dict(med, rounds=[round(x, 2) for x in rows[c]["tps"]])
        print(f"{c[0]:>11} {c[1]:>5} {med['tps']:>9.1f} {med['ratio']:>7.3f} {med['alpha']:>7.3f} {med['tpi']:>9.2f} "
              f"{100 * med['host']:>10.2f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
