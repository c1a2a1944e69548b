"""Quality of the demo pair on the committed test split (PyTorch reference decoding).

For the target and the draft: greedy translations -> BLEU and chrF (sacrebleu, default
settings: 13a tokenization, chrF with char order 6, beta 2).

For the pair, along the target's greedy output y_1..y_n, </s> (teacher forcing):
d_j = the draft's greedy next token after prompt + y_<j.

* ``alpha`` (Leviathan et al.'s acceptance rate, greedy): simulate speculative decoding
  with ``gamma`` drafts per iteration. With greedy verification a draft token is accepted
  iff it equals the target's greedy token, and while drafts are accepted the draft's own
  prefix is the target's, so the draft's j-th proposal is d_j. Each iteration judges
  drafts up to and including the first rejection (at most gamma); then the target adds
  one token (correction or bonus). alpha = accepted / (accepted + rejected), the
  maximum-likelihood estimate of the per-token acceptance probability under that model.
* ``match_rate``: the simpler proxy, the fraction of all positions j with d_j == y_j.
* ``tokens_per_iteration``: tokens produced per target verification call in the
  simulation (what speculative decoding gains at most, before the draft's cost).

CLI: ``python -m build_sd.demo.evaluate [--models build_sd/demo/models] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from build_sd.demo import MODELS_DIR
from build_sd.demo.tokenizer import EOS_ID, PAD_ID, decode, encode_prompt, load_tokenizer


def simulate_greedy_speculation(matches: list[list[bool]], gamma: int = 4) -> dict:
    """Greedy speculative decoding with gamma drafts per iteration over sequences whose
    per-position draft/target agreement is given (matches[s][j]: the draft's greedy token
    at position j of sequence s, after the target's greedy prefix, equals the target's;
    the last position is the </s>)."""
    accepted = rejected = iterations = tokens = 0
    for m in matches:
        n = len(m)
        i = 0
        while i < n:
            iterations += 1
            k = 0
            acc = 0
            while k < gamma and i + k < n:
                if m[i + k]:
                    acc += 1
                    k += 1
                else:
                    rejected += 1
                    break
            accepted += acc
            step = min(acc + 1, n - i)  # accepted drafts + the target's own token
            tokens += step
            i += step
    total = sum(len(m) for m in matches)
    return {
        "alpha": accepted / max(1, accepted + rejected),
        "accepted": accepted,
        "rejected": rejected,
        "iterations": iterations,
        "tokens": tokens,
        "tokens_per_iteration": tokens / max(1, iterations),
        "match_rate": sum(sum(m) for m in matches) / max(1, total),
        "positions": total,
        "gamma": gamma,
    }


@torch.no_grad()
def teacher_forced_argmax(model, sequences: list[list[int]], starts: list[int], batch: int = 64) -> list[list[int]]:
    """For each sequence (prompt + continuation) the model's greedy next token at each
    continuation position: out[s][j] = argmax p(. | sequences[s][: starts[s] + j])."""
    dev = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for k in range(0, len(order), batch):
        idx = order[k : k + batch]
        width = max(len(sequences[i]) for i in idx)
        x = torch.full((len(idx), width), PAD_ID, dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, : len(sequences[i])] = torch.tensor(sequences[i])
        logits = model(input_ids=x.to(dev)).logits  # right padding: causal mask suffices
        am = logits.argmax(-1).cpu()
        for r, i in enumerate(idx):
            s, n = starts[i], len(sequences[i])
            out[i] = am[r, s - 1 : n - 1].tolist()
    return out  # type: ignore[return-value]


def evaluate(
    target, draft, tok, pairs, gamma: int = 4, batch: int = 64, max_new_tokens: int = 128, log=print
) -> dict:
    import sacrebleu

    from build_sd.demo.infer import greedy_batch

    src = [p.en for p in pairs]
    refs = [p.de for p in pairs]
    prompts = [encode_prompt(tok, s) for s in src]

    def run_greedy(model, name):
        t0 = time.time()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        ids: list[list[int] | None] = [None] * len(prompts)
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            for i, g in zip(idx, greedy_batch(model, [prompts[i] for i in idx], max_new_tokens)):
                ids[i] = g
        log(f"{name}: greedy decoding of {len(prompts)} sentences in {time.time() - t0:.1f} s")
        return ids

    res: dict = {"sentences": len(pairs), "models": {}}
    gen = {}
    for name, model in (("target", target), ("draft", draft)):
        ids = run_greedy(model, name)
        hyps = [decode(tok, g) for g in ids]
        gen[name] = (ids, hyps)
        bleu = sacrebleu.corpus_bleu(hyps, [refs])
        chrf = sacrebleu.corpus_chrf(hyps, [refs])
        res["models"][name] = {
            "bleu": round(bleu.score, 2),
            "chrf": round(chrf.score, 2),
            "unfinished": sum(len(g) >= max_new_tokens for g in ids),
            "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
            "params": sum(p.numel() for p in model.parameters()),
        }
        log(f"{name}: BLEU {bleu.score:.2f}  chrF {chrf.score:.2f}")

    t_ids = gen["target"][0]
    # The target's greedy tokens, with the closing </s> (absent where it hit max_new_tokens).
    truth = [g + [EOS_ID] if len(g) < max_new_tokens else list(g) for g in t_ids]
    seqs = [p + t for p, t in zip(prompts, truth)]
    starts = [len(p) for p in prompts]
    d_next = teacher_forced_argmax(draft, seqs, starts, batch)
    t_next = teacher_forced_argmax(target, seqs, starts, batch)
    matches = [[a == b for a, b in zip(d, t)] for d, t in zip(d_next, truth)]
    # Cached greedy decoding vs. one full forward pass: should agree (numerics aside).
    consistency = sum(a == b for t, u in zip(t_next, truth) for a, b in zip(t, u)) / max(1, sum(map(len, truth)))
    sim = simulate_greedy_speculation(matches, gamma)
    res["pair"] = sim
    res["pair"]["target_teacher_forced_consistency"] = consistency
    log(
        f"pair: greedy alpha {sim['alpha']:.4f} (gamma {gamma}: {sim['accepted']} accepted, {sim['rejected']} rejected), "
        f"match rate {sim['match_rate']:.4f}, {sim['tokens_per_iteration']:.2f} tokens/iteration; "
        f"target consistency {consistency:.4f}"
    )
    res["examples"] = [
        {"en": src[i], "ref": refs[i], "target": gen["target"][1][i], "draft": gen["draft"][1][i]} for i in range(len(src))
    ]
    return res


def main(argv: list[str] | None = None) -> int:
    from build_sd.demo.corpus import TEST_TSV, read_tsv
    from build_sd.demo.infer import load_model
    from build_sd.demo.train import macs_per_token

    ap = argparse.ArgumentParser(prog="python -m build_sd.demo.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=str(MODELS_DIR), help="directory holding target/ and draft/")
    ap.add_argument("--target", help="target model directory (default MODELS/target)")
    ap.add_argument("--draft", help="draft model directory (default MODELS/draft)")
    ap.add_argument("--data", default=str(TEST_TSV), help="TSV of pairs (default: the test split)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cpu", help="cpu (the reference figures) or cuda (quick checks)")
    ap.add_argument("--json", help="write the figures (and all translations) here")
    ap.add_argument("--show", type=int, default=5, help="print N example translations")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tdir = Path(args.target or Path(args.models) / "target")
    ddir = Path(args.draft or Path(args.models) / "draft")
    target = load_model(tdir, args.device, dtype)
    draft = load_model(ddir, args.device, dtype)
    tok = load_tokenizer(tdir)
    pairs = read_tsv(args.data)
    if args.limit:
        pairs = pairs[: args.limit]
    res = evaluate(target, draft, tok, pairs, args.gamma, args.batch)
    res["target_dir"], res["draft_dir"], res["data"], res["dtype"] = str(tdir), str(ddir), str(args.data), args.dtype
    res["device"] = args.device
    res["macs_per_token"] = {n: macs_per_token(m.config) for n, m in (("target", target), ("draft", draft))}
    res["cost_ratio"] = res["macs_per_token"]["target"] / res["macs_per_token"]["draft"]
    for ex in res["examples"][: args.show]:
        print(f"EN  {ex['en']}\nREF {ex['ref']}\nTGT {ex['target']}\nDRF {ex['draft']}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in res.items() if k != "examples"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
