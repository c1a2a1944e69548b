"""The bench's table (predicted vs measured, and the cost model's terms) and its chart."""
from __future__ import annotations


def _g(r: dict) -> str:
    """gamma, and 'o' for the overlapped loop."""
    return f"{r['gamma']}{'o' if r.get('overlap') else ''}"


def print_result(res: dict, log) -> None:
    log(f"{'draft':<26} {'target':<34} {'g':>3} {'pred tok/s':>10} {'meas tok/s':>10} {'error':>7} "
        f"{'pred x':>7} {'meas x':>7}")
    for r in res["rows"]:
        log(f"{r['draft']:<26} {r['target']:<34} {_g(r):>3} {r['predicted_tokens_per_s']:>10.1f} "
            f"{r['measured_tokens_per_s']:>10.1f} {100 * r['error']:>6.1f}% {r['predicted_speedup']:>6.2f}x "
            f"{r['measured_speedup']:>6.2f}x")
    log("where it comes from (ms per iteration, predicted / measured; tokens per iteration):")
    for r in res["rows"]:
        pp, mp = r.get("predicted_parts_ms"), r.get("measured_parts_ms")
        if not pp or not mp:
            continue
        log(f"  {r['draft']:<24} {r['target']:<24} g{_g(r)}: draft {pp['draft']:.3f}/{mp['draft']:.3f}  "
            f"verify {pp['verify']:.3f}/{mp['verify']:.3f}  host {pp['host']:.3f}/{mp['host']:.3f}  "
            f"tokens {r['predicted_tokens_per_iteration']:.2f}/{r['measured_tokens_per_iteration']:.2f}")
    bw = res["bandwidth_gbs"]
    log(f"median |error| {100 * res['median_abs_error']:.1f}%; planner's pick is "
        f"{100 * res['pick']['gap_to_measured_best']:.1f}% behind the measured best; bandwidth "
        f"{min(bw['per_round']):.1f}-{max(bw['per_round']):.1f} GB/s over the rounds (drift {bw['drift']:.2f}x)")


def plot(res: dict, path: str) -> None:
    """Predicted vs measured tokens/s; speedup vs gamma per placement, predicted and measured."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    xs = [r["predicted_tokens_per_s"] for r in res["rows"]]
    ys = [r["measured_tokens_per_s"] for r in res["rows"]]
    a1.scatter(xs, ys)
    lo, hi = min(xs + ys) * 0.9, max(xs + ys) * 1.1
    a1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    for r in res["rows"]:
        a1.annotate(f"g{_g(r)}", (r["predicted_tokens_per_s"], r["measured_tokens_per_s"]), fontsize=7)
    a1.set_xlabel("predicted tokens/s")
    a1.set_ylabel("measured tokens/s")
    a1.set_title(f"median |error| {100 * res['median_abs_error']:.1f}%")
    by = {}
    for r in res["rows"]:
        by.setdefault((f"{r['draft']} / {r['target']}" + (" overlapped" if r.get("overlap") else ""))
                      if r["gamma"] else r["target"], []).append(r)
    for label, rs in by.items():
        rs = sorted(rs, key=lambda r: r["gamma"])
        a2.plot([r["gamma"] for r in rs], [r["measured_speedup"] for r in rs], "o-", label=f"{label} measured")
        a2.plot([r["gamma"] for r in rs], [r["predicted_speedup"] for r in rs], "x--", label=f"{label} predicted")
    a2.axhline(1.0, color="k", lw=0.6)
    a2.set_xlabel("gamma")
    a2.set_ylabel("speedup over target-only")
    a2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
