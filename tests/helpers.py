"""Tiny checkpoints made on the spot (no download anywhere) and CLI helpers for the tests."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "speculative decoding drafts a few tokens and verifies them in one call",
    "a small draft model proposes and a larger target model decides",
    "edge boards have an arm cpu and a mali gpu with shared memory",
    "hello world, this is a test of the tokenizer round trip",
]


def make_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 20, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_checkpoint(path: Path, kind: str = "llama", *, vocab=263, hidden=56, layers=3, heads=4,
                    kv_heads=2, ffn=100, seed=0, tie=False, init=0.2, dtype="float32",
                    tokenizer: Path | None = None, eos=2, **extra) -> Path:
    """A random HF checkpoint. init (std) is larger than HF's 0.02 so the logits are spread and
    greedy ties are rare."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = cfg_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=ffn,
                  tie_word_embeddings=tie, initializer_range=init, bos_token_id=1, eos_token_id=eos,
                  max_position_embeddings=512, **extra)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:          # random norms too, so a wrong norm weight cannot hide
                p.uniform_(0.5, 1.5)
            elif n.endswith("bias"):
                p.normal_(0, 0.1)
    model.to(getattr(torch, dtype)).save_pretrained(str(path))
    if tokenizer is not None:
        (path / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return path


def cli(*args) -> tuple[int, str, str]:
    """Run build-sd in-process; (exit code, stdout, stderr)."""
    from build_sd.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def run_json(bundle, prompt, **opts) -> dict:
    args = ["run", bundle, "--prompt", prompt, "--json"]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", v]
    rc, out, err = cli(*args)
    assert rc == 0, err
    return json.loads(out)


def cpu_bundle(out: Path, draft_art: Path, target_art: Path, gamma: int = 2) -> Path:
    """A bundle of the two artifacts, both models on the host CPU."""
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_art, "--place", "draft=host",
                     "--place", "target=host", "--gamma", gamma, "--out", out)
    assert rc == 0, err
    return out


def toy_pair(root: Path) -> tuple[Path, Path]:
    """Config-only draft (2 layers, d=256) and target (8 layers, d=1024) checkpoints: enough for
    the planner, which reads shapes only."""
    base = dict(model_type="llama", num_attention_heads=8, num_key_value_heads=2, vocab_size=8000)
    d, t = root / "d", root / "t"
    for p, cfg in ((d, dict(base, hidden_size=256, num_hidden_layers=2, intermediate_size=704)),
                   (t, dict(base, hidden_size=1024, num_hidden_layers=8, intermediate_size=2816))):
        p.mkdir()
        (p / "config.json").write_text(json.dumps(cfg))
    return d, t
