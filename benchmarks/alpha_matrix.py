"""Greedy alpha of the chat pair for every precision combination, draft x target, in torch.

For each target precision the target's greedy answers to the held-out prompts (what speculative
decoding must reproduce: it preserves the TARGET's output, so each quantized target has its own);
for each draft precision the draft's argmax teacher-forced along them; alpha = the fraction equal.
Also the target's agreement with its f32 self along the f32 answers (benchmarks/quant_agreement.py's
measure). The arithmetic is build_sd's (builder/model/quant.py), which `validate` checks against the
compiled modules, so these are the compiled pair's alphas up to rounding flips.

    python benchmarks/alpha_matrix.py [--draft DIR] [--prompts 12] [--tokens 64] [--precisions f32,f16,w8a8,w4a8]

Default: SmolLM2-135M-Instruct (its GGUF, `make smollm2`) and build_sd/chatpair/models/draft; the
held-out prompts the chat demo calibrates on.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def variant(base, precision: str, ckpt: Path):
    """The f32 model in `precision`: f16 = its weights rounded to f16, computed in f32 (the compiled f16
    module also computes in f16: validate bounds that difference by 2e-2 of the logits' magnitude), or
    the quantized arithmetic as `export --quant` does it (w8a8 smoothed; "w8a8-plain": not), exactly the
    compiled modules' rounding flips aside."""
    from build_sd.builder.model.smooth import quantize_as_exported
    m = copy.deepcopy(base)
    if precision == "f16":
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.half().float())
    elif precision in ("w8a8", "w8a8-plain", "w4a8"):
        quantize_as_exported(m, precision, ckpt)
    return m


def main(argv=None) -> int:
    from quant_agreement import forced_argmax, greedy

    from build_sd.builder.gguf import checkpoint_dir
    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.chatpair.fetch import target_gguf
    from build_sd.demo.chat import DRAFT_DIR, questions
    from build_sd.runtime.chat import ChatTemplate, messages_for
    from tokenizers import Tokenizer
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draft", type=Path, default=DRAFT_DIR)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--precisions", default="f32,f16,w8a8,w4a8")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ck = checkpoint_dir(target_gguf())
    tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tpl = ChatTemplate(json.loads((ck / "tokenizer_config.json").read_text()))
    prompts = [tok.encode(tpl.render(messages_for(q)), add_special_tokens=False).ids
               for q in questions()[1][:a.prompts]]
    S = max(map(len, prompts)) + a.tokens + 1
    precs = a.precisions.split(",")
    t_base, d_base = load_checkpoint(ck, "f32", S), load_checkpoint(a.draft, "f32", S)
    drafts = {p: variant(d_base, p, a.draft) for p in precs}
    rows, answers = {}, {}
    for tp in precs:
        t0 = time.time()
        tm = variant(t_base, tp, ck)
        tsub = Subgraph(tm, "whole")
        answers[tp] = [greedy(tsub, tm, p, a.tokens) for p in prompts]
        agree = None
        if tp != "f32":
            per = [sum(int(x == y) for x, y in zip(forced_argmax(tsub, tm, p, ans), ans)) / len(ans)
                   for p, ans in zip(prompts, answers["f32"])]
            agree = sum(per) / len(per)
        row = {}
        for dp, dm in drafts.items():
            dsub = Subgraph(dm, "whole")
            hit = n = 0
            for p, ans in zip(prompts, answers[tp]):
                pred = forced_argmax(dsub, dm, p, ans)
                hit += sum(int(x == y) for x, y in zip(pred, ans))
                n += len(ans)
            row[dp] = hit / n
        rows[tp] = dict(alpha=row, agreement_with_f32=agree)
        print(f"target {tp:>5}: alpha by draft " + ", ".join(f"{d} {x:.3f}" for d, x in row.items())
              + (f"; target agreement with f32 {agree:.3f}" if agree is not None else "")
              + f"  ({time.time() - t0:.0f} s)", flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(draft=str(a.draft), prompts=len(prompts), tokens=a.tokens, rows=rows),
                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
