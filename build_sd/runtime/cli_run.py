"""`build-sd run BUNDLE --prompt TEXT`: stream the text as it is accepted, then the metrics."""
from __future__ import annotations

import json
import sys

import numpy as np

from ..errors import UserError
from .sampling import GreedyAcceptor, RejectionSampler, SamplingParams
from .session import open_bundle
from .speculative import generate


def make_acceptor(params: SamplingParams, seed: int):
    return GreedyAcceptor() if params.greedy else RejectionSampler(params, np.random.default_rng(seed))


def read_prompts(path, limit: int | None = None) -> list[str]:
    """One prompt per line; for a TSV its first column, without a header row such as the demo
    test split's `en<TAB>de<TAB>catalog`."""
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file not found: {p}")
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text ({e})") from None
    if lines and "\t" in lines[0] and lines[0].split("\t")[0].strip().lower() in ("en", "prompt", "text", "source"):
        lines = lines[1:]
    prompts = [ln.split("\t")[0] for ln in lines][:limit or None]
    if not prompts:
        raise UserError(f"{p}: no prompts in it")
    return prompts


def encode_prompt(session, text: str, raw: bool = False) -> list[int]:
    template = "{prompt}" if raw else session.manifest.get("prompt_template", "{prompt}")
    ids = session.tokenizer.encode(template.replace("{prompt}", text), add_special_tokens=True).ids
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    return ids


def run_cli(a) -> int:
    if getattr(a, "threads", None) is not None and a.threads < 1:
        raise UserError(f"--threads must be >= 1, got {a.threads}")
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    params = SamplingParams(a.temperature, a.top_k, a.top_p)
    session = open_bundle(a.bundle, load_draft=(a.gamma is None or a.gamma > 0),
                          fallback=getattr(a, "fallback", None), threads=getattr(a, "threads", None),
                          cpu_driver=getattr(a, "cpu_driver", None))
    gamma = session.gamma if a.gamma is None else a.gamma
    if gamma < 0 or gamma > session.max_gamma():
        raise UserError(f"--gamma {gamma}: this bundle verifies up to gamma {session.max_gamma()}")
    prompt = encode_prompt(session, a.prompt, raw=getattr(a, "raw", False))
    session.warmup()          # first calls pay one-time costs; keep them out of the metrics

    from tokenizers.decoders import DecodeStream
    stream = DecodeStream(skip_special_tokens=True)
    echo = not a.json
    streamed = []

    def on_tokens(ids):
        if echo:
            for t in ids:
                piece = stream.step(session.tokenizer, t)
                if piece:
                    streamed.append(piece)
                    sys.stdout.write(piece)
            sys.stdout.flush()

    log = (lambda msg: print(msg, file=sys.stderr))
    gen = generate(session.target, session.draft if gamma > 0 else None, prompt, gamma,
                   make_acceptor(params, a.seed), a.max_new_tokens, session.eos_ids, on_tokens, log)
    text = session.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    metrics = gen.metrics.to_dict()
    if a.json:
        print(json.dumps({"text": text, "token_ids": gen.token_ids, "prompt_tokens": len(prompt),
                          "metrics": metrics}))
    else:
        done = "".join(streamed)   # the stream holds back an incomplete UTF-8 tail: flush it
        print(text[len(done):] if text.startswith(done) else "")
        print(format_metrics(metrics), file=sys.stderr)
    return 0


def format_metrics(m: dict) -> str:
    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)
    ts = m["time_split_ms"]
    lines = [
        f"gamma {m['gamma']}  tokens/s {f(m['tokens_per_s'], '{:.1f}')}  ttft {f(m['ttft_ms'], '{:.1f}')} ms  "
        f"stop: {m['stop_reason']}",
        f"alpha {f(m['alpha'])}  acceptance_rate {f(m['acceptance_rate'])}  mean_accepted "
        f"{f(m['mean_accepted'], '{:.2f}')}  tokens/iteration {f(m['tokens_per_iteration'], '{:.2f}')}  "
        f"iterations {m['iterations']}",
        "per-position acceptance: " + " ".join(f(x, "{:.2f}") for x in m["per_position_acceptance"]),
        f"time: draft {f(ts['draft'], '{:.1f}')} ms, verify {f(ts['verify'], '{:.1f}')} ms, transfer "
        f"{f(ts['transfer'], '{:.1f}')} ms, host {f(ts['host'], '{:.1f}')} ms (share {f(m['host_share'])})",
        f"per token: {m['device_calls_per_token']} device calls, {m['bytes_per_token']['up']:.0f} B up, "
        f"{m['bytes_per_token']['down']:.0f} B down",
    ]
    return "\n".join(lines)
