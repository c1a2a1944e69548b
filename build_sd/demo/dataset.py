"""Training data of the demo pair: which pairs a run trains and validates on, their token
ids, and the batches of one epoch."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from build_sd.demo.architectures import MAX_POSITIONS
from build_sd.demo.tokenizer import PAD_ID, encode_pair


def read_pairs_tsv(path: Path) -> list[tuple[str, str]]:
    from build_sd.demo.corpus import read_tsv

    return [(p.en, p.de) for p in read_tsv(path)]


def load_split_from(name: str, splits: str | None):
    """A split's pairs: from SPLITS/NAME.tsv when given (written by the ``splits`` step, for
    machines without the catalogs), else rebuilt from this machine's catalogs."""
    from build_sd.demo.corpus import load_split, read_tsv

    if splits:
        return read_tsv(Path(splits) / f"{name}.tsv")
    return load_split(name)


def kd_valid_path(kd: Path) -> Path:
    """runs/kd.tsv -> runs/kd.valid.tsv: the target's translations of the valid split."""
    return kd.with_name(kd.stem + ".valid" + kd.suffix)


def train_pairs(splits: str | None, kd: Path | None, kd_ref: bool) -> list[tuple[str, str]]:
    """The references of the train split, or with ``kd`` the target's translations in that
    TSV (plus, with ``kd_ref``, the references that differ from them)."""
    train_split = load_split_from("train", splits)
    if not kd:
        return [(p.en, p.de) for p in train_split]
    pairs = read_pairs_tsv(kd)
    if kd_ref:
        kd_de = dict(pairs)
        pairs += [(p.en, p.de) for p in train_split if kd_de.get(p.en) != p.de]
    return pairs


def valid_pairs(splits: str | None, kd: Path | None) -> list[tuple[str, str]]:
    if kd and kd_valid_path(kd).exists():
        # distilled model: select on the target's translations of the valid split
        return read_pairs_tsv(kd_valid_path(kd))
    return [(p.en, p.de) for p in load_split_from("valid", splits)]


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
