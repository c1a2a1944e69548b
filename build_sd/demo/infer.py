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
def greedy_batch(
    model, prompts: list[list[int]], max_new_tokens: int | list[int] = 128
) -> list[list[int]]:
    """Greedy continuations (without the prompt, without </s>) of left-padded prompts.
    max_new_tokens may be given per row; a row that reaches its limit stops there (its
    continuation then has exactly that many tokens and no </s> was produced)."""
    dev = next(model.parameters()).device
    b = len(prompts)
    caps = [max_new_tokens] * b if isinstance(max_new_tokens, int) else list(max_new_tokens)
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
    nxt = out.logits[:, -1].argmax(-1).tolist()
    res: list[list[int]] = [[] for _ in range(b)]
    done = [c <= 0 for c in caps]
    last_pos = pos[:, -1]
    for _ in range(max(caps)):
        for i in range(b):
            if not done[i]:
                if nxt[i] == EOS_ID:
                    done[i] = True
                else:
                    res[i].append(nxt[i])
                    done[i] = len(res[i]) >= caps[i]
        if all(done):
            break
        step = torch.tensor([PAD_ID if d else t for d, t in zip(done, nxt)], dtype=torch.long, device=dev)
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=step[:, None],
            attention_mask=mask,
            position_ids=last_pos[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1).tolist()
    return res


def translate(
    model,
    tok,
    sentences: list[str],
    batch_size: int = 64,
    max_new_tokens: int = 128,
    progress=None,
    with_finished: bool = False,
    length_cap: tuple[float, int] | None = None,
):
    """Greedy translations, batched by prompt length. With with_finished, a list of
    (text, finished) where finished is False when the token limit ran out before </s>.
    length_cap=(a, b) limits each row to a * prompt tokens + b new tokens (for bulk runs:
    a runaway row no longer holds up its whole batch)."""
    prompts = [encode_prompt(tok, s) for s in sentences]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        caps = [
            min(max_new_tokens, int(length_cap[0] * len(prompts[i])) + length_cap[1]) if length_cap else max_new_tokens
            for i in idx
        ]
        gens = greedy_batch(model, [prompts[i] for i in idx], caps)
        for i, g, c in zip(idx, gens, caps):
            out[i] = (decode(tok, g), len(g) < c) if with_finished else decode(tok, g)
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
