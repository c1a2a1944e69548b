"""The checkpoints the benchmark measures (HF Llama layout: config.json, safetensors, tokenizer.json).

- demo pair: build_sd/demo/models/{target,draft} when they are there (trained); otherwise a
  random pair of the same shapes (build_sd.demo.train.ARCHS), marked as such in the results.
- llama-3.2-1b: the shape of examples/shapes/llama-3.2-1b/config.json with random weights.
- draft-150m: a ~150M-parameter Llama draft of the same vocabulary, random weights.
Random weights: decode latency does not depend on the values. Written shard by shard (numpy),
so a 1B f32 checkpoint never sits twice in memory.

    python benchmarks/models.py OUT_DIR [--only demo|large]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODELS = ROOT / "build_sd" / "demo" / "models"
SHAPES = ROOT / "examples" / "shapes"

# ~150M parameters with Llama-3.2's vocabulary (tied): 98.5M embedding + 8 x 6.3M layers.
DRAFT_150M = dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                  head_dim=64, intermediate_size=2048, tie_word_embeddings=True)


def demo_tokenizer() -> Path | None:
    for p in (DEMO_MODELS / "target" / "tokenizer.json", ROOT / "build_sd" / "demo" / "runs" / "tokenizer.json"):
        if p.exists():
            return p
    return None


def trained_demo_pair() -> tuple[Path, Path] | None:
    t, d = DEMO_MODELS / "target", DEMO_MODELS / "draft"
    ok = all((p / "config.json").exists() and any(p.glob("*.safetensors")) and (p / "tokenizer.json").exists()
             for p in (t, d))
    return (t, d) if ok else None


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    D, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    F = cfg["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                       p + "self_attn.q_proj.weight": (H * hd, D), p + "self_attn.k_proj.weight": (KV * hd, D),
                       p + "self_attn.v_proj.weight": (KV * hd, D), p + "self_attn.o_proj.weight": (D, H * hd),
                       p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F)})
    shapes["model.norm.weight"] = (D,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (V, D)
    return shapes


def n_params(cfg: dict) -> int:
    return int(sum(np.prod(s) for s in param_shapes(cfg).values()))


def write_random(out: Path, cfg: dict, seed: int, std: float = 0.02, shard_bytes: int = 1 << 30,
                 tokenizer: Path | None = None) -> Path:
    """A random Llama checkpoint (f32) in HF layout; skipped when config.json is already the same."""
    from safetensors.numpy import save_file
    cfg = dict(cfg)
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    cfg.setdefault("model_type", "llama")
    cfg["torch_dtype"] = "float32"
    stamp = json.dumps({"cfg": cfg, "seed": seed, "std": std}, sort_keys=True)
    if (out / ".made").exists() and (out / ".made").read_text() == stamp:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_shards, cur, cur_bytes, index = 0, {}, 0, {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            a = np.ones(shape, np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= std
        cur[name] = a
        cur_bytes += a.nbytes
        if cur_bytes >= shard_bytes:
            n_shards += 1
            fname = f"shard-{n_shards:05d}.safetensors"
            save_file(cur, str(out / fname), metadata={"format": "pt"})
            index.update({k: fname for k in cur})
            cur, cur_bytes = {}, 0
    if cur:
        fname = f"shard-{n_shards + 1:05d}.safetensors"
        save_file(cur, str(out / fname), metadata={"format": "pt"})
        index.update({k: fname for k in cur})
    files = sorted(set(index.values()))
    if len(files) == 1:
        (out / files[0]).rename(out / "model.safetensors")
    else:
        total = sum(int(np.prod(s)) * 4 for s in param_shapes(cfg).values())
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    (out / ".made").write_text(stamp)
    return out


def _digest(folder: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def snapshot(src: Path, dst: Path) -> Path:
    """Copy a checkpoint folder unless dst already holds the same bytes (keeps mtimes stable)."""
    d = _digest(src)
    if (dst / ".digest").exists() and (dst / ".digest").read_text() == d:
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if _digest(tmp) != d:
        shutil.rmtree(tmp)
        raise SystemExit(f"{src} changed while it was copied: run again")
    (tmp / ".digest").write_text(d)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def demo_pair(work: Path) -> dict:
    """{'target', 'draft', 'weights': 'trained'|'random'}."""
    pair = trained_demo_pair()
    if pair:
        # a snapshot: every system must read the same weights even if the pair is re-exported
        # while the benchmark runs (it was, once: build_sd/llama.cpp/ExecuTorch then disagreed
        # with transformers, which had loaded the newer files)
        out = {"weights": "trained"}
        for role, src in zip(("target", "draft"), pair):
            out[role] = snapshot(src, work / f"demo-{role}")
        return out
    sys.path.insert(0, str(ROOT))
    from build_sd.demo.train import ARCHS, MAX_POSITIONS, ROPE_THETA
    from build_sd.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE
    tok = demo_tokenizer()
    if tok is None:
        raise SystemExit("no demo tokenizer (build_sd/demo/models/target/tokenizer.json or demo/runs/)")
    out = {}
    for role, seed in (("target", 1), ("draft", 2)):
        cfg = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_THETA,
                   rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False,
                   bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **ARCHS[role])
        out[role] = write_random(work / f"demo-{role}-random", cfg, seed, std=0.05, tokenizer=tok)
    out["weights"] = "random"
    return out


def large_models(work: Path) -> dict:
    """The Llama-3.2-1B-shaped target and the ~150M draft (random, f32)."""
    base = json.loads((SHAPES / "llama-3.2-1b" / "config.json").read_text())
    base["max_position_embeddings"] = 131072
    tok = demo_tokenizer()
    t = write_random(work / "llama-3.2-1b-random", base, seed=3, tokenizer=tok)
    dcfg = {k: v for k, v in base.items() if k not in DRAFT_150M}
    dcfg.update(DRAFT_150M)
    d = write_random(work / "draft-150m-random", dcfg, seed=4, tokenizer=tok)
    return {"target": t, "draft": d}


def small_models(work: Path) -> dict:
    """A Llama-3.2-shaped pair small enough for lavapipe (the GPU-box flow checked locally):
    the real vocabulary and tokenizer, hidden 256 / 4 layers (target) and 128 / 2 (draft)."""
    base = json.loads((SHAPES / "llama-3.2-1b" / "config.json").read_text())
    small = dict(base, hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, max_position_embeddings=4096)
    tok = demo_tokenizer()
    t = write_random(work / "llama-small-random", dict(small, num_hidden_layers=4), seed=5, tokenizer=tok)
    d = write_random(work / "draft-small-random", dict(small, hidden_size=128, intermediate_size=352,
                                                        num_attention_heads=2, num_key_value_heads=1,
                                                        num_hidden_layers=2), seed=6, tokenizer=tok)
    return {"target": t, "draft": d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--only", choices=["demo", "large", "small"])
    a = ap.parse_args(argv)
    work = Path(a.out)
    if a.only in (None, "demo"):
        print(json.dumps({k: str(v) for k, v in demo_pair(work).items()}))
    if a.only in (None, "large"):
        print(json.dumps({k: str(v) for k, v in large_models(work).items()}))
    if a.only == "small":
        print(json.dumps({k: str(v) for k, v in small_models(work).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
