"""Reference (PyTorch/transformers) inference for the demo pair: loading and batched greedy
decoding with a KV cache. Used for distillation (train.py) and evaluation (evaluate.py);
the product's own runtime is IREE, not this."""

from __future__ import annotations

from pathlib import Path

import torch

from build_sd.demo.tokenizer import EOS_ID, PAD_ID, decode, encode_prompt, load_tokenizer


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: Path | str, device: torch.device | str = "cpu", dtype=torch.float32):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(path), dtype=dtype)
    return m.to(device).eval()


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], max_new_tokens: int = 128) -> list[list[int]]:
    """Greedy continuations (without the prompt, without </s>) of left-padded prompts."""
    dev = next(model.parameters()).device
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    gen = []
    last_pos = pos[:, -1]
    for _ in range(max_new_tokens):
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        gen.append(nxt)
        done = done | (nxt == EOS_ID)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last_pos[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
    g = torch.stack(gen, 1).tolist()
    res = []
    for row in g:
        r = []
        for t in row:
            if t == EOS_ID or t == PAD_ID:
                break
            r.append(t)
        res.append(r)
    return res


def translate(
    model,
    tok,
    sentences: list[str],
    batch_size: int = 64,
    max_new_tokens: int = 128,
    progress=None,
) -> list[str]:
    """Greedy translations, batched by prompt length."""
    prompts = [encode_prompt(tok, s) for s in sentences]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        gens = greedy_batch(model, [prompts[i] for i in idx], max_new_tokens)
        for i, g in zip(idx, gens):
            out[i] = decode(tok, g)
        if progress:
            progress(min(k + batch_size, len(order)), len(order))
    return out  # type: ignore[return-value]


def load_pair(models_dir: Path | str, device="cpu"):
    """(target, draft, tokenizer) from a directory holding target/ and draft/."""
    d = Path(models_dir)
    return (
        load_model(d / "target", device),
        load_model(d / "draft", device),
        load_tokenizer(d / "target"),
    )
