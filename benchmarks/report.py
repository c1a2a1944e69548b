"""bench.json -> the markdown table and the PNG chart (benchmarks/results/).

    python benchmarks/report.py benchmarks/results/bench.json     # redraw from saved figures
Only measured figures are written: a row that did not run says why instead.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SECTION_TITLES = {"demo": "Demo pair (English->German, 12.6M target / 1.6M draft)",
                  "1b": "Llama-3.2-1B shape (random weights)",
                  "150m": "~150M draft shape (random weights)",
                  "smollm2": "SmolLM2-135M-Instruct (the real target, from its GGUF; chat prompts)",
                  "smollm2q": "SmolLM2-135M-Instruct quantized: build_sd w8a8/w4a8 vs llama.cpp Q8_0/Q4_0",
                  "1bq": "Llama-3.2-1B shape quantized: build_sd w8a8/w4a8 vs f16 and llama.cpp Q8_0/Q4_0",
                  "150mq": "~150M draft shape quantized: build_sd w8a8/w4a8 vs f16 and llama.cpp Q8_0/Q4_0",
                  "chatspec": "The real pair: SmolLM2-135M-Instruct + its distilled draft, speculative vs target-only"}
SECTIONS = ("demo", "1b", "150m", "1bq", "150mq", "smollm2", "smollm2q", "chatspec")


def _bw(run: dict) -> float:
    return (run["bw_before"] + run["bw_after"]) / 2


def median_tps(row: dict) -> float | None:
    return statistics.median(r["tps"] for r in row["runs"]) if row["runs"] else None


def roofline(row: dict) -> float | None:
    if not row["runs"] or not row.get("bytes_per_token"):
        return None
    return statistics.median(r["tps"] * row["bytes_per_token"] / (_bw(r) * 1e9) for r in row["runs"])


def paired_ratio(a: dict, b: dict, tol: float) -> tuple[float | None, int, int]:
    """median over rounds of a/b, using rounds where both runs saw the same bandwidth level."""
    rb = {r["round"]: r for r in b["runs"]}
    ratios, total = [], 0
    for r in a["runs"]:
        o = rb.get(r["round"])
        if o is None:
            continue
        total += 1
        lo, hi = sorted((_bw(r), _bw(o)))
        if hi <= lo * (1 + tol):
            ratios.append(r["tps"] / o["tps"])
    return (statistics.median(ratios) if ratios else None), len(ratios), total


def ratio(rows: dict, a_id: str, b_id: str, tol: float, link: tuple[str, str] | None = None):
    """a/b from one group, or chained through a link row measured in both groups."""
    a, b = rows.get(a_id), rows.get(b_id)
    if not a or not b or not a["runs"] or not b["runs"]:
        return None, ""
    if a["group"] == b["group"]:
        r, n, t = paired_ratio(a, b, tol)
        return r, f"{n}/{t} rounds"
    if link:
        l_a, l_b = rows.get(link[0]), rows.get(link[1])
        if l_a and l_b and l_a["runs"] and l_b["runs"]:
            r1, n1, t1 = paired_ratio(a, l_a, tol)
            r2, n2, t2 = paired_ratio(l_b, b, tol)
            if r1 and r2:
                return r1 * r2, f"via llama.cpp, {n1}/{t1}+{n2}/{t2} rounds"
    return None, ""


def _short(text: str, n: int = 300) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= n else text[:n] + " ..."


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


QUANT_PEER = {"q8_0": "w8a8", "q4_0": "w4a8"}


def comparisons(res: dict) -> tuple[dict, list[str]]:
    """Per row: build_sd / this row; and the goal lines."""
    rows = {r["id"]: r for r in res["rows"]}
    tol = res["bw_tolerance"]
    vs = {}
    for r in res["rows"]:
        if r["id"].startswith("bsd-") or not r["runs"]:
            continue
        if r["mode"].startswith("speculative"):
            base = "bsd-spec"
        elif r["dtype"] == "q4_1":         # llama.cpp on the shipped Q4_1 file: vs build_sd f16, same group
            base = f"bsd-{r['section']}-f16-ref-q4"
        elif r["dtype"] in QUANT_PEER:       # llama.cpp Q8_0 / Q4_0: vs build_sd w8a8 / w4a8, same group
            base = f"bsd-{r['id'].split('-')[1]}-{QUANT_PEER[r['dtype']]}-q"     # llama-STEM-q8_0
        else:
            base = f"bsd-{r['section']}-{r['dtype']}"
            # the small models also ran under local-sync (the planner's cpu-sync): compare with
            # that, build_sd as its planner configures it; the local-task ratio stays beside it
            if rows.get(base + "-sync", {}).get("runs"):
                vs[r["id"] + "@task"] = ratio(rows, base, r["id"], tol)
                base += "-sync"
        # PyTorch / ExecuTorch rows of a big model run in their own group beside a llama.cpp link row
        kind = r["id"].split("-")[0]
        link = (f"llama-{r['section']}-{r['dtype']}", f"llama-{r['section']}-{r['dtype']}-ref-{kind}")
        vs[r["id"]] = ratio(rows, base, r["id"], tol, link)
    goals = []

    def goal(text, value, target):
        ok = "n/a (not measured)" if value is None else ("met" if value >= target else "NOT met")
        goals.append(f"| {text} | {_f(value, '{:.2f}')} | {target} | {ok} |")

    goal("build_sd / llama.cpp, 1B shape f32", vs.get("llama-1b-f32", (None,))[0], 1.0)
    goal("build_sd / llama.cpp, 1B shape f16", vs.get("llama-1b-f16", (None,))[0], 1.0)
    goal("build_sd / llama.cpp, demo target f32", vs.get("llama-demo-f32", (None,))[0], 0.9)
    goal("  (build_sd under local-task instead)", vs.get("llama-demo-f32@task", (None,))[0], 0.9)
    goal("build_sd / PyTorch eager, demo target f32", vs.get("hf-demo-f32", (None,))[0], 2.5)
    goal("build_sd / PyTorch eager, 1B shape f32", vs.get("hf-1b-f32", (None,))[0], 2.5)
    goal("build_sd speculative / HF assisted generation, demo pair", vs.get("hf-spec", (None,))[0], 3.0)
    # issue 15: w8a8 turns the bytes it saves into speed (decode speedup over f16 >= 0.9 x the bytes
    # ratio), keeps up with llama.cpp's Q8_0 (and w4a8 with Q4_0), and reads near the roofline
    for stem, label in (("smollm2", "SmolLM2"), ("1b", "1B shape")):
        goal(f"build_sd w8a8 / llama.cpp Q8_0, {label}", vs.get(f"llama-{stem}-q8_0", (None,))[0], 1.0)
        goal(f"build_sd w4a8 / llama.cpp Q4_0, {label}", vs.get(f"llama-{stem}-q4_0", (None,))[0], 1.0)
        f16, w8 = rows.get(f"bsd-{stem}-f16-q"), rows.get(f"bsd-{stem}-w8a8-q")
        if f16 and w8 and f16.get("runs") and w8.get("runs"):
            sp = ratio(rows, f"bsd-{stem}-w8a8-q", f"bsd-{stem}-f16-q", tol)[0]
            need = 0.9 * f16["bytes_per_token"] / w8["bytes_per_token"]
            goal(f"build_sd w8a8 / f16 decode, {label} (target 0.9 x bytes ratio = {need:.2f})", sp, round(need, 2))
    if rows.get("bsd-1b-w8a8-q", {}).get("runs"):
        goal("build_sd w8a8 share of the memory roofline, 1B shape", roofline(rows["bsd-1b-w8a8-q"]), 0.85)
    # the real pair (chatspec): speculative vs the best target-only row of the same dtype, same group
    for d in ("f32", "f16"):
        for sfx, target, what in (("", 1.8, "greedy"), ("-t08", 1.5, "sampled T=0.8")):
            spec = f"bsd-chat-{d}-spec{sfx}"
            if not rows.get(spec, {}).get("runs"):
                continue
            rs = [ratio(rows, spec, f"bsd-chat-{d}{drv}{sfx}", tol)[0] for drv in ("", "-sync")]
            rs = [x for x in rs if x]
            goal(f"real pair {d}, {what}: speculative / best target-only", min(rs) if rs else None, target)
        r = rows.get(f"bsd-chat-{d}-spec-t08")
        if r and r.get("runs") and all(x.get("host_s") is not None for x in r["runs"]):
            share = sum(x["host_s"] for x in r["runs"]) / sum(x["decode_s"] for x in r["runs"])
            goals.append(f"| real pair {d}, sampled: host share of speculative decoding | {share:.3f} | <= 0.10 | "
                         f"{'met' if share <= 0.10 else 'NOT met'} |")
    for d in ("f32", "f16"):
        r = rows.get(f"bsd-1b-{d}")
        goal(f"build_sd share of the memory roofline, 1B shape {d}", roofline(r) if r else None, 0.9)
    return vs, goals


def markdown(res: dict) -> str:
    vs, goals = comparisons(res)
    rows = res["rows"]
    L = [f"# Decode throughput: build_sd vs PyTorch, llama.cpp, ExecuTorch ({res['date']})", "",
         f"Machine: {res['machine']}. Threads: {res['threads']} for every system (IREE "
         f"`--task_topology_group_count`, llama.cpp `-t`, torch.set_num_threads, XNNPACK's pool).",
         f"Prompts: {res['prompts']['n']} English sentences of the demo test split "
         f"({min(res['prompts']['tokens'])}-{max(res['prompts']['tokens'])} tokens, `<s>` + english + ` => `), "
         f"the same token ids for every system; greedy. Demo rows stop at `</s>` or {res['max_new']['demo']} new "
         f"tokens; larger shapes generate {res['max_new']['large']} tokens (EOS ignored).",
         "Decode tokens/s: tokens after the first / time from the first token to the last (prefill and warm-up "
         "excluded), median over runs; each run generates every prompt once; the rows of a group alternate run "
         "by run. Bandwidth: benchmarks/membw.c (multi-threaded read of 1 GiB) just before and after each run.",
         f"Roofline: (weights one decode step reads + KV cache at the mean position) / the bandwidth around that "
         f"run. Ratios: median of per-round ratios over rounds whose runs saw bandwidths within "
         f"{100 * res['bw_tolerance']:.0f}% of each other.", ""]
    if res.get("demo_weights") == "random":
        L.append("**The demo pair was not trained yet when this ran: its rows use random weights of the same "
                 "shapes** (acceptance, hence the speculative rows, are then meaningless).\n")
    if res.get("plan"):
        p = res["plan"]
        L.append(f"Plan (`build-sd plan --platform host --devices cpu,cpu-sync`, calibrated alpha {p['alpha']:.3f}, "
                 f"profiled here): top configuration gamma {p['top_gamma']}; speculative rows use gamma "
                 f"{p['gamma']}" + (f" with CPU drivers {p['drivers']}" if p.get("drivers") else "") + ".\n")
    for sec in SECTIONS:
        rs = [r for r in rows if r["section"] == sec]
        if not rs:
            continue
        L += [f"## {SECTION_TITLES[sec]}", "",
              "| system | model | dtype | mode | decode tok/s | runs | bandwidth GB/s | roofline | build_sd / this | note |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in rs:
            if not r["runs"]:
                L.append(f"| {r['system']} | {r['model']} | {r['dtype']} | {r['mode']} | - | 0 | - | - | - | "
                         f"did not run: {_short(r.get('why') or 'no result')} |")
                continue
            tps = [x["tps"] for x in r["runs"]]
            bws = [_bw(x) for x in r["runs"]]
            rf = roofline(r)
            v, how = vs.get(r["id"], (None, ""))
            note = r.get("note", "")
            if r["mode"].startswith("speculative"):
                acc = sum(x["accepted"] for x in r["runs"])
                rej = sum(x["rejected"] for x in r["runs"])
                drafted = sum(x.get("drafted") or 0 for x in r["runs"])
                if acc + rej and not drafted:
                    note = (note + "; " if note else "") + f"alpha {acc / (acc + rej):.3f}"
                elif drafted:
                    note = (note + "; " if note else "") + f"accepted/drafted {acc / drafted:.3f}"
            if r.get("why"):
                note = (note + "; " if note else "") + _short(r["why"])
            L.append(f"| {r['system']} | {r['model']} | {r['dtype']} | {r['mode']} | {statistics.median(tps):.1f} "
                     f"({min(tps):.1f}-{max(tps):.1f}) | {len(tps)} | {statistics.median(bws):.0f} "
                     f"({min(bws):.0f}-{max(bws):.0f}) | {_f(None if rf is None else 100 * rf, '{:.0f}%')} | "
                     f"{_f(v, '{:.2f}x')}{' (' + how + ')' if v is not None and how else ''} | {note} |")
        L.append("")
    agree = agreement(res)
    if agree:
        L += ["## Greedy agreement with build_sd (token ids, same prompts)", ""] + agree + [""]
    L += ["## Goals", "", "| goal | measured | target | status |", "|---|---:|---:|---|"] + goals + [""]
    if res.get("failures"):
        L += ["## What could not be built or run", ""]
        L += [f"- **{k}**: {_short(v, 1200)}" for k, v in res["failures"].items()]
        L.append("")
    L += ["## Versions", ""] + [f"- {k}: {v}" for k, v in res["versions"].items()]
    L += ["", f"Wall time of this benchmark: {res['wall_s'] / 60:.1f} min "
          f"(`make {'bench-quick' if res.get('quick') else 'bench'}`)."]
    return "\n".join(L) + "\n"


def agreement(res: dict) -> list[str]:
    rows = {r["id"]: r for r in res["rows"]}
    out = []
    for rid, r in rows.items():
        if rid.startswith("bsd-") or not r.get("outputs"):
            continue
        base = "bsd-spec" if r["mode"].startswith("speculative") else f"bsd-{r['section']}-{r['dtype']}"
        b = rows.get(base)
        if not b or not b.get("outputs") or len(b["outputs"]) != len(r["outputs"]):
            continue
        same = sum(x == y for x, y in zip(b["outputs"], r["outputs"]))
        prefix = []
        for x, y in zip(b["outputs"], r["outputs"]):
            k = 0
            while k < min(len(x), len(y)) and x[k] == y[k]:
                k += 1
            prefix.append(k / max(1, max(len(x), len(y))))
        out.append(f"- {r['system']}, {r['model']} {r['dtype']} {r['mode']}: {same}/{len(r['outputs'])} outputs "
                   f"identical, mean common prefix {100 * statistics.mean(prefix):.0f}%")
    return out


def chart(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    secs = [s for s in SECTIONS if any(r["section"] == s and r["runs"] for r in res["rows"])]
    if not secs:
        return
    fig, axes = plt.subplots(len(secs), 1, figsize=(10, 2.2 + 0.42 * max(
        sum(1 for r in res["rows"] if r["section"] == s) for s in secs) * len(secs)), squeeze=False)
    colors = {"build_sd": "tab:blue", "llama.cpp": "tab:orange", "PyTorch": "tab:green", "ExecuTorch": "tab:red"}
    for ax, sec in zip(axes[:, 0], secs):
        rs = [r for r in res["rows"] if r["section"] == sec and "-ref-" not in r["id"]]
        labels, vals, lo, hi, cols, txt = [], [], [], [], [], []
        for r in rs:
            labels.append(f"{r['system'].split(' (')[0]} {r['dtype']} {r['mode']}")
            if r["runs"]:
                t = [x["tps"] for x in r["runs"]]
                m = statistics.median(t)
                vals.append(m)
                lo.append(m - min(t))
                hi.append(max(t) - m)
                rf = roofline(r)
                txt.append(f"{m:.1f}" + (f"  ({100 * rf:.0f}% roofline)" if rf else ""))
            else:
                vals.append(0)
                lo.append(0)
                hi.append(0)
                txt.append("did not run")
            cols.append(next((c for k, c in colors.items() if r["system"].startswith(k)), "gray"))
        y = range(len(rs))
        ax.barh(list(y), vals, xerr=[lo, hi], color=cols, alpha=0.85)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        for i, t in enumerate(txt):
            ax.text(vals[i], i, "  " + t, va="center", fontsize=7)
        ax.set_xlim(0, max(vals + [1]) * 1.45)
        ax.set_title(SECTION_TITLES[sec], fontsize=9)
        ax.set_xlabel("decode tokens/s (median, min-max bars)", fontsize=8)
    fig.suptitle(f"{res['date']} - {res['machine']} - {res['threads']} threads", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(res: dict, out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(res))
    chart(res, out / f"{stem}.png")


if __name__ == "__main__":
    p = Path(sys.argv[1])
    r = json.loads(p.read_text())
    write_report(r, p.parent, p.stem)
    print(f"wrote {p.with_suffix('.md')} and {p.with_suffix('.png')}")
