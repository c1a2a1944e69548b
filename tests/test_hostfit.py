"""The host platform fitted to IREE's own kernels (builder/hostfit.py, plan/platforms.py: fit_probe)."""
import math

import pytest

from build_sd.builder import hostfit
from build_sd.contract import HostInfo, HostProbe
from build_sd.plan.platforms import Fitted, fit_probe, host_platform
from build_sd.plan.roofline import Work

PAIRS, K, N = 6, 1024, 4096
W = 2 * PAIRS * K * N


def _times(fit: Fitted, elt: int, tiny_ms: float) -> dict[int, float]:
    """What a device following `fit` exactly takes for the probe's chain on T rows."""
    out = {}
    for T in (1, 2, 4, 8):
        tm, tc = W * elt / (fit.gbs * 1e6), 2.0 * W * T / (fit.gflops * 1e6)
        t = max(tm, tc) if math.isinf(fit.p) else (tm ** fit.p + tc ** fit.p) ** (1 / fit.p)
        out[T] = t + 2 * PAIRS * tiny_ms
    return out


def _probe(task: Fitted, sync: Fitted) -> HostProbe:
    return HostProbe(compiler="test", pairs=PAIRS, k=K, n=N,
                     chain_ms={"local-task": {"f32": _times(task, 4, 0.004)},
                               "local-sync": {"f32": _times(sync, 4, 0.001)}},
                     tiny_ms={"local-task": {"f32": 0.004}, "local-sync": {"f32": 0.001}})


@pytest.mark.parametrize("truth", [Fitted(15.0, 60.0, 2.0), Fitted(25.0, 80.0, math.inf), Fitted(9.0, 30.0, 1.0),
                                   Fitted(25.0, 400.0, math.inf)])
def test_fit_recovers_a_known_roofline(truth):
    fit, us = fit_probe(_probe(truth, truth), "local-task", "f32")
    assert us == pytest.approx(4.0)
    got, want = _times(fit, 4, 0.004), _times(truth, 4, 0.004)
    assert all(got[T] == pytest.approx(want[T], rel=0.02) for T in want)
    assert fit.gbs == pytest.approx(truth.gbs, rel=0.05)
    if truth.gflops < 200:         # compute shows within T <= 8: p and the FLOP/s are identified
        assert fit.p == truth.p and fit.gflops == pytest.approx(truth.gflops, rel=0.08)
    assert fit_probe(_probe(truth, truth), "local-task", "f16") is None      # not timed: no fit


def test_host_platform_orders_the_drivers_as_the_probe_measured():
    """One thread that streams at half the pool's bandwidth makes cpu-sync the slower decode of a
    big model, while its smaller dispatch cost still wins for a small one."""
    host = HostInfo(arch="x86_64", cpu="test", cores=2, mem_bw_gbs=20.0, gflops_f32=100.0,
                    probe=_probe(Fitted(16.0, 30.0, 2.0), Fitted(8.0, 15.0, 2.0)))
    plat = host_platform(host)
    cpu, sync = plat.devices["cpu"], plat.devices["cpu-sync"]
    big = Work(flops=2 * 135e6, bytes=540e6, dispatches=300)
    small = Work(flops=2 * 1e5, bytes=4e5, dispatches=100)
    assert sync.latency_ms(big, "f32") > 1.8 * cpu.latency_ms(big, "f32")
    assert sync.latency_ms(small, "f32") < cpu.latency_ms(small, "f32")
    # a verify of 4 rows costs more than a decode where compute shows (p = 2), not the same
    big4 = Work(flops=4 * big.flops, bytes=big.bytes, dispatches=300)
    assert cpu.latency_ms(big4, "f32") > 1.1 * cpu.latency_ms(big, "f32")
    assert "IREE's kernels" in plat.notes
    # no probe: the numpy figures, both drivers reading the same bandwidth
    plain = host_platform(HostInfo(arch="x86_64", cpu="test", cores=2, mem_bw_gbs=20.0, gflops_f32=100.0))
    assert not plain.devices["cpu"].fitted and plain.devices["cpu"].mem_bw_gbs == plain.devices["cpu-sync"].mem_bw_gbs


def test_the_probe_runs_here_and_is_cached(tmp_path, monkeypatch):
    """The real probe (shrunk): iree-compile with the host preset's flags, both CPU drivers, and
    the cache that spares a second run; a damaged cache is measured again."""
    monkeypatch.setenv("BUILD_SD_CACHE", str(tmp_path))
    monkeypatch.setattr(hostfit, "PAIRS", 1)
    monkeypatch.setattr(hostfit, "K", 64)
    monkeypatch.setattr(hostfit, "N", 128)
    monkeypatch.setattr(hostfit, "TINY_N", 4)
    monkeypatch.setattr(hostfit, "CALLS", 2)
    monkeypatch.setattr(hostfit, "busy_fraction", lambda: 0.0)    # whatever else this machine runs
    lines = []
    probe = hostfit.host_probe("test-cpu", 2, log=lines.append)
    assert probe is not None and probe.weights() == 2 * 64 * 128
    for driver in hostfit.DRIVERS:
        for dt in ("f32", "f16"):
            assert sorted(probe.chain_ms[driver][dt]) == [1, 2, 4, 8]
            assert all(0 < v < 1000 for v in probe.chain_ms[driver][dt].values())
            assert 0 < probe.tiny_ms[driver][dt] < 100
    assert any("timing IREE's kernels" in ln for ln in lines)
    cached = list((tmp_path / "hostfit").glob("*.json"))
    assert len(cached) == 1
    lines.clear()
    assert hostfit.host_probe("test-cpu", 2, log=lines.append) == probe and not lines   # from the cache
    cached[0].write_text("{not json")
    assert hostfit.host_probe("test-cpu", 2, log=lines.append) is not None and lines     # measured again


def test_a_probe_beside_other_work_is_not_cached(tmp_path, monkeypatch):
    """Busy CPUs (here: one spinning process per core) read as busy, and a probe taken then serves
    the plan at hand without being kept."""
    import os
    import subprocess
    spin = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(os.cpu_count() or 1)]
    try:
        assert hostfit.busy_fraction() > hostfit.BUSY
    finally:
        for p in spin:
            p.kill()
            p.wait()
    monkeypatch.setenv("BUILD_SD_CACHE", str(tmp_path))
    for name, v in (("PAIRS", 1), ("K", 64), ("N", 128), ("TINY_N", 4), ("CALLS", 2)):
        monkeypatch.setattr(hostfit, name, v)
    monkeypatch.setattr(hostfit, "busy_fraction", lambda: 0.9)
    lines = []
    assert hostfit.host_probe("test-cpu", 2, log=lines.append) is not None
    assert any("not cached" in ln for ln in lines) and not list(tmp_path.glob("hostfit/*.json"))
