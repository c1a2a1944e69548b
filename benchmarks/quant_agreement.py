"""Agreement of a quantized model with its float self (issue 15's accuracy measure), in torch.

For each chat prompt: the f32 model's greedy answer (N tokens); agreement = the fraction of those
positions where the quantized model's argmax, teacher-forced along that answer, equals the f32
token (mean over prompts); first divergence = where the quantized model's own greedy answer first
differs. The arithmetic is build_sd's (builder/model/quant.py), the same the compiled modules
run (validate checks that), so this measures the quantization, not the compiler.

    python benchmarks/quant_agreement.py [--model CKPT|.gguf] [--quant w8a8,w4a8] [--prompts 6] [--tokens 48]

Default model: SmolLM2-135M-Instruct from the GGUF `make smollm2` fetches (its dequantized weights are
the reference: that is the model its users run); prompts: the chat demo's questions.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def chat_prompts(ckpt: Path, n: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    from build_sd.demo.chat import questions
    from build_sd.runtime.chat import ChatTemplate, messages_for
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    tpl = ChatTemplate(json.loads((ckpt / "tokenizer_config.json").read_text()))
    qs = (questions()[0] + questions()[1])[:n]
    return [tok.encode(tpl.render(messages_for(q)), add_special_tokens=False).ids for q in qs]


@torch.no_grad()
def greedy(sub, model, prompt: list[int], n: int) -> list[int]:
    model.reset_cache()
    _, logits = sub(torch.tensor([prompt], dtype=torch.int32), torch.tensor(0, dtype=torch.int32))
    out = [int(logits[0, -1].argmax())]
    pos = len(prompt)
    while len(out) < n:
        _, logits = sub(torch.tensor([[out[-1]]], dtype=torch.int32), torch.tensor(pos, dtype=torch.int32))
        out.append(int(logits[0, -1].argmax()))
        pos += 1
    return out


@torch.no_grad()
def forced_argmax(sub, model, prompt: list[int], answer: list[int]) -> list[int]:
    model.reset_cache()
    seq = prompt + answer[:-1]
    _, logits = sub(torch.tensor([seq], dtype=torch.int32), torch.tensor(0, dtype=torch.int32))
    return logits[0, len(prompt) - 1:].argmax(-1).tolist()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--quant", default="w8a8,w8a8-plain,w4a8",
                    help="w8a8 as exported (SmoothQuant alpha 0.5), w8a8-plain (not smoothed), w4a8")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from build_sd.builder.gguf import checkpoint_dir
    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.builder.model.smooth import quantize_as_exported
    if a.model is None:
        from build_sd.chatpair.fetch import target_gguf
        a.model = target_gguf()
    ckpt = checkpoint_dir(a.model) if a.model.suffix == ".gguf" else a.model
    torch.set_num_threads(2)
    prompts = chat_prompts(ckpt, a.prompts)
    S = max(len(p) for p in prompts) + a.tokens + 1
    ref = load_checkpoint(ckpt, "f32", S)
    ref_sub = Subgraph(ref, "whole")
    t0 = time.time()
    answers = [greedy(ref_sub, ref, p, a.tokens) for p in prompts]
    print(f"f32 reference: {len(prompts)} prompts x {a.tokens} greedy tokens in {time.time() - t0:.0f} s")
    rows = {}
    for q in a.quant.split(","):
        m = copy.deepcopy(ref)
        quantize_as_exported(m, q, ckpt)
        sub = Subgraph(m, "whole")
        per, first = [], []
        for p, ans in zip(prompts, answers):
            pred = forced_argmax(sub, m, p, ans)
            per.append(sum(int(x == y) for x, y in zip(pred, ans)) / len(ans))
            own = greedy(sub, m, p, a.tokens)
            first.append(next((i for i, (x, y) in enumerate(zip(own, ans)) if x != y), len(ans)))
        rows[q] = dict(agreement=sum(per) / len(per), per_prompt=per, first_divergence=first)
        print(f"{q}: agreement {rows[q]['agreement']:.3f} (per prompt {', '.join(f'{x:.2f}' for x in per)}); "
              f"free-running greedy first diverges at {first}")
    if a.json:
        a.json.write_text(json.dumps(dict(model=str(a.model), tokens=a.tokens, prompts=len(prompts), rows=rows),
                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
