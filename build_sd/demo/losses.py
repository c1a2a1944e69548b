"""The training objectives of the demo pair (cross-entropy on the German tokens, token-level
distillation) and the validation loss that selects the kept model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from build_sd.demo.dataset import collate


def autocast(device: torch.device, dtype):
    """bf16 autocast on CUDA; a no-op (fp32) where ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
        with autocast(device, autocast_dtype):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(), y[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        tot += loss.item()
        n += int((y[:, 1:] != -100).sum())
        hit += int(((logits[:, :-1].argmax(-1) == y[:, 1:]) & (y[:, 1:] != -100)).sum())
    model.train()
    return (tot / max(1, n), hit / max(1, n)) if with_acc else tot / max(1, n)
