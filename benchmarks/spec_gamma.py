"""Tokens/s for gamma 0..G from one bundle, and the host-side share of each iteration.

    python benchmarks/spec_gamma.py BUNDLE [--gammas 0,1,2,3,4,5,6] [--rounds 5] [--prompts FILE]

Speed lives here, not in tests. Everything is measured side by side in one process: each
round runs every gamma once per prompt, in rotating order (A B C.. then B C.. A), so drifts of
this shared machine's memory bandwidth hit all gammas alike; medians over rounds are printed
with the ratio to gamma 0 of the same round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from build_sd.runtime.cli_run import encode_prompt  # noqa: E402
from build_sd.runtime.sampling import GreedyAcceptor  # noqa: E402
from build_sd.runtime.session import open_bundle  # noqa: E402
from build_sd.runtime.speculative import generate  # noqa: E402

DEFAULT_PROMPTS = ["Could not open the file", "Show hidden files in the folder",
                   "The connection to the server was lost", "Select the printer to use"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--gammas", default="0,1,2,3,4,5,6")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", help="file with one prompt per line")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    s = open_bundle(a.bundle)
    s.warmup()
    gammas = [int(g) for g in a.gammas.split(",")]
    prompts = Path(a.prompts).read_text().splitlines() if a.prompts else DEFAULT_PROMPTS
    prompts = [encode_prompt(s, p) for p in prompts if p.strip()]
    rows = {g: {"tps": [], "ratio": [], "host": [], "alpha": [], "tpi": []} for g in gammas}
    for r in range(a.rounds):
        order = gammas[r % len(gammas):] + gammas[:r % len(gammas)]
        tokens = {g: 0 for g in gammas}
        secs = {g: 0.0 for g in gammas}
        host = {g: 0.0 for g in gammas}
        acc = {g: [0, 0, 0, 0] for g in gammas}
        for ids in prompts:
            for g in order:
                m = generate(s.target, s.draft if g else None, ids, g, GreedyAcceptor(),
                             a.max_new_tokens, s.eos_ids).metrics
                tokens[g] += m.emitted
                secs[g] += m.decode_s
                host[g] += m.host_s
                acc[g][0] += m.accepted
                acc[g][1] += m.rejected
                acc[g][2] += m.emitted
                acc[g][3] += m.iterations
        for g in gammas:
            tps = tokens[g] / secs[g]
            rows[g]["tps"].append(tps)
            rows[g]["ratio"].append(tps / (tokens[0] / secs[0]) if 0 in gammas else float("nan"))
            rows[g]["host"].append(host[g] / secs[g])
            judged = acc[g][0] + acc[g][1]
            rows[g]["alpha"].append(acc[g][0] / judged if judged else float("nan"))
            rows[g]["tpi"].append(acc[g][2] / max(1, acc[g][3]))
    print(f"bundle {a.bundle}: {len(prompts)} prompts x {a.rounds} rounds, greedy, "
          f"max {a.max_new_tokens} new tokens; medians over rounds")
    print(f"{'gamma':>5} {'tok/s':>9} {'x gamma0':>9} {'alpha':>7} {'tok/iter':>9} {'host share':>11}")
    out = {}
    for g in gammas:
        med = {k: statistics.median(v) for k, v in rows[g].items()}
        out[g] = med
        print(f"{g:>5} {med['tps']:>9.1f} {med['ratio']:>9.3f} {med['alpha']:>7.3f} {med['tpi']:>9.2f} "
              f"{100 * med['host']:>10.2f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
