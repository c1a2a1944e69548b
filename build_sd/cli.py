"""`build-sd`: the command line. Each stage reads the previous stage's files.

This module turns arguments into typed values (placements and drivers as dicts, paths, records)
and calls the library with keyword arguments; the library never sees an argparse namespace.
Imports are lazy so that the board-side commands never import torch and a no-op `build-sd
compile` stays fast. Bad input -> `error: ...` and exit 2; a failing tool -> exit 1; a build
command on an install without the build tools -> which extra to install, exit 2.
"""
from __future__ import annotations

import re
import sys
from importlib.util import find_spec
from pathlib import Path

from .cli_parser import build_parser
from .errors import BuildError, UserError

# commands that need the build machine's tools (torch, iree-turbine, iree-compile): `pip install
# 'build_sd[build]'`; everything else runs on the core install (the board's)
BUILD_COMMANDS = ("import", "export", "compile", "validate", "build", "demo")
BUILD_MODULES = ("torch", "iree.turbine", "iree.compiler", "safetensors", "gguf")


# ---- arguments -> values ----------------------------------------------------------------------------
def int_list(text: str | None, what: str) -> list[int] | None:
    """'0,4,8' -> [0, 4, 8]; None stays None (the option's default)."""
    if text is None:
        return None
    try:
        return [int(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None


_PLACE = re.compile(r"^(draft|target)(?:\.(embed|head|whole|layers\[\d+:\d+\]))?=([\w.-]+)$")


def places(specs: list[str] | None) -> dict[str, dict[str | None, str]]:
    """['target.layers[0:4]=vulkan'] -> {'target': {'layers_0_4': 'vulkan'}}; None = whole model."""
    from .contract import SubgraphSpec
    out: dict[str, dict[str | None, str]] = {"draft": {}, "target": {}}
    for p in specs or []:
        m = _PLACE.match(p.strip())
        if not m:
            raise UserError(f"--place {p!r}: expected MODEL=PRESET or MODEL.SUBGRAPH=PRESET, e.g. "
                            "draft=host or target.layers[0:4]=vulkan-llvmpipe")
        role, label, preset = m.groups()
        out[role][None if label is None else SubgraphSpec.from_label(label).name] = preset
    return out


def cpu_drivers(specs: list[str] | None) -> dict[str, str]:
    """['local-sync'] (both models) or ['draft=local-sync', ...] -> {role: driver}."""
    from .contract import CPU_DRIVERS
    out = {}
    for it in specs or []:
        role, _, drv = it.rpartition("=")
        roles = [role] if role else ["draft", "target"]
        if drv not in CPU_DRIVERS or any(r not in ("draft", "target") for r in roles):
            raise UserError(f"--cpu-driver {it!r}: expected [draft=|target=]{'|'.join(CPU_DRIVERS)}")
        out.update({r: drv for r in roles})
    return out


def pins(specs: list[str] | None) -> dict[str, set[int]]:
    """['draft=0', 'target=1-3,5'] -> {role: cores}."""
    out: dict[str, set[int]] = {}
    for it in specs or []:
        role, _, cpus = it.partition("=")
        try:
            cores = set()
            for part in cpus.split(","):
                lo, _, hi = part.partition("-")
                cores.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            cores = set()
        if role not in ("draft", "target") or not cores or min(cores) < 0:
            raise UserError(f"--pin {it!r}: expected draft=CPUS or target=CPUS, e.g. draft=0 or target=1-3")
        out[role] = cores
    return out


def device_classes(text: str | None) -> list[str] | None:
    return [d.strip() for d in text.split(",")] if text else None


def platform(name: str):
    """A platform of plan/platforms.json, or `host`: this machine, measured by the board side."""
    from .plan.platforms import get_platform
    if name == "host":
        from .runtime.hostinfo import detect_host
        host = detect_host()
        if find_spec("iree.compiler") is not None:
            # the build side times IREE's own kernels here once (cached): the numpy figures alone
            # ranked a 135M target on one thread as fast as on two (builder/hostfit.py)
            import msgspec
            from .builder.hostfit import host_probe
            host = msgspec.structs.replace(host, probe=host_probe(host.cpu, host.cores))
        return get_platform("host", host)
    return get_platform(name)


def need_build_tools(cmd: str) -> None:
    """One line naming the extra to install, instead of an ImportError deep in a build."""
    missing = []
    for mod in BUILD_MODULES:
        try:
            if find_spec(mod) is None:
                missing.append(mod)
        except (ImportError, ValueError):
            missing.append(mod)
    if missing:
        raise UserError(f"`build-sd {cmd}` needs the build tools ({', '.join(missing)} missing): "
                        "pip install 'build_sd[build]'")


def model_dir(path: str) -> str:
    """A checkpoint folder as given, or for a .gguf its import in the cache (made on first use)."""
    from .builder.gguf import checkpoint_dir, is_gguf
    if not is_gguf(path):
        return path
    need_build_tools("import")
    return str(checkpoint_dir(path))


# ---- commands ---------------------------------------------------------------------------------------
def cmd_import(a):
    from .builder.gguf import import_gguf
    import_gguf(a.gguf, a.out, a.dtype)


def cmd_export(a):
    from .builder.export import export_model
    export_model(model_dir(a.model), a.out, split=int_list(a.split, "--split") or None, gammas=int_list(a.gammas, "--gammas"),
                 prefill=int_list(a.prefill, "--prefill"), max_context=a.max_context, dtype=a.dtype,
                 fuse=not a.no_fuse, max_module_bytes=a.max_module_bytes, quant=a.quant,
                 smooth=a.smooth, jobs=a.jobs, attention=a.attention)


def cmd_compile(a):
    from .builder.compile import compile_artifacts
    compile_artifacts(a.mlir, a.preset or [], a.out, jobs=a.jobs)


def cmd_validate(a):
    from .builder.validate import validate
    return 0 if validate(a.artifacts, model_dir(a.model), presets=a.preset, verbose=a.verbose,
                                emulate=a.emulate) else 1


def cmd_bundle(a):
    from .builder.bundle import make_bundle
    make_bundle(a.draft, a.target, places(a.place), a.gamma, a.out, tokenizer=a.tokenizer,
                prompt_template=a.prompt_template, fallback=a.fallback, link=a.link,
                cpu_driver=cpu_drivers(a.cpu_driver), overlap=a.overlap, pin=pins(a.pin))


def cmd_run(a):
    from .runtime.run import run
    from .runtime.sampling import SamplingParams
    from .runtime.prompts import read_prompt_file
    prompt = read_prompt_file(a.prompt_file) if a.prompt_file else a.prompt
    run(a.bundle, prompt, chat=a.chat, system=a.system, max_new_tokens=a.max_new_tokens, gamma=a.gamma,
        sampling=SamplingParams(a.temperature, a.top_k, a.top_p), seed=a.seed, as_json=a.json, raw=a.raw,
        fallback=a.fallback, threads=a.threads, cpu_driver=cpu_drivers(a.cpu_driver),
        random_weights=a.random_weights, overlap=a.overlap, pin=pins(a.pin), lookup=a.lookup)


def cmd_chat(a):
    from .runtime.conversation import chat
    from .runtime.sampling import SamplingParams
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    return chat(a.bundle, system=a.system, max_new_tokens=a.max_new_tokens, gamma=a.gamma,
                sampling=SamplingParams(a.temperature, a.top_k, a.top_p), seed=a.seed, as_json=a.json,
                fallback=a.fallback, threads=a.threads, cpu_driver=cpu_drivers(a.cpu_driver),
                overlap=a.overlap, pin=pins(a.pin), lookup=a.lookup)


def cmd_profile(a):
    from .runtime.profiler import profile
    if a.contention_rounds < 1:
        raise UserError("--contention-rounds: at least 1")
    profile(a.paths, device_classes(a.devices), a.budget, random_weights=a.random_weights,
            contention_rounds=a.contention_rounds).write(a.out)
    print(f"wrote {a.out}")


def cmd_calibrate(a):
    from .runtime.calibrate import calibrate
    from .runtime.prompts import read_prompts
    if not a.prompts:
        raise UserError("give --prompts FILE (one prompt per line; a TSV's first column is used)")
    calibrate(a.bundle, read_prompts(a.prompts, a.limit), a.gamma, a.temperature, a.max_new_tokens,
              a.seed, chat=a.chat, reference=a.reference).write(a.out)
    print(f"wrote {a.out}")


def _plan(a, devices: list[str] | None = None, split: bool = True, keep_top: int | None = None):
    """The plan of the pair for `a.platform` (the `plan` and `build` commands)."""
    from .contract import Profile
    from .plan.planner import make_plan, read_alpha, read_calibrations
    from .plan.precision import parse_precisions
    prof = Profile.read(a.profile) if a.profile else None
    precisions = parse_precisions(a.precisions, a.dtype) if a.precisions else None
    cals = read_calibrations(a.calibration) if precisions else []
    alpha = read_alpha(a.alpha, a.calibration) if not cals else a.alpha
    if a.min_agreement is not None and not precisions:
        raise UserError("--min-agreement goes with --precisions (it chooses among the target's precisions)")
    from .contract.config import default_max_context
    draft, target = model_dir(a.draft), model_dir(a.target)
    plan = make_plan(draft, target, platform(a.platform), alpha, prof, dtype=a.dtype,
                     max_context=a.max_context or default_max_context(target), devices=devices, split=split,
                     keep_top=keep_top, overlap=not a.no_overlap, precisions=precisions, calibrations=cals,
                     min_agreement=a.min_agreement)
    return plan, prof


def cmd_plan(a):
    from .plan.planner import print_plan
    if a.keep is not None and a.keep < 0:
        raise UserError(f"--keep must be >= 0, got {a.keep}")
    plan, _ = _plan(a, device_classes(a.devices), split=not a.no_split, keep_top=a.keep)
    print_plan(plan, a.top)
    plan.write(a.out)
    print(f"wrote {a.out}")


def cmd_build(a):
    from .builder.pipeline import run_build
    _check_template(a.prompt_template)
    plan, prof = _plan(a)
    run_build(plan, a.out, profile=prof, prompt_template=a.prompt_template)
    if prof is None:
        # the roofline orders configurations; only measurements on the board rank near-equal ones
        print(f"planned from the roofline, not measured: on the target machine, `build-sd profile "
              f"{Path(a.out) / 'bundle'} --out profile.json`, then build again with --profile profile.json")


def cmd_bench(a):
    from .bench.run import BenchOptions, run_bench
    from .contract import Plan
    from .runtime.prompts import read_prompts
    if a.build_only and a.no_build:
        raise UserError("--build-only and --no-build exclude each other")
    if not a.no_build:
        need_build_tools("bench")
    ranks = int_list(a.configs, "--configs")
    if ranks is not None and (not ranks or min(ranks) < 1):
        raise UserError("--configs: ranks start at 1")
    opts = BenchOptions(top=a.top, configs=[r - 1 for r in ranks] if ranks else None, rounds=a.rounds,
                        max_new_tokens=a.max_new_tokens, simulate_alpha=a.simulate_alpha, warmup=a.warmup,
                        link=not a.no_link, prompt_template=a.prompt_template, chat=a.chat,
                        reprofile=not a.no_reprofile,
                        build="only" if a.build_only else "no" if a.no_build else "yes",
                        random_weights=a.random_weights)
    prompts = read_prompts(a.prompts, a.limit)
    plan = Plan.read(a.plan)
    res = run_bench(a.root, plan, str(a.plan), prompts, opts, platform=lambda: platform(plan.platform), png=a.png)
    if a.json:
        from .fsutil import write_json
        write_json(a.json, res)


def cmd_verify(a):
    from .runtime.verify import verify_bundle
    verify_bundle(a.bundle, fallback=a.fallback, numerics=a.numerics)


def cmd_pack(a):
    from .builder.deploy import pack
    if a.wheels is None and (a.python or a.find_links):
        raise UserError("--python and --find-links go with --wheels PLATFORM")
    pack(a.bundle, a.out, wheels=a.wheels, python=a.python, find_links=a.find_links or [])


def cmd_push(a):
    from .builder.deploy import push
    push(a.bundle, a.dest)


def cmd_demo(a):
    if a.draft and a.pair == "translate":
        raise UserError("--draft goes with --pair chat (or both)")
    if a.precisions and a.pair == "translate":
        raise UserError("--precisions goes with --pair chat (or both)")
    precisions = None
    if a.precisions:
        from .plan.precision import parse_precisions
        precisions = parse_precisions(a.precisions, "f32")
    if a.pair in ("translate", "both"):
        from .demo.run import run_demo
        run_demo(out_dir=Path(a.out), gamma=a.gamma, sentences=a.sentences)
    if a.pair in ("chat", "both"):
        from .demo.chat import chat_demo_missing, run_chat_demo
        # default folder artifacts/demo-chat; with --out DIR: DIR (chat) or DIR-chat (both)
        out = Path(a.out) if a.pair == "chat" else Path(a.out + "-chat")
        if a.out == "artifacts/demo":
            out = Path("artifacts") / "demo-chat"
        if a.pair == "both":
            missing = chat_demo_missing(a.draft)
            if missing:              # the translation demo ran: say why the chat pair does not
                print(f"\nthe chat pair is skipped: {missing}")
                return
            print()
        run_chat_demo(out, gamma=a.gamma, questions=min(a.sentences, 6), draft_dir=a.draft, precisions=precisions,
                      min_agreement=a.min_agreement)


def _check_template(t: str | None) -> None:
    if t is not None and "{prompt}" not in t:
        raise UserError("--prompt-template must contain {prompt}")


COMMAND_FUNCTIONS = {name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}


def main(argv=None) -> int:
    ap = build_parser(__doc__.splitlines()[0])
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:       # argparse: usage errors exit 2 already
        return int(e.code or 0)
    try:
        if a.cmd in BUILD_COMMANDS:
            need_build_tools(a.cmd)
        return int(COMMAND_FUNCTIONS[a.cmd](a) or 0)
    except (UserError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # disk full, permission denied, a file where a folder was expected...: one line, exit 2
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
