"""Export a model's functions in several processes at once (`export --jobs`).

Tracing is single-threaded Python: each function of a module is one torch.export trace and one
decomposition retrace of every layer (~0.4 s per decoder layer per function here), so a 30-layer
model's 9-11 functions take 1.5-3 minutes on one core while the others idle. The functions are
independent, so J processes each load the model and trace a share of them (round-robin over the
function table); the parent traces its own share meanwhile, then merges each subgraph's parts into
the module one process would have written (mlir_merge.py: byte-identical, so compile caches stay
valid). The children are fresh interpreters (PartsExport says why), never forks: torch and its
threads do not survive a fork.

The number of processes is bounded by the cores this process may use, the functions to trace, and
the memory: every process holds the whole model (its weights once, plus ~1.5 GB of torch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError

# below this many layer-functions (layers x functions; 0.4 s each here) the processes' start (~5 s:
# importing torch and turbine, loading the model) costs about what sharing the tracing saves
MIN_LAYER_FUNCTIONS = 48
PROCESS_OVERHEAD_BYTES = 3 << 29          # 1.5 GiB: torch, turbine and the traces of one process


def export_jobs(cfg, dtype: str, n_functions: int, jobs: int | None) -> int:
    """How many processes trace the functions: `jobs` if given (>= 1), else what the cores, the
    amount of tracing and the free memory allow."""
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {jobs}")
        return min(jobs, n_functions)
    if cfg.num_layers * n_functions < MIN_LAYER_FUNCTIONS:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per = cfg.num_parameters() * (2 if dtype == "f16" else 4) + PROCESS_OVERHEAD_BYTES
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = per * cpus
    return max(1, min(cpus, n_functions, free // per))


def shares(names: list[str], jobs: int) -> list[list[str]]:
    """Round-robin shares of the function names; the last (the parent's) is the smallest."""
    return [names[i::jobs] for i in range(jobs)]


class PartsExport:
    """Children tracing their shares in the background; `finish` traces the parent's share and merges.
    Start it before loading the model in the parent, so that the children's start overlaps it.

    A child is `python -m build_sd.builder.export_parts JOB` rather than a multiprocessing worker:
    spawn would re-import the caller's __main__, which breaks scripts that call export_model at top
    level; a child's output goes to a log file shown when it fails."""

    def __init__(self, jobs: int, fns: dict, specs: list, out: Path, load_args: dict, log):
        self.fns, self.specs, self.out, self.log = fns, specs, out, log
        self.shares = shares(list(fns), jobs)
        self.t0 = time.perf_counter()
        self.procs = []
        for k, share in enumerate(self.shares[:-1]):
            job = dict(load=load_args, fns={n: list(fns[n]) for n in share}, out=str(out), k=k,
                       specs=[[s.kind, s.start, s.end] for s in specs])
            with open(_log_path(out, k), "w") as err:
                self.procs.append(subprocess.Popen([sys.executable, "-m", __name__, json.dumps(job)],
                                                   stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT))
        log(f"tracing {len(fns)} functions in {jobs} processes ({', '.join(str(len(s)) for s in self.shares)} "
            "functions each; --jobs)")

    def finish(self, full, cfg, dtype: str) -> dict[str, bytes] | None:
        """Each subgraph's merged module text, by name; None if the parts could not be merged (the
        caller then traces in one process). A child's failure is raised here with its last lines."""
        from .export import export_mlir
        from .mlir_merge import MergeError, merge_modules
        k = len(self.shares) - 1
        mine = {n: self.fns[n] for n in self.shares[-1]}
        for spec in self.specs:
            export_mlir(full, spec, mine, cfg, dtype, _part_path(self.out, spec.name, k))
        for i, p in enumerate(self.procs):
            if p.wait() != 0:
                tail = _log_path(self.out, i).read_text(errors="replace").strip().splitlines()[-6:]
                raise UserError(f"export process {i + 1} of {len(self.shares)} failed (exit {p.returncode}; "
                                f"-9: killed, often for memory: --jobs 1 traces in this process only):\n"
                                + "\n".join(tail))
        try:
            merged = {}
            for spec in self.specs:
                texts = [_part_path(self.out, spec.name, i).read_text() for i in range(k + 1)]
                merged[spec.name] = merge_modules(texts, list(self.fns)).encode()
        except MergeError as e:
            self.log(f"warning: the parallel export's parts do not merge ({e}): tracing in one process")
            return None
        self.log(f"traced {len(self.fns)} functions x {len(self.specs)} modules in {len(self.shares)} processes "
                 f"in {time.perf_counter() - self.t0:.1f}s")
        return merged

    def close(self) -> None:
        """Stop the children that still run (an error or ^C in the parent) and remove the parts."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in list(self.out.glob(".*.part*.mlir")) + list(self.out.glob(".*.part*.log")):
            p.unlink(missing_ok=True)


def _part_path(out: Path, name: str, k: int) -> Path:
    return out / f".{name}.part{k}.mlir"


def _log_path(out: Path, k: int) -> Path:
    return out / f".export.part{k}.log"


def _trace_share(job: dict) -> None:
    """In a child: load the model as the parent did and write its share of every subgraph."""
    import warnings
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    from ..contract import ModelConfig, SubgraphSpec
    from .export import _load, export_mlir
    a = dict(job["load"])
    ckpt = Path(a.pop("ckpt"))
    scales_file = a.pop("scales_file")
    scales = None
    if scales_file:
        from .model.smooth import load_scales
        scales = load_scales(Path(scales_file))
    cfg = ModelConfig.from_hf(ckpt)
    full = _load(ckpt, cfg=cfg, log=lambda m: None, scales=scales, **a)
    fns = {n: tuple(v) for n, v in job["fns"].items()}
    for kind, start, end in job["specs"]:
        spec = SubgraphSpec(kind, start, end)
        export_mlir(full, spec, fns, cfg, a["dtype"], _part_path(Path(job["out"]), spec.name, job["k"]))


if __name__ == "__main__":
    _trace_share(json.loads(sys.argv[1]))
