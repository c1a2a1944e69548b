"""Our export-friendly model equals transformers' LlamaForCausalLM / Qwen2ForCausalLM (f32)."""
import json

import pytest
import torch

from build_sd.builder.model.llama import Subgraph
from build_sd.builder.model.loader import load_checkpoint
from helpers import make_checkpoint

LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=32, rope_theta=50000.0)


def _hf(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()


def _ours(path, dtype="f32"):
    return Subgraph(load_checkpoint(path, dtype, 64), "whole")


def _logits(sub, tok, pos):
    with torch.no_grad():
        return sub(tok.int(), torch.tensor(pos, dtype=torch.int32))[1]


CASES = {
    "llama-gqa-untied": dict(kind="llama", vocab=97, hidden=40, layers=3, heads=4, kv_heads=2, ffn=72),
    "llama3-rope-tied-bias": dict(kind="llama", vocab=101, hidden=48, layers=2, heads=6, kv_heads=3,
                                  ffn=88, tie=True, attention_bias=True, rope_parameters=LLAMA3),
    "qwen2-bias": dict(kind="qwen2", vocab=89, hidden=36, layers=2, heads=3, kv_heads=1, ffn=60),
    "qwen2-tied": dict(kind="qwen2", vocab=77, hidden=32, layers=2, heads=4, kv_heads=4, ffn=50, tie=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path, name):
    ck = make_checkpoint(tmp_path / name, seed=3, **CASES[name])
    hf, ours = _hf(ck), _ours(ck)
    tok = torch.randint(0, CASES[name]["vocab"], (1, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tok).logits
    full = _logits(ours, tok, 0)
    assert (full - ref).abs().max().item() <= 1e-4
    # incremental: prefill 11, decode 1, verify 5, decode ... through the KV cache
    ours_inc = _ours(ck)
    parts, pos = [], 0
    for T in (11, 1, 5, 1, 5):
        parts.append(_logits(ours_inc, tok[:, pos:pos + T], pos))
        pos += T
    assert (torch.cat(parts, 1) - ref).abs().max().item() <= 1e-4


def test_rollback_overwrites_stale_rows(tmp_path):
    """After a rejected verify, re-running from an earlier pos gives the prefix model's logits."""
    ck = make_checkpoint(tmp_path / "m", vocab=50, hidden=32, layers=2, heads=4, kv_heads=2, ffn=40)
    hf, ours = _hf(ck), _ours(ck)
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, 50, (1, 12), generator=g)
    junk = torch.randint(0, 50, (1, 5), generator=g)
    _logits(ours, tok[:, :8], 0)
    _logits(ours, junk, 8)                       # 5 drafts, all "rejected"
    got = _logits(ours, tok[:, 8:12], 8)         # overwrites slots 8..11
    with torch.no_grad():
        ref = hf(tok).logits[:, 8:12]
    assert (got - ref).abs().max().item() <= 1e-4


def test_sharded_bf16_checkpoint_loads(tmp_path):
    ck = make_checkpoint(tmp_path / "bf16", vocab=64, hidden=32, layers=2, heads=4, kv_heads=2,
                         ffn=48, dtype="bfloat16")
    # re-save sharded: several safetensors files plus an index
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(ck), torch_dtype=torch.bfloat16)
    m.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    a = _ours(ck)
    b = _ours(tmp_path / "sharded")
    tok = torch.randint(0, 64, (1, 7))
    assert torch.equal(_logits(a, tok, 0), _logits(b, tok, 0))


def test_f16_close_to_f32(tmp_path):
    ck = make_checkpoint(tmp_path / "m", vocab=80, hidden=48, layers=2, heads=4, kv_heads=2, ffn=64)
    tok = torch.randint(0, 80, (1, 9), generator=torch.Generator().manual_seed(2))
    l32 = _logits(_ours(ck, "f32"), tok, 0)
    l16 = _logits(_ours(ck, "f16"), tok, 0)
    assert l16.dtype == torch.float32
    assert (l16 - l32).abs().max().item() <= 2e-2 * max(1.0, l32.abs().max().item())
