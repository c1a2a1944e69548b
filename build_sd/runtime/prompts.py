"""Prompts: files of them, and a bundle's prompt template applied before encoding (no torch)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """One prompt per line; for a TSV its first column, without a header row such as the demo
    test split's `en<TAB>de<TAB>catalog`."""
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


def encode_as(session, text: str, chat: bool = False, system: str | None = None) -> list[int]:
    """`text` as a user message in the chat template (chat), else in the bundle's prompt template."""
    if chat:
        from .chat import encode_chat, messages_for
        return encode_chat(session, messages_for(text, system))
    return encode_prompt(session, text)


def encode_prompt(session, text: str, raw: bool = False) -> list[int]:
    """Token ids of `text` in the bundle's prompt template (raw: the text as given)."""
    template = "{prompt}" if raw else session.manifest.prompt_template
    ids = session.tokenizer.encode(template.replace("{prompt}", text), add_special_tokens=True).ids
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    return ids


def read_prompt_file(path: str | Path) -> str:
    """One prompt, the file's text exactly (a shell's $(cat FILE) would drop its trailing newlines,
    which a chat template's generation prompt ends with)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text ({e})") from None
    if not text:
        raise UserError(f"{p}: empty prompt file")
    return text
