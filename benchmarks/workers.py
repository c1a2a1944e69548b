"""Benchmark workers: one process per system, loaded and warmed once, then timed on request.

Protocol (the same for bsd-llama, the C++ llama.cpp driver): the worker prints one JSON line
{"ready": true, ...} once loaded and warmed up (every prompt generated once, untimed); then for
each line "run" on stdin it generates every prompt once and prints one JSON line
{"tokens": N, "decode_s": T, "outputs": [[ids...], ...], ...}; "quit" or EOF ends it.

Timing is build_sd's (build_sd/runtime/speculative.py): prefill and the first token it yields
are excluded; decode_s runs from the first token to the last; tokens = tokens after the first.

    python benchmarks/workers.py bsd  --bundle B --prompts IDS --gamma G ...
    python benchmarks/workers.py hf   --model CKPT [--draft CKPT --gamma G] --prompts IDS ...
    benchmarks/.venv-et/bin/python benchmarks/workers.py et --pte FILE --prompts IDS ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_prompts(path: str) -> list[list[int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        ids = [int(x) for x in line.split(",") if x.strip()]
        if ids:
            out.append(ids)
    return out


WARMUP = [0]     # prompts generated untimed before "ready" (0 = all of them)


def serve(gen_one, prompts, info: dict) -> None:
    """Warm up (every prompt once, or the first --warmup ones), announce, then answer 'run' lines."""
    t = time.perf_counter()
    for p in prompts[:WARMUP[0] or len(prompts)]:
        gen_one(p)
    info = dict(info, ready=True, warmup_s=round(time.perf_counter() - t, 3))
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            continue
        res = {"tokens": 0, "decode_s": 0.0, "prefill_s": 0.0, "accepted": 0, "rejected": 0,
               "iterations": 0, "host_s": 0.0, "outputs": []}
        for p in prompts:
            r = gen_one(p)
            for k in ("tokens", "decode_s", "prefill_s", "accepted", "rejected", "iterations", "host_s"):
                res[k] += r.get(k, 0)
            res["outputs"].append(r["ids"])
        print(json.dumps(res), flush=True)


# ---- build_sd ------------------------------------------------------------------------------
def bsd(a) -> None:
    import iree.runtime as rt
    # IREE's local-task worker count (one per core by default): set before any device exists
    rt.flags.parse_flags(f"--task_topology_group_count={a.threads}")
    sys.path.insert(0, str(ROOT))
    from build_sd.cli import cpu_drivers
    import numpy as np

    from build_sd.runtime.sampling import GreedyAcceptor, RejectionSampler, SamplingParams
    from build_sd.runtime.session import open_bundle
    from build_sd.runtime.speculative import generate

    # --driver (experiments): every model's llvm-cpu modules under that driver; --cpu-driver
    # entries override it per role (build-sd run's parsing: [ROLE=]local-task|local-sync)
    drivers = cpu_drivers(([a.driver] if a.driver else []) + (a.cpu_driver or []))
    t = time.perf_counter()
    s = open_bundle(a.bundle, load_draft=a.gamma > 0, check_hashes=False, cpu_driver=drivers)
    load_s = time.perf_counter() - t
    s.warmup()
    eos = () if a.ignore_eos else s.eos_ids
    draft = s.draft if a.gamma > 0 else None

    calls = [0]

    def acceptor():
        # sampled: exact speculative sampling, a seeded generator per generation (run k, prompt i)
        if not a.temperature:
            return GreedyAcceptor()
        calls[0] += 1
        return RejectionSampler(SamplingParams(temperature=a.temperature, top_p=a.top_p),
                                np.random.default_rng([a.seed, calls[0]]))

    def gen_one(p):
        g = generate(s.target, draft, p, a.gamma, acceptor(), a.max_new, eos)
        m = g.metrics
        return {"ids": [int(x) for x in g.token_ids], "tokens": m.emitted, "decode_s": m.decode_s,
                "prefill_s": m.prefill_s, "accepted": m.accepted, "rejected": m.rejected,
                "iterations": m.iterations, "host_s": m.host_s}

    serve(gen_one, read_prompts(a.prompts), {"load_s": round(load_s, 3)})


# ---- PyTorch / transformers ----------------------------------------------------------------
class _Clock:
    """A generate() streamer that timestamps the tokens: the first put() is the prompt."""

    def __init__(self):
        self.puts = []

    def put(self, value):
        self.puts.append((time.perf_counter(), int(value.numel())))

    def end(self):
        self.t_end = time.perf_counter()


def hf(a) -> None:
    import torch
    torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    t = time.perf_counter()
    kw = dict(dtype=dt, attn_implementation=a.attn)
    model = AutoModelForCausalLM.from_pretrained(a.model, **kw).eval()
    draft = AutoModelForCausalLM.from_pretrained(a.draft, **kw).eval() if a.draft else None
    load_s = time.perf_counter() - t
    eos = None if a.ignore_eos else model.config.eos_token_id
    for m in (model, draft):
        if m is not None and a.ignore_eos:
            m.generation_config.eos_token_id = None
    if draft is not None:
        # a fixed draft length, as build_sd and llama.cpp use (HF's default adapts it)
        draft.generation_config.num_assistant_tokens = a.gamma
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0

    def gen_one(p):
        ids = torch.tensor([p], dtype=torch.long)
        clock = _Clock()
        kw = dict(max_new_tokens=a.max_new, do_sample=False, streamer=clock, eos_token_id=eos,
                  pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0)
        if draft is not None:
            kw["assistant_model"] = draft
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        new = out[0, len(p):].tolist()
        # puts[0] = the prompt, puts[1] = the first emitted token(s): decode starts after it
        first_t, first_n = clock.puts[1] if len(clock.puts) > 1 else (clock.t_end, len(new))
        return {"ids": new, "tokens": len(new) - first_n, "decode_s": clock.t_end - first_t,
                "prefill_s": first_t - clock.puts[0][0]}

    serve(gen_one, read_prompts(a.prompts), {"load_s": round(load_s, 3), "torch": torch.__version__})


# ---- ExecuTorch ----------------------------------------------------------------------------
def et(a) -> None:
    import torch
    torch.set_num_threads(a.threads)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    portable_lib._unsafe_reset_threadpool(a.threads)     # XNNPACK's pool (default: one per core)
    t = time.perf_counter()
    rt = Runtime.get()
    prog = rt.load_program(a.pte)
    method = prog.load_method("forward")
    load_s = time.perf_counter() - t
    eos = set() if a.ignore_eos else set(int(x) for x in a.eos.split(",") if x)

    def last_argmax(logits) -> int:
        x = logits[0, -1] if logits.dim() == 3 else logits[-1]
        return int(torch.argmax(x).item())

    def step(tokens, pos):
        tok = torch.tensor([tokens], dtype=torch.long)
        cp = torch.arange(pos, pos + len(tokens), dtype=torch.long)
        return method.execute([tok, cp])[0]

    def gen_one(p):
        t0 = time.perf_counter()
        # prefill token by token when the exported graph takes one token (static shapes)
        logits = None
        if a.prefill_one:
            for i, x in enumerate(p):
                logits = step([x], i)
        else:
            logits = step(p, 0)
        nxt = last_argmax(logits)
        ids = [nxt]
        t1 = time.perf_counter()
        pos = len(p)
        while len(ids) < a.max_new and nxt not in eos:
            logits = step([nxt], pos)
            pos += 1
            nxt = last_argmax(logits)
            ids.append(nxt)
        t2 = time.perf_counter()
        return {"ids": ids, "tokens": len(ids) - 1, "decode_s": t2 - t1, "prefill_s": t1 - t0}

    import importlib.metadata as md
    serve(gen_one, read_prompts(a.prompts), {"load_s": round(load_s, 3), "executorch": md.version("executorch"),
                                            "threads": portable_lib._threadpool_get_thread_count()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("system", choices=["bsd", "hf", "et"])
    ap.add_argument("--prompts", required=True, help="token ids, one prompt per line, comma-separated")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--warmup", type=int, default=0, help="warm up on the first N prompts (0: all)")
    ap.add_argument("--gamma", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0, help="bsd: 0 greedy, else exact speculative sampling")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bundle")
    ap.add_argument("--model")
    ap.add_argument("--draft")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa, eager)")
    ap.add_argument("--driver", help="bsd: every model's CPU modules under this driver, local-task|local-sync "
                    "(experiments; --cpu-driver overrides it per role)")
    ap.add_argument("--cpu-driver", action="append", help="bsd: [ROLE=]local-sync|local-task (build-sd run's)")
    ap.add_argument("--pte")
    ap.add_argument("--eos", default="2")
    ap.add_argument("--prefill-one", action="store_true", help="ET: the graph takes one token at a time")
    a = ap.parse_args(argv)
    WARMUP[0] = a.warmup
    {"bsd": bsd, "hf": hf, "et": et}[a.system](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
