"""An export-friendly Llama-family decoder (Llama 2/3, Qwen2) with its KV cache as module state.

Parameter names are the Hugging Face ones (`model.layers.3.self_attn.q_proj.weight`, ...) so a
checkpoint loads by name and the externalized .irpa keys are the checkpoint's keys.

Export-friendly means (docs/FINDINGS.md, "The feasibility probes"):
- batch 1, static T per exported function, a scalar int32 `pos`;
- the KV cache is one non-persistent buffer per layer and per K/V, position-major [S, KVH, Dh],
  written in place with a slice assignment at `pos` (IREE turns that into an O(T) in-place
  update of a mutable global; one [L, ...] buffer would be copied every step);
- attention runs over the filled slots 0..pos+T-1 (a dynamic length; or all S slots, `attention="all"`)
  with a position mask, so a stale tail after a rejected draft is invisible and simply overwritten
  by the next call (rollback = the host not advancing pos);
- integers at the ABI are int32 (Vulkan demotes i64 by reinterpreting the buffer).

RoPE rotates halves (`rotate_half`) as HF Llama/Qwen2 do, not interleaved pairs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...contract.config import ModelConfig, rope_inv_freq
from ...contract.export import ATTENTION


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        # As LlamaRMSNorm: normalise in f32, scale in the compute dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, max_context: int, dtype: torch.dtype):
        super().__init__()
        D, H, KVH, Dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.H, self.KVH, self.Dh, self.G = H, KVH, Dh, cfg.q_per_kv
        self.q_proj = nn.Linear(D, H * Dh, bias=cfg.qkv_bias, dtype=dtype)
        self.k_proj = nn.Linear(D, KVH * Dh, bias=cfg.qkv_bias, dtype=dtype)
        self.v_proj = nn.Linear(D, KVH * Dh, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = nn.Linear(H * Dh, D, bias=cfg.o_bias, dtype=dtype)
        # KV cache (S, KVH, Dh): module state, not a checkpoint tensor (persistent=False keeps it
        # out of the state dict and out of the .irpa; export turns it into a mutable global).
        self.register_buffer("k_cache", torch.zeros(max_context, KVH, Dh, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(max_context, KVH, Dh, dtype=dtype), persistent=False)

    def fuse(self):
        """One (H + 2 KVH) Dh x D projection instead of three: fewer dispatches per step, the same
        numbers (the rows are the three weights stacked)."""
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        fused = nn.Linear(q.in_features, q.out_features + 2 * k.out_features, bias=q.bias is not None,
                          dtype=q.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            if q.bias is not None:
                fused.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        fused.requires_grad_(False)
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x, p, cos, sin, mask):
        # x (1, T, D); p: start position (SymInt); cos/sin (T, 1, Dh); mask (T, L) bool over the
        # first L cache slots (L = S, or the filled part: see attended_slots)
        T, L = x.shape[1], mask.shape[-1]
        if hasattr(self, "qkv_proj"):
            nq, nkv = self.H * self.Dh, self.KVH * self.Dh
            q, k, v = self.qkv_proj(x).split([nq, nkv, nkv], dim=-1)
            q, k, v = q.reshape(T, self.H, self.Dh), k.reshape(T, self.KVH, self.Dh), v.reshape(T, self.KVH, self.Dh)
        else:
            q = self.q_proj(x).view(T, self.H, self.Dh)
            k = self.k_proj(x).view(T, self.KVH, self.Dh)
            v = self.v_proj(x).view(T, self.KVH, self.Dh)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # in-place write of the T new rows: O(T), never a copy of the cache
        self.k_cache[p:p + T] = k
        self.v_cache[p:p + T] = v
        # f32 models: attention over all S slots as broadcast-multiply + sum, not matmul. IREE's
        # CPU data tiling would otherwise pack the whole K and V caches into its tiled layout
        # on every step (an O(S) copy, 4 extra dispatches per layer); this form compiles to
        # two contraction-like dispatches reading the caches in place (219 -> 141 dispatches
        # per decode on the demo target).
        # f16 models: f32 matmuls on the upcast operands (A V too: an f16 matmul over the dynamic
        # length did not compile for x86 or aarch64, "affine.delinearize_index ... statically
        # non-positive"). The reduce form with f16 inputs failed IREE 3.13's vulkan-spirv codegen ("failed to legalize memref.alloc ... xindex,
        # Workgroup" / "arith.constant vector<8xf32>"), and so did f16 scores upcast later.
        # Scores and softmax are f32 in both (HF eager does the softmax in f32 too).
        qg = q.view(T, self.KVH, self.G, self.Dh).permute(1, 2, 0, 3)     # (KVH, G, T, Dh)
        scale = self.Dh ** -0.5
        if x.dtype == torch.float32:
            kc = self.k_cache[:L].permute(1, 0, 2)[:, None, None]          # (KVH, 1, 1, L, Dh)
            att = (qg[:, :, :, None, :] * kc).sum(-1) * scale             # (KVH, G, T, L)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            vc = self.v_cache[:L].permute(1, 0, 2)[:, None, None]          # (KVH, 1, 1, L, Dh)
            y = (att[..., None] * vc).sum(-2)                              # (KVH, G, T, Dh)
        else:
            kc = self.k_cache[:L].permute(1, 2, 0).float()                 # (KVH, Dh, L)
            att = (qg.reshape(self.KVH, self.G * T, self.Dh).float() @ kc) * scale  # (KVH, G*T, L)
            att = att.view(self.KVH, self.G, T, L).masked_fill(~mask, float("-inf"))
            att = att.softmax(-1).view(self.KVH, self.G * T, L)
            y = (att @ self.v_cache[:L].permute(1, 0, 2).float()).to(x.dtype).view(self.KVH, self.G, T, self.Dh)
        y = y.permute(2, 0, 1, 3).reshape(1, T, self.H * self.Dh)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype):
        super().__init__()
        D, Fd, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(D, Fd, bias=b, dtype=dtype)
        self.up_proj = nn.Linear(D, Fd, bias=b, dtype=dtype)
        self.down_proj = nn.Linear(Fd, D, bias=b, dtype=dtype)

    def fuse(self):
        """gate and up as one 2F x D projection (one dispatch chain instead of two)."""
        g, u = self.gate_proj, self.up_proj
        fused = nn.Linear(g.in_features, 2 * g.out_features, bias=g.bias is not None, dtype=g.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([g.weight, u.weight]))
            if g.bias is not None:
                fused.bias.copy_(torch.cat([g.bias, u.bias]))
        fused.requires_grad_(False)
        self.gate_up_proj = fused
        del self.gate_proj, self.up_proj

    def forward(self, x):
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, max_context: int, dtype: torch.dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(cfg, max_context, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype)

    def forward(self, x, p, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), p, cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Holds what HF calls `model.*`."""

    def __init__(self, cfg: ModelConfig, max_context: int, dtype: torch.dtype):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, max_context, dtype) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


class Transformer(nn.Module):
    """The whole model; `Subgraph` views of it are what gets exported."""

    def __init__(self, cfg: ModelConfig, max_context: int, dtype: torch.dtype = torch.float32,
                 attention: str = "filled"):
        super().__init__()
        assert attention in ATTENTION, attention
        self.cfg, self.max_context, self.dtype, self.attention = cfg, max_context, dtype, attention
        self.model = Backbone(cfg, max_context, dtype)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.head_rows, bias=False, dtype=dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if cfg.head_vocab_size:
            # A restricted head (contract/config.py): row r scores id head_ids[r]; head_map takes an
            # id to its row, or to K (a -inf column) when the head cannot propose it. Constants of
            # the module (set by the loader), not parameters: ids are not weights.
            self.register_buffer("head_ids", torch.zeros(cfg.head_rows, dtype=torch.int32), persistent=False)
            self.register_buffer("head_map", torch.zeros(cfg.vocab_size, dtype=torch.int32), persistent=False)
        # f32 inverse frequencies, computed as transformers does (llama3/linear scaling included)
        self.register_buffer("inv_freq", torch.tensor(rope_inv_freq(cfg), dtype=torch.float32),
                             persistent=False)

    def fuse_projections(self):
        """Stack q/k/v and gate/up weights (export-time only: the .irpa then holds the stacked
        tensors under `...qkv_proj.weight` / `...gate_up_proj.weight`)."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def reset_cache(self):
        for layer in self.model.layers:
            layer.self_attn.k_cache.zero_()
            layer.self_attn.v_cache.zero_()


def start_position(pos: torch.Tensor, T: int, S: int):
    """The host-side int `p` of the int32 scalar `pos`, with the bounds export needs."""
    p = pos.item()
    torch._check(p >= 0)
    torch._check(p + T <= S)
    return p


def attended_slots(p, T: int, S: int, filled: bool):
    """How many cache slots a call attends to: all S (static), or only the filled part, p + T.

    Why the filled part: the rows past pos + T are masked anyway, yet reading and scoring them is
    paid on every call: at S = 2048, SmolLM2-135M's f32 decode at position 64 took 44 ms over all
    slots against 29 ms over the filled ones (docs/FINDINGS.md). p + T is a dynamic size (p is
    the unbacked int of `pos`); IREE compiles the attention's dispatches for a dynamic length, and
    the ABI does not change. Rounding it up to a multiple of 64 did not export (torch's min of an
    unbacked expression)."""
    if not filled:
        return S
    L = p + T
    torch._check(L >= 1)
    torch._check(L <= S)
    return L


def rope_and_mask(inv_freq, pos, T: int, L, dtype):
    # positions pos..pos+T-1; angles in f32 as HF (cos/sin cast to the compute dtype); the mask
    # covers the L attended slots (attended_slots: S, or the dynamic pos + T)
    posv = pos.to(torch.int32) + torch.arange(T, dtype=torch.int32)            # (T,)
    freqs = posv.float()[:, None] * inv_freq[None, :]                          # (T, Dh/2)
    emb = torch.cat((freqs, freqs), dim=-1)                                   # (T, Dh)
    cos, sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]  # (T, 1, Dh)
    mask = torch.arange(L, dtype=torch.int32)[None, :] <= posv[:, None]      # (T, L)
    return cos, sin, mask


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """argmax over the last axis in two stages: the max of each chunk of W columns, then the
    best chunk (the first maximum wins in both, so ties resolve as torch.argmax does).

    Why: IREE 3.13 gets one-pass argmax over large rows wrong or fails to build it. On
    vulkan-spirv a V = 128256 row (Llama-3) returned ids that were not the argmax of the
    returned logits (f32 and f16); on llvm-cpu an f16 row with the f32 cast fused in exceeded
    the 32 KB stack limit. Rows of at most ~512 per stage avoid both (validate checks it)."""
    V = x.shape[-1]
    W = max(d for d in range(1, min(V, 512) + 1) if V % d == 0)
    if W == V or W == 1:
        return x.argmax(-1)
    vals, idx = x.reshape(*x.shape[:-1], V // W, W).max(-1)             # (..., V/W)
    best = vals.argmax(-1, keepdim=True)                                 # (..., 1)
    return (best * W + idx.gather(-1, best)).squeeze(-1)


class Subgraph(nn.Module):
    """One exported module: `embed`, `layers[a:b]`, `head`, or `whole` (all of them).

    Calling convention (every function of a module has the same arguments, only T differs):
      embed  (tok i32 (1,T))                    -> h (1,T,D)
      layers (h (1,T,D), pos i32 ())            -> h (1,T,D)
      head   (h (1,T,D)[, length i32 ()])       -> ids i32 (1,T'), logits f32 (1,T',V)
      whole  (tok i32 (1,T), pos i32 ()[, length i32 ()]) -> ids, logits
    `length` is given to prefill functions only: the prompt is padded to the bucket size P and
    the head computes the row `length-1` alone (T' = 1), the next token after the prompt; the
    padded rows write harmless KV entries beyond the prompt that the next call overwrites.
    Elsewhere T' = T: ids[0, i] is the greedy token after position pos+i.
    """

    def __init__(self, full: Transformer, kind: str, start: int = 0, end: int = 0):
        super().__init__()
        assert kind in ("embed", "layers", "head", "whole")
        self.kind, self.start, self.end = kind, start, end
        self.cfg, self.S, self.filled = full.cfg, full.max_context, full.attention == "filled"
        if kind == "whole":
            self.start, self.end = 0, full.cfg.num_layers
        # Attributes reference the full model's submodules; the tensors keep their HF names
        # through externalize_module_parameters(full) (the trait lives on the tensor).
        if kind in ("embed", "whole"):
            self.embed_tokens = full.model.embed_tokens
        if kind in ("layers", "whole"):
            self.layers = nn.ModuleList(full.model.layers[self.start:self.end])
            self.register_buffer("inv_freq", full.inv_freq.clone(), persistent=False)
        if kind in ("head", "whole"):
            self.norm = full.model.norm
            self.lm_head = full.lm_head
            self.restricted = bool(full.cfg.head_vocab_size)
            if self.restricted:
                self.register_buffer("head_ids", full.head_ids.clone(), persistent=False)
                self.register_buffer("head_map", full.head_map.clone(), persistent=False)

    def run_layers(self, h, pos):
        T = h.shape[1]
        p = start_position(pos, T, self.S)
        cos, sin, mask = rope_and_mask(self.inv_freq, pos, T, attended_slots(p, T, self.S, self.filled),
                                        h.dtype)
        for layer in self.layers:
            h = layer(h, p, cos, sin, mask)
        return h

    def run_head(self, h, length=None):
        if length is not None:
            # (1, P, D) -> (1, 1, D): only the last real prompt row is needed
            h = h.index_select(1, (length.to(torch.int32) - 1).reshape(1))
        logits = self.lm_head(self.norm(h))                              # (1, T', V) or (1, T', K)
        if not self.restricted:
            return argmax_rows(logits).to(torch.int32), logits.float()
        # restricted head: the greedy id through head_ids; the full row by a gather from the K scores
        # and one -inf column (a gather, not a scatter: one read per id, the form IREE runs well)
        ids = self.head_ids.index_select(0, argmax_rows(logits).reshape(-1)).reshape(logits.shape[:-1])
        ninf = torch.full((*logits.shape[:-1], 1), float("-inf"), dtype=torch.float32)
        full = torch.cat([logits.float(), ninf], dim=-1).index_select(-1, self.head_map)
        return ids, full

    def forward(self, x, pos=None, length=None):
        if self.kind == "embed":
            return self.embed_tokens(x)
        if self.kind == "layers":
            return self.run_layers(x, pos)
        if self.kind == "head":
            return self.run_head(x, pos)          # head's second argument is the length
        return self.run_head(self.run_layers(self.embed_tokens(x), pos), length)
