"""Chat templates: the checkpoint's Jinja template (tokenizer_config.json's `chat_template`, carried in
the bundle) rendered as transformers' `apply_chat_template` renders it, then tokenized without adding
special tokens (the template writes them). Board side: jinja2, no torch, no transformers."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..errors import UserError


class ChatTemplate:
    """One checkpoint's chat format. `render(messages)` -> the prompt text; messages are
    [{"role": "system"|"user"|"assistant", "content": str}, ...]."""

    def __init__(self, config: dict, source: str = "tokenizer_config.json"):
        template = config.get("chat_template")
        if isinstance(template, list):          # named templates: [{"name": "default", "template": ...}]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str) or not template.strip():
            raise UserError(f"{source}: no chat_template (this model has no chat format; use --prompt)")
        self.source = source
        # the special tokens templates refer to by name (bos_token, eos_token, ...), as strings
        self.tokens = {k: _token_text(v) for k, v in config.items()
                       if k.endswith("_token") and _token_text(v) is not None}
        self._template = _compile(template, source)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2.exceptions import TemplateError
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.tokens)
        except TemplateError as e:
            raise UserError(f"{self.source}: the chat template failed: {e}") from None


def _token_text(v):
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):     # AddedToken as saved by transformers
        return v["content"]
    return None


def _compile(template: str, source: str):
    """The environment transformers renders chat templates in (trim_blocks, lstrip_blocks, loop
    controls, raise_exception, tojson, strftime_now), sandboxed: a template is data from a file."""
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        from jinja2.exceptions import TemplateError
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as e:
        raise UserError(f"{source}: the chat template does not parse: {e}") from None


def load_chat_template(bundle: Path, manifest) -> ChatTemplate:
    """The bundle's chat template, or a UserError saying the bundle has none."""
    import msgspec
    name = manifest.tokenizer_config
    if name is msgspec.UNSET:
        raise UserError(f"{bundle}: the bundle carries no tokenizer_config.json, so no chat template "
                        "(its checkpoint had none; use --prompt)")
    path = Path(bundle) / name
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    return ChatTemplate(config, str(path))


def messages_for(user: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": user}]


def encode_chat(session, messages: list[dict]) -> list[int]:
    """Token ids of the conversation rendered with the generation prompt (no special tokens added:
    the template writes BOS and the role markers itself, as apply_chat_template(tokenize=True) does)."""
    text = session.chat_template().render(messages, add_generation_prompt=True)
    ids = session.tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise UserError("the chat prompt encodes to no tokens")
    return ids
