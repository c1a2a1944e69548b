"""`build-sd run BUNDLE --prompt TEXT`: stream the text as it is accepted, then the metrics."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .lookup import MIN_NGRAM, NgramLookup
from .prompts import encode_as, encode_prompt
from .sampling import GreedyAcceptor, RejectionSampler, SamplingParams
from .session import open_bundle
from .speculative import generate


def make_acceptor(params: SamplingParams, seed: int):
    return GreedyAcceptor() if params.greedy else RejectionSampler(params, np.random.default_rng(seed))


def make_lookup(ngram: int, gamma: int, overlap: bool | None) -> NgramLookup | None:
    """--lookup N: n-gram lookup over the last N..2 tokens (0: off). It proposes up to gamma tokens
    and needs each verify's result before the next block, so it takes the sequential loop."""
    if not ngram:
        return None
    if ngram < MIN_NGRAM:
        raise UserError(f"--lookup {ngram}: the longest n-gram must be >= {MIN_NGRAM} (0 = off)")
    if gamma == 0:
        raise UserError("--lookup proposes up to gamma tokens: give a gamma >= 1 (0 is target only)")
    if overlap:
        raise UserError("--lookup runs the sequential loop: drop --overlap")
    return NgramLookup(ngram)


def run(bundle: str | Path, prompt: str | None = None, *, chat: str | None = None, system: str | None = None,
        max_new_tokens: int = 64, gamma: int | None = None,
        sampling: SamplingParams = SamplingParams(), seed: int = 0, as_json: bool = False, raw: bool = False,
        fallback: str | None = None, threads: int | None = None, cpu_driver: dict[str, str] | None = None,
        random_weights: int | None = None, overlap: bool | None = None,
        pin: dict[str, set[int]] | None = None, lookup: int = 0) -> dict:
    """Generate from `prompt` (in the bundle's prompt template), or from the user message `chat`
    (and `system`) in the model's chat template; prints the text as it streams and the metrics
    (stderr), or one JSON object (as_json). gamma None: the bundle's; 0: target only. Returns what
    --json prints. overlap: draft during verify (None: as the bundle says); pin: {role: cores};
    lookup: N of n-gram lookup drafting over the text's last N..2 tokens (0: off; runtime/lookup.py)."""
    if (prompt is None) == (chat is None):
        raise UserError("give one of --prompt, --prompt-file or --chat")
    if system is not None and chat is None:
        raise UserError("--system goes with --chat")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    session = open_bundle(bundle, load_draft=(gamma is None or gamma > 0), fallback=fallback, threads=threads,
                          cpu_driver=cpu_driver, random_weights=random_weights)
    gamma = session.gamma if gamma is None else gamma
    if gamma < 0 or gamma > session.max_gamma():
        raise UserError(f"--gamma {gamma}: this bundle verifies up to gamma {session.max_gamma()}")
    ids = encode_as(session, chat, True, system) if chat is not None else encode_prompt(session, prompt, raw=raw)
    lk = make_lookup(lookup, gamma, overlap)
    on, cpus = session.schedule(False if lk else overlap, pin)
    session.warmup()          # first calls pay one-time costs; keep them out of the metrics

    stream = _Stream(session.tokenizer, echo=not as_json)
    gen = generate(session.target, session.draft if gamma > 0 else None, ids, gamma,
                   make_acceptor(sampling, seed), max_new_tokens, session.eos_ids, stream.on_tokens,
                   log=lambda msg: print(msg, file=sys.stderr), overlap=on, cpus=cpus, lookup=lk)
    text = session.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    result = {"text": text, "token_ids": gen.token_ids, "prompt_tokens": len(ids),
              "metrics": gen.metrics.to_dict()}
    if as_json:
        print(json.dumps(result))
    else:
        print(stream.rest(text))
        print(format_metrics(result["metrics"]), file=sys.stderr)
    return result


class _Stream:
    """Writes the text of accepted tokens as they come (tokenizers' DecodeStream)."""

    def __init__(self, tokenizer, echo: bool):
        from tokenizers.decoders import DecodeStream
        self.tokenizer, self.echo = tokenizer, echo
        self.stream = DecodeStream(skip_special_tokens=True)
        self.pieces: list[str] = []

    def on_tokens(self, ids):
        if not self.echo:
            return
        for t in ids:
            piece = self.stream.step(self.tokenizer, t)
            if piece:
                self.pieces.append(piece)
                sys.stdout.write(piece)
        sys.stdout.flush()

    def rest(self, text: str) -> str:
        """What the stream held back (an incomplete UTF-8 tail) of the final text."""
        done = "".join(self.pieces)
        return text[len(done):] if text.startswith(done) else ""


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
        *([f"overlap: both models computing {f(m['overlap_fraction'])} of the decode time, "
           f"{m['wasted_draft_tokens']} speculative draft tokens discarded"] if m.get("overlap") else []),
        *([f"lookup: proposed {m['lookup_blocks']} of {m['iterations']} blocks, {m['lookup_accepted']} of their "
           f"tokens accepted"] if m.get("lookup_blocks") else []),
        f"per token: {m['device_calls_per_token']} device calls, {m['bytes_per_token']['up']:.0f} B up, "
        f"{m['bytes_per_token']['down']:.0f} B down",
    ]
    return "\n".join(lines)
