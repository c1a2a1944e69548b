"""config.json in both dialects, and refusals of what we would compute differently."""
import json

import pytest

from build_sd.contract.config import ModelConfig, rope_inv_freq
from build_sd.errors import UserError

BASE = dict(model_type="llama", vocab_size=100, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, intermediate_size=96)
LLAMA3 = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192, rope_type="llama3")


def test_v4_and_v5_dialects_agree():
    v4 = ModelConfig.from_hf_dict(dict(BASE, rope_theta=500000.0, rope_scaling=LLAMA3))
    v5 = ModelConfig.from_hf_dict(dict(BASE, rope_parameters=dict(LLAMA3, rope_theta=500000.0)))
    assert v4 == v5
    assert v4.rope.type == "llama3" and v4.rope.theta == 500000.0 and v4.rope.factor == 32.0


def test_llama3_scaling_matches_transformers():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    hf = LlamaConfig(**{k: v for k, v in BASE.items() if k != "model_type"},
                     rope_parameters=dict(LLAMA3, rope_theta=500000.0), max_position_embeddings=131072)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = torch.tensor(rope_inv_freq(ModelConfig.from_hf_dict(json.loads(hf.to_json_string()))))
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)


def test_derived_fields():
    c = ModelConfig.from_hf_dict(dict(BASE, head_dim=32, eos_token_id=[2, 7], tie_word_embeddings=True))
    assert c.head_dim == 32 and c.q_per_kv == 2 and c.eos_token_ids == (2, 7)
    q = ModelConfig.from_hf_dict(dict(BASE, model_type="qwen2"))
    assert q.qkv_bias and not q.o_bias


@pytest.mark.parametrize("patch, msg", [
    (dict(model_type="gpt2"), "unsupported model_type"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(use_sliding_window=True), "sliding-window"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_size=-1), "hidden_size"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "RoPE type"),
    (dict(vocab_size=None), "vocab_size"),
])
def test_refusals(patch, msg):
    with pytest.raises(UserError, match=msg):
        ModelConfig.from_hf_dict(dict(BASE, **patch))
