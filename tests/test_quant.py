"""W8A8 (export --quant w8a8): int8 projections compile for the CPU and lavapipe, match the same
quantized arithmetic in torch, and speculative decoding stays exact w.r.t. the quantized target."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import _build, _presets
from helpers import cli


@pytest.fixture(scope="module")
def target_w8a8(target_ckpt):
    return _build("target_w8a8", target_ckpt, _presets(), quant="w8a8", gammas="1,2,3,4", prefill="8,16",
                  max_context=96)


def test_quantized_rows_round_trip():
    from build_sd.builder.model.quant import W8A8Linear, quantize_rows
    torch.manual_seed(0)
    w = torch.randn(37, 56)
    w[3] = 0.0                                             # an all-zero row keeps scale 1, codes 0
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and s[3] == 1.0 and not q[3].any()
    assert torch.allclose(q.float() * s[:, None], w, atol=float(s.max()) / 2 + 1e-7)
    lin = torch.nn.Linear(56, 37, bias=True)
    ql = W8A8Linear(lin)
    x = torch.randn(2, 5, 56)
    ref = lin(x)
    got = ql(x)
    assert got.shape == ref.shape and (got - ref).abs().max() < 0.05 * ref.abs().max()
    # the integer path equals dequantized arithmetic exactly (int32 accumulation of int8 codes)
    xf = x.reshape(-1, 56)
    sx = xf.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(xf / sx).clamp(-127, 127)
    deq = (xq @ ql.weight.float().t()) * sx * ql.scale + ql.bias
    assert torch.allclose(got.reshape(-1, 37), deq, atol=1e-5)


def test_w8a8_export_records_int8_projections(target_w8a8):
    exp = json.loads((target_w8a8 / "export.json").read_text())
    assert exp["quant"] == "w8a8"
    t = exp["parameters"]["tensors"]
    assert t["model.layers.0.self_attn.qkv_proj.weight"]["dtype"] == "i8"
    assert t["model.layers.0.self_attn.qkv_proj.scale"]["dtype"] == "f32"
    assert t["model.layers.0.mlp.down_proj.weight"]["dtype"] == "i8"
    assert t["model.embed_tokens.weight"]["dtype"] == "f32"                # the lookup stays float
    assert t["lm_head.weight"]["dtype"] == "i8" and t["lm_head.scale"]["shape"] == [311]


def test_w8a8_modules_match_the_quantized_torch_model(target_w8a8, target_ckpt):
    rc, out, err = cli("validate", target_w8a8, "--model", target_ckpt)
    assert rc == 0, out + err
    assert "validate: PASS" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("whole")]
    assert len(rows) >= 5 * len(_presets())
    diffs = sorted(float(ln.split()[-4]) for ln in rows)
    # the same arithmetic: most functions equal to f32 rounding; a rounding flip (one int8 code) at most
    assert diffs[len(diffs) // 2] < 1e-4, diffs


def test_speculative_decoding_is_exact_for_a_w8a8_target(target_w8a8, draft_art, tmp_path):
    out = tmp_path / "b"
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_w8a8, "--place", "draft=host",
                     "--place", "target=host", "--gamma", 4, "--out", out)
    assert rc == 0, err
    from build_sd.runtime.prompts import encode_prompt
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.session import open_bundle
    from build_sd.runtime.speculative import generate
    s = open_bundle(out)
    for p in ("the quick brown fox", "hello world, this is"):
        ids = encode_prompt(s, p)
        spec = generate(s.target, s.draft, ids, 4, GreedyAcceptor(), 24, [])
        base = generate(s.target, None, ids, 0, GreedyAcceptor(), 24, [])
        assert spec.token_ids == base.token_ids and len(base.token_ids) == 24
    assert np.isfinite(spec.metrics.alpha)


def test_unknown_quant_is_refused(target_ckpt, tmp_path):
    rc, _, err = cli("export", "--model", target_ckpt, "--out", tmp_path / "m", "--quant", "w3a3")
    assert rc == 2 and "invalid choice" in err


def test_w8a8_cross_compiles_for_arm_and_mali(target_ckpt):
    """The int8 form compiles for the board presets (compile-checked only here: no Arm, no Mali)."""
    art = _build("target_w8a8_cross", target_ckpt, ["a55", "valhall3"], quant="w8a8", gammas="2", prefill="8",
                 max_context=32)
    for preset in ("a55", "valhall3"):
        assert (art / preset / "whole.vmfb").stat().st_size > 0
