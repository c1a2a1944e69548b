"""The chat pair's data split: what the draft trains on never includes what it is judged on (the
held-out prompts of build_sd/chatpair, which the chat demo also asks and calibrates on)."""
from build_sd.chatpair import prompts
from build_sd.demo.chat import questions


def test_held_out_prompts_share_no_subject_or_prompt_with_training():
    train = prompts.train_prompts(3000, seed=0)
    held = prompts.heldout_prompts(40, seed=1)
    assert len(train) == 3000 and len(held) == 40 and not set(train) & set(held)
    held_subjects = [s for pool in prompts.split_subjects(True).values() for s in pool]
    assert held_subjects
    for p in train:                                  # no held-out subject in any training prompt
        assert not any(s in p for s in held_subjects if len(s) > 12), p
    fams = [f for f in prompts.FAMILIES if prompts.held_family(f)]
    assert 2 <= len(fams) < len(prompts.FAMILIES) // 2



def test_prompts_from_every_family_keep_the_first_ones_and_every_held_out_subject_out():
    """--all-families-from K: prompts K.. come from every family (held-out ones too), the first K are
    the train-family prompts the existing shards were made from, and no held-out subject enters."""
    before = prompts.train_prompts(1500, seed=0)
    mixed = prompts.train_prompts(3000, seed=0, all_families_from=1500)
    assert mixed[:1500] == before and len(set(mixed)) == 3000
    assert not set(mixed) & set(prompts.heldout_prompts(40, seed=1))
    held_subjects = [s for pool in prompts.split_subjects(True).values() for s in pool if len(s) > 12]
    assert not [p for p in mixed[1500:] if any(s in p for s in held_subjects)]
    # the block is balanced across families, at its end (where on-policy shards take their prompts)
    # too: each held-out family holds ~1/24 of the last 480 prompts, not the ~1 % a uniform draw gave
    for f in (f for f in prompts.FAMILIES if prompts.held_family(f)):
        stems = [t.split("{")[0] for t in prompts.FAMILIES[f][1]]
        hit = lambda p: any(p.startswith(st) and st for st in stems)
        assert sum(map(hit, mixed[-480:])) >= 15, f

def test_the_chat_demo_asks_and_calibrates_on_held_out_prompts():
    asked, calib = questions()
    held = set(prompts.heldout_prompts(40, seed=1))
    assert set(asked) <= held and set(calib) <= held and not set(asked) & set(calib)
    assert not set(asked) & set(prompts.train_prompts(3000, seed=0))


def test_a_restricted_draft_saves_and_loads_in_build_sd(tmp_path):
    """The trainer's restricted head (chatpair/model.py) is what build_sd's loader reads: same logits
    on its ids, -inf elsewhere, and the f16 file holds the K-row head and its ids."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.chatpair import model as M
    from build_sd.chatpair.evaluate import load_draft
    from build_sd.chatpair.export import save_draft
    from build_sd.chatpair.train import head_map

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                     initializer_range=0.2)).eval()
    ids = [0, 1, 2, 5, 8, 13, 21, 34, 55, 89]
    M.restrict(m, ids)
    assert M.head_rows(m.config) == 10 and head_map(M.head_ids(m), 97)[34] == 7
    save_draft(m, tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["draft_vocab_size"] == 10 and cfg["tie_word_embeddings"] is False
    back, _ = load_draft(tmp_path / "d")
    ours = load_checkpoint(tmp_path / "d", "f32", 16)
    tok = torch.tensor([[3, 40, 7, 96, 12]])
    with torch.no_grad():
        ref = back(input_ids=tok).logits[0]                                  # [T, K]
        got_ids, got = Subgraph(ours, "whole")(tok.to(torch.int32), torch.tensor(0, dtype=torch.int32))
    got = got[0]
    assert torch.allclose(got[:, ids], ref, atol=1e-5)
    mask = torch.ones(97, dtype=torch.bool)
    mask[ids] = False
    assert torch.isneginf(got[:, mask]).all()
    assert got_ids[0].tolist() == [ids[i] for i in ref.argmax(-1).tolist()]


def test_the_committed_chat_draft_is_what_its_card_says():
    """build_sd/chatpair/models/draft: the distilled draft the chat demo runs (f16, restricted head, within
    the 40 MB the issue allows), loadable by build_sd, its card stating alpha and whether the goal is met
    (recomputing alpha needs the target's held-out answers: `python -m build_sd.chatpair eval`)."""
    import re

    import numpy as np

    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.contract.config import ModelConfig
    from build_sd.demo.chat import DRAFT_DIR
    cfg = ModelConfig.from_hf(DRAFT_DIR)
    assert cfg.vocab_size == 49152 and cfg.head_vocab_size == 8192 and not cfg.tie_word_embeddings
    assert (DRAFT_DIR / "model.safetensors").stat().st_size < 40e6
    m = load_checkpoint(DRAFT_DIR, "f32", 32)
    ids = m.head_ids.numpy()
    assert {0, 1, 2} <= set(ids.tolist()) and len(np.unique(ids)) == 8192
    card = (DRAFT_DIR / "README.md").read_text()
    alpha = float(re.search(r"\*\*(0\.\d+)\*\* \(\d+/\d+\), measured on these f16 weights", card).group(1))
    assert 0.0 < alpha < 1.0
    assert ("is NOT met" in card) == (alpha < 0.7)


def test_on_policy_shards_score_the_drafts_answers_with_the_targets_argmax(tmp_path):
    """onpolicy.py: the target's teacher-forced top-k at each answer position of a batch of ragged
    sequences equals scoring each sequence alone; such a shard loads with the target's argmax (not
    the draft's token) as the cross-entropy target, and a restricted draft drives teacher.generate
    through _FullVocab (ids outside its head at -inf, so never drawn)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from build_sd.chatpair import model as M
    from build_sd.chatpair import onpolicy, train
    from build_sd.chatpair.teacher import generate, save_atomic

    torch.manual_seed(0)
    cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=False)
    target = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    draft = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    M.restrict(draft, list(range(3, 40)))
    full = onpolicy._FullVocab(draft, 64).eval()
    prompts = [[5, 9, 11], [7, 8], [1, 2, 3, 4, 6]]
    got = generate(full, prompts, [0.0, 1.0, 1.0], 6, 1, torch.Generator().manual_seed(0))
    assert all(3 <= t < 40 or t == 2 for g in got for t in g[0])
    seqs = [p + g[0] for p, g in zip(prompts, got)]
    starts = [len(p) for p in prompts]
    scored = onpolicy.score(target, seqs, starts, k=4, batch=2)
    for q, s, (ids, logp) in zip(seqs, starts, scored):
        with torch.no_grad():
            alone = torch.log_softmax(target(input_ids=torch.tensor([q[:-1]])).logits[0, s - 1:], -1)
        assert np.array_equal(ids[:, 0], alone.argmax(-1).numpy())
        assert np.allclose(logp[:, 0], alone.max(-1).values.numpy(), atol=2e-3)
    off = np.cumsum([0] + [len(q) for q in seqs])
    save_atomic(tmp_path / "shards" / "op_00000.npz", dict(
        ids=np.array([t for q in seqs for t in q], np.int32), seq_off=off, ans_start=np.array(starts, np.int32),
        topk_ids=np.concatenate([x[0] for x in scored]), topk_logp=np.concatenate([x[1] for x in scored]),
        policy=np.array("draft")))
    assert train.list_shards(tmp_path) == ["op_00000.npz"]
    loaded = train.load_shard(tmp_path / "shards" / "op_00000.npz")
    x, rows, pos, tgt, tki, tkl = train.collate(loaded)
    with torch.no_grad():
        assert torch.equal(target(input_ids=x).logits[rows, pos].argmax(-1), tgt)


def test_kept_answers_rebuild_the_shards_they_came_from(tmp_path):
    """keep.py: a shard's sequences are stored without the target's top-k (uint16 ids, compressed,
    named by content: keeping twice adds nothing) and a teacher-forced pass rebuilds the top-k the
    teacher recorded while generating (teacher.py: equal up to float rounding); the rebuilt shard
    trains like the original, a teacher shard under its own name, an on-policy one under its kept name."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from build_sd.chatpair import keep, train
    from build_sd.chatpair.teacher import generate, save_atomic

    torch.manual_seed(0)
    target = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          max_position_embeddings=128)).eval()
    prompts = [[5, 9, 11], [7, 8], [1, 2, 3, 4, 6]]
    got = generate(target, prompts, [0.0, 1.0, 0.7], 6, 4, torch.Generator().manual_seed(0))
    seqs = [p + g[0] for p, g in zip(prompts, got)]
    shard = dict(ids=np.array([t for q in seqs for t in q], np.int32),
                 seq_off=np.cumsum([0] + [len(q) for q in seqs]).astype(np.int64),
                 ans_start=np.array([len(p) for p in prompts], np.int32),
                 topk_ids=np.concatenate([g[1] for g in got]), topk_logp=np.concatenate([g[2] for g in got]),
                 temp=np.array([0.0, 1.0, 0.7], np.float32), finished=np.array([g[3] for g in got], bool),
                 prompt_idx=np.arange(3, dtype=np.int32))
    save_atomic(tmp_path / "shards" / "shard_00000.npz", shard)
    save_atomic(tmp_path / "shards" / "op_00000.npz", {**shard, "policy": np.array("draft"),
                                                       "draft_step": np.array(7, np.int64)})
    dst = tmp_path / "answers"
    assert keep.keep(tmp_path, dst) == 2 and keep.keep(tmp_path, dst) == 0
    kept = sorted(dst.glob("*.npz"))
    assert [p.name.split("-")[0] for p in kept] == ["op_00000", "shard_00000"]
    assert [keep.shard_name(p) for p in kept] == [kept[0].name, "shard_00000.npz"]
    z = np.load(kept[1])
    assert z["ids"].dtype == np.uint16 and "topk_ids" not in z.files
    for p in kept:
        arr = keep.rescore_file(target, p, k=4, batch=2)
        for key in ("ids", "seq_off", "ans_start", "temp", "finished", "prompt_idx"):
            assert np.array_equal(arr[key], shard[key]), key
        assert np.array_equal(arr["topk_ids"][:, 0], shard["topk_ids"][:, 0])
        assert np.allclose(arr["topk_logp"].astype(np.float32), shard["topk_logp"].astype(np.float32), atol=2e-3)
        save_atomic(tmp_path / "rebuilt" / "shards" / keep.shard_name(p), arr)
    assert str(np.load(tmp_path / "rebuilt" / "shards" / kept[0].name)["policy"]) == "draft"
    assert train.list_shards(tmp_path / "rebuilt") == sorted(keep.shard_name(p) for p in kept)
    again = train.load_shard(tmp_path / "rebuilt" / "shards" / "shard_00000.npz")
    orig = train.load_shard(tmp_path / "shards" / "shard_00000.npz")
    assert all(np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["tki"][:, 0], b["tki"][:, 0])
               for a, b in zip(again, orig))
