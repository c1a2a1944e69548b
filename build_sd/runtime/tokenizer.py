"""Tokenizer loading and the draft/target agreement check (tokenizers library, no torch)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer
    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library raises plain Exception on bad JSON
        raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:160]})") from None


def check_pair(draft_tok, target_tok, draft_vocab: int, target_vocab: int) -> None:
    """Draft and target must share the token space, and each model's embedding must cover it.

    Speculative decoding compares token ids across the two models, so the same id must mean the
    same string in both; padded embedding tables (vocab_size > tokenizer size) are normal.
    """
    nd = draft_tok.get_vocab_size(with_added_tokens=True)
    nt = target_tok.get_vocab_size(with_added_tokens=True)
    if nd != nt:
        raise UserError(f"draft and target tokenizers differ in size: {nd} vs {nt} tokens")
    for i in range(nt):
        a, b = draft_tok.id_to_token(i), target_tok.id_to_token(i)
        if a != b:
            raise UserError(f"draft and target tokenizers differ at id {i}: {a!r} vs {b!r}")
    check_covers(target_tok, target_vocab, "target")
    check_covers(draft_tok, draft_vocab, "draft")


def check_covers(tok, vocab_size: int, who: str) -> None:
    n = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size < n:
        raise UserError(f"the {who} model's vocab_size ({vocab_size}) does not cover its "
                        f"tokenizer ({n} tokens)")
