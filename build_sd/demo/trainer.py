"""The training loop of ``train.py train``: one run of AdamW on a demo model, with its
learning-rate schedule, progress log, validation (keeping the best model) and checkpoints."""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from build_sd.demo.architectures import count_params, macs_per_token, make_config
from build_sd.demo.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    restore_optimizer,
    save_best,
    save_checkpoint,
)
from build_sd.demo.dataset import collate, encode_all, epoch_batches, train_pairs, valid_pairs
from build_sd.demo.infer import load_model, pick_device
from build_sd.demo.losses import autocast, kd_loss, lm_loss, valid_loss
from build_sd.demo.tokenizer import PAD_ID, TOKENIZER_FILE, load_tokenizer, train_from_corpus


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


class Progress:
    """Sums over the steps since the last progress line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tokens, self.loss, self.n, self.ce, self.kl = 0, 0.0, 0, 0.0, 0.0
        self.since = time.time()


class Trainer:
    """One segment of a run (``args``: the ``train`` subcommand's options): set up in the
    constructor, trained by ``run()``. Keep the set-up in its order: the seeding comes before
    the model's initialisation and the restored RNG states after it, so that ``--seed`` (and
    ``--resume``) reproduce a run."""

    def __init__(self, args) -> None:
        self.args = args
        torch.set_num_threads(args.threads)
        self.device = pick_device(args.device)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.run_dir = Path(args.run)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.run_dir / "train.log")
        self.tok_path = self._tokenizer()
        tok = load_tokenizer(self.tok_path)
        shutil.copy(self.tok_path, self.run_dir / TOKENIZER_FILE)
        self._load_data(tok)
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        self.model, self.state = self._make_model()
        self.teacher = self._make_teacher()
        add_dropout(self.model, args.dropout)
        self.opt = self._make_optimizer()
        if self.state["step"] > 0:
            restore_optimizer(self.run_dir, self.opt, self.device)
        self.log(
            f"{args.arch}: {count_params(self.model) / 1e6:.2f}M params, "
            f"{macs_per_token(self.model.config) / 1e6:.2f}M MACs/token; "
            f"{len(self.data)} train / {len(self.valid)} valid sequences, {sum(self.lens)} tokens/epoch; "
            f"{self.spe} steps/epoch x {args.epochs} epochs = {self.total} steps; device {self.device}"
        )

    # -- set-up ----------------------------------------------------------------------------

    def _tokenizer(self) -> Path:
        """--tokenizer, trained on the corpus first if it does not exist yet."""
        tok_path = Path(self.args.tokenizer)
        if not tok_path.exists():
            tok_path.parent.mkdir(parents=True, exist_ok=True)
            train_from_corpus().save(str(tok_path))
        return tok_path

    def _load_data(self, tok) -> None:
        a = self.args
        kd = Path(a.kd) if a.kd else None
        self.data = encode_all(tok, train_pairs(a.splits, kd, a.kd_ref))
        self.valid = encode_all(tok, valid_pairs(a.splits, kd))
        self.lens = [len(ids) for ids, _ in self.data]
        self.spe = math.ceil(len(self.data) / a.batch)  # steps per epoch
        self.total = self.spe * a.epochs

    def _make_model(self):
        """The model (new, ``--init`` weights, or RUN/last with ``--resume``) and the run's
        state (step, best validation loss, options)."""
        from transformers import LlamaForCausalLM

        a = self.args
        state = {"step": 0, "best_valid": float("inf"), "args": {k: v for k, v in vars(a).items() if k != "fn"}}
        if a.resume and has_checkpoint(self.run_dir):
            model, state = load_checkpoint(self.run_dir)
            self.log(f"resuming from {self.run_dir / 'last'} at step {state['step']}")
        elif a.init:
            # start from these weights (no optimizer state: a fresh schedule with its warm-up)
            model = LlamaForCausalLM.from_pretrained(a.init, dtype=torch.float32)
            model.config.attention_dropout = a.dropout
            self.log(f"initialised from {a.init}")
        else:
            model = LlamaForCausalLM(make_config(a.arch, a.dropout))
        return model.to(self.device).train(), state

    def _make_teacher(self):
        a = self.args
        if not a.teacher:
            return None
        teacher = load_model(a.teacher, self.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.log(f"logit distillation from {a.teacher}: loss = {a.ce_weight} CE + {a.kl_weight} KL")
        return teacher

    def _make_optimizer(self):
        """AdamW, weight decay on the matrices only."""
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.args.wd}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.args.lr,
            betas=(0.9, 0.98),
            eps=1e-8,
        )

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.step = self.start_step = self.state["step"]
        self.wall0 = self.state.get("wall_s", 0.0)
        self.t0 = time.time()
        self.progress = Progress()
        while self.step < self.total:
            epoch, k0 = divmod(self.step, self.spe)
            for batch in epoch_batches(self.lens, a.batch, a.seed, epoch)[k0:]:
                self._train_step(batch)
                if self.step >= self.total or self._max_steps_reached():
                    break
            if self._max_steps_reached():
                break
        el = time.time() - self.t0
        self.log(
            f"done: {self.step} steps, best valid loss {self.state['best_valid']:.4f} at step {self.state.get('best_step')}, "
            f"wall {(self.wall0 + el) / 60:.1f} min (this segment {el / 60:.1f} min)"
        )

    def _max_steps_reached(self) -> bool:
        return bool(self.args.max_steps) and self.step >= self.args.max_steps

    def _train_step(self, batch: list[int]) -> None:
        """One optimisation step, then what falls due at the step reached: a progress line,
        validation, a checkpoint (the latter two at least at each epoch's end)."""
        a = self.args
        lr = self._optimise(batch)
        if self.step % a.log_every == 0 or self.step == self.total:
            self._log_progress(lr)
        end_of_epoch = self.step % self.spe == 0 or self.step == self.total
        if end_of_epoch or self.step % a.valid_every == 0:
            self._validate()
        if end_of_epoch or self.step % a.ckpt_every == 0:
            self._checkpoint()

    def _optimise(self, batch: list[int]) -> float:
        """One AdamW step on these examples; returns its learning rate."""
        a, p = self.args, self.progress
        lr = lr_at(self.step, self.total, a.warmup, a.lr)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x, y = collate([self.data[i] for i in batch], self.device)
        with autocast(self.device, self.autocast_dtype):
            if self.teacher is None:
                loss = lm_loss(self.model, x, y)
            else:
                loss, ce, kl = kd_loss(self.model, self.teacher, x, y, a.ce_weight, a.kl_weight)
                p.ce += ce.item()
                p.kl += kl.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.clip)
        self.opt.step()
        self.step += 1
        p.tokens += int((x != PAD_ID).sum())
        p.loss += loss.item()
        p.n += 1
        return lr

    def _log_progress(self, lr: float) -> None:
        p = self.progress
        dt = time.time() - p.since
        el = time.time() - self.t0
        eta = el / max(1, self.step - self.start_step) * (self.total - self.step)
        parts = f" (ce {p.ce / p.n:.4f} kl {p.kl / p.n:.4f})" if self.teacher is not None else ""
        self.log(
            f"step {self.step}/{self.total} epoch {self.step / self.spe:.2f} loss {p.loss / p.n:.4f}{parts} lr {lr:.2e} "
            f"{p.tokens / dt:.0f} tok/s elapsed {el / 60:.1f} min ETA {eta / 60:.1f} min"
        )
        p.reset()

    def _validate(self) -> None:
        """Validation loss; the model is kept in RUN/best when it is the lowest so far."""
        vl, acc = valid_loss(self.model, self.valid, self.device, self.autocast_dtype, with_acc=True)
        better = vl < self.state["best_valid"]
        self.log(
            f"valid step {self.step} epoch {self.step / self.spe:.2f} loss {vl:.4f} argmax-acc {acc:.4f}"
            + (" (best)" if better else "")
        )
        if better:
            self.state["best_valid"] = vl
            self.state["best_step"] = self.step
            save_best(self.run_dir, self.model, self.tok_path)

    def _checkpoint(self) -> None:
        self.state["step"] = self.step
        self.state["wall_s"] = self.wall0 + (time.time() - self.t0)
        save_checkpoint(self.run_dir, self.model, self.opt, self.state)
