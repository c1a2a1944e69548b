"""The demo models' shapes: the Llama configurations of the target and the drafts, and
what they cost (parameters, multiply-adds per token)."""

from __future__ import annotations

from build_sd.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE

ARCHS = {
    # ~12.6M parameters, untied embeddings, GQA 6 query / 2 KV heads of 64.
    "target": dict(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1024,
        tie_word_embeddings=False,
    ),
    # ~1.6M parameters, tied embeddings: ~7x fewer multiply-adds per token than the target.
    "draft": dict(
        hidden_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        tie_word_embeddings=True,
    ),
    # 3 layers of 192 with a narrower MLP (384): ~1.78M params, 6.2x fewer multiply-adds.
    "draft3": dict(
        hidden_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        tie_word_embeddings=True,
    ),
    # 4 layers of 160 (4 heads of 40): ~1.70M params, 6.5x fewer multiply-adds.
    "draft4n": dict(
        hidden_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        tie_word_embeddings=True,
    ),
}
MAX_POSITIONS = 512
ROPE_THETA = 10000.0


def make_config(arch: str, dropout: float = 0.0):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=ROPE_THETA,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=dropout,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        initializer_range=0.02,
        **ARCHS[arch],
    )


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def macs_per_token(cfg) -> int:
    """Multiply-adds of the matmuls per generated token (no attention scores)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return L * layer + h * cfg.vocab_size
