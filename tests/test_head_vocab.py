"""A draft whose LM head scores K of the V ids (config.json draft_vocab_size, lm_head.vocab_ids):
its logits are the full model's on those ids and -inf elsewhere, its modules validate on the CPU
and lavapipe, and speculative decoding with it stays exact (greedy == target-only)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import BUILD, _build, _presets
from helpers import cli, cpu_bundle, run_json

K = 64


def _ids(V: int) -> list[int]:
    # the special ids, then a seeded choice: the target's greedy tokens fall both in and out of it
    rng = np.random.default_rng(0)
    rest = rng.choice(np.arange(3, V), size=K - 3, replace=False)
    return [0, 1, 2] + sorted(int(i) for i in rest)


@pytest.fixture(scope="module")
def restricted_ckpt(target_ckpt):
    from build_sd.builder.model.head import write_restricted
    V = json.loads((target_ckpt / "config.json").read_text())["vocab_size"]
    return write_restricted(target_ckpt, BUILD / "ckpt" / "target_head64", _ids(V))


@pytest.fixture(scope="module")
def restricted_art(restricted_ckpt):
    return _build("target_head64", restricted_ckpt, _presets(), gammas="1,2,3", prefill="8,16", max_context=96)


def test_restricted_head_is_the_full_head_on_its_ids(target_ckpt, restricted_ckpt):
    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    full = load_checkpoint(target_ckpt, "f32", 32)
    part = load_checkpoint(restricted_ckpt, "f32", 32)
    assert part.cfg.head_vocab_size == K and tuple(part.lm_head.weight.shape) == (K, 56)
    ids = torch.tensor(_ids(full.cfg.vocab_size))
    tok = torch.tensor([[5, 17, 33, 101, 7, 250]], dtype=torch.int32)
    pos = torch.tensor(0, dtype=torch.int32)
    with torch.no_grad():
        _, ref = Subgraph(full, "whole")(tok, pos)
        got_ids, got = Subgraph(part, "whole")(tok, pos)
    mask = torch.zeros(full.cfg.vocab_size, dtype=torch.bool)
    mask[ids] = True
    assert torch.equal(got[..., mask], ref[..., mask])
    assert torch.isneginf(got[..., ~mask]).all()
    # greedy: the best id among the K, which differs from the full model's argmax here and there
    assert torch.equal(got_ids.long(), ids[ref[..., ids].argmax(-1)])


def test_restricted_head_validates_and_speculates_exactly(restricted_art, restricted_ckpt, target_whole, tmp_path):
    rc, out, err = cli("validate", restricted_art, "--model", restricted_ckpt)
    assert rc == 0 and "validate: PASS" in out, out + err
    export = json.loads((restricted_art / "export.json").read_text())
    assert export["config"]["head_vocab_size"] == K
    assert export["parameters"]["tensors"]["lm_head.weight"]["shape"] == [K, 56]
    b = cpu_bundle(tmp_path / "b", restricted_art, target_whole, gamma=3)
    spec = run_json(b, "the quick brown fox", gamma=3, max_new_tokens=40)
    base = run_json(b, "the quick brown fox", gamma=0, max_new_tokens=40)
    assert spec["token_ids"] == base["token_ids"]
    # the draft is the target on K of 311 ids: it is right exactly when the target's token is one
    # of them, so some drafts are accepted and some are not
    a = spec["metrics"]["alpha"]
    assert 0.0 < a < 1.0, spec["metrics"]


@pytest.mark.parametrize("edit, says", [
    (lambda c, s: c.update(tie_word_embeddings=True), "untied LM head"),
    (lambda c, s: s.pop("lm_head.vocab_ids"), "needs the tensor lm_head.vocab_ids"),
    (lambda c, s: s.__setitem__("lm_head.vocab_ids", torch.zeros(K, dtype=torch.int32)), "distinct ids"),
    (lambda c, s: c.update(draft_vocab_size=1), "draft_vocab_size"),
])
def test_bad_restricted_heads_are_one_line(restricted_ckpt, tmp_path, edit, says):
    from safetensors.torch import load_file, save_file
    cfg = json.loads((restricted_ckpt / "config.json").read_text())
    state = load_file(str(restricted_ckpt / "model.safetensors"))
    edit(cfg, state)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(d / "model.safetensors"))
    rc, out, err = cli("export", "--model", d, "--out", tmp_path / "m", "--gammas", "1", "--prefill", "8",
                       "--max-context", "32")
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err
