"""IREE's own speed on this machine, per CPU driver: what the planner's `host` platform reads when
nothing was profiled (plan/platforms.py: host_platform).

Without it the host platform is a numpy fit (runtime/hostinfo.py): a one-thread sum and a BLAS
matmul, upper bounds on what IREE's kernels reach, and the same bandwidth for both CPU drivers.
On a 2-vCPU VM that ranked the real chat pair's target as fast on local-sync (one thread) as
on local-task and a verify of 4 tokens as a decode, so `build` without a profile picked cpu-sync /
cpu-sync gamma 3, measured at 0.68-0.71x of the best (docs/FINDINGS.md, 2026-12-02).

The probe compiles one small module with the `host` preset's flags (data tiling included):
- `chain_T{T}`: 6 pairs of projections 1024 -> 4096 -> 1024 on T rows (T = 1, 2, 4, 8): 192 MB of
  f32 weights (96 MB f16), beyond any L3 here, read once a call like a decode or a verify;
- `tiny`: 48 chained 32 x 32 projections on one row: each costs its dispatches and little else.
It runs them under local-task and local-sync (medians of 11 calls after 2 warm-ups, 33 for the
tiny chain, the drivers alternated) and keeps the times; the planner fits the roofline to them. The weights are
parameters, as in an exported model, so nothing folds them at compile time.

About 10-15 s, once per (CPU, cores, iree-compile version): the times are cached in
$BUILD_SD_CACHE/hostfit/ (delete the file to measure again), unless other work kept the CPUs busy
meanwhile (busy_fraction): then they serve the plan at hand and the next plan measures again.
"""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from ..contract import HostProbe
from ..errors import BuildError
from ..fsutil import cache_dir, write_json

K, N, PAIRS = 1024, 4096, 6          # the chain: PAIRS x (K -> N -> K) projections
ROWS = (1, 2, 4, 8)
TINY, TINY_N = 32, 48                # the tiny chain: TINY_N projections of TINY x TINY
DTYPES = {"f32": np.float32, "f16": np.float16}
DRIVERS = ("local-task", "local-sync")
CALLS, WARMUP = 11, 2
TINY_CALLS = 3                       # the tiny chain's calls per round (CALLS rounds)


def _matmul(lines: list[str], name: str, x: str, w: str, T: int, k: int, n: int, dt: str) -> str:
    lines += [f"    %{name}_e = tensor.empty() : tensor<{T}x{n}x{dt}>",
              f"    %{name}_z = linalg.fill ins(%zero : {dt}) outs(%{name}_e : tensor<{T}x{n}x{dt}>) -> tensor<{T}x{n}x{dt}>",
              f"    %{name} = linalg.matmul ins({x}, {w} : tensor<{T}x{k}x{dt}>, tensor<{k}x{n}x{dt}>) "
              f"outs(%{name}_z : tensor<{T}x{n}x{dt}>) -> tensor<{T}x{n}x{dt}>"]
    return f"%{name}"


def probe_mlir(dt: str) -> str:
    """The probe module for one dtype (MLIR's linalg, parameters named probe::a0.. / t0..)."""
    g = []
    for i in range(PAIRS):
        g += [f'  util.global private @a{i} = #flow.parameter.named<"probe"::"a{i}"> : tensor<{K}x{N}x{dt}>',
              f'  util.global private @b{i} = #flow.parameter.named<"probe"::"b{i}"> : tensor<{N}x{K}x{dt}>']
    for i in range(TINY_N):
        g.append(f'  util.global private @t{i} = #flow.parameter.named<"probe"::"t{i}"> : tensor<{TINY}x{TINY}x{dt}>')
    body = []
    for T in ROWS:
        body += [f"  func.func @chain_T{T}(%x: tensor<{T}x{K}x{dt}>) -> tensor<{T}x{K}x{dt}> {{",
                 f"    %zero = arith.constant 0.0 : {dt}"]
        cur = "%x"
        for i in range(PAIRS):
            body += [f"    %a{i} = util.global.load @a{i} : tensor<{K}x{N}x{dt}>",
                     f"    %b{i} = util.global.load @b{i} : tensor<{N}x{K}x{dt}>"]
            h = _matmul(body, f"h{i}", cur, f"%a{i}", T, K, N, dt)
            cur = _matmul(body, f"y{i}", h, f"%b{i}", T, N, K, dt)
        body += [f"    return {cur} : tensor<{T}x{K}x{dt}>", "  }"]
    body += [f"  func.func @tiny(%x: tensor<1x{TINY}x{dt}>) -> tensor<1x{TINY}x{dt}> {{",
             f"    %zero = arith.constant 0.0 : {dt}"]
    cur = "%x"
    for i in range(TINY_N):
        body.append(f"    %t{i} = util.global.load @t{i} : tensor<{TINY}x{TINY}x{dt}>")
        cur = _matmul(body, f"s{i}", cur, f"%t{i}", 1, TINY, TINY, dt)
    body += [f"    return {cur} : tensor<1x{TINY}x{dt}>", "  }"]
    return "module @hostfit {\n" + "\n".join(g + body) + "\n}\n"


def _compile(dt: str, work: Path) -> bytes:
    from .compile import iree_compile_path
    from .targets import get_preset
    src, vmfb = work / f"probe_{dt}.mlir", work / f"probe_{dt}.vmfb"
    src.write_text(probe_mlir(dt))
    r = subprocess.run([iree_compile_path(), str(src), "-o", str(vmfb), *get_preset("host").flags],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"the host probe did not compile ({dt}): {r.stderr.strip()[-600:]}")
    return vmfb.read_bytes()


def _weights(dt: str):
    import iree.runtime as rt
    rng = np.random.default_rng(0)
    idx = rt.ParameterIndex()
    draw = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(DTYPES[dt])  # noqa: E731
    for i in range(PAIRS):
        idx.add_buffer(f"a{i}", draw(K, N))
        idx.add_buffer(f"b{i}", draw(N, K))
    for i in range(TINY_N):
        idx.add_buffer(f"t{i}", draw(TINY, TINY))
    return idx


def _context(driver: str, vmfb: bytes, idx):
    import iree.runtime as rt
    dev = rt.get_device(driver, cache=False)    # its own worker pool, let go with the probe
    inst = rt.VmInstance()
    mod = rt.VmModule.copy_buffer(inst, vmfb)
    ctx = rt.VmContext(inst, [rt.create_io_parameters_module(inst, idx.create_provider(scope="probe")),
                              rt.create_hal_module(inst, dev), mod])
    return dev, ctx, mod


def _time(inv, x, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        inv(x).to_host()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def measure(compiler: str, dtypes=("f32", "f16"), log=print) -> HostProbe:
    """Compile and run the probe here; the medians per driver, dtype and rows (compiler: the
    iree-compile version it records)."""
    import iree.runtime as rt
    ms: dict[str, dict[str, dict[int, float]]] = {d: {} for d in DRIVERS}
    tiny: dict[str, dict[str, float]] = {d: {} for d in DRIVERS}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="build_sd_hostfit_") as tmp:
        for dt in dtypes:
            vmfb, idx = _compile(dt, Path(tmp)), _weights(dt)
            runs = {}
            for driver in DRIVERS:
                dev, ctx, mod = _context(driver, vmfb, idx)
                fns = {T: rt.FunctionInvoker(ctx, dev, mod.lookup_function(f"chain_T{T}")) for T in ROWS}
                fns[0] = rt.FunctionInvoker(ctx, dev, mod.lookup_function("tiny"))
                xs = {T: np.full((T, K), 0.01, DTYPES[dt]) for T in ROWS}
                xs[0] = np.full((1, TINY), 0.01, DTYPES[dt])
                for T, f in fns.items():
                    _time(f, xs[T], WARMUP)
                runs[driver] = (fns, xs, {T: [] for T in fns})
            # the drivers alternate call by call: this machine's drift lands on both alike
            for _ in range(CALLS):
                for driver, (fns, xs, got) in runs.items():
                    for T, f in fns.items():
                        # the tiny chain takes ~0.1 ms: more calls, or one descheduling is its median
                        got[T] += _time(f, xs[T], 1 if T else TINY_CALLS)
            for driver, (_, _, got) in runs.items():
                ms[driver][dt] = {T: float(np.median(v)) for T, v in got.items() if T}
                tiny[driver][dt] = float(np.median(got[0])) / TINY_N
            del runs
    probe = HostProbe(compiler=compiler, pairs=PAIRS, k=K, n=N, chain_ms=ms, tiny_ms=tiny)
    log(f"host probe: IREE on this machine, {time.perf_counter() - t0:.0f} s: " + "; ".join(
        f"{d} f32 decode-like {ms[d]['f32'][1]:.1f} ms (T=8 {ms[d]['f32'][8]:.1f})" for d in DRIVERS if "f32" in ms[d]))
    return probe


def host_probe(cpu: str, cores: int, log=print) -> HostProbe | None:
    """This machine's probe: from the cache, else measured now and cached. None where IREE's compiler
    is not installed (the board side): the planner keeps the numpy figures there."""
    try:
        from .compile import compiler_version, iree_compile_path
        version = compiler_version(iree_compile_path(), cache_dir() / "iree-compile-version.json")
    except Exception:  # noqa: BLE001 - no compiler: no probe, and the numpy fit stays
        return None
    key = hashlib.sha256(f"{cpu}|{cores}|{version}|{K},{N},{PAIRS},{TINY},{TINY_N}".encode()).hexdigest()[:16]
    path = cache_dir() / "hostfit" / f"{key}.json"
    if path.exists():
        try:
            return msgspec.json.decode(path.read_bytes(), type=HostProbe)
        except (OSError, msgspec.DecodeError):    # a damaged cache: measure again
            pass
    log("host probe: timing IREE's kernels on this machine once (cached in "
        f"{path.parent}; about 10 s)")
    before = busy_fraction()
    try:
        probe = measure(version, log=log)
    except BuildError as e:
        # the plan does not need the probe: it falls back to the numpy figures, and says so
        log(f"warning: {e}; planning from the numpy figures")
        return None
    busy = max(before, busy_fraction())
    if busy > BUSY:
        # a probe taken beside other work reads that work's share of the cores and bus: use it
        # for this plan, but measure again next time rather than keep it
        log(f"host probe: other processes kept {busy:.0%} of the CPUs busy: its figures are low "
            "and not cached (plan on an idle machine, or profile)")
        return probe
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, msgspec.to_builtins(probe))
    return probe


BUSY = 0.25          # the share of the CPUs other work may keep busy for a probe to be cached


def busy_fraction(window_s: float = 0.3) -> float:
    """The share of all CPUs' time spent outside idle/iowait over a short window (/proc/stat), this
    process sleeping meanwhile: what other work takes now. 0 where /proc/stat is not readable."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 0.0 if t1 <= t0 else 1.0 - (i1 - i0) / (t1 - t0)
