"""`build-sd chat BUNDLE`: a multi-turn conversation that keeps both models' KV caches across turns.

Each turn renders the whole conversation with the chat template, but tokenizes and prefills only
what is new: the text after what the caches already hold (the last answer's closing marker, the
new user message, the generation prompt). The answers stay in the caches as the ids that were
generated, never re-tokenized. Where a template renders the history differently from what was
generated (it may trim or rewrite earlier turns), the turn falls back to the longest common
prefix of token ids and prefills from there: slower, never wrong.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from ..errors import UserError
from .speculative import Generation, generate


class ContextFull(Exception):
    """The next turn does not fit the bundle's context."""


_SENTINEL = "\x00build_sd-answer\x00"     # stands for the last answer when rendering what follows it


@dataclass
class Conversation:
    session: object                      # runtime.session.Session
    gamma: int
    acceptor: object
    max_new_tokens: int = 256
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)      # the conversation's tokens so far
    cached: int = 0                                   # leading `ids` both caches hold
    last_prompt: str = ""                             # the last turn's rendered prompt text
    last_eos: int | None = None                       # the EOS id the last answer ended with
    overlap: bool | None = None                       # None: as the bundle says (Session.schedule)
    pin: dict | None = None                           # {role: cores} for the overlapped loop
    lookup: object = None                             # NgramLookup (runtime/lookup.py) or None

    def __post_init__(self):
        self.template = self.session.chat_template()
        self.reset()

    @property
    def context(self) -> int:
        s = self.session
        return min(s.target.max_context, s.draft.max_context) if self.gamma > 0 and s.draft else s.target.max_context

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        self.ids, self.cached, self.last_prompt, self.last_eos = [], 0, "", None

    def _delta(self, user: str) -> str | None:
        """The text after the last answer up to this turn's generation prompt (its closing marker, the
        user message, the generation prompt), found by rendering a stand-in for the answer; None when
        the template does not render the history as it was generated."""
        if not self.ids:
            return None
        history = self.messages[:-1] + [{"role": "assistant", "content": _SENTINEL}, {"role": "user", "content": user}]
        text = self.template.render(history, add_generation_prompt=True)
        head = self.last_prompt + _SENTINEL
        if not text.startswith(head):
            return None
        delta = text[len(head):]
        if self.last_eos is not None:        # the answer's EOS id is already in `ids`
            eos_text = self.session.tokenizer.decode([self.last_eos], skip_special_tokens=False)
            if not eos_text or not delta.startswith(eos_text):
                return None
            delta = delta[len(eos_text):]
        return delta

    def turn_ids(self, user: str) -> tuple[list[int], int]:
        """(the prompt of this turn: the conversation's ids plus the new ones, tokens already cached)."""
        tok = self.session.tokenizer
        delta = self._delta(user)
        if delta is not None:
            prompt = self.ids + tok.encode(delta, add_special_tokens=False).ids
            past = self.cached
        else:                                # re-render everything; reuse the ids that still agree
            rendered = self.template.render(self.messages + [{"role": "user", "content": user}],
                                            add_generation_prompt=True)
            prompt = tok.encode(rendered, add_special_tokens=False).ids
            past = 0
            for a, b in zip(prompt, self.ids[:self.cached]):
                if a != b:
                    break
                past += 1
        return prompt, min(past, len(prompt) - 1)

    def say(self, user: str, on_tokens=None) -> tuple[Generation, list[int], int]:
        """One turn: returns (the generation, the prompt ids it continued, how many were reused)."""
        prompt, past = self.turn_ids(user)
        if len(prompt) + 1 > self.context:
            raise ContextFull(f"the conversation would take {len(prompt)} of the bundle's {self.context} tokens")
        s = self.session
        on, cpus = s.schedule(False if self.lookup else self.overlap, self.pin)
        gen = generate(s.target, s.draft if self.gamma > 0 else None, prompt, self.gamma, self.acceptor,
                       min(self.max_new_tokens, self.context - len(prompt)), s.eos_ids, on_tokens, past=past,
                       overlap=on, cpus=cpus, lookup=self.lookup, settle_draft=True)
        self.last_prompt = self.template.render(self.messages + [{"role": "user", "content": user}],
                                                add_generation_prompt=True)
        self.last_eos = gen.token_ids[-1] if gen.token_ids and gen.token_ids[-1] in set(s.eos_ids) else None
        answer = s.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        self.ids = prompt + gen.token_ids
        self.cached = gen.cached
        return gen, prompt, past


def chat(bundle, *, system: str | None = None, max_new_tokens: int = 256, gamma: int | None = None,
         sampling=None, seed: int = 0, as_json: bool = False, fallback: str | None = None,
         threads: int | None = None, cpu_driver: dict[str, str] | None = None, stdin=None,
         overlap: bool | None = None, pin: dict | None = None, lookup: int = 0) -> int:
    """Read user turns from stdin (one line each; /reset starts over, /quit or end of input stops),
    stream each answer, and a one-line summary per turn on stderr (as_json: one JSON object per turn)."""
    from .run import _Stream, make_acceptor, make_lookup
    from .sampling import SamplingParams
    from .session import open_bundle
    stdin = stdin or sys.stdin
    session = open_bundle(bundle, load_draft=(gamma is None or gamma > 0), fallback=fallback, threads=threads,
                          cpu_driver=cpu_driver)
    gamma = session.gamma if gamma is None else gamma
    if gamma < 0 or gamma > session.max_gamma():
        raise UserError(f"--gamma {gamma}: this bundle verifies up to gamma {session.max_gamma()}")
    conv = Conversation(session, gamma, make_acceptor(sampling or SamplingParams(), seed), max_new_tokens, system,
                        overlap=overlap, pin=pin, lookup=make_lookup(lookup, gamma, overlap))
    session.warmup()
    interactive = stdin.isatty() and not as_json
    if interactive:
        print(f"chat: {bundle} (context {conv.context} tokens, gamma {gamma}); /reset starts over, /quit ends",
              file=sys.stderr)
    turn = 0
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        user = line.rstrip("\n")
        if user.strip() in ("/quit", "/exit"):
            break
        if user.strip() == "/reset":
            conv.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if not user.strip():
            continue
        stream = _Stream(session.tokenizer, echo=not as_json)
        try:
            gen, prompt, past = conv.say(user, stream.on_tokens)
        except ContextFull as e:
            print(f"context full: {e}; type /reset to start over", file=sys.stderr)
            continue
        turn += 1
        m = gen.metrics.to_dict()
        if as_json:
            print(json.dumps({"turn": turn, "prompt_ids": prompt, "reused": past, "token_ids": gen.token_ids,
                              "text": session.tokenizer.decode(gen.token_ids, skip_special_tokens=True),
                              "stop_reason": m["stop_reason"], "metrics": m}), flush=True)
        else:
            print(stream.rest(session.tokenizer.decode(gen.token_ids, skip_special_tokens=True)), flush=True)
            note = "; the context is full: /reset to start over" if m["stop_reason"] == "context" else ""
            print(f"[turn {turn}: prefilled {len(prompt) - past} new tokens (reused {past}), "
                  f"{len(gen.token_ids)} generated, {m['tokens_per_s'] or 0:.1f} tok/s, "
                  f"alpha {m['alpha'] if m['alpha'] is not None else '-'}, "
                  f"{len(conv.ids)}/{conv.context} tokens used{note}]", file=sys.stderr)
    return 0
