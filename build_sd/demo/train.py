"""Train the demo pair (English->German target and its draft) from scratch.

Steps (each a subcommand; run them from ``build_sd/demo/`` of a source checkout, where
``runs/`` is scratch space, not committed)::

    cd build_sd/demo
    python -m build_sd.demo.train tokenizer                       # runs/tokenizer.json
    python -m build_sd.demo.train splits --out runs/splits         # train/valid/extra TSVs
    python -m build_sd.demo.train train --arch target --run runs/target --epochs 5
    python -m build_sd.demo.train distil --model runs/target/best --out runs/kd.tsv \
        --extra runs/splits/extra.tsv
    python -m build_sd.demo.train train --arch draft --run runs/draft --kd runs/kd.tsv \
        --teacher runs/target/best --epochs 16
    python -m build_sd.demo.train export --src runs/target/best --dst models/target
    python -m build_sd.demo.train export --src runs/draft/best --dst models/draft

(relative paths are taken under the current folder, so from ``build_sd/demo/`` the last two
write the committed ``models/``; ``models/README.md`` has the exact commands and settings of
the committed pair). ``train`` writes a checkpoint (model + optimizer + step + RNG states)
to ``RUN/last`` every ``--ckpt-every`` steps and at each epoch end, keeps the model with the
lowest validation loss in ``RUN/best``, logs to ``RUN/train.log``, and continues from
``RUN/last`` with ``--resume``; ``--init DIR`` starts a new run (fresh optimizer and
schedule) from DIR's weights. The data order, initialisation and dropout masks follow from
``--seed``. CPU by default (fp32), CUDA when present (bf16 autocast). ``--splits DIR`` reads
train/valid from the TSVs that ``splits`` wrote, for a machine without the gettext catalogs.

Loss: next-token cross-entropy on the German tokens and the closing ``</s>`` only (the
prompt ``<s>english => `` is context). The draft is distilled from the target:
sequence-level (trained on the target's greedy translations of the train English and of
the extra English inputs, ``distil``) and, with ``--teacher``, token-level too
(``--ce-weight`` x CE on those tokens + ``--kl-weight`` x KL(target || draft) at each
German position, the target run alongside under teacher forcing); both raise the pair's
acceptance rate.

The work is done in ``trainer.py`` (the loop), ``losses.py``, ``dataset.py``,
``checkpoint.py``, ``distil.py`` and ``architectures.py``; this module is the command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

# ARCHS, MAX_POSITIONS, ROPE_THETA and macs_per_token are imported from here by
# benchmarks/models.py and evaluate.py.
from build_sd.demo.architectures import ARCHS, MAX_POSITIONS, ROPE_THETA, count_params, macs_per_token
from build_sd.demo.tokenizer import TOKENIZER_FILE, load_tokenizer, train_from_corpus

__all__ = ["ARCHS", "MAX_POSITIONS", "ROPE_THETA", "macs_per_token", "main"]


def cmd_tokenizer(args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = train_from_corpus()
    tok.save(str(out))
    print(f"wrote {out} (vocab {tok.get_vocab_size()})")


def cmd_train(args) -> None:
    from build_sd.demo.trainer import Trainer

    Trainer(args).run()


def cmd_distil(args) -> None:
    from build_sd.demo.corpus import Pair, read_tsv
    from build_sd.demo.dataset import kd_valid_path, load_split_from
    from build_sd.demo.distil import distil_split
    from build_sd.demo.infer import load_model, pick_device

    torch.set_num_threads(args.threads)
    src = Path(args.model)
    model = load_model(src, pick_device(args.device))
    tok = load_tokenizer(src)
    for split in ("valid", "train"):
        pairs = load_split_from(split, args.splits)
        if split == "train" and args.extra:
            extra = read_tsv(args.extra)
            print(f"+ {len(extra)} English inputs from {args.extra}", flush=True)
            pairs = pairs + [Pair(p.en, "", p.catalog) for p in extra]
        if args.limit:
            pairs = pairs[: args.limit]
        out = Path(args.out)
        if split == "valid":
            out = kd_valid_path(out)
        distil_split(model, tok, pairs, out, args.batch)


def cmd_splits(args) -> None:
    """Write train/valid (and the extra English inputs) as TSV, for a machine without the
    catalogs (train/distil --splits DIR)."""
    from build_sd.demo.corpus import Pair, load_split, write_tsv
    from build_sd.demo.distil import extra_english

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid"):
        pairs = load_split(name)
        write_tsv(pairs, out / f"{name}.tsv")
        print(f"{name}: {len(pairs)} pairs -> {out / (name + '.tsv')}")
    extra = extra_english()
    write_tsv([Pair(en, "", cat) for en, cat in extra], out / "extra.tsv")
    print(f"extra English (other locales' catalogs, train hash range): {len(extra)} -> {out / 'extra.tsv'}")


def cmd_export(args) -> None:
    from transformers import LlamaForCausalLM

    src, dst = Path(args.src), Path(args.dst)
    model = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.config.attention_dropout = 0.0
    model = model.to(torch.float16)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst), safe_serialization=True)
    cfg_path = dst / "config.json"
    cfg = json.loads(cfg_path.read_text())
    # Plain Llama keys for any loader: rope_theta at top level, no rope_scaling, f16.
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        assert rp.get("rope_type", "default") == "default", rp
        cfg["rope_theta"] = float(rp.get("rope_theta", ROPE_THETA))
    cfg.setdefault("rope_theta", ROPE_THETA)
    cfg.pop("rope_scaling", None)
    cfg["torch_dtype"] = "float16"
    cfg["dtype"] = "float16"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_src = src / TOKENIZER_FILE
    if not tok_src.exists():
        tok_src = Path(args.tokenizer)
    shutil.copy(tok_src, dst / TOKENIZER_FILE)
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"exported {src} -> {dst}: {count_params(model) / 1e6:.2f}M params, {size / 1e6:.1f} MB")


SPLITS_HELP = "read train/valid from DIR/{train,valid}.tsv instead of the catalogs"


def add_tokenizer_parser(sub) -> None:
    a = sub.add_parser("tokenizer", help="train the BPE tokenizer on the train split")
    a.add_argument("--out", default="runs/tokenizer.json")
    a.set_defaults(fn=cmd_tokenizer)


def add_train_parser(sub) -> None:
    a = sub.add_parser("train", help="train a model")
    a.add_argument("--arch", choices=sorted(ARCHS), required=True)
    a.add_argument("--run", required=True, help="run directory (checkpoints, log)")
    a.add_argument("--tokenizer", default="runs/tokenizer.json")
    a.add_argument("--kd", help="train on this TSV (target's translations) instead of the references")
    a.add_argument("--kd-ref", action="store_true", help="with --kd: add the references that differ")
    a.add_argument("--splits", help=SPLITS_HELP)
    a.add_argument("--init", help="start from this checkpoint's weights (fresh optimizer and schedule)")
    a.add_argument("--teacher", help="logit distillation: KL(teacher || model) at each labelled position")
    a.add_argument("--ce-weight", type=float, default=1.0, help="with --teacher: weight of the CE term")
    a.add_argument("--kl-weight", type=float, default=1.0, help="with --teacher: weight of the KL term")
    a.add_argument("--epochs", type=int, default=7)
    a.add_argument("--batch", type=int, default=64, help="sequences per step")
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--warmup", type=int, default=300)
    a.add_argument("--wd", type=float, default=0.1)
    a.add_argument("--dropout", type=float, default=0.1)
    a.add_argument("--clip", type=float, default=1.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--resume", action="store_true")
    a.add_argument("--max-steps", type=int, default=0, help="stop after this step (the schedule is unchanged)")
    a.add_argument("--ckpt-every", type=int, default=200)
    a.add_argument("--valid-every", type=int, default=1000)
    a.add_argument("--log-every", type=int, default=50)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default=None)
    a.set_defaults(fn=cmd_train)


def add_distil_parser(sub) -> None:
    a = sub.add_parser("distil", help="the target's greedy translations of the train split")
    a.add_argument("--model", required=True)
    a.add_argument("--out", default="runs/kd.tsv")
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--splits", help=SPLITS_HELP)
    a.add_argument("--extra", help="TSV of further English inputs (splits' extra.tsv) to translate into --out")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default=None)
    a.set_defaults(fn=cmd_distil)


def add_splits_parser(sub) -> None:
    a = sub.add_parser("splits", help="write train/valid/extra TSVs (for a machine without the catalogs)")
    a.add_argument("--out", default="runs/splits")
    a.set_defaults(fn=cmd_splits)


def add_export_parser(sub) -> None:
    a = sub.add_parser("export", help="write an f16 HF checkpoint + tokenizer.json")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--tokenizer", default="runs/tokenizer.json")
    a.set_defaults(fn=cmd_export)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_sd.demo.train", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (add_tokenizer_parser, add_train_parser, add_distil_parser, add_splits_parser, add_export_parser):
        add(sub)
    args = ap.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
