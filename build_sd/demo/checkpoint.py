"""A training run's directory: ``RUN/last`` (model + optimizer + RNG states + step, what
``--resume`` continues from) and ``RUN/best`` (the model with the lowest validation loss,
with its tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from build_sd.demo.tokenizer import TOKENIZER_FILE


def has_checkpoint(run: Path) -> bool:
    return (run / "last" / "state.json").exists()


def load_checkpoint(run: Path):
    """The model (fp32) and the state dict of ``RUN/last``."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(run / "last"), dtype=torch.float32)
    return model, json.loads((run / "last" / "state.json").read_text())


def save_checkpoint(run: Path, model, opt, state: dict) -> None:
    # Written to last.tmp, then swapped in: an interrupted save leaves the previous one.
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


def restore_optimizer(run: Path, opt, device) -> None:
    """The optimizer state and the RNG states (dropout masks) of ``RUN/last``."""
    opt.load_state_dict(torch.load(run / "last" / "optimizer.pt", map_location=device))
    rng = torch.load(run / "last" / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_best(run: Path, model, tok_path: Path) -> None:
    model.save_pretrained(str(run / "best"), safe_serialization=True)
    shutil.copy(tok_path, run / "best" / TOKENIZER_FILE)
