"""CLI of the chat-pair distillation pipeline (everything under --out, default build/chatpair):

    python -m build_sd.chatpair prompts  [--n-train 8000] [--seed 0] [--all-families-from K]   # train_prompts.txt, heldout.txt
    python -m build_sd.chatpair teacher  [--bench] [--batch 64] [--max-new 128] ...   # shards/ (resumable)
    python -m build_sd.chatpair onpolicy [--ckpt runs/draft/best.pt] ...   # shards/op_*: the draft's answers, scored
    python -m build_sd.chatpair train    [--steps N] [--lr ...] ...         # runs/draft/{last,best}.pt (resumable)
    python -m build_sd.chatpair eval     [--ckpt build/chatpair/runs/draft/last.pt]   # held-out alpha
    python -m build_sd.chatpair export   [--ckpt ...] [--dst build_sd/chatpair/models/draft]
    python -m build_sd.chatpair keep                                        # shards' sequences -> data/answers/ (git)
    python -m build_sd.chatpair rescore  [--k 32]                           # data/answers/ -> the missing shards
    python -m build_sd.chatpair features [--only shard]                     # data/answers/ -> features/ (EAGLE head data)
    python -m build_sd.chatpair eagle-train | eagle-eval                    # runs/eagle/, held-out acceptance

Run long jobs with `nice -n 19`; every command takes --threads (default 2).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*past_key_values.*")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_sd.chatpair", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--out", type=Path, default=Path("build/chatpair"))
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        return p

    def shard_args(p, greedy_frac: float, temps: str):
        """What a shard writer (teacher, onpolicy) is told: shard and batch size, answer length,
        top-k kept, the share of greedy answers and the temperatures of the others."""
        p.add_argument("--shard-size", type=int, default=64)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--max-new", type=int, default=128)
        p.add_argument("--k", type=int, default=32)
        p.add_argument("--greedy-frac", type=float, default=greedy_frac)
        p.add_argument("--temps", default=temps)
        p.add_argument("--max-shards", type=int)

    p = common(sub.add_parser("prompts", help="write train_prompts.txt and heldout.txt"))
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-heldout", type=int, default=40)
    p.add_argument("--all-families-from", type=int, metavar="K",
                   help="prompts K.. come from every family, the held-out ones too (the first K stay as "
                        "before; default: train families only)")

    p = common(sub.add_parser("teacher", help="generate the teacher's answers + top-k into shards (resumable)"))
    p.add_argument("--bench", action="store_true", help="only measure decode throughput for a few batch sizes")
    shard_args(p, greedy_frac=0.6, temps="0.7,0.85,1.0")

    p = common(sub.add_parser("onpolicy", help="the draft answers training prompts, the target scores them (resumable)"))
    p.add_argument("--ckpt", type=Path, help="the draft that answers (default OUT/runs/draft/best.pt)")
    shard_args(p, greedy_frac=0.5, temps="0.7,1.0")

    p = common(sub.add_parser("train", help="train the draft on the shards (resumable)"))
    p.add_argument("--run", type=Path, help="default OUT/runs/draft")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=0.7)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-passes", type=float, default=0,
                   help="wait for new shards once answer tokens seen >= this x the data's (0: never wait)")
    p.add_argument("--neg", type=int, default=0, help="sampled softmax: candidates + N random ids (0: full vocab)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between held-out alpha checks (0: never)")
    p.add_argument("--head-vocab", type=int, default=0,
                   help="a new run's LM head scores only the K ids the teacher writes most (0: all ids)")
    p.add_argument("--init-layers", help="a new run's draft is these layers of the target (e.g. 0,29): its width, "
                                         "embedding and head (default: a narrow draft, models.DRAFT)")
    p.add_argument("--init", type=Path, help="a new run starts from this exported draft folder (e.g. "
                                             "build_sd/chatpair/models/draft) instead of a fresh one")
    p.add_argument("--device", default=None)

    p = common(sub.add_parser("eval", help="greedy alpha of a draft on the held-out prompts"))
    p.add_argument("--ckpt", type=Path, help="a train checkpoint (.pt) or an HF folder; default OUT/runs/draft/last.pt")
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--json", type=Path)

    p = common(sub.add_parser("export", help="write the best draft as an f16 HF folder + model card"))
    p.add_argument("--ckpt", type=Path, help="default OUT/runs/draft/best.pt")
    p.add_argument("--dst", type=Path, default=Path(__file__).parent / "models" / "draft")
    p.add_argument("--eval-json", type=Path, help="default OUT/eval_best.json")

    common(sub.add_parser("keep", help="store the shards' sequences (not their top-k) under "
                                       "build_sd/chatpair/data/answers, to commit: build/ does not outlive a machine"))
    p = common(sub.add_parser("rescore", help="rebuild the shards data/answers has and OUT/shards lacks: one "
                                              "teacher-forced pass of the target per sequence"))
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)

    p = common(sub.add_parser("features", help="the target's last hidden states + top-k over data/answers/ "
                                               "(feature-level draft data; resumable)"))
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--only", help="only the shards whose name starts so (e.g. shard)")
    p.add_argument("--max-shards", type=int)

    p = common(sub.add_parser("eagle-train", help="train the feature-level draft head on features/ (resumable)"))
    p.add_argument("--run", type=Path, help="default OUT/runs/eagle")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--noise", type=float, default=0.1, help="uniform feature noise, x the features' RMS")
    p.add_argument("--p-weight", type=float, default=0.1, help="weight of the token loss (the feature loss: 1)")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--unroll", type=int, default=1, help="drafting steps trained at once (training-time test; 1: step 1 only)")
    p.add_argument("--init", type=Path, help="a new run starts from this run's checkpoint (e.g. runs/eagle/last.pt)")

    p = common(sub.add_parser("eagle-eval", help="replay greedy speculative decoding with the head on the held-out prompts"))
    p.add_argument("--ckpt", type=Path, help="default OUT/runs/eagle/last.pt")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--draft", type=Path, default=Path(__file__).parent / "models" / "draft",
                   help="the token-level draft replayed beside it")
    p.add_argument("--json", type=Path)

    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    if a.cmd == "prompts":
        from . import prompts
        print(prompts.describe())
        print(*prompts.write(a.out, a.n_train, a.n_heldout, a.seed, a.all_families_from))
    elif a.cmd == "teacher":
        from . import teacher
        if a.bench:
            teacher.bench(a.out, threads=a.threads)
        else:
            teacher.run(a.out, a.shard_size, a.batch, a.max_new, a.k, a.greedy_frac,
                        tuple(float(x) for x in a.temps.split(",")), a.seed, a.max_shards, a.threads)
    elif a.cmd == "onpolicy":
        from . import onpolicy
        onpolicy.run(a.out, a.ckpt or a.out / "runs" / "draft" / "best.pt", a.shard_size, a.batch, a.max_new, a.k,
                     a.greedy_frac, tuple(float(x) for x in a.temps.split(",")), a.seed, a.max_shards, a.threads)
    elif a.cmd == "train":
        from . import train
        train.run(a)
    elif a.cmd == "eval":
        from . import evaluate
        evaluate.main(a)
    elif a.cmd == "export":
        from . import export
        export.main(a)
    elif a.cmd == "keep":
        from . import keep
        print(f"kept {keep.keep(a.out)} new shards' sequences in {keep.ANSWERS}")
    elif a.cmd == "rescore":
        from . import keep
        print(f"rebuilt {keep.rescore(a.out, k=a.k, batch=a.batch, threads=a.threads)} shards in {a.out / 'shards'}")
    elif a.cmd == "features":
        from . import features
        features.main(a)
    elif a.cmd == "eagle-train":
        from . import eagle
        eagle.train(a)
    elif a.cmd == "eagle-eval":
        from . import eagle
        eagle.evaluate(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
