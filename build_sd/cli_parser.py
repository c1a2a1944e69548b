"""The command line's arguments, one function per command (cli.py turns them into values)."""
from __future__ import annotations

import argparse


def build_parser(description: str = "") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="build-sd", description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (_import, _export, _compile, _validate, _bundle, _run, _chat, _profile, _calibrate, _plan, _build, _bench,
                _verify, _pack, _push, _demo):
        add(sub)
    return ap


def _random_weights_option(p) -> None:
    p.add_argument("--random-weights", type=int, metavar="SEED",
                   help="latency studies: draw the weights at run time (seeded) instead of reading the "
                        ".irpa, which may then be absent; tokens are noise (pair with --simulate-alpha)")


def _import(sub) -> None:
    p = sub.add_parser("import", help="GGUF file (llama.cpp) -> Hugging Face checkpoint folder")
    p.add_argument("gguf", metavar="MODEL.gguf")
    p.add_argument("--out", required=True, help="checkpoint folder to write (replaced whole)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"],
                   help="weights in model.safetensors (default f32: quantized blocks dequantize exactly)")


def _export(sub) -> None:
    p = sub.add_parser("export", help="checkpoint -> MLIR subgraph modules + .irpa weights")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint folder, or a .gguf (imported once "
                                                  "into a cache folder)")
    p.add_argument("--out", required=True, help="output folder, e.g. mlir/NAME")
    p.add_argument("--split", help="layers where subgraphs start, e.g. 0,4,8 (default: one module)")
    p.add_argument("--gammas", help="gammas to build verify functions for (default 1..8)")
    p.add_argument("--prefill", help="prompt buckets (default 16,64)")
    p.add_argument("--max-context", type=int, help="KV cache slots S (default 512; 2048 for a chat model, or its "
                                                   "own limit when lower)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    p.add_argument("--quant", default="none", choices=["none", "w8a8", "w4a8"],
                   help="w8a8: every projection and the LM head in int8 (weights per output channel, activations "
                        "per token); w4a8: the same arithmetic from 4-bit weights in groups of 32 (the .irpa holds 4.5 "
                        "bits a weight; expanded to int8 at load); embedding, norms, attention and KV cache stay in "
                        "--dtype")
    p.add_argument("--smooth", type=float, metavar="ALPHA",
                   help="w8a8: SmoothQuant's migration strength, activation outliers moved into the weights by "
                        "per-channel scales folded into the norms and producers (default 0.5; 0 = off): "
                        "agreement with f32 0.884 -> 0.93 on SmolLM2-135M")
    p.add_argument("--max-module-bytes", type=int, metavar="N",
                   help="cut the model into layer ranges whose weights and KV caches each stay within N bytes, "
                        "the largest allocation a GPU makes (added to --split; default: the smallest measured limit "
                        "of the known GPUs less 1/16, 1.875 GiB for lavapipe; 0 = no limit)")
    p.add_argument("--no-fuse", action="store_true",
                   help="keep q/k/v and gate/up as separate matmuls (default: stacked, fewer dispatches)")
    p.add_argument("--attention", default="filled", choices=["filled", "all"],
                   help="cache slots each call attends to: filled = the pos+T written so far, a dynamic length (default; "
                        "a call costs what the context holds), all = every --max-context slot, masked (static shapes)")
    p.add_argument("--jobs", type=int, metavar="J",
                   help="processes that trace the functions at once, each holding the model (default: as many as "
                        "the cores and free memory allow, 1 for a small model; tracing is single-threaded)")


def _compile(sub) -> None:
    p = sub.add_parser("compile", help="MLIR -> vmfb for target presets (CMake + Ninja)")
    p.add_argument("mlir", help="export folder (mlir/NAME)")
    p.add_argument("--preset", action="append", help="target preset (repeatable)")
    p.add_argument("--out", required=True, help="artifacts folder, e.g. artifacts/NAME")
    p.add_argument("-j", "--jobs", type=int, help="parallel compiles (default: ninja's)")


def _validate(sub) -> None:
    p = sub.add_parser("validate", help="compare every runnable module with the PyTorch model")
    p.add_argument("artifacts")
    p.add_argument("--model", required=True, help="the checkpoint the artifacts came from (folder or .gguf)")
    p.add_argument("--preset", action="append", help="only these presets")
    p.add_argument("-v", "--verbose", action="store_true", help="one row per step")
    p.add_argument("--no-emulate", dest="emulate", action="store_false",
                   help="leave Arm modules compile-checked only (default: run them under qemu-aarch64 when "
                        "`make emulation` set it up)")


def _bundle(sub) -> None:
    p = sub.add_parser("bundle", help="draft + target artifacts -> a deployable bundle")
    p.add_argument("--draft", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one copied at export)")
    p.add_argument("--place", action="append",
                   help="MODEL[.SUBGRAPH]=PRESET, e.g. draft=host, target.layers[0:4]=vulkan-llvmpipe")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--fallback", choices=["cpu"], help="also carry CPU modules for GPU-placed subgraphs")
    p.add_argument("--prompt-template", help="e.g. '<s>{prompt} => ' (default: the prompt as given)")
    p.add_argument("--cpu-driver", action="append", metavar="[ROLE=]DRIVER",
                   help="IREE driver for the CPU modules on the board: local-task (worker pool, default) or "
                        "local-sync (calling thread; faster for small models), e.g. draft=local-sync")
    p.add_argument("--overlap", action="store_true",
                   help="the runner drafts the next block while the target verifies (runtime/overlap.py)")
    _pin_option(p)
    p.add_argument("--link", action="store_true",
                   help="hard-link the weights and modules from the artifacts instead of copying them "
                        "(same filesystem; a copy otherwise): no extra disk for a local bundle")
    p.add_argument("--out", required=True)


def _run(sub) -> None:
    p = sub.add_parser("run", help="speculative generation from a bundle (no torch)")
    p.add_argument("bundle")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (in the bundle's --prompt-template)")
    src.add_argument("--prompt-file", metavar="PATH", help="the prompt, read verbatim from a file (trailing "
                                                           "newlines kept)")
    src.add_argument("--chat", metavar="TEXT", help="a user message, in the model's chat template (with the "
                                                    "generation prompt); generation stops at any EOS id")
    p.add_argument("--system", metavar="TEXT", help="with --chat: the system message (default: the template's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--gamma", type=int, help="draft length (default: the bundle's; 0 = target only)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")
    p.add_argument("--raw", action="store_true", help="ignore the bundle's prompt template")
    p.add_argument("--fallback", choices=["cpu"], help="run GPU-placed subgraphs on the bundle's CPU modules")
    p.add_argument("--threads", type=int, help="CPU worker threads (default: the bundle's, else one per core)")
    p.add_argument("--cpu-driver", action="append", metavar="[ROLE=]DRIVER",
                   help="local-sync or local-task for the CPU modules, e.g. draft=local-sync "
                        "(default: the bundle's, else local-task)")
    _overlap_options(p)
    _lookup_option(p)
    _random_weights_option(p)


def _lookup_option(p) -> None:
    p.add_argument("--lookup", type=int, nargs="?", const=4, default=0, metavar="N",
                   help="also draft by n-gram lookup: where the text's last N..2 tokens occurred before (prompt "
                        "or answer), propose what followed them, with no model call; the draft model drafts "
                        "where nothing matches. Pays on answers that copy their context: summaries, edits, "
                        "code. Output unchanged; the sequential loop. Bare --lookup: N = 4 (default: off)")


def _overlap_options(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overlap", dest="overlap", action="store_true", default=None,
                   help="draft the next block while the target verifies (default: as the bundle says)")
    g.add_argument("--no-overlap", dest="overlap", action="store_false", help="the sequential loop")
    _pin_option(p)


def _pin_option(p) -> None:
    p.add_argument("--pin", action="append", metavar="ROLE=CPUS",
                   help="with --overlap: the cores of a model's thread, e.g. --pin draft=0 --pin target=1-3 "
                        "(under local-sync a model's dispatches run on its thread)")


def _chat(sub) -> None:
    p = sub.add_parser("chat", help="multi-turn chat on a bundle: each turn prefills only its new tokens (no torch)")
    p.add_argument("bundle")
    p.add_argument("--system", metavar="TEXT", help="the system message (default: the template's)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="per answer (default 256)")
    p.add_argument("--gamma", type=int, help="draft length (default: the bundle's; 0 = target only)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per turn (prompt ids, tokens, metrics)")
    p.add_argument("--fallback", choices=["cpu"], help="run GPU-placed subgraphs on the bundle's CPU modules")
    p.add_argument("--threads", type=int, help="CPU worker threads (default: the bundle's, else one per core)")
    p.add_argument("--cpu-driver", action="append", metavar="[ROLE=]DRIVER",
                   help="local-sync or local-task for the CPU modules, e.g. draft=local-sync")
    _overlap_options(p)
    _lookup_option(p)


def _profile(sub) -> None:
    p = sub.add_parser("profile", help="measure every subgraph function on this machine (no torch)")
    p.add_argument("paths", nargs="+", metavar="ARTIFACTS_OR_BUNDLE")
    p.add_argument("--devices", help="device classes to profile, e.g. cpu,vulkan (default: all here)")
    p.add_argument("--budget", type=float, default=0.4, help="seconds per function (default 0.4)")
    p.add_argument("--contention-rounds", type=int, default=3, metavar="N",
                   help="the least rounds of each device pair's contention loops, timed in turn "
                        "(default 3; fewer where they would take over 40 s)")
    _random_weights_option(p)
    p.add_argument("--out", required=True)


def _calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="measure alpha (overall, per draft position) of a bundle's pair")
    p.add_argument("bundle")
    p.add_argument("--prompts", help="one prompt per line (a TSV's first column)")
    p.add_argument("--limit", type=int, help="use the first N prompts")
    p.add_argument("--gamma", type=int, help="draft length (default: the bundle's largest)")
    p.add_argument("--temperature", type=float, help="also measure sampling at this temperature")
    p.add_argument("--chat", action="store_true", help="each prompt is a user message in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", metavar="BUNDLE",
                   help="a bundle whose target is the float model: also measure this target's top-1 agreement "
                        "with it (what plan --min-agreement bounds)")
    p.add_argument("--out", required=True)


def _plan(sub) -> None:
    p = sub.add_parser("plan", help="rank placements x gamma with the cost model")
    p.add_argument("--draft", required=True, help="draft checkpoint folder (config.json is enough) or .gguf")
    p.add_argument("--target", required=True, help="target checkpoint folder (config.json is enough) or .gguf")
    p.add_argument("--platform", required=True, help=f"{', '.join(_platform_names())} or host (plan/platforms.json; "
                                                     "host: this machine)")
    p.add_argument("--profile", help="profile.json from `build-sd profile` (replaces what it covers)")
    p.add_argument("--alpha", type=float, help="Leviathan's alpha of the pair")
    p.add_argument("--calibration", action="append",
                   help="calib.json from `build-sd calibrate` (per-position alpha); with --precisions, one per "
                        "draft/target precision pair measured (missing pairs are estimated and marked)")
    p.add_argument("--devices", help="restrict to these platform devices, e.g. cpu,cpu-sync (host: cpu = "
                                     "IREE local-task, cpu-sync = local-sync, vulkan = lavapipe/GPU)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    p.add_argument("--max-context", type=int, help="KV cache slots S (default 512; 2048 for a chat model, or its "
                                                   "own limit when lower)")
    p.add_argument("--no-split", action="store_true",
                   help="whole models only (no placement split at a layer boundary)")
    _no_overlap_option(p)
    _precision_options(p)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--keep", type=int, metavar="N", help="plan.json keeps the best N configurations and the best of "
                                                         "each device mapping and gamma (default 100; 0: all)")
    p.add_argument("--out", required=True)


def _platform_names() -> list[str]:
    """The platform presets of plan/platforms.json (read here so --help never goes stale)."""
    import json
    from pathlib import Path
    try:
        data = json.loads((Path(__file__).parent / "plan" / "platforms.json").read_text())
        return [k for k, v in data.items() if isinstance(v, dict) and "devices" in v]
    except (OSError, ValueError, KeyError):
        return []


def _build(sub) -> None:
    p = sub.add_parser("build", help="plan, export + compile what it needs, validate, bundle")
    p.add_argument("--draft", required=True, help="draft checkpoint folder or .gguf")
    p.add_argument("--target", required=True, help="target checkpoint folder or .gguf")
    p.add_argument("--platform", required=True, help=f"{', '.join(_platform_names())} or host")
    p.add_argument("--profile")
    p.add_argument("--alpha", type=float)
    p.add_argument("--calibration", action="append")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    p.add_argument("--max-context", type=int, help="KV cache slots S (default 512; 2048 for a chat model, or its "
                                                   "own limit when lower)")
    p.add_argument("--prompt-template", help="the bundle's prompt format, e.g. '<s>{prompt} => '")
    _no_overlap_option(p)
    _precision_options(p)
    p.add_argument("--out", required=True)


def _precision_options(p) -> None:
    p.add_argument("--precisions", metavar="LIST",
                   help="each model's precision as a plan dimension, e.g. f16,w8a8,w4a8 (w8a8/w4a8 keep --dtype for "
                        "the rest; default: --dtype alone)")
    p.add_argument("--min-agreement", type=float, metavar="A",
                   help="with --precisions: only target precisions whose top-1 agreement with f32 (calibrate "
                        "--reference) is at least A")


def _no_overlap_option(p) -> None:
    p.add_argument("--no-overlap", action="store_true",
                   help="rank the sequential loop only (default: also the overlapped loop, where the draft "
                        "drafts during the verify, with each model whole on one device)")


def _bench(sub) -> None:
    p = sub.add_parser("bench", help="measure the plan's top configurations: predicted vs measured")
    p.add_argument("root", metavar="BUNDLE_OR_ARTIFACTS", help="working folder (e.g. the build --out)")
    p.add_argument("--plan", required=True)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--configs", help="plan ranks to measure instead of the top N, e.g. 1,2,9,10")
    p.add_argument("--prompt-template", help="the bundles' prompt format, e.g. '<s>{prompt} => ' "
                                             "(alpha depends on it: use the one the pair was trained with)")
    p.add_argument("--prompts", required=True)
    p.add_argument("--chat", action="store_true", help="each prompt is a user message in the model's chat template")
    p.add_argument("--limit", type=int, help="use the first N prompts")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--simulate-alpha", type=float, help="accept/reject drawn from Bernoulli(A)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed passes over the prompts per configuration before the timed rounds (default 1)")
    p.add_argument("--no-link", action="store_true",
                   help="copy the artifacts into each configuration's bundle instead of hard-linking them")
    p.add_argument("--png", help="write the predicted-vs-measured chart here")
    _random_weights_option(p)
    p.add_argument("--no-reprofile", action="store_true",
                   help="predict every round from the first profile (default: re-profile the CPU in situ "
                        "before each round and after the last, and predict each round from the two "
                        "profiles around it, for machines whose speed drifts)")
    p.add_argument("--build-only", action="store_true",
                   help="build the configurations' bundles (under ROOT/bench/) and stop: for measuring "
                        "on a machine without iree-compile (then `bench --no-build` there)")
    p.add_argument("--no-build", action="store_true",
                   help="measure the bundles an earlier `bench --build-only` left under ROOT/bench/; "
                        "neither torch nor iree-compile is needed")
    p.add_argument("--json", help="write all figures here")


def _verify(sub) -> None:
    p = sub.add_parser("verify", help="check a bundle's files and that this machine can run it")
    p.add_argument("bundle")
    p.add_argument("--numerics", action="store_true",
                   help="also run the golden case validate recorded on this machine's devices, module by module")
    p.add_argument("--fallback", choices=["cpu"], help="accept CPU fallback modules for missing GPUs")


def _pack(sub) -> None:
    p = sub.add_parser("pack", help="bundle -> deterministic .tar.gz")
    p.add_argument("bundle")
    p.add_argument("--out", required=True)
    p.add_argument("--wheels", metavar="PLATFORM",
                   help="also put into the archive every wheel an offline board needs to install the runner "
                        "(build_sd and its core dependencies) for this pip platform tag, e.g. "
                        "manylinux_2_28_aarch64; the board runs: pip install --no-index --find-links wheels/ build_sd")
    p.add_argument("--python", default=None, metavar="X.Y",
                   help="the board's Python for --wheels (default: this one's)")
    p.add_argument("--find-links", action="append", metavar="DIR",
                   help="with --wheels: also look for wheels here (e.g. a prebuilt build_sd wheel)")


def _push(sub) -> None:
    p = sub.add_parser("push", help="bundle -> DEST folder or host:folder (changed files only, atomic)")
    p.add_argument("bundle")
    p.add_argument("dest")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="build the embedded English->German pair and translate (--pair chat: "
                                    "SmolLM2-135M-Instruct and its distilled draft, chat questions; --pair both: "
                                    "one then the other, what `make demo` runs)")
    p.add_argument("--pair", choices=["translate", "chat", "both"], default="translate")
    p.add_argument("--draft", metavar="DIR", help="--pair chat: another draft checkpoint for SmolLM2 (default: "
                                                  "build_sd/chatpair/models/draft)")
    p.add_argument("--gamma", type=int, help="draft length (default: the planner's choice, from a profile "
                                              "of this CPU and the pair's calibrated alpha)")
    p.add_argument("--sentences", type=int, default=6)
    p.add_argument("--precisions", metavar="LIST",
                   help="--pair chat: the target precisions the planner chooses among, f32 first (the reference "
                        "the others' agreement is measured against); default f32,w8a8; f32 alone: no quantized "
                        "target")
    p.add_argument("--min-agreement", type=float, default=0.9, metavar="A",
                   help="--pair chat: a quantized target is kept only if its top-1 agreement with f32 on the "
                        "calibration questions reaches A (default 0.9)")
    p.add_argument("--out", default="artifacts/demo",
                   help="where the demo builds and caches (default: artifacts/demo under the current folder)")
