"""Translation quality of the demo pair's target per precision, on its test split (issue 15 item 4).

For each target precision (f32, f16, w8a8 smoothed as `export` does it, w4a8): greedy translations of
the committed test split (build_sd/demo/data/test.tsv) -> BLEU and chrF (sacrebleu defaults, as
build_sd/demo/evaluate.py); the target's top-1 agreement with its f32 self teacher-forced along the
f32 translations; and the draft's (f32) greedy alpha along each target's own translations (the
fraction of positions where the draft's argmax is the target's token, as benchmarks/alpha_matrix.py).
The arithmetic is build_sd's (builder/model/quant.py), the one `validate` checks the compiled modules
against.

    python benchmarks/quant_chrf.py [--sentences 509] [--tokens 48] [--json out.json]   # ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def greedy_to_eos(sub, model, prompt: list[int], n: int, eos: int) -> list[int]:
    """quant_agreement.greedy, stopping after </s> (translations are short: most end within 20 tokens)."""
    model.reset_cache()
    _, logits = sub(torch.tensor([prompt], dtype=torch.int32), torch.tensor(0, dtype=torch.int32))
    out = [int(logits[0, -1].argmax())]
    pos = len(prompt)
    while len(out) < n and out[-1] != eos:
        _, logits = sub(torch.tensor([[out[-1]]], dtype=torch.int32), torch.tensor(pos, dtype=torch.int32))
        out.append(int(logits[0, -1].argmax()))
        pos += 1
    return out


def main(argv=None) -> int:
    import sacrebleu
    from alpha_matrix import variant
    from quant_agreement import forced_argmax

    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.demo import DRAFT_DIR, TARGET_DIR
    from build_sd.demo.corpus import load_split
    from build_sd.demo.tokenizer import EOS_ID, decode, encode_prompt, load_tokenizer
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=509)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--precisions", default="f32,f16,w8a8,w4a8")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = load_split("test")[:a.sentences]
    tok = load_tokenizer(TARGET_DIR)
    prompts = [encode_prompt(tok, p.en) for p in rows]
    refs = [p.de for p in rows]
    S = max(map(len, prompts)) + a.tokens + 1
    t_base, d_base = load_checkpoint(TARGET_DIR, "f32", S), load_checkpoint(DRAFT_DIR, "f32", S)
    dsub = Subgraph(d_base, "whole")
    out, answers = {}, {}
    for prec in a.precisions.split(","):
        t0 = time.time()
        tm = variant(t_base, prec, TARGET_DIR)
        tsub = Subgraph(tm, "whole")
        with torch.no_grad():
            answers[prec] = [greedy_to_eos(tsub, tm, p, a.tokens, EOS_ID) for p in prompts]
            hyps = [decode(tok, [t for t in ids if t != EOS_ID]) for ids in answers[prec]]
            agree = None
            if prec != "f32":
                hit = n = 0
                for p, ans in zip(prompts, answers["f32"]):
                    hit += sum(int(x == y) for x, y in zip(forced_argmax(tsub, tm, p, ans), ans))
                    n += len(ans)
                agree = hit / n
            hit = n = 0
            for p, ans in zip(prompts, answers[prec]):
                hit += sum(int(x == y) for x, y in zip(forced_argmax(dsub, d_base, p, ans), ans))
                n += len(ans)
        row = dict(bleu=round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
                   chrf=round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2),
                   agreement_with_f32=None if agree is None else round(agree, 4),
                   draft_alpha=round(hit / n, 4), tokens=n)
        out[prec] = row
        print(f"target {prec:>5}: BLEU {row['bleu']:.2f}  chrF {row['chrf']:.2f}  draft alpha {row['draft_alpha']:.3f}"
              + (f"  agreement with f32 {agree:.3f}" if agree is not None else "") + f"  ({time.time() - t0:.0f} s)",
              flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(sentences=len(rows), tokens=a.tokens, rows=out), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
