"""The demo pair's tokenizer and prompt format (one place for both).

Tokenizer: byte-level BPE (the ``tokenizers`` library, GPT-2 style pre-tokenizer and
decoder, no prefix space), vocabulary ``VOCAB_SIZE`` = 4096, trained on the English and
the German side of the train split. Byte-level means every string round-trips exactly
(umlauts, ß, »«, …). Special tokens: ``<pad>`` = 0, ``<s>`` = 1 (bos), ``</s>`` = 2 (eos).
No post-processor: the tokenizer adds nothing by itself.

Prompt format (what the models were trained on)::

    ids = encode(prompt(english))          # "<s>" + english + " => "
    ids += encode(german) + [EOS_ID]       # training only; at inference the model writes these

i.e. the prompt is tokenized on its own (so it always ends with the same " " token after
" =>") and the German is tokenized on its own, without a leading space. At inference:
encode ``prompt(english)``, generate until ``EOS_ID`` (``</s>``), and decode the generated
ids with ``skip_special_tokens=True``: that is the translation, with no cleanup needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 4096
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = [PAD, BOS, EOS]
SEPARATOR = " => "
TOKENIZER_FILE = "tokenizer.json"


def prompt(english: str) -> str:
    """The text the models read before writing the German translation."""
    return BOS + english + SEPARATOR


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE tokenizer trained on texts (deterministic for a given input)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    for tid, t in zip((PAD_ID, BOS_ID, EOS_ID), SPECIAL_TOKENS):
        assert tok.token_to_id(t) == tid, (t, tok.token_to_id(t))
    return tok


def train_from_corpus(pairs=None, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """The tokenizer trained on both languages of the train split."""
    if pairs is None:
        from build_sd.demo.corpus import load_split

        pairs = load_split("train")
    texts = [p.en for p in pairs] + [p.de for p in pairs]
    return train_tokenizer(texts, vocab_size)


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load tokenizer.json from a file or a model directory."""
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    return Tokenizer.from_file(str(p))


def encode_prompt(tok: Tokenizer, english: str) -> list[int]:
    return tok.encode(prompt(english), add_special_tokens=False).ids


def encode_pair(tok: Tokenizer, english: str, german: str) -> tuple[list[int], int]:
    """Training ids for one pair and the index of the first German token (the loss
    covers ids[start:], i.e. the German and the closing </s>)."""
    p = encode_prompt(tok, english)
    g = tok.encode(german, add_special_tokens=False).ids
    return p + g + [EOS_ID], len(p)


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Generated ids -> text; stops at the first </s> and drops special tokens."""
    out = []
    for i in ids:
        if i == EOS_ID:
            break
        out.append(int(i))
    return tok.decode(out, skip_special_tokens=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="train the demo tokenizer on the train split")
    ap.add_argument("out", help="output tokenizer.json")
    args = ap.parse_args()
    t = train_from_corpus()
    t.save(args.out)
    print(f"wrote {args.out} (vocab {t.get_vocab_size()})")
