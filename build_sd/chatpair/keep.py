"""Keep the costly part of the distillation data in the repository; rebuild the shards from it.

A session's machine is fresh: build/ does not survive it, and the shards took hours (the teacher
generates ~170 answer tokens/s on 2 cores; 1.5M tokens were lost with one machine). Most of a shard's
bytes are the target's top-k (32 ids + 32 log-probs per answer token, ~190 bytes) but most of its
cost is the generation: the top-k of a given sequence is one teacher-forced pass of the target, the
same numbers up to float rounding (teacher.py), several times faster than generating. So `keep`
stores the sequences only (token ids as uint16, offsets, answer starts, temperatures, flags: ~1.6
bytes per answer token, compressed) under build_sd/chatpair/data/answers/, one file per shard named
by its content, and `rescore` rebuilds the missing shards from them with that pass.

    python -m build_sd.chatpair keep    [--out build/chatpair]    # shards/ -> data/answers/ (new ones)
    python -m build_sd.chatpair rescore [--out build/chatpair]    # data/answers/ -> shards/ (missing ones)

A kept teacher shard comes back under its own name (shard_NNNNN.npz: `teacher` then skips it, as its
prompts and seed make the same answers); an on-policy one under its kept name (op_NNNNN-HASH.npz:
answers of whichever draft made them, never regenerated).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from . import log_to

ANSWERS = Path(__file__).parent / "data" / "answers"
# what a kept file holds: everything of a shard but the target's top-k
SEQ_KEYS = ("seq_off", "ans_start", "temp", "finished", "prompt_idx")
EXTRA_KEYS = ("policy", "draft_step")


def content_name(stem: str, z) -> str:
    """shard_00012 -> shard_00012-1a2b3c4d: the same sequences, the same name on any machine."""
    h = hashlib.sha256(np.ascontiguousarray(z["ids"], np.int32).tobytes())
    h.update(np.ascontiguousarray(z["seq_off"], np.int64).tobytes())
    return f"{stem}-{h.hexdigest()[:8]}"


def keep(out: Path, dst: Path = ANSWERS) -> int:
    """Store every shard of out/shards whose sequences are not kept yet; returns how many."""
    from .train import list_shards
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for name in list_shards(out):
        z = np.load(out / "shards" / name)
        if "-" in Path(name).stem:                   # rescored from a kept file: kept already
            continue
        path = dst / f"{content_name(Path(name).stem, z)}.npz"
        if path.exists():
            continue
        if int(z["ids"].max(initial=0)) >= 2 ** 16:
            raise ValueError(f"{name}: token ids beyond uint16")
        arrays = {"ids": z["ids"].astype(np.uint16), **{k: z[k] for k in SEQ_KEYS},
                  **{k: z[k] for k in EXTRA_KEYS if k in z.files}}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        tmp.replace(path)
        n += 1
    return n


def shard_name(kept: Path) -> str:
    """The shard a kept file rebuilds: a teacher shard's own name, an on-policy shard's kept name."""
    stem = kept.stem
    return (stem.split("-")[0] if stem.startswith("shard_") else stem) + ".npz"


def rescore_file(target, kept: Path, k: int, batch: int = 16) -> dict:
    """A kept file's shard arrays, the top-k from one teacher-forced pass of `target`."""
    from .onpolicy import score
    z = np.load(kept)
    ids, off, st = z["ids"].astype(np.int32), z["seq_off"], z["ans_start"]
    seqs = [ids[off[i]:off[i + 1]].tolist() for i in range(len(st))]
    scored = score(target, seqs, [int(s) for s in st], k, batch)
    return dict(ids=ids, **{key: z[key] for key in SEQ_KEYS},
                topk_ids=np.concatenate([x[0] for x in scored]), topk_logp=np.concatenate([x[1] for x in scored]),
                **{key: z[key] for key in EXTRA_KEYS if key in z.files})


def rescore(out: Path, src: Path = ANSWERS, k: int = 32, batch: int = 16, threads: int = 2) -> int:
    """Rebuild every shard of out/shards that a kept file has and out/shards lacks; returns how many."""
    import torch

    from .teacher import load_target, save_atomic
    todo = [p for p in sorted(src.glob("*.npz")) if not (out / "shards" / shard_name(p)).exists()]
    if not todo:
        return 0
    torch.set_num_threads(threads)
    _, target = load_target()
    t0, tokens = time.time(), 0
    for i, p in enumerate(todo, 1):
        arr = rescore_file(target, p, k, batch)
        save_atomic(out / "shards" / shard_name(p), arr)
        tokens += len(arr["topk_ids"])
        log_to(out / "rescore.log", f"{p.name} -> shards/{shard_name(p)}: {len(arr['topk_ids'])} answer tokens "
                                    f"({i}/{len(todo)}; {tokens / (time.time() - t0):.0f} tok/s)")
    return len(todo)
