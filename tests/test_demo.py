"""The embedded English->German pair: it loads like any checkpoint, speculates exactly, and
`build-sd demo` runs end to end (few sentences, few tokens)."""
import json

import pytest

from build_sd.demo import DRAFT_DIR, TARGET_DIR


def test_committed_pair_is_a_valid_hf_pair():
    from build_sd.contract.config import ModelConfig
    from build_sd.runtime.tokenizer import check_pair, load_tokenizer
    t, d = ModelConfig.from_hf(TARGET_DIR), ModelConfig.from_hf(DRAFT_DIR)
    assert t.model_type == d.model_type == "llama" and d.tie_word_embeddings
    assert d.num_parameters() * 6 <= t.num_parameters()
    check_pair(load_tokenizer(DRAFT_DIR / "tokenizer.json"), load_tokenizer(TARGET_DIR / "tokenizer.json"),
               d.vocab_size, t.vocab_size)
    assert 2 in t.eos_token_ids
    size = sum(f.stat().st_size for p in (TARGET_DIR, DRAFT_DIR) for f in p.glob("*.safetensors"))
    assert size < 80e6


@pytest.mark.slow
def test_demo_smoke():
    """Build (cached in artifacts/demo, shared with `make demo`), translate two sentences."""
    from conftest import ROOT
    from build_sd.demo.run import run_demo
    summary = run_demo(ROOT / "artifacts" / "demo", sentences=2, max_new_tokens=16)
    assert summary["alpha"] is not None and 0.0 <= summary["alpha"] <= 1.0
    assert summary["tokens_per_s_speculative"] > 0 and summary["tokens_per_s_target_only"] > 0
    saved = json.loads((ROOT / "artifacts" / "demo" / "demo_summary.json").read_text())
    assert saved == summary


def test_demo_both_says_why_the_chat_pair_is_skipped(tmp_path, monkeypatch):
    """`make demo` runs `demo --pair both`: without a chat draft the translation still runs, then one line."""
    import build_sd.demo.run as run
    from helpers import cli
    monkeypatch.setattr(run, "run_demo", lambda **kw: {"ran": kw["out_dir"]})   # the translation demo: tested above
    rc, out, err = cli("demo", "--pair", "both", "--draft", tmp_path / "none")
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("the chat pair is skipped: its draft is missing")
    rc, out, err = cli("demo", "--draft", tmp_path / "none")
    assert rc == 2 and "--draft goes with --pair chat" in err
