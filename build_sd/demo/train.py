"""Train the demo pair (English->German target and its draft) from scratch.

Steps (each a subcommand; ``runs/`` is scratch space, not committed)::

    python -m build_sd.demo.train tokenizer                       # runs/tokenizer.json
    python -m build_sd.demo.train splits --out runs/splits         # train/valid/extra TSVs
    python -m build_sd.demo.train train --arch target --run runs/target --epochs 5
    python -m build_sd.demo.train distil --model runs/target/best --out runs/kd.tsv \
        --extra runs/splits/extra.tsv
    python -m build_sd.demo.train train --arch draft --run runs/draft --kd runs/kd.tsv \
        --teacher runs/target/best --epochs 16
    python -m build_sd.demo.train export --src runs/target/best --dst models/target
    python -m build_sd.demo.train export --src runs/draft/best --dst models/draft

(relative paths are taken under ``build_sd/demo/``; ``models/README.md`` has the exact
commands and settings of the committed pair). ``train`` writes a checkpoint (model +
optimizer + step + RNG states) to ``RUN/last`` every ``--ckpt-every`` steps and at each
epoch end, keeps the model with the lowest validation loss in ``RUN/best``, logs to
``RUN/train.log``, and continues from ``RUN/last`` with ``--resume``; ``--init DIR``
starts a new run (fresh optimizer and schedule) from DIR's weights. The data order,
initialisation and dropout masks follow from ``--seed``. CPU by default (fp32), CUDA when
present (bf16 autocast). ``--splits DIR`` reads train/valid from the TSVs that ``splits``
wrote, for a machine without the gettext catalogs.

Loss: next-token cross-entropy on the German tokens and the closing ``</s>`` only (the
prompt ``<s>english => `` is context). The draft is distilled from the target:
sequence-level (trained on the target's greedy translations of the train English and of
the extra English inputs, ``distil``) and, with ``--teacher``, token-level too
(``--ce-weight`` x CE on those tokens + ``--kl-weight`` x KL(target || draft) at each
German position, the target run alongside under teacher forcing); both raise the pair's
acceptance rate.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from build_sd.demo import DEMO_DIR
from build_sd.demo.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TOKENIZER_FILE,
    VOCAB_SIZE,
    encode_pair,
    load_tokenizer,
    train_from_corpus,
)

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


def demo_path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else DEMO_DIR / p


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


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def read_pairs_tsv(path: Path) -> list[tuple[str, str]]:
    from build_sd.demo.corpus import read_tsv

    return [(p.en, p.de) for p in read_tsv(path)]


def load_split_from(name: str, splits: str | None):
    """A split's pairs: from SPLITS/NAME.tsv when given (written by the ``splits`` step, for
    machines without the catalogs), else rebuilt from this machine's catalogs."""
    from build_sd.demo.corpus import load_split, read_tsv

    if splits:
        return read_tsv(demo_path(splits) / f"{name}.tsv")
    return load_split(name)


def extra_english(catalog_root: Path = Path("/usr/share/locale")) -> list[tuple[str, str]]:
    """(english, "locale:catalog") of the msgids that other locales' catalogs translate but
    the German corpus lacks: cleaned like the corpus (accelerators, whitespace, >= 3 words,
    <= 200 characters), de-duplicated, and only those that corpus.split_of puts in 'train'
    (so no valid or test sentence can appear). Inputs for distillation only."""
    import struct as _struct

    from build_sd.demo.corpus import (
        MAX_CHARS,
        MIN_EN_WORDS,
        MoError,
        catalog_paths,
        load_pairs,
        normalize_ws,
        read_catalog,
        split_of,
        strip_accelerators,
    )

    seen = {p.en for p in load_pairs()}
    out = []
    for loc in sorted(d for d in catalog_root.iterdir() if d.is_dir() and d.name != "de"):
        for path in catalog_paths(loc / "LC_MESSAGES"):
            try:
                entries, _ = read_catalog(path.read_bytes())
            except (OSError, MoError, _struct.error):
                continue
            for en, tr in entries:
                if not tr.strip():
                    continue
                en = normalize_ws(strip_accelerators(en, tr)[0])
                if en in seen or len(en.split()) < MIN_EN_WORDS or len(en) > MAX_CHARS or "\t" in en:
                    continue
                seen.add(en)
                if split_of(en) == "train":
                    out.append((en, f"{loc.name}:{path.stem}"))
    return out


def encode_all(tok, pairs: list[tuple[str, str]], max_len: int = MAX_POSITIONS):
    out = []
    for en, de in pairs:
        ids, start = encode_pair(tok, en, de)
        if len(ids) <= max_len:
            out.append((ids, start))
    return out


def epoch_batches(n_lens: list[int], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, then sorted by length within
    windows of 50 batches (little padding), then the batches shuffled."""
    rng = random.Random(seed * 100003 + epoch)
    idx = list(range(len(n_lens)))
    rng.shuffle(idx)
    win = batch * 50
    batches = []
    for k in range(0, len(idx), win):
        w = sorted(idx[k : k + win], key=lambda i: n_lens[i])
        batches += [w[j : j + batch] for j in range(0, len(w), batch)]
    rng.shuffle(batches)
    return batches


def collate(examples, device):
    width = max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), width), PAD_ID, dtype=torch.long)
    y = torch.full((len(examples), width), -100, dtype=torch.long)
    for r, (ids, start) in enumerate(examples):
        t = torch.tensor(ids)
        x[r, : len(ids)] = t
        y[r, start : len(ids)] = t[start:]
    return x.to(device), y.to(device)


def lm_loss(model, x, y):
    """Mean cross-entropy of the labelled tokens. Right padding needs no attention mask:
    causal attention never lets a real token see the pads after it."""
    logits = model(input_ids=x).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), y[:, 1:].reshape(-1), ignore_index=-100
    )


def kd_loss(model, teacher, x, y, ce_weight: float, kl_weight: float):
    """Token-level distillation: ce_weight * CE(labels) + kl_weight * KL(teacher || model),
    both averaged over the labelled positions (teacher forcing on the same sequence, the
    teacher's distribution at temperature 1). Returns (loss, ce, kl)."""
    logits = model(input_ids=x).logits[:, :-1]
    lab = y[:, 1:]
    sel = lab != -100
    s = logits[sel].float()
    ce = F.cross_entropy(s, lab[sel])
    with torch.no_grad():
        t = teacher(input_ids=x).logits[:, :-1][sel].float()
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return ce_weight * ce + kl_weight * kl, ce.detach(), kl.detach()


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def add_dropout(model, p: float) -> None:
    """Dropout on the embeddings and on each MLP's output (training only). Llama has no
    residual dropout of its own; this data set is small enough to need some."""
    if p <= 0:
        return

    def hook(mod, inp, out):
        return F.dropout(out, p, mod.training)

    model.model.embed_tokens.register_forward_hook(hook)
    for layer in model.model.layers:
        layer.mlp.register_forward_hook(hook)


def lr_at(step: int, total: int, warmup: int, lr: float, min_ratio: float = 0.1) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class Log:
    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def save_checkpoint(run: Path, model, opt, state: dict) -> None:
    tmp = run / "last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    torch.save(
        {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        tmp / "rng.pt",
    )
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    last = run / "last"
    old = run / "last.old"
    if last.exists():
        if old.exists():
            shutil.rmtree(old)
        last.rename(old)
    tmp.rename(last)
    if old.exists():
        shutil.rmtree(old)


@torch.no_grad()
def valid_loss(model, data, device, autocast_dtype, batch: int = 64, with_acc: bool = False):
    """Mean CE of the labelled tokens (and, with with_acc, the fraction of them that are the
    model's argmax: for a distilled draft, its agreement with the target's greedy tokens)."""
    model.eval()
    tot, n, hit = 0.0, 0, 0
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    for k in range(0, len(order), batch):
        ex = [data[i] for i in order[k : k + batch]]
        x, y = collate(ex, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(), y[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        tot += loss.item()
        n += int((y[:, 1:] != -100).sum())
        hit += int(((logits[:, :-1].argmax(-1) == y[:, 1:]) & (y[:, 1:] != -100)).sum())
    model.train()
    return (tot / max(1, n), hit / max(1, n)) if with_acc else tot / max(1, n)


def cmd_tokenizer(args) -> None:
    out = demo_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = train_from_corpus()
    tok.save(str(out))
    print(f"wrote {out} (vocab {tok.get_vocab_size()})")


def cmd_train(args) -> None:
    from transformers import LlamaForCausalLM

    from build_sd.demo.infer import load_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    run = demo_path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    log = Log(run / "train.log")
    tok_path = demo_path(args.tokenizer)
    if not tok_path.exists():
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        train_from_corpus().save(str(tok_path))
    tok = load_tokenizer(tok_path)
    shutil.copy(tok_path, run / TOKENIZER_FILE)

    train_split = load_split_from("train", args.splits)
    if args.kd:
        kd = read_pairs_tsv(demo_path(args.kd))
        pairs = list(kd)
        if args.kd_ref:
            kd_de = dict(kd)
            pairs += [(p.en, p.de) for p in train_split if kd_de.get(p.en) != p.de]
    else:
        pairs = [(p.en, p.de) for p in train_split]
    data = encode_all(tok, pairs)
    if args.kd and kd_valid_path(demo_path(args.kd)).exists():
        # distilled model: select on the target's translations of the valid split
        valid = encode_all(tok, read_pairs_tsv(kd_valid_path(demo_path(args.kd))))
    else:
        valid = encode_all(tok, [(p.en, p.de) for p in load_split_from("valid", args.splits)])
    lens = [len(ids) for ids, _ in data]
    spe = math.ceil(len(data) / args.batch)
    total = spe * args.epochs

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    state = {"step": 0, "best_valid": float("inf"), "args": {k: v for k, v in vars(args).items() if k != "fn"}}
    if args.resume and (run / "last" / "state.json").exists():
        model = LlamaForCausalLM.from_pretrained(str(run / "last"), dtype=torch.float32)
        state = json.loads((run / "last" / "state.json").read_text())
        log(f"resuming from {run / 'last'} at step {state['step']}")
    elif args.init:
        # start from these weights (no optimizer state: a fresh schedule with its warm-up)
        model = LlamaForCausalLM.from_pretrained(str(demo_path(args.init)), dtype=torch.float32)
        model.config.attention_dropout = args.dropout
        log(f"initialised from {demo_path(args.init)}")
    else:
        model = LlamaForCausalLM(make_config(args.arch, args.dropout))
    model.to(device).train()
    teacher = None
    if args.teacher:
        teacher = load_model(demo_path(args.teacher), device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        log(f"logit distillation from {demo_path(args.teacher)}: loss = {args.ce_weight} CE + {args.kl_weight} KL")
    add_dropout(model, args.dropout)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    if state["step"] > 0:
        opt.load_state_dict(torch.load(run / "last" / "optimizer.pt", map_location=device))
        rng = torch.load(run / "last" / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    log(
        f"{args.arch}: {count_params(model) / 1e6:.2f}M params, {macs_per_token(model.config) / 1e6:.2f}M MACs/token; "
        f"{len(data)} train / {len(valid)} valid sequences, {sum(lens)} tokens/epoch; "
        f"{spe} steps/epoch x {args.epochs} epochs = {total} steps; device {device}"
    )

    step = start_step = state["step"]
    wall0 = state.get("wall_s", 0.0)
    t0 = time.time()
    tok_count, loss_acc, loss_n, ce_acc, kl_acc = 0, 0.0, 0, 0.0, 0.0
    t_last = time.time()
    while step < total:
        epoch, k0 = divmod(step, spe)
        batches = epoch_batches(lens, args.batch, args.seed, epoch)
        for k in range(k0, len(batches)):
            lr = lr_at(step, total, args.warmup, args.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = collate([data[i] for i in batches[k]], device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if teacher is None:
                    loss = lm_loss(model, x, y)
                else:
                    loss, ce, kl = kd_loss(model, teacher, x, y, args.ce_weight, args.kl_weight)
                    ce_acc += ce.item()
                    kl_acc += kl.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step += 1
            tok_count += int((x != PAD_ID).sum())
            loss_acc += loss.item()
            loss_n += 1
            if step % args.log_every == 0 or step == total:
                dt = time.time() - t_last
                el = time.time() - t0
                eta = el / max(1, step - start_step) * (total - step)
                parts = f" (ce {ce_acc / loss_n:.4f} kl {kl_acc / loss_n:.4f})" if teacher is not None else ""
                log(
                    f"step {step}/{total} epoch {step / spe:.2f} loss {loss_acc / loss_n:.4f}{parts} lr {lr:.2e} "
                    f"{tok_count / dt:.0f} tok/s elapsed {el / 60:.1f} min ETA {eta / 60:.1f} min"
                )
                tok_count, loss_acc, loss_n, ce_acc, kl_acc, t_last = 0, 0.0, 0, 0.0, 0.0, time.time()
            end_of_epoch = step % spe == 0 or step == total
            if end_of_epoch or step % args.valid_every == 0:
                vl, acc = valid_loss(model, valid, device, autocast_dtype, with_acc=True)
                better = vl < state["best_valid"]
                log(f"valid step {step} epoch {step / spe:.2f} loss {vl:.4f} argmax-acc {acc:.4f}" + (" (best)" if better else ""))
                if better:
                    state["best_valid"] = vl
                    state["best_step"] = step
                    model.save_pretrained(str(run / "best"), safe_serialization=True)
                    shutil.copy(tok_path, run / "best" / TOKENIZER_FILE)
            if end_of_epoch or step % args.ckpt_every == 0:
                state["step"] = step
                state["wall_s"] = wall0 + (time.time() - t0)
                save_checkpoint(run, model, opt, state)
            if step >= total or (args.max_steps and step >= args.max_steps):
                break
        if args.max_steps and step >= args.max_steps:
            break
    log(f"done: {step} steps, best valid loss {state['best_valid']:.4f} at step {state.get('best_step')}, "
        f"wall {(wall0 + time.time() - t0) / 60:.1f} min (this segment {(time.time() - t0) / 60:.1f} min)")


def cmd_distil(args) -> None:
    from build_sd.demo.corpus import Pair, read_tsv
    from build_sd.demo.infer import load_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    src = demo_path(args.model)
    model = load_model(src, device)
    tok = load_tokenizer(src)
    for split in ("valid", "train"):
        pairs = load_split_from(split, args.splits)
        if split == "train" and args.extra:
            extra = read_tsv(demo_path(args.extra))
            print(f"+ {len(extra)} English inputs from {demo_path(args.extra)}", flush=True)
            pairs = pairs + [Pair(p.en, "", p.catalog) for p in extra]
        if args.limit:
            pairs = pairs[: args.limit]
        out = demo_path(args.out)
        if split == "valid":
            out = kd_valid_path(out)
        _distil_split(model, tok, pairs, out, args.batch)


def kd_valid_path(kd: Path) -> Path:
    """runs/kd.tsv -> runs/kd.valid.tsv: the target's translations of the valid split."""
    return kd.with_name(kd.stem + ".valid" + kd.suffix)


def _distil_split(model, tok, train, out: Path, batch: int) -> None:
    from build_sd.demo.corpus import Pair, write_tsv
    from build_sd.demo.infer import translate

    t0 = time.time()

    def prog(i, n):
        if i % (batch * 10) < batch or i == n:
            el = time.time() - t0
            print(f"{time.strftime('%H:%M:%S')} distil {i}/{n} {el / 60:.1f} min ETA {el / i * (n - i) / 60:.1f} min", flush=True)

    res = translate(model, tok, [p.en for p in train], batch_size=batch, progress=prog, with_finished=True, length_cap=(1.5, 8))
    outs = [o for o, _ in res]
    kd = [
        Pair(p.en, " ".join(o.split()), p.catalog)
        for p, (o, finished) in zip(train, res)
        if finished and o.strip()
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(kd, out)
    same = sum(p.de == o for p, o in zip(train, outs))
    print(f"wrote {len(kd)} pairs to {out}; {same} equal to the reference; {(time.time() - t0) / 60:.1f} min")


def cmd_splits(args) -> None:
    """Write train/valid (and the extra English inputs) as TSV, for a machine without the
    catalogs (train/distil --splits DIR)."""
    from build_sd.demo.corpus import Pair, load_split, write_tsv

    out = demo_path(args.out)
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

    src, dst = demo_path(args.src), demo_path(args.dst)
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
        tok_src = demo_path(args.tokenizer)
    shutil.copy(tok_src, dst / TOKENIZER_FILE)
    size = sum(f.stat().st_size for f in dst.iterdir())
    print(f"exported {src} -> {dst}: {count_params(model) / 1e6:.2f}M params, {size / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m build_sd.demo.train", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("tokenizer", help="train the BPE tokenizer on the train split")
    a.add_argument("--out", default="runs/tokenizer.json")
    a.set_defaults(fn=cmd_tokenizer)

    a = sub.add_parser("train", help="train a model")
    a.add_argument("--arch", choices=sorted(ARCHS), required=True)
    a.add_argument("--run", required=True, help="run directory (checkpoints, log)")
    a.add_argument("--tokenizer", default="runs/tokenizer.json")
    a.add_argument("--kd", help="train on this TSV (target's translations) instead of the references")
    a.add_argument("--kd-ref", action="store_true", help="with --kd: add the references that differ")
    a.add_argument("--splits", help="read train/valid from DIR/{train,valid}.tsv instead of the catalogs")
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

    a = sub.add_parser("distil", help="the target's greedy translations of the train split")
    a.add_argument("--model", required=True)
    a.add_argument("--out", default="runs/kd.tsv")
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--limit", type=int, default=0)
    a.add_argument("--splits", help="read train/valid from DIR/{train,valid}.tsv instead of the catalogs")
    a.add_argument("--extra", help="TSV of further English inputs (splits' extra.tsv) to translate into --out")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default=None)
    a.set_defaults(fn=cmd_distil)

    a = sub.add_parser("splits", help="write train/valid/extra TSVs (for a machine without the catalogs)")
    a.add_argument("--out", default="runs/splits")
    a.set_defaults(fn=cmd_splits)

    a = sub.add_parser("export", help="write an f16 HF checkpoint + tokenizer.json")
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--tokenizer", default="runs/tokenizer.json")
    a.set_defaults(fn=cmd_export)

    args = ap.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
