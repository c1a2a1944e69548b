"""Decode tokens/s: build_sd against PyTorch/transformers, llama.cpp and ExecuTorch, with the roofline.

    python benchmarks/bench.py            # everything (make bench): demo pair + 1B/150M shapes
    python benchmarks/bench.py --quick    # the demo-size rows only (make bench-quick)

What is measured (benchmarks/README.md has the details):
- one worker process per system, loaded and warmed up once (every prompt generated once);
- a run = every prompt generated once, greedy; decode tokens/s = tokens after the first /
  time from the first token to the last (prefill and the token it yields excluded);
- the systems of a group alternate run by run (A B C, B C A, ...), and this machine's memory
  read bandwidth is measured just before and after every run (benchmarks/membw.c);
- a row's figure is the median over its runs; ratios are medians of per-round ratios, over the
  rounds whose runs saw the same bandwidth level (within --bw-tolerance);
- roofline: bytes a decode step must read (weights + KV cache at the mean position) /
  bandwidth measured around that run -> the fraction of that bound reached.
Everything is built under benchmarks/.work and benchmarks/.build (git-ignored), incrementally.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
BUILD = BENCH / ".build"
RESULTS = BENCH / "results"
PY = ROOT / ".venv" / "bin" / "python"
BSD = ROOT / ".venv" / "bin" / "build-sd"
ET_VENV = BENCH / ".venv-et"
ET_PY = ET_VENV / "bin" / "python"
LLAMA_BIN = BUILD / "llamacpp" / "bin" / "bsd-llama"

LLAMA_CPP_PYTHON = "0.3.36"      # PyPI sdist whose vendored llama.cpp we build
EXECUTORCH = "1.5.1"
TORCH = "2.13.0"                 # the CPU wheel the project pins (also used by the ExecuTorch venv)
TRANSFORMERS = "5.24.0"
GGUF = "0.19.0"
ET_NOISE = ("Failed to load", "pytree", "register_constant", "LeafSpec", "return cls", "cpuinfo_utils")

sys.path.insert(0, str(BENCH))
import models as M  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StepFailed(Exception):
    pass


def sh(cmd: list, logfile: Path, cwd: Path = ROOT, env: dict | None = None, timeout: float | None = None) -> str:
    """Run a command; its output goes to logfile; on failure raise with the last lines."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    e = dict(os.environ, **(env or {}))
    with open(logfile, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        f.flush()
        try:
            p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=e, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{Path(str(cmd[0])).name} timed out after {timeout}s (log: {logfile})") from None
        f.write(p.stdout)
    if p.returncode != 0:
        tail = [ln for ln in p.stdout.splitlines() if ln.strip() and not ln.startswith(ET_NOISE)][-6:]
        raise StepFailed(f"{Path(str(cmd[0])).name} {' '.join(map(str, cmd[1:3]))} failed (rc {p.returncode}): "
                         + " | ".join(tail)[-600:] + f" (log: {logfile})")
    return p.stdout


def fresh(out: Path, *inputs: Path) -> bool:
    """out exists and is newer than every input (files, or folders by their files)."""
    if not out.exists():
        return False
    t = out.stat().st_mtime
    for i in inputs:
        files = [i] if i.is_file() else [p for p in i.rglob("*") if p.is_file()]
        if any(f.stat().st_mtime > t for f in files):
            return False
    return True


# ---- setup ---------------------------------------------------------------------------------
def setup_membw() -> Path:
    exe = BUILD / "membw"
    if not fresh(exe, BENCH / "membw.c"):
        sh(["gcc", "-O3", "-march=native", "-fopenmp", BENCH / "membw.c", "-o", exe], BUILD / "membw.log")
    return exe


def setup_llamacpp(jobs: int) -> dict:
    """llama.cpp's tools from the llama-cpp-python sdist, plus bsd-llama (benchmarks/llamacpp)."""
    src = BUILD / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not (src / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        lg = BUILD / "llamacpp-download.log"
        sh([PY, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", BUILD], lg, timeout=900)
        with tarfile.open(BUILD / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as t:
            t.extractall(BUILD, filter="data")
    bdir = BUILD / "llamacpp"
    targets = ["bsd-llama", "llama-bench", "llama-speculative-simple", "llama-speculative", "llama-tokenize"]
    lg = BUILD / "llamacpp-build.log"
    if not (bdir / "build.ninja").exists():
        sh(["cmake", "-S", BENCH / "llamacpp", "-B", bdir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
            f"-DLLAMA_SRC={src / 'vendor' / 'llama.cpp'}"], lg)
    sh(["cmake", "--build", bdir, "-j", str(jobs), "--target", *targets], lg, timeout=3600)
    bins = {t: bdir / "bin" / t for t in targets}
    for t, p in bins.items():
        if not p.exists():
            alt = next(iter(bdir.rglob(t)), None)
            if alt is None:
                raise StepFailed(f"built, but {t} is not in {bdir}")
            bins[t] = alt
    return bins


def setup_et() -> Path:
    """ExecuTorch in its own venv (it pins torchao and more); torch is the project's CPU wheel."""
    stamp = ET_VENV / ".installed"
    want = f"executorch=={EXECUTORCH} torch=={TORCH} transformers=={TRANSFORMERS}"
    if stamp.exists() and stamp.read_text() == want:
        return ET_PY
    lg = BUILD / "et-install.log"
    base = Path(sys.base_prefix) / "bin" / "python3"
    sh([base if base.exists() else sys.executable, "-m", "venv", ET_VENV], lg)
    sh([ET_PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], lg, timeout=900)
    sh([ET_PY, "-m", "pip", "install", "-q", f"torch=={TORCH}"], lg, timeout=1800)
    sh([ET_PY, "-m", "pip", "install", "-q", f"executorch=={EXECUTORCH}", f"transformers=={TRANSFORMERS}",
        "safetensors"], lg, timeout=1800)
    sh([ET_PY, "-c", "import executorch.runtime, executorch.backends.xnnpack"], lg)
    stamp.write_text(want)
    return ET_PY


def setup_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        sh([PY, "-m", "pip", "install", "-q", f"gguf=={GGUF}"], BUILD / "gguf-install.log", timeout=600)


# ---- build_sd artifacts ----------------------------------------------------------------------
def _sha(p: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def dedupe(files: list[Path]) -> None:
    """Hard-link byte-identical copies of a weights file (export, artifacts and bundle each hold
    one: 5 GB apiece for the 1B f32 model). build_sd replaces files by rename, never in place,
    so a later rebuild simply breaks the link."""
    files = [f for f in files if f.exists()]
    if len(files) < 2:
        return
    first = files[0]
    ref = None
    for f in files[1:]:
        if f.stat().st_ino == first.stat().st_ino or f.stat().st_size != first.stat().st_size:
            continue
        ref = ref or _sha(first)
        if _sha(f) == ref:
            tmp = f.with_name(f".{f.name}.lnk")
            tmp.unlink(missing_ok=True)
            os.link(first, tmp)
            os.replace(tmp, f)



def bsd_export_compile(name: str, ckpt: Path, dtype: str, gammas: str | None, prefill: str,
                       quant: str = "none") -> Path:
    mlir, art = WORK / "mlir" / name, WORK / "artifacts" / name
    lg = WORK / "logs" / f"bsd-{name}.log"
    cmd = [BSD, "export", "--model", ckpt, "--out", mlir, "--prefill", prefill, "--max-context", "512",
           "--dtype", dtype, "--quant", quant]
    if gammas is not None:
        cmd += ["--gammas", gammas]
    t = time.perf_counter()
    sh(cmd, lg, timeout=3600)
    # a compile that failed for this very export fails again: remember it instead of retrying
    stamp = WORK / "failed" / f"{name}.json"
    key = _sha(mlir / "export.json") + " " + " ".join(sorted(p.name + str(p.stat().st_size) for p in mlir.glob("*.mlir")))
    if stamp.exists():
        old = json.loads(stamp.read_text())
        if old["key"] == key:
            raise StepFailed(old["error"] + " (cached failure: delete " + str(stamp) + " to retry)")
    try:
        sh([BSD, "compile", mlir, "--preset", "host", "--out", art], lg, timeout=3600)
    except StepFailed as e:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({"key": key, "error": str(e)}))
        raise
    stamp.unlink(missing_ok=True)
    dedupe([mlir / "model.irpa", art / "model.irpa"])
    log(f"  build_sd {name}: export + compile {time.perf_counter() - t:.0f}s")
    return art


def bsd_bundle(name: str, draft_art: Path, target_art: Path, gamma: int) -> Path:
    out = WORK / "bundles" / name
    man = out / "manifest.json"
    if not (man.exists() and fresh(man, draft_art / "manifest.json", target_art / "manifest.json")):
        sh([BSD, "bundle", "--draft", draft_art, "--target", target_art, "--place", "draft=host",
            "--place", "target=host", "--gamma", str(gamma), "--out", out], WORK / "logs" / f"bundle-{name}.log",
           timeout=1800)
    dedupe([draft_art / "model.irpa", out / "draft" / "model.irpa"])
    dedupe([target_art / "model.irpa", out / "target" / "model.irpa"])
    return out


def bsd_plan(bundle: Path, draft: Path, target: Path, prompts_file: Path, threads: int, n_prompts: int,
             chat: bool = False, dtype: str = "f32") -> dict:
    """calibrate (alpha per draft position) + profile (this machine) + plan --platform host."""
    d = WORK / "plan" / bundle.name          # one folder per bundle: the inputs stay for a look afterwards
    d.mkdir(parents=True, exist_ok=True)
    lg = WORK / "logs" / "plan.log"
    env = {"IREE_PY_RUNTIME_FLAGS": f"--task_topology_group_count={threads}"}
    sh([BSD, "calibrate", bundle, "--prompts", prompts_file, "--limit", str(n_prompts), "--gamma", "8",
        "--out", d / "calib.json"] + (["--chat"] if chat else []), lg, env=env, timeout=1800)
    sh([BSD, "profile", bundle, "--devices", "cpu", "--out", d / "profile.json"], lg, env=env, timeout=1800)
    out = sh([BSD, "plan", "--draft", draft, "--target", target, "--platform", "host", "--devices", "cpu,cpu-sync",
              "--dtype", dtype, "--max-context", "512",
              "--calibration", d / "calib.json", "--profile", d / "profile.json", "--out", d / "plan.json"],
             lg, env=env, timeout=600)
    from build_sd.contract import Calibration, Plan
    plan = Plan.read(d / "plan.json")
    greedy = Calibration.read(d / "calib.json").greedy
    spec = next(c for c in plan.configs if c.gamma > 0)
    placed = {"draft": spec.draft, "target": spec.target}
    drivers = {role: plan.devices[p.devices["whole"]].driver for role, p in placed.items()
               if p and "whole" in p.devices}
    return {"top_gamma": plan.configs[0].gamma, "gamma": spec.gamma, "alpha": greedy.alpha, "drivers": drivers,
            "per_position": greedy.per_position, "printed": out.strip().splitlines()[-8:],
            "top": [{"gamma": c.gamma, "pred_tokens_per_s": c.pred_tokens_per_s, "speedup": c.speedup,
                     "target": c.target.label, "draft": c.draft.label if c.draft else None}
                    for c in plan.configs[:5]]}


def quant_weight_bytes(cfg: dict, quant: str) -> int:
    """Weight bytes a decode step reads for a build_sd quantized export (int8 codes; w4a8 too: its 4-bit
    codes are expanded to int8 at load, so a step reads 8 bits a weight, the file holds 5; scales,
    norms and the embedding row are noise), or for llama.cpp's Q8_0 (8.5 bits) / Q4_0 (4.5 bits)
    blocks on every 2-D weight."""
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    proj = M.n_params(cfg) - V * D * (1 if cfg.get("tie_word_embeddings") else 2)
    bits = {"w8a8": (8, 8), "w4a8": (8, 8), "q8_0": (8.5, 8.5), "q4_0": (4.5, 4.5)}[quant]
    return int(proj * bits[0] / 8 + V * D * bits[1] / 8)


def gguf_file(ckpt: Path, dtype: str) -> Path:
    out = WORK / "gguf" / f"{ckpt.name}-{dtype}.gguf"
    if not fresh(out, ckpt, BENCH / "gguf_export.py"):
        sh([PY, BENCH / "gguf_export.py", ckpt, out, "--dtype", dtype], WORK / "logs" / "gguf.log", timeout=3600)
    return out


def pte_file(ckpt: Path, dtype: str) -> Path:
    out = WORK / "et" / f"{ckpt.name}-{dtype}.pte"
    if not fresh(out, ckpt, BENCH / "et_export.py"):
        sh([ET_PY, BENCH / "et_export.py", ckpt, out, "--dtype", dtype], WORK / "logs" / "et-export.log",
           timeout=3600)
    return out


# ---- measuring -------------------------------------------------------------------------------
class Bandwidth:
    def __init__(self, exe: Path, threads: int):
        self.p = subprocess.Popen([str(exe), "-t", str(threads), "-p", "5"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def __call__(self) -> float:
        self.p.stdin.write("m\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())["gbs"]

    def close(self):
        try:
            self.p.stdin.write("q\n")
            self.p.stdin.flush()
        except OSError:
            pass
        self.p.wait(timeout=10)


class Worker:
    """A persistent worker (workers.py or bsd-llama): load + warm up once, then 'run'."""

    def __init__(self, cmd: list, logfile: Path, timeout: float):
        logfile.parent.mkdir(parents=True, exist_ok=True)
        self.err = open(logfile, "a")
        self.err.write(f"\n$ {' '.join(map(str, cmd))}\n")
        self.err.flush()
        self.logfile = logfile
        self.p = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True)
        self.info = self._read(timeout)

    def _read(self, timeout: float) -> dict:
        import select
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0:
                self.close()
                raise StepFailed(f"no answer in {timeout:.0f}s (log: {self.logfile})")
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if not r:
                continue
            line = self.p.stdout.readline()
            if not line:
                self.p.wait()
                tail = [ln for ln in self.logfile.read_text().splitlines() if ln.strip()
                        and not ln.startswith(ET_NOISE)][-4:]
                raise StepFailed(f"exited (rc {self.p.returncode}): " + " | ".join(tail)[-500:])
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def run(self, timeout: float) -> dict:
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        return self._read(timeout)

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write("quit\n")
                self.p.stdin.flush()
                self.p.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self.err.close()


class SpecSimple:
    """llama.cpp's own llama-speculative-simple: one process per prompt, its own timer."""

    def __init__(self, exe: Path, target: Path, draft: Path, texts: list[str], gamma: int, threads: int,
                 max_new: int, kv: str, logfile: Path):
        self.exe, self.texts, self.logfile = exe, texts, logfile
        self.base = [exe, "-m", target, "-md", draft, "-n", max_new, "--temp", "0", "--top-k", "1",
                     "--spec-type", "draft-simple", "--spec-draft-n-max", gamma, "--spec-draft-n-min", "0", "--spec-draft-p-min", "0",
                     "-t", threads, "-tb", threads, "-td", threads, "-tbd", threads, "-c", "512",
                     "-ctk", kv, "-ctv", kv, "-ctkd", kv, "-ctvd", kv, "--seed", "0", "-ngl", "0", "-ngld", "0"]
        self.info = {"ready": True}

    def run(self, timeout: float) -> dict:
        import re
        toks, secs, acc, drafted = 0, 0.0, 0, 0
        for t in self.texts:
            # its log is written by a thread; now and then the last lines are lost at exit: retry
            for _ in range(3):
                out = sh(self.base + ["-p", t], self.logfile, timeout=timeout)
                m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds", out)
                if m:
                    break
            if not m:
                raise StepFailed(f"llama-speculative-simple printed no timing 3 times (log: {self.logfile})")
            toks += int(m.group(1))
            secs += float(m.group(2))
            a = re.search(r"n_accept\s*=\s*(\d+)", out)
            dr = re.search(r"n_drafted\s*=\s*(\d+)", out)
            acc += int(a.group(1)) if a else 0
            drafted += int(dr.group(1)) if dr else 0
        return {"tokens": toks, "decode_s": secs, "accepted": acc, "drafted": drafted, "outputs": []}

    def close(self):
        pass


class LlamaBench:
    """llama.cpp's own llama-bench (tg N from an empty context, its own warm-up): one process a run."""

    def __init__(self, exe: Path, gguf: Path, n: int, threads: int, kv: str, depth: int, logfile: Path):
        # llama-bench takes no f32 KV cache type (-ctk f32 is refused): its default f16 then
        kvf = ["-ctk", kv, "-ctv", kv] if kv != "f32" else []
        self.cmd = [exe, "-m", gguf, "-p", "0", "-n", n, "-d", depth, "-r", "2", "-t", threads, *kvf, "-o", "json"]
        self.logfile = logfile
        self.info = {"ready": True}

    def run(self, timeout: float) -> dict:
        out = sh(self.cmd, self.logfile, timeout=timeout)
        j = json.loads(out[out.index("["):])
        ts = float(j[0]["avg_ts"])
        n = int(j[0]["n_gen"])
        return {"tokens": n, "decode_s": n / ts, "build": j[0].get("build_commit")}

    def close(self):
        pass


@dataclass
class Row:
    id: str
    section: str           # "demo" | "1b" | "150m"
    group: str             # rows of one group alternate with each other
    system: str
    model: str
    dtype: str
    mode: str              # "target only" | "speculative g=G"
    start: object = None   # () -> Worker-like; may raise StepFailed
    bytes_per_token: float | None = None    # roofline: weights + KV read per decode step
    note: str = ""
    why: str | None = None                  # set when the row could not run
    runs: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    outputs: list | None = None


def measure(rows: list[Row], rounds: int, bw: Bandwidth, run_timeout: float, load_timeout: float) -> None:
    """Start the group's workers, then alternate runs (rotating order) with bandwidth around each."""
    live = []
    for r in rows:
        if r.why:
            continue
        log(f"  start {r.id}")
        try:
            w = r.start()
            r.info = w.info
            live.append((r, w))
        except StepFailed as e:
            r.why = f"could not start: {e}"
            log(f"    {r.why}")
    try:
        for k in range(rounds):
            order = live[k % len(live):] + live[:k % len(live)] if live else []
            for r, w in order:
                if r.why:
                    continue
                b0 = bw()
                try:
                    res = w.run(run_timeout)
                except StepFailed as e:
                    r.why = f"run failed: {e}"
                    log(f"    {r.id}: {r.why}")
                    continue
                b1 = bw()
                tps = res["tokens"] / res["decode_s"] if res["decode_s"] > 0 else float("nan")
                r.runs.append({"round": k, "tps": tps, "tokens": res["tokens"], "decode_s": res["decode_s"],
                               "bw_before": b0, "bw_after": b1, "accepted": res.get("accepted", 0),
                               "rejected": res.get("rejected", 0), "drafted": res.get("drafted"),
                               "iterations": res.get("iterations", 0), "host_s": res.get("host_s")})
                if res.get("outputs"):
                    r.outputs = res["outputs"]
                log(f"    round {k + 1}/{rounds} {r.id}: {tps:8.2f} tok/s  ({res['tokens']} tokens, "
                    f"bandwidth {b0:.1f} -> {b1:.1f} GB/s)")
    finally:
        for r, w in live:
            w.close()


# ---- the benchmark -------------------------------------------------------------------------
def read_prompts(n: int, max_tokens: int) -> tuple[list[str], list[list[int]]]:
    """The first n English sentences of the demo test split that encode to <= max_tokens."""
    from build_sd.demo.tokenizer import encode_prompt, load_tokenizer, prompt
    tok = load_tokenizer(M.demo_tokenizer())
    texts, ids = [], []
    for line in (ROOT / "build_sd" / "demo" / "data" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        en = line.split("\t")[0]
        p = encode_prompt(tok, en)
        if len(p) <= max_tokens:
            texts.append(prompt(en))
            ids.append(p)
        if len(ids) == n:
            break
    return texts, ids


def weight_bytes(cfg: dict, elt: int) -> int:
    """Bytes of weights one decode step reads: every layer, the final norm, the LM head (the
    embedding table is read for one row only, unless it is also the tied head)."""
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    total = M.n_params(cfg)
    emb = V * D
    return int((total - emb + (emb if cfg.get("tie_word_embeddings") else 0) + D) * elt)


def kv_bytes(cfg: dict, elt: int, positions: float) -> float:
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * hd * positions * elt


def versions(llama_bins: dict | None) -> dict:
    import importlib.metadata as md
    v = {}
    for pkg in ("iree-base-compiler", "iree-base-runtime", "iree-turbine", "torch", "transformers", "numpy", "gguf"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = "not installed"
    try:
        v["build_sd"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                                       capture_output=True).stdout.strip()
    except OSError:
        v["build_sd"] = "?"
    v["llama.cpp"] = f"llama-cpp-python {LLAMA_CPP_PYTHON} sdist (vendored llama.cpp"
    src = BUILD / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    c = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], text=True, capture_output=True)
    v["llama.cpp"] += f" {c.stdout.strip()})" if c.returncode == 0 and c.stdout.strip() else ")"
    if ET_PY.exists():
        r = subprocess.run([str(ET_PY), "-c", "import importlib.metadata as m;print(m.version('executorch'),"
                            "m.version('torch'),m.version('torchao'))"], text=True, capture_output=True)
        if r.returncode == 0 and r.stdout.strip():
            e, t, ao = r.stdout.split()
            v["executorch"] = f"{e} (torch {t}, torchao {ao})"
    v["gcc"] = subprocess.run(["gcc", "-dumpfullversion"], text=True, capture_output=True).stdout.strip()
    v["python"] = platform.python_version()
    return v


def machine() -> str:
    from build_sd.runtime.hostinfo import cpu_model_name
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) / 1024 / 1024
    l3 = ""
    try:
        out = subprocess.run(["lscpu"], text=True, capture_output=True).stdout
        l3 = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("L3")), "")
    except OSError:
        pass
    return f"{cpu_model_name()}, {os.cpu_count()} cores, {mem:.0f} GiB memory" + (f", L3 {l3}" if l3 else "")


# ---- the steps of main -----------------------------------------------------------------------
WORKERS = [PY, BENCH / "workers.py"]
DEMO_LABEL = "demo target (12.6M)"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="demo-size rows only (~10 min)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every system (default: all cores)")
    ap.add_argument("--rounds", type=int, help="runs per row (default 5 demo, 3 large)")
    ap.add_argument("--prompts", type=int, help="demo prompts per run (default 24, quick 12)")
    ap.add_argument("--max-new", type=int, default=64, help="demo: max new tokens (stops at </s>)")
    ap.add_argument("--max-new-large", type=int, default=24, help="large shapes: new tokens (EOS ignored)")
    ap.add_argument("--prompts-large", type=int, default=4, help="large shapes: prompts per run (default 4)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="demo rows: untimed prompts each system generates once loaded, before any timed run "
                         "(0 = every prompt, the default)")
    ap.add_argument("--warmup-large", type=int, default=1,
                    help="1B/150M rows: untimed warm-up prompts per system (default 1; 0 = every prompt)")
    ap.add_argument("--bw-tolerance", type=float, default=0.15, help="same bandwidth level: within this fraction")
    ap.add_argument("--no-et", action="store_true", help="skip ExecuTorch")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp")
    ap.add_argument("--only", help="comma-separated sections: demo,demo16,1b,150m,smollm2,smollm2q (default: all "
                                   "but the SmolLM2 ones, whose GGUF `make smollm2` fetches; smollm2q: its w8a8/w4a8 "
                                   "against llama.cpp Q8_0/Q4_0; 1bq, 150mq: the same for the 1B and 150M shapes; chatspec: the real pair, speculative vs target-only)")
    ap.add_argument("--build-only", action="store_true", help="set up and build everything, measure nothing")
    ap.add_argument("--chat-draft", help="chatspec: the draft checkpoint (default build_sd/chatpair/models/draft)")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


@dataclass
class Ctx:
    """What the steps of main share: the options, the tools set up, the prompts, the rows so far."""
    a: argparse.Namespace
    sections: set[str]
    n_prompts: int
    failures: dict[str, str] = field(default_factory=dict)
    llama: dict | None = None              # llama.cpp's tools; None: skipped or failed
    et_ok: bool = False
    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    pfile: Path | None = None              # the prompts as token ids, one a line
    tfile: Path | None = None              # ... and as text
    demo: dict = field(default_factory=dict)
    dcfg: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    plan: dict | None = None

    @property
    def T(self) -> int:
        return self.a.threads

    def common(self, pf: Path | None = None, warm: int | None = None) -> list:
        """Worker options: the prompts file (default: the demo's), threads, warm-up prompts."""
        return ["--prompts", pf or self.pfile, "--threads", self.T, "--warmup",
                self.a.warmup if warm is None else warm]


def worker(cmd: list, name: str, timeout: float = 1800):
    return lambda: Worker(cmd, WORK / "logs" / f"worker-{name}.log", timeout)


def write_ids(path: Path, ids: list[list[int]]) -> Path:
    path.write_text("\n".join(",".join(map(str, p)) for p in ids) + "\n")
    return path


def setup_tools(ctx: Ctx) -> Path:
    """membw, gguf, llama.cpp and ExecuTorch; a tool that fails is noted in ctx.failures."""
    a = ctx.a
    log(f"setup (threads {ctx.T}, sections {','.join(sorted(ctx.sections))})")
    membw = setup_membw()
    setup_gguf()
    if not a.no_llamacpp:
        try:
            t = time.perf_counter()
            ctx.llama = setup_llamacpp(max(1, os.cpu_count()))
            log(f"  llama.cpp tools ready ({time.perf_counter() - t:.0f}s)")
        except StepFailed as e:
            ctx.failures["llama.cpp"] = str(e)
            log(f"  llama.cpp: {e}")
    if not a.no_et:
        try:
            setup_et()
            ctx.et_ok = True
        except StepFailed as e:
            ctx.failures["executorch"] = f"install failed: {e}"
            log(f"  executorch: {e}")
    return membw


def write_prompts(ctx: Ctx) -> None:
    ctx.texts, ctx.ids = read_prompts(ctx.n_prompts, 16)
    ctx.pfile = write_ids(WORK / f"prompts-{ctx.n_prompts}.ids", ctx.ids)
    ctx.tfile = WORK / f"prompts-{ctx.n_prompts}.txt"
    ctx.tfile.write_text("\n".join(ctx.texts) + "\n")
    log(f"{len(ctx.ids)} prompts of {min(map(len, ctx.ids))}-{max(map(len, ctx.ids))} tokens")


@dataclass
class Target:
    """One model in one dtype that every system runs target-only (add_target_rows)."""
    section: str
    group: str
    label: str
    ckpt: Path
    cfg: dict
    dtype: str
    bundle: Path | str         # a str: why build_sd has no bundle for it
    max_new: int
    ignore_eos: bool
    positions: float           # mean KV-cache position of a decode step (roofline)
    pf: Path                   # prompts file
    warm: int                  # untimed warm-up prompts

    @property
    def sfx(self) -> str:
        return f"{self.section}-{self.dtype}"

    @property
    def eos(self) -> list:
        return ["--ignore-eos"] if self.ignore_eos else []

    def row(self, rid: str, system: str, mode: str = "target only", group: str | None = None, **kw) -> Row:
        elt = 4 if self.dtype == "f32" else 2
        bpt = weight_bytes(self.cfg, elt) + kv_bytes(self.cfg, elt, self.positions)
        return Row(rid, self.section, group or self.group, system, self.label, self.dtype, mode,
                   bytes_per_token=bpt, **kw)


def add_target_rows(ctx: Ctx, t: Target, hf: bool = True, et: bool = True, split: bool = False,
                    sync_row: bool = False) -> None:
    """build_sd, llama.cpp, PyTorch, ExecuTorch target-only rows of one model and dtype. split: the
    model is too big for all four at once: build_sd + llama.cpp alternate in one group, PyTorch and
    ExecuTorch each in their own group with llama.cpp again (the link for the ratios)."""
    bsd_target_rows(ctx, t, sync_row)
    lrow = llama_target_rows(ctx, t)
    others = ([("hf", hf_target_row(ctx, t))] if hf else []) + ([("et", et_target_row(ctx, t))] if et else [])
    for kind, r in others:
        if split:
            r.group = f"{t.group}-{kind}"
            ref = t.row(f"llama-{t.sfx}-ref-{kind}", "llama.cpp", group=r.group,
                        note="link run: llama.cpp again, alternating with the row above")
            ref.start, ref.why = lrow.start, lrow.why
            ctx.rows.extend([r, ref])
        else:
            ctx.rows.append(r)


def model_file(r: Row, unavailable: str | None, build, what: str) -> Path | None:
    """The model file `build()` writes for row r's system, or None with r.why set: the system is
    unavailable (why), or the build failed."""
    if unavailable is not None:
        r.why = unavailable
        return None
    try:
        return build()
    except StepFailed as e:
        r.why = f"{what}: {e}"
        return None


def bsd_target_rows(ctx: Ctx, t: Target, sync_row: bool) -> None:
    # build_sd under IREE's worker pool (local-task, --threads workers) and, for the small
    # models, also on the calling thread (local-sync: the planner's `cpu-sync`, no wake-ups)
    for drv in (["local-task", "local-sync"] if sync_row else ["local-task"]):
        tag = "" if drv == "local-task" else "-sync"
        r = t.row(f"bsd-{t.sfx}{tag}", f"build_sd (IREE, host{', local-sync' if tag else ''})",
                  note="local-sync: one thread, whatever --threads says" if tag else "")
        if isinstance(t.bundle, str):
            r.why = t.bundle
        else:
            r.start = worker(WORKERS + ["bsd", "--bundle", t.bundle, "--gamma", 0, "--max-new", t.max_new,
                                        "--cpu-driver", drv] + ctx.common(t.pf, t.warm) + t.eos, r.id)
        ctx.rows.append(r)


def llama_target_rows(ctx: Ctx, t: Target) -> Row:
    """bsd-llama on the model's GGUF and, when that can run, llama-bench; returns the first."""
    lrow = t.row(f"llama-{t.sfx}", "llama.cpp")
    ctx.rows.append(lrow)
    g = model_file(lrow, None if ctx.llama else ctx.failures.get("llama.cpp", "skipped (--no-llamacpp)"),
                   lambda: gguf_file(t.ckpt, t.dtype), "GGUF")
    if g is None:
        return lrow
    lrow.start = worker([ctx.llama["bsd-llama"], "-m", g, "--prompts", t.pf, "-t", ctx.T, "-n", t.max_new,
                         "--kv", t.dtype, "--warmup", t.warm] + t.eos, lrow.id)
    depth = int(t.positions)
    lb = t.row(f"llamabench-{t.sfx}", "llama.cpp", f"target only (llama-bench tg{t.max_new})",
               note=f"llama-bench -p 0 -n {t.max_new} -d {depth}: its own timing, random tokens"
               + ("; KV cache f16 (llama-bench refuses -ctk f32)" if t.dtype == "f32" else ""))
    lb.start = (lambda exe=ctx.llama["llama-bench"], g=g, n=t.max_new, T=ctx.T, dtype=t.dtype, d=depth: LlamaBench(
        exe, g, n, T, dtype, d, WORK / "logs" / "llama-bench.log"))
    ctx.rows.append(lb)
    return lrow


def hf_target_row(ctx: Ctx, t: Target) -> Row:
    r = t.row(f"hf-{t.sfx}", "PyTorch + transformers (eager)")
    r.start = worker(WORKERS + ["hf", "--model", t.ckpt, "--dtype", t.dtype, "--max-new", t.max_new]
                     + ctx.common(t.pf, t.warm) + t.eos, r.id)
    return r


def et_target_row(ctx: Ctx, t: Target) -> Row:
    r = t.row(f"et-{t.sfx}", "ExecuTorch (XNNPACK)")
    pte = model_file(r, None if ctx.et_ok else ctx.failures.get("executorch", "skipped (--no-et)"),
                     lambda: pte_file(t.ckpt, t.dtype), "export")
    if pte is None:
        return r
    r.start = worker([ET_PY, BENCH / "workers.py", "et", "--pte", pte, "--max-new", t.max_new, "--prefill-one",
                      "--eos", ",".join(map(str, _ids(t.cfg.get("eos_token_id"))))]
                     + ctx.common(t.pf, t.warm) + t.eos, r.id)
    return r


def target_only_bundle(name: str, ckpt: Path, dtype: str, prefill: str, quant: str = "none") -> Path | str:
    """A target-only bundle of one model and dtype, or why build_sd could not build it."""
    try:
        art = bsd_export_compile(name, ckpt, dtype, "", prefill, quant)
        return bsd_bundle(name, art, art, 0)
    except StepFailed as e:
        return f"build_sd build failed: {e}"


def build_demo(ctx: Ctx) -> tuple[Path | str, int]:
    """The demo pair's bundle (or why not) and the speculative rows' gamma: the plan's, else 4."""
    demo = ctx.demo
    log(f"demo pair ({demo['weights']} weights): build_sd export/compile/bundle")
    try:
        ta = bsd_export_compile("demo-target-f32", demo["target"], "f32", None, "16,64")
        da = bsd_export_compile("demo-draft-f32", demo["draft"], "f32", None, "16,64")
        bundle = bsd_bundle("demo-f32", da, ta, 4)
    except StepFailed as e:
        bundle = f"build_sd build failed: {e}"
        ctx.failures["build_sd demo"] = bundle
    if not isinstance(bundle, str) and not ctx.a.build_only:
        log("  plan: calibrate + profile + plan --platform host")
        try:
            ctx.plan = bsd_plan(bundle, demo["draft"], demo["target"], ctx.tfile, ctx.T, ctx.n_prompts)
            log(f"  plan: top gamma {ctx.plan['top_gamma']}, speculative rows use gamma {ctx.plan['gamma']} "
                f"(alpha {ctx.plan['alpha']:.3f})")
        except StepFailed as e:
            ctx.failures["plan"] = str(e)
            log(f"  plan failed: {e}; using gamma 4")
    return bundle, (ctx.plan["gamma"] if ctx.plan else 4)


def demo_target(ctx: Ctx, group: str, dtype: str, bundle: Path | str) -> Target:
    a = ctx.a
    positions = statistics.mean(map(len, ctx.ids)) + a.max_new / 4
    return Target("demo", group, DEMO_LABEL, ctx.demo["target"], ctx.dcfg, dtype, bundle, a.max_new, False,
                  positions, ctx.pfile, a.warmup)


def demo_rows(ctx: Ctx, bundle: Path | str, gamma: int) -> None:
    """The demo target's f32 rows, then the pair's speculative rows at `gamma`."""
    a, demo = ctx.a, ctx.demo
    add_target_rows(ctx, demo_target(ctx, "demo", "f32", bundle), sync_row=True)
    spec = f"speculative g={gamma}"
    r = Row("bsd-spec", "demo", "demo", "build_sd (IREE, host)", "demo pair", "f32", spec)
    if isinstance(bundle, str):
        r.why = bundle
    else:
        drv = sum((["--cpu-driver", f"{k}={v}"] for k, v in (ctx.plan or {}).get("drivers", {}).items()), [])
        r.start = worker(WORKERS + ["bsd", "--bundle", bundle, "--gamma", gamma, "--max-new", a.max_new]
                         + drv + ctx.common(), r.id)
        if drv:
            r.note = "the plan's CPU drivers: " + ", ".join(drv[1::2])
    ctx.rows.append(r)
    ctx.rows += llama_spec_rows(ctx, gamma, spec)
    r = Row("hf-spec", "demo", "demo", "PyTorch + transformers (eager)", "demo pair", "f32", spec,
            note="generate(assistant_model=draft), constant num_assistant_tokens")
    r.start = worker(WORKERS + ["hf", "--model", demo["target"], "--draft", demo["draft"], "--gamma", gamma,
                                "--max-new", a.max_new] + ctx.common(), r.id)
    ctx.rows.append(r)


def llama_spec_rows(ctx: Ctx, gamma: int, spec: str) -> list[Row]:
    """llama.cpp speculative on the demo pair: our driver (bsd-llama) and llama-speculative-simple."""
    a, demo, llama = ctx.a, ctx.demo, ctx.llama
    r = Row("llama-spec", "demo", "demo", "llama.cpp", "demo pair", "f32", spec,
            note="our driver (bsd-llama): build_sd's loop on llama.cpp contexts")
    r2 = Row("llama-spec-simple", "demo", "demo", "llama.cpp", "demo pair", "f32", f"{spec} (llama-speculative-simple)",
             note="llama-speculative-simple: its own timer, one process per prompt, no warm-up")
    if llama is None:
        r.why = r2.why = ctx.failures.get("llama.cpp", "skipped")
        return [r, r2]
    try:
        gt, gd = gguf_file(demo["target"], "f32"), gguf_file(demo["draft"], "f32")
    except StepFailed as e:
        r.why = r2.why = f"GGUF: {e}"
        return [r, r2]
    r.start = worker([llama["bsd-llama"], "-m", gt, "-md", gd, "--gamma", gamma, "--prompts", ctx.pfile,
                      "-t", ctx.T, "-n", a.max_new, "--kv", "f32", "--warmup", a.warmup], r.id)
    r2.start = (lambda: SpecSimple(llama["llama-speculative-simple"], gt, gd, ctx.texts, gamma, ctx.T, a.max_new,
                                   "f32", WORK / "logs" / "spec-simple.log"))
    return [r, r2]


def demo16_rows(ctx: Ctx) -> None:
    bundle = target_only_bundle("demo-target-f16", ctx.demo["target"], "f16", "16,64")
    add_target_rows(ctx, demo_target(ctx, "demo16", "f16", bundle), et=True, sync_row=True)


def large_rows(ctx: Ctx) -> None:
    """The 1B and 150M shapes (random weights), f32 and f16, target-only."""
    a = ctx.a
    log("larger shapes: random checkpoints")
    large = M.large_models(WORK / "models")
    lids = ctx.ids[:a.prompts_large]
    pfile_l = write_ids(WORK / f"prompts-large-{len(lids)}.ids", lids)
    pos = statistics.mean(map(len, lids)) + a.max_new_large / 2
    for sec, key, label in (("1b", "target", "Llama-3.2-1B shape"), ("150m", "draft", "150M draft shape")):
        if sec not in ctx.sections:
            continue
        ck = large[key]
        cfg = json.loads((ck / "config.json").read_text())
        label = f"{label} ({M.n_params(cfg) / 1e6:.0f}M)"
        for dtype in ("f32", "f16"):
            name = f"{sec}-{dtype}"
            log(f"{label} {dtype}: build_sd export/compile/bundle")
            bundle = target_only_bundle(name, ck, dtype, "16")
            # transformers in f16 on a CPU is slow enough to eat the time budget at 1B
            add_target_rows(ctx, Target(sec, name, label, ck, cfg, dtype, bundle, a.max_new_large, True, pos,
                                        pfile_l, a.warmup_large),
                            hf=not (sec == "1b" and dtype == "f16"), split=(sec == "1b"))


def smollm2_rows(ctx: Ctx) -> None:
    """SmolLM2-135M-Instruct, the real target (make smollm2 fetches its GGUF): build_sd f32 and f16
    against llama.cpp on the same weights (GGUFs written from the import, f32 and F16) and on the
    Q4_1 file as shipped, and transformers; chat prompts in its template, EOS honoured."""
    from build_sd.builder.gguf import checkpoint_dir
    from build_sd.chatpair.fetch import target_gguf
    a = ctx.a
    src = target_gguf()
    ck = checkpoint_dir(src)
    cfg = json.loads((ck / "config.json").read_text())
    pf = smol_prompts(ctx, ck)
    pos = statistics.mean(len(x.split(",")) for x in pf.read_text().splitlines()) + a.max_new_large / 2
    label = f"SmolLM2-135M-Instruct ({M.n_params(cfg) / 1e6:.0f}M)"
    for dtype in ("f32", "f16"):
        name = f"smollm2-{dtype}"
        log(f"{label} {dtype}: build_sd export/compile/bundle")
        bundle = target_only_bundle(name, ck, dtype, "64")
        t = Target("smollm2", name, label, ck, cfg, dtype, bundle, a.max_new_large, True, pos, pf, a.warmup_large)
        add_target_rows(ctx, t, et=False)
    # the file as shipped: llama.cpp's own Q4_1 kernels (build_sd dequantizes: W8A8 is a later step)
    r = Row("llama-smollm2-q4_1", "smollm2", "smollm2-q4_1", "llama.cpp", label, "q4_1", "target only",
            bytes_per_token=src.stat().st_size + kv_bytes(cfg, 2, pos), note="the GGUF as shipped (Q4_1, token_embd Q8_0)")
    if ctx.llama:
        r.start = worker([ctx.llama["bsd-llama"], "-m", src, "--prompts", pf, "-t", ctx.T, "-n", a.max_new_large,
                          "--kv", "f16", "--warmup", a.warmup_large, "--ignore-eos"], r.id)
    else:
        r.why = ctx.failures.get("llama.cpp", "skipped (--no-llamacpp)")
    link = next(x for x in ctx.rows if x.id == "bsd-smollm2-f16")
    ref = Row("bsd-smollm2-f16-ref-q4", "smollm2", "smollm2-q4_1", link.system, label, "f16", "target only",
              bytes_per_token=link.bytes_per_token, note="link run: build_sd f16 again, alternating with the row above")
    ref.start, ref.why = link.start, link.why
    ctx.rows.extend([r, ref])


def smollm2q_rows(ctx: Ctx) -> None:
    """SmolLM2-135M-Instruct quantized: build_sd w8a8 and w4a8 (float parts f16) against llama.cpp Q8_0
    and Q4_0 GGUFs written from the same dequantized weights, with build_sd f16 as the link, one group."""
    from build_sd.builder.gguf import checkpoint_dir
    from build_sd.chatpair.fetch import target_gguf
    ck = checkpoint_dir(target_gguf())
    cfg = json.loads((ck / "config.json").read_text())
    pf = smol_prompts(ctx, ck)
    pos = statistics.mean(len(x.split(",")) for x in pf.read_text().splitlines()) + ctx.a.max_new_large / 2
    quant_rows(ctx, "smollm2q", "smollm2", ck, cfg, f"SmolLM2-135M-Instruct ({M.n_params(cfg) / 1e6:.0f}M)", pf,
               pos, "64")


def large_quant_rows(ctx: Ctx, sec: str = "1bq") -> None:
    """The Llama-3.2-1B shape (1bq) or the 150M draft shape (150mq), random weights, quantized: issue 15's
    speed goals on the 1B shape (w8a8 vs f16 against the bytes saved, vs llama.cpp Q8_0, share of the
    roofline). Prefill bucket 16 only, as the 1b section."""
    large = M.large_models(WORK / "models")
    key, stem, name = {"1bq": ("target", "1b", "Llama-3.2-1B shape"), "150mq": ("draft", "150m", "150M draft shape")}[sec]
    ck = large[key]
    cfg = json.loads((ck / "config.json").read_text())
    lids = ctx.ids[:ctx.a.prompts_large]
    pf = write_ids(WORK / f"prompts-large-{len(lids)}.ids", lids)
    pos = statistics.mean(map(len, lids)) + ctx.a.max_new_large / 2
    quant_rows(ctx, sec, stem, ck, cfg, f"{name} ({M.n_params(cfg) / 1e6:.0f}M)", pf, pos, "16")


def quant_rows(ctx: Ctx, sec: str, stem: str, ck: Path, cfg: dict, label: str, pf: Path, pos: float,
               prefill: str) -> None:
    """One group: build_sd f16 (the link), w8a8, w4a8 (float parts f16) and llama.cpp Q8_0 / Q4_0 GGUFs
    written from the same float weights, target-only, EOS ignored."""
    a = ctx.a
    kv = kv_bytes(cfg, 2, pos)
    for q in ("none", "w8a8", "w4a8"):
        name = f"{stem}-f16" if q == "none" else f"{stem}-{q}"
        log(f"{label} {q}: build_sd export/compile/bundle")
        bundle = target_only_bundle(name, ck, "f16", prefill, q)
        r = Row(f"bsd-{name}-q", sec, sec, "build_sd (IREE, host)", label, "f16" if q == "none" else q,
                "target only", bytes_per_token=(weight_bytes(cfg, 2) if q == "none" else quant_weight_bytes(cfg, q)) + kv,
                note="" if q == "none" else "float parts (embedding, attention, KV cache) f16")
        if isinstance(bundle, str):
            r.why = bundle
        else:
            r.start = worker(WORKERS + ["bsd", "--bundle", bundle, "--gamma", 0, "--max-new", a.max_new_large]
                             + ctx.common(pf, a.warmup_large) + ["--ignore-eos"], r.id)
        ctx.rows.append(r)
    for q in ("q8_0", "q4_0"):
        r = Row(f"llama-{stem}-{q}", sec, sec, "llama.cpp", label, q, "target only",
                bytes_per_token=quant_weight_bytes(cfg, q) + kv, note=f"GGUF {q.upper()} on every 2-D weight, KV f16")
        g = model_file(r, None if ctx.llama else ctx.failures.get("llama.cpp", "skipped (--no-llamacpp)"),
                       lambda q=q: gguf_file(ck, q), "GGUF")
        if g is not None:
            r.start = worker([ctx.llama["bsd-llama"], "-m", g, "--prompts", pf, "-t", ctx.T, "-n", a.max_new_large,
                              "--kv", "f16", "--warmup", a.warmup_large, "--ignore-eos"], r.id)
        ctx.rows.append(r)


def chatspec_rows(ctx: Ctx) -> None:
    """The real pair: SmolLM2-135M-Instruct + its distilled draft (build_sd/chatpair/models/draft, or
    --chat-draft), f32 and f16, on the chat demo's held-out questions. Per dtype one group: target-only
    under both CPU drivers, speculative greedy at the planner's gamma and drivers (calibrated on other
    held-out prompts), and sampled (temperature 0.8) target-only and speculative. The goals compare
    speculative with the best target-only row of the same dtype."""
    from build_sd.builder.gguf import checkpoint_dir
    from build_sd.chatpair.fetch import target_gguf
    from build_sd.demo.chat import DRAFT_DIR, questions
    a = ctx.a
    ck = checkpoint_dir(target_gguf())
    draft = Path(a.chat_draft) if a.chat_draft else DRAFT_DIR
    cfg = json.loads((ck / "config.json").read_text())
    asked, calib = questions()
    pf = smol_prompts(ctx, ck, asked[:a.prompts_large], "chat")
    tf = WORK / "prompts-chat-calib.txt"
    tf.write_text("\n".join(calib[:12]) + "\n")
    pos = statistics.mean(len(x.split(",")) for x in pf.read_text().splitlines()) + a.max_new_large / 2
    label = f"SmolLM2-135M-Instruct + draft ({M.n_params(cfg) / 1e6:.0f}M target)"
    for dtype in ("f32", "f16"):
        group, elt = f"chat-{dtype}", 4 if dtype == "f32" else 2
        bpt = weight_bytes(cfg, elt) + kv_bytes(cfg, elt, pos)
        log(f"{label} {dtype}: build_sd export/compile/bundle/plan")
        plan, bundle = None, None
        try:
            ta = bsd_export_compile(f"chat-target-{dtype}", ck, dtype, None, "64")
            da = bsd_export_compile(f"chat-draft-{dtype}", draft, dtype, "1", "64")
            bundle = bsd_bundle(f"chat-{dtype}", da, ta, 4)
            if not a.build_only:
                plan = bsd_plan(bundle, draft, ck, tf, ctx.T, 12, chat=True, dtype=dtype)
                log(f"  plan: top gamma {plan['top_gamma']}, speculative rows gamma {plan['gamma']} "
                    f"(alpha {plan['alpha']:.3f}), drivers {plan['drivers']}")
        except StepFailed as e:
            bundle = f"build_sd build failed: {e}"
        gamma = plan["gamma"] if plan else 4
        drv = sum((["--cpu-driver", f"{k}={v}"] for k, v in (plan or {}).get("drivers", {}).items()), [])
        base = WORKERS + ["bsd", "--bundle", bundle, "--max-new", a.max_new_large] + ctx.common(pf, a.warmup_large)
        specs = [(f"bsd-chat-{dtype}", "target only", ["--gamma", 0]),
                 (f"bsd-chat-{dtype}-sync", "target only (local-sync)", ["--gamma", 0, "--driver", "local-sync"]),
                 (f"bsd-chat-{dtype}-spec", f"speculative g={gamma}", ["--gamma", gamma] + drv),
                 (f"bsd-chat-{dtype}-t08", "target only, sampled T=0.8", ["--gamma", 0, "--temperature", 0.8]),
                 (f"bsd-chat-{dtype}-sync-t08", "target only (local-sync), sampled T=0.8",
                  ["--gamma", 0, "--driver", "local-sync", "--temperature", 0.8]),
                 (f"bsd-chat-{dtype}-spec-t08", f"speculative g={gamma}, sampled T=0.8",
                  ["--gamma", gamma, "--temperature", 0.8] + drv)]
        for rid, mode, extra in specs:
            r = Row(rid, "chatspec", group, "build_sd (IREE, host)", label, dtype, mode, bytes_per_token=bpt,
                    note="the plan's CPU drivers: " + ", ".join(drv[1::2]) if drv and "spec" in rid else "")
            if isinstance(bundle, str):
                r.why = bundle
            else:
                r.start = worker(base + extra, rid)
            r.info["plan"] = plan
            ctx.rows.append(r)


def smol_prompts(ctx: Ctx, ck: Path, questions: list[str] | None = None, tag: str = "smollm2") -> Path:
    from build_sd.runtime.chat import ChatTemplate
    from tokenizers import Tokenizer
    tmpl = ChatTemplate(json.loads((ck / "tokenizer_config.json").read_text()))
    tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
    ids = [tok.encode(tmpl.render([{"role": "user", "content": q}]), add_special_tokens=False).ids
           for q in (questions or SMOL_QUESTIONS[:ctx.a.prompts_large])]
    return write_ids(WORK / f"prompts-{tag}-{len(ids)}.ids", ids)


SMOL_QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
                  "Explain what a CPU cache is in two sentences.", "Give me three tips for learning to cook.",
                  "How do plants make food?", "Write a short email asking for a meeting on Monday."]


def measure_all(ctx: Ctx, membw: Path) -> None:
    """Each group of rows in turn, its runs alternating, bandwidth measured around each."""
    bw = Bandwidth(membw, ctx.T)
    try:
        groups: dict[str, list[Row]] = {}
        for r in ctx.rows:
            groups.setdefault(r.group, []).append(r)
        for g, rs in groups.items():
            rounds = ctx.a.rounds or (5 if rs[0].section == "demo" else 3)
            log(f"measure group {g}: {len(rs)} rows x {rounds} rounds")
            measure(rs, rounds, bw, run_timeout=1800, load_timeout=1800)
    finally:
        bw.close()


def write_results(ctx: Ctx, t_start: float) -> None:
    """bench.json, bench.md and bench.png (bench-quick.* for --quick) under --out."""
    from report import write_report
    a = ctx.a
    res = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "versions": versions(ctx.llama), "threads": ctx.T, "quick": a.quick,
        "prompts": {"n": len(ctx.ids), "tokens": [len(p) for p in ctx.ids], "texts": ctx.texts},
        "max_new": {"demo": a.max_new, "large": a.max_new_large}, "demo_weights": ctx.demo["weights"],
        "plan": ctx.plan, "failures": ctx.failures, "bw_tolerance": a.bw_tolerance,
        "rows": [{k: v for k, v in r.__dict__.items() if k not in ("start",)} for r in ctx.rows],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(a.out)
    stem = "bench-quick" if a.quick else f"bench-{a.only.replace(',', '-')}" if a.only else "bench"
    write_report(res, out, stem)
    log(f"wrote {out / (stem + '.md')}, {stem}.png, {stem}.json in {res['wall_s'] / 60:.1f} min")


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    sections = set((a.only or ("demo" if a.quick else "demo,demo16,1b,150m")).split(","))
    ctx = Ctx(a, sections, a.prompts or (12 if a.quick else 24))
    for d in (WORK, BUILD, WORK / "logs"):
        d.mkdir(parents=True, exist_ok=True)
    membw = setup_tools(ctx)
    write_prompts(ctx)
    ctx.demo = M.demo_pair(WORK / "models")
    ctx.dcfg = json.loads((ctx.demo["target"] / "config.json").read_text())
    if sections & {"demo", "demo16"}:
        demo_bundle, gamma = build_demo(ctx)
        if "demo" in sections:
            demo_rows(ctx, demo_bundle, gamma)
        if "demo16" in sections:
            demo16_rows(ctx)
    if sections & {"1b", "150m"}:
        large_rows(ctx)
    if "smollm2" in sections:
        smollm2_rows(ctx)
    if "smollm2q" in sections:
        smollm2q_rows(ctx)
    for sec in ("1bq", "150mq"):
        if sec in sections:
            large_quant_rows(ctx, sec)
    if "chatspec" in sections:
        chatspec_rows(ctx)
    if a.build_only:
        for r in ctx.rows:
            if r.why:
                log(f"  {r.id}: {r.why}")
        log(f"built in {(time.perf_counter() - t_start) / 60:.1f} min; nothing measured (--build-only)")
        return 0
    measure_all(ctx, membw)
    write_results(ctx, t_start)
    return 0


def _ids(x):
    return x if isinstance(x, list) else ([] if x is None else [x])


if __name__ == "__main__":
    sys.exit(main())
