"""The feature-level draft head (build_sd/chatpair/eagle.py): its layer matches HF Llama's, its KV cache
changes nothing but the time, its loss reads the right shifts, and the held-out replay counts what greedy
verification would accept (an oracle head that returns the target's true next feature accepts everything
its head ids can hold)."""
import numpy as np
import pytest
import torch

from build_sd.chatpair import eagle


def tiny_target(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0,
                      tie_word_embeddings=True, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def tiny_head(target, head_ids=None, seed=1):
    torch.manual_seed(seed)
    c = eagle.head_config(target.config.to_dict())
    E = target.model.embed_tokens.weight.detach()
    ids = torch.arange(c.vocab_size) if head_ids is None else head_ids
    return eagle.EagleHead(c, E, ids, target.model.norm.weight.detach()).eval()


def test_layer_equals_hf_llama_layer():
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    t = tiny_target()
    h = tiny_head(t)
    ref = LlamaDecoderLayer(t.config, 0).eval()
    ref.load_state_dict(h.layer.state_dict())
    x = torch.randn(1, 7, 32)
    pos = torch.arange(3, 10)
    rot = LlamaRotaryEmbedding(t.config)
    cos, sin = rot(x, pos[None])
    mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        want = ref(x, attention_mask=mask, position_ids=pos[None], position_embeddings=(cos, sin))
        want = want[0] if isinstance(want, tuple) else want
        got = h.layer(x, pos)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_cache_changes_nothing():
    t = tiny_target()
    h = tiny_head(t)
    f, ids = torch.randn(1, 9, 32), torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        full = h(f, ids, torch.arange(9))
        cache = [None, None]
        parts = [h(f[:, :4], ids[:, :4], torch.arange(4), cache)]
        for i in range(4, 9):
            parts.append(h(f[:, i:i + 1], ids[:, i:i + 1], torch.tensor([i]), cache))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_batch_shifts_and_mask():
    rng = np.random.default_rng(0)
    n, H, k = 6, 4, 3
    s = dict(ids=np.arange(10, 10 + n), feat=rng.standard_normal((n, H)).astype(np.float16),
             top_ids=rng.integers(0, 20, (n, k)).astype(np.int32), top_logp=np.zeros((n, k), np.float16), start=3)
    remap = np.arange(20)
    f, x, ft, ti, tl, m = eagle.batch([s], remap)
    assert f.shape == (1, n - 1, H)
    assert (x[0].numpy() == s["ids"][1:]).all()                       # input t reads token t+1
    assert torch.equal(ft[0], torch.from_numpy(s["feat"][1:].astype(np.float32)))   # and predicts f_{t+1}
    assert (ti[0].numpy() == s["top_ids"][1:]).all()
    # judged where the drafted token t+2 is an answer token (start = 3): t = 1..n-2
    assert m[0].tolist() == [False, True, True, True, True]


class _Oracle(torch.nn.Module):
    """A head that returns the target's true feature at the position after each input."""

    def __init__(self, head, feats):
        super().__init__()
        self.head, self.vocab_ids, self.feats = head.head, head.vocab_ids, feats

    def forward(self, f, x, pos, cache=None):
        if cache is not None and cache[0] is None:          # a cache the replay can slice
            cache[0] = cache[1] = torch.zeros(1, 1, len(pos), 1)
        return self.feats[pos.clamp(max=len(self.feats) - 2) + 1][None]


@pytest.mark.parametrize("g", [1, 3])
def test_replay_oracle_accepts_all(g):
    t = tiny_target()
    h = tiny_head(t)
    prompt = [1, 5, 9, 11]
    with torch.no_grad():
        out = t.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, min_new_tokens=20)
    answer = out[0, len(prompt):].tolist()
    seq = prompt + answer
    with torch.no_grad():
        feats = t.model(input_ids=torch.tensor([seq])).last_hidden_state[0]
    r = eagle.replay(_Oracle(h, feats), t, [dict(ids=prompt, answer=answer)], gammas=(g,))
    assert r["acc1"] == 1.0
    # 1 token from the prefill, then g + 1 per verify until the answer's end
    calls = -(-(len(answer) - 1) // (g + 1))
    assert r["tokens_per_verify"][g] == pytest.approx(len(answer) / calls)


def test_replay_random_head_accepts_little():
    t = tiny_target()
    h = tiny_head(t)
    prompt = [1, 5, 9, 11]
    with torch.no_grad():
        answer = t.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                            min_new_tokens=16)[0, len(prompt):].tolist()
    r = eagle.replay(h, t, [dict(ids=prompt, answer=answer)], gammas=(3,))
    assert r["tokens_per_verify"][3] < 2.0


def test_unrolled_passes_are_the_drafting_steps():
    """Pass s of the training-time test at position p+s-2 is the s-th draft of a block that starts
    after position p-1, computed step by step with the cache (as replay and the runner draft)."""
    t = tiny_target()
    h = tiny_head(t)
    T, p = 12, 6
    f, ids = torch.randn(1, T, 32), torch.randint(0, 64, (1, T))
    with torch.no_grad():
        outs = h.unrolled(f, ids, 3)
        assert torch.allclose(outs[0], h(f, ids, torch.arange(T)), atol=1e-5)
        cache = [None, None]
        h(f[:, :p - 1], ids[:, :p - 1], torch.arange(p - 1), cache)
        fin = f[:, p - 1:p]
        for s in range(1, 4):
            q = p - 1 + s - 1
            out = h(fin, ids[:, q:q + 1], torch.tensor([q]), cache)
            assert torch.allclose(out[0, 0], outs[s - 1][0, q], atol=1e-5), s
            fin = out


def test_chain_blocks_counts_leading_hits():
    # answer of 8 tokens; token 0 from the prefill; hits at 1, 2, then a miss at 3, hits after
    correct = [False, True, True, False, True, True, True, True]
    out = eagle.chain_blocks(correct, (2, 4))
    # g=2: [1,2 accepted +bonus 3] -> p=4; [4,5 + bonus 6] -> p=7; [7 accepted, end] -> 8 tokens, 3 calls
    assert out[2] == (8, 3)
    # g=4: [1,2 then miss: +bonus 3] -> p=4; [4..7 accepted, end] -> 2 calls
    assert out[4] == (8, 2)
