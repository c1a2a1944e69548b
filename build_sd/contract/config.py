"""ModelConfig: the architecture of a Llama-family checkpoint, read from its config.json.

Both config dialects are read: `rope_theta` + `rope_scaling` (transformers 4.x, e.g. Llama-3.2 as
published) and `rope_parameters` (transformers 5.x). Anything we would compute differently from
the reference (sliding windows, other activations, unknown RoPE types) is refused with a
UserError rather than silently approximated.

Shape letters used throughout build_sd: T new tokens, S cache slots, D hidden, H query heads,
KVH key/value heads, Dh head dim, F ffn (intermediate), V vocabulary, L layers, g gamma.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"           # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0    # llama3 only
    high_freq_factor: float = 4.0   # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int            # V
    hidden_size: int           # D
    num_layers: int            # L
    num_heads: int             # H
    num_kv_heads: int          # KVH
    head_dim: int              # Dh
    intermediate_size: int     # F
    rms_norm_eps: float
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False     # Qwen2 always; Llama when attention_bias
    o_bias: bool = False       # Llama attention_bias also biases o_proj
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    checkpoint_dtype: str = "float32"
    # A draft's LM head may score only K of the V ids (config.json `draft_vocab_size`, EAGLE-3's
    # name; the ids in the checkpoint tensor `lm_head.vocab_ids`): a drafter needs the tokens the
    # target actually writes, and the head is most of a small draft's cost (49152 x 256 of a
    # 256-wide draft). Its logits stay [.., V], -inf on the ids it cannot propose. None: all V.
    head_vocab_size: int | None = None

    # ---- derived ---------------------------------------------------------------------------
    @property
    def head_rows(self) -> int:
        """Rows of the LM head's weight: K when restricted, else V."""
        return self.head_vocab_size or self.vocab_size

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def num_parameters(self) -> int:
        D, F, V, Dh = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        H, KVH = self.num_heads, self.num_kv_heads
        attn = D * H * Dh + 2 * D * KVH * Dh + H * Dh * D
        attn += (H * Dh + 2 * KVH * Dh) * self.qkv_bias + D * self.o_bias
        mlp = 3 * D * F + (2 * F + D) * self.mlp_bias
        layer = attn + mlp + 2 * D
        emb = V * D
        return emb + self.num_layers * layer + D + (0 if self.tie_word_embeddings else self.head_rows * D)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["rope"] = RopeConfig(**d["rope"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)

    # ---- reading a Hugging Face config.json ------------------------------------------------
    @classmethod
    def from_hf(cls, path: str | Path) -> "ModelConfig":
        """Read CKPT_DIR/config.json (or a config.json path)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.exists():
            raise UserError(f"no config.json at {p}")
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p}: expected a JSON object")
        cfg = cls.from_hf_dict(raw, source=str(p))
        # generation stops on generation_config.json's EOS ids too (chat models list their end-of-turn
        # token there, e.g. Llama 3's <|eot_id|>): the union, config.json's first
        gen = p.with_name("generation_config.json")
        if gen.is_file():
            try:
                eos = json.loads(gen.read_text()).get("eos_token_id")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise UserError(f"{gen}: invalid JSON ({e})") from None
            more = [int(e) for e in (eos if isinstance(eos, list) else [] if eos is None else [eos])]
            merged = tuple(dict.fromkeys(list(cfg.eos_token_ids) + more))
            if merged != cfg.eos_token_ids:
                from dataclasses import replace
                cfg = replace(cfg, eos_token_ids=merged)
        return cfg

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        def need(key, typ=int):
            if key not in raw or raw[key] is None:
                raise UserError(f"{source}: missing '{key}'")
            v = raw[key]
            if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise UserError(f"{source}: '{key}' must be a positive integer, got {v!r}")
            if typ is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise UserError(f"{source}: '{key}' must be a positive number, got {v!r}")
            return v

        mt = raw.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise UserError(f"{source}: unsupported model_type {mt!r} "
                            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise UserError(f"{source}: unsupported hidden_act {act!r} (only silu)")
        if raw.get("use_sliding_window"):
            raise UserError(f"{source}: sliding-window attention is not supported")
        if raw.get("pretraining_tp", 1) not in (1, None):
            raise UserError(f"{source}: pretraining_tp != 1 is not supported")

        D = need("hidden_size")
        H = need("num_attention_heads")
        KVH = raw.get("num_key_value_heads") or H
        if not isinstance(KVH, int) or KVH <= 0 or H % KVH:
            raise UserError(f"{source}: num_key_value_heads={KVH!r} must divide num_attention_heads={H}")
        Dh = raw.get("head_dim") or (D // H)
        if not raw.get("head_dim") and D % H:
            raise UserError(f"{source}: hidden_size={D} is not divisible by num_attention_heads={H}")
        if not isinstance(Dh, int) or Dh % 2:
            raise UserError(f"{source}: head_dim={Dh!r} must be an even integer (RoPE rotates pairs)")

        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))

        attention_bias = bool(raw.get("attention_bias", False))
        V = need("vocab_size")
        tied = bool(raw.get("tie_word_embeddings", False))
        K = raw.get("draft_vocab_size")
        if K is not None:
            if isinstance(K, bool) or not isinstance(K, int) or not 1 < K <= V:
                raise UserError(f"{source}: 'draft_vocab_size' must be an integer in 2..vocab_size ({V}), got {K!r}")
            if tied and K < V:
                raise UserError(f"{source}: 'draft_vocab_size' {K} < vocab_size needs an untied LM head "
                                "(tie_word_embeddings false, lm_head.weight of K rows)")
            K = None if K == V else K
        return cls(
            model_type=mt,
            vocab_size=V,
            hidden_size=D,
            num_layers=need("num_hidden_layers"),
            num_heads=H,
            num_kv_heads=KVH,
            head_dim=Dh,
            intermediate_size=need("intermediate_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_read_rope(raw, source),
            tie_word_embeddings=tied,
            qkv_bias=True if mt == "qwen2" else attention_bias,
            o_bias=False if mt == "qwen2" else attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            checkpoint_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            head_vocab_size=K,
        )


DEFAULT_CONTEXT = 512
CHAT_CONTEXT = 2048


def default_max_context(ckpt: str | Path) -> int:
    """KV cache slots when the user gives none: 512, or for a chat model (its tokenizer_config.json has
    a chat template) 2048, enough for a real conversation, or the model's own limit when lower."""
    p = Path(ckpt)
    p = p if p.is_dir() else p.parent
    try:
        chat = bool(json.loads((p / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        chat = False
    if not chat:
        return DEFAULT_CONTEXT
    return min(CHAT_CONTEXT, ModelConfig.from_hf(p).max_position_embeddings)


def _read_rope(raw: dict, source: str) -> RopeConfig:
    # transformers 5.x: everything in rope_parameters; 4.x: rope_theta + optional rope_scaling.
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" not in params and "type" not in params \
            and all(isinstance(v, dict) for v in params.values()):
        # per-layer-type dict (e.g. {"full_attention": {...}}): only one kind supported
        if len(params) != 1:
            raise UserError(f"{source}: per-layer rope_parameters are not supported")
        params = next(iter(params.values()))
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    elif not isinstance(params, dict):
        raise UserError(f"{source}: rope_parameters must be an object")
    rtype = params.get("rope_type", params.get("type", "default"))
    if rtype not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"{source}: unsupported RoPE type {rtype!r} "
                        f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise UserError(f"{source}: rope_theta must be positive, got {theta!r}")
    return RopeConfig(
        theta=float(theta),
        type=rtype,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def rope_inv_freq(cfg: ModelConfig) -> list[float]:
    """Inverse frequencies [Dh/2] as transformers computes them (modeling_rope_utils)."""
    Dh, r = cfg.head_dim, cfg.rope
    inv = [1.0 / (r.theta ** (i / Dh)) for i in range(0, Dh, 2)]
    if r.type == "linear":
        inv = [f / r.factor for f in inv]
    elif r.type == "llama3":
        # Llama 3.1 frequency-dependent scaling (_compute_llama3_parameters)
        low_wl = r.original_max_position_embeddings / r.low_freq_factor
        high_wl = r.original_max_position_embeddings / r.high_freq_factor
        out = []
        for f in inv:
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(f)
            elif wl > low_wl:
                out.append(f / r.factor)
            else:
                s = (r.original_max_position_embeddings / wl - r.low_freq_factor) / (
                    r.high_freq_factor - r.low_freq_factor)
                out.append((1 - s) * f / r.factor + s * f)
        inv = out
    return inv
