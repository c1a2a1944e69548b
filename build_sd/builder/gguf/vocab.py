"""A GGUF's tokenizer metadata -> a `tokenizers` Tokenizer (tokenizer.json) that splits text the way
llama.cpp does for that vocabulary.

Two tokenizer models, as `tokenizer.ggml.model` names them:
- `gpt2`: byte-level BPE. The vocabulary and merges are stored as they are; how text is cut into
  words before merging is not: llama.cpp picks its regexes from `tokenizer.ggml.pre`, so each
  name we accept maps to llama.cpp's regexes (src/llama-vocab.cpp, `llm_tokenizer_bpe`), applied
  one after the other, as llama.cpp's `unicode_regex_split` does. An unknown name is an error: a
  wrong guess tokenizes differently and only shows as worse text.
- `llama`: SentencePiece BPE (Llama 2, Mistral, TinyLlama): scores instead of merges, "▁" for a
  space, a space prefixed to the text (`tokenizer.ggml.add_space_prefix`, default on), bytes
  outside the vocabulary as <0xXX> tokens. Merges are recovered from the scores: SentencePiece
  merges the pair whose result scores highest, which is BPE with merges ranked by that score.
Tokens the file marks CONTROL (3) become special added tokens (matched whole in any text, e.g. a
chat template's <|im_start|>), USER_DEFINED (4) plain added tokens; BOS is prepended when the file
says `tokenizer.ggml.add_bos_token` (for `llama`, also when it says nothing: llama.cpp's default).
"""
from __future__ import annotations

from ...errors import UserError
from .reader import field

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (llama.cpp's regexes in order, ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "llama-bpe": ((_LLAMA3,), True), "llama3": ((_LLAMA3,), True), "llama-v3": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False), "smaug-bpe": ((_LLAMA3,), False),
    "qwen2": ((_QWEN2,), False), "stablelm2": ((_QWEN2,), False), "deepseek-r1-qwen": ((_QWEN2,), False),
    "smollm": ((r"\p{N}", _GPT2), False), "starcoder": ((r"\p{N}", _GPT2), False),
    "refact": ((r"\p{N}", _GPT2), False), "codeshell": ((r"\p{N}", _GPT2), False),
    "gpt-2": ((_GPT2,), False), "gpt2": ((_GPT2,), False), "mpt": ((_GPT2,), False), "olmo": ((_GPT2,), False),
}
CONTROL, USER_DEFINED = 3, 4


def build_tokenizer(reader, source: str):
    """The file's tokenizer as a `tokenizers.Tokenizer`; UserError for what it cannot express."""
    model = field(reader, "tokenizer.ggml.model")
    tokens = field(reader, "tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise UserError(f"{source}: no tokenizer in the file (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise UserError(f"{source}: {len(types)} token types for {len(tokens)} tokens")
    if model == "gpt2":
        tok = _byte_level(reader, tokens, source)
    elif model == "llama":
        tok = _sentencepiece(reader, tokens, source)
    else:
        raise UserError(f"{source}: unsupported tokenizer model {model!r} (supported: gpt2, llama)")
    _add_special(tok, tokens, types)
    _bos(tok, reader, tokens, default=(model == "llama"))
    return tok


def _byte_level(reader, tokens: list[str], source: str):
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UserError(f"{source}: unknown pre-tokenizer {pre!r} for a gpt2 vocabulary (known: "
                        f"{', '.join(sorted(PRE_TOKENIZERS))}); guessing would tokenize differently from llama.cpp")
    merges = field(reader, "tokenizer.ggml.merges")
    if not merges:
        raise UserError(f"{source}: a gpt2 tokenizer without tokenizer.ggml.merges")
    regexes, ignore_merges = PRE_TOKENIZERS[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(BPE(vocab, pairs, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(reader, tokens: list[str], source: str):
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    scores = field(reader, "tokenizer.ggml.scores")
    merges = field(reader, "tokenizer.ggml.merges")
    if not merges and (not scores or len(scores) != len(tokens)):
        raise UserError(f"{source}: a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores or merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges] if merges else _merges_from_scores(tokens, scores)
    unk = field(reader, "tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(BPE(vocab, pairs, unk_token=None if unk is None else tokens[int(unk)],
                        fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if field(reader, "tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    strip = [decoders.Strip(" ", 1, 0)] if field(reader, "tokenizer.ggml.add_space_prefix", True) else []
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    return tok


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a token, ranked by that token's score (best first),
    then by the left part's id and the right part's id (stable, as SentencePiece breaks ties)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for merged, i in vocab.items():
        for k in range(1, len(merged)):
            a, b = merged[:k], merged[k:]
            if a in vocab and b in vocab:
                found.append((-scores[i], vocab[a], vocab[b], a, b))
    found.sort()
    return [(a, b) for _, _, _, a, b in found]


def _add_special(tok, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    plain = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if plain:
        tok.add_tokens(plain)


def _bos(tok, reader, tokens: list[str], default: bool) -> None:
    """Prepend BOS on encode(add_special_tokens=True) when llama.cpp would."""
    from tokenizers.processors import ByteLevel, TemplateProcessing
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    if bos is not None and field(reader, "tokenizer.ggml.add_bos_token", default):
        b = tokens[int(bos)]
        tok.post_processor = TemplateProcessing(single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, int(bos))])
    elif field(reader, "tokenizer.ggml.model") == "gpt2":
        tok.post_processor = ByteLevel(trim_offsets=False)


def adds_bos(reader) -> bool:
    model = field(reader, "tokenizer.ggml.model")
    return field(reader, "tokenizer.ggml.bos_token_id") is not None and bool(
        field(reader, "tokenizer.ggml.add_bos_token", model == "llama"))


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (bytes_to_unicode), which byte-level vocabularies spell in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))
