"""`build-sd bundle`: draft + target artifacts and a placement -> one self-contained folder.

  B/manifest.json           schema, placement, gamma, context, presets, sha256 + size of files
  B/tokenizer.json
  B/draft/model.irpa, B/draft/export.json, B/draft/{preset}/{subgraph}.vmfb   (placed ones)
  B/target/...               same for the target
`draft/` and `target/` keep names apart even when both come from one artifacts folder.

Placement: `--place MODEL=PRESET` for the whole model and `--place MODEL.SUBGRAPH=PRESET` to
override one subgraph (`target.embed`, `target.layers[0:4]`, `target.head`). `cpu` and
`vulkan` stand for the one preset of that kind the artifacts hold. A model with no --place
uses its artifacts' preset when there is only one.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .compile import load_artifacts
from .errors import UserError
from .fsutil import copy_atomic, sha256_file, write_json

BUNDLE_SCHEMA = 1
ROLES = ("draft", "target")
_PLACE = re.compile(r"^(draft|target)(?:\.(embed|head|whole|layers\[(\d+):(\d+)\]))?=([\w.-]+)$")


def parse_places(places: list[str]) -> dict[str, dict[str | None, str]]:
    """['target.layers[0:4]=vulkan'] -> {'target': {'layers_0_4': 'vulkan'}}; None = whole model."""
    out: dict[str, dict[str | None, str]] = {r: {} for r in ROLES}
    for p in places:
        m = _PLACE.match(p.strip())
        if not m:
            raise UserError(f"--place {p!r}: expected MODEL=PRESET or MODEL.SUBGRAPH=PRESET, e.g. "
                            "draft=host or target.layers[0:4]=vulkan-llvmpipe")
        role, sub, a, b, preset = m.groups()
        key = None if sub is None else (f"layers_{a}_{b}" if a is not None else sub)
        out[role][key] = preset
    return out


def _resolve_preset(name: str, man: dict, role: str) -> str:
    presets = man["presets"]
    if name in presets:
        return name
    if name in ("cpu", "vulkan"):
        kind = "llvm-cpu" if name == "cpu" else "vulkan-spirv"
        match = [p for p, info in presets.items() if info["backend"] == kind]
        if len(match) == 1:
            return match[0]
        raise UserError(f"--place {role}={name}: the {role} artifacts hold "
                        f"{len(match) or 'no'} {name} presets ({', '.join(match) or 'none'}); name one")
    raise UserError(f"--place {role}: preset {name!r} is not in the {role} artifacts "
                    f"(they hold: {', '.join(presets)})")


def placement_for(role: str, want: dict, man: dict, meta: dict) -> dict[str, str]:
    """Subgraph name -> preset for every subgraph of the model."""
    subs = [sg["name"] for sg in meta["subgraphs"]]
    default = want.get(None)
    if default is None and set(subs) <= set(want):      # every subgraph placed by name: no default needed
        default = want[subs[0]]
    if default is None:
        if len(man["presets"]) != 1:
            raise UserError(f"no placement for the {role}: add --place {role}=PRESET "
                            f"(its artifacts hold {', '.join(man['presets'])})")
        default = next(iter(man["presets"]))
    placement = {s: _resolve_preset(default, man, role) for s in subs}
    for key, preset in want.items():
        if key is None:
            continue
        if key not in placement:
            labels = ", ".join(sg["label"] for sg in meta["subgraphs"])
            raise UserError(f"--place {role}: the {role} has no subgraph {key!r} (it has: {labels})")
        placement[key] = _resolve_preset(preset, man, role)
    return placement


def _write_bundle(staging, out, srcs, loaded, placements, gamma, tok_path, t_meta, fallback, prompt_template,
                  link=False, cpu_driver=None):
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    models, presets_used = {}, {}
    for r in ROLES:
        man, meta = loaded[r]
        placement = placements[r]
        files = {"irpa": f"{r}/model.irpa", "export": f"{r}/export.json"}
        copy_atomic(srcs[r] / "model.irpa", staging / files["irpa"], link)
        copy_atomic(srcs[r] / "export.json", staging / files["export"], link)
        modules = {}
        for sub, preset in placement.items():
            rel = f"{r}/{preset}/{sub}.vmfb"
            copy_atomic(srcs[r] / preset / f"{sub}.vmfb", staging / rel, link)
            modules[sub] = {"preset": preset, "file": rel}
            presets_used[preset] = man["presets"][preset]
        fallbacks = {}
        if fallback == "cpu":
            # a CPU module for every subgraph placed on a GPU, for boards without its driver
            for sub, preset in placement.items():
                if man["presets"][preset]["backend"] == "llvm-cpu":
                    continue
                cpu = _resolve_preset("cpu", man, r)
                rel = f"{r}/{cpu}/{sub}.vmfb"
                copy_atomic(srcs[r] / cpu / f"{sub}.vmfb", staging / rel, link)
                fallbacks[sub] = {"preset": cpu, "file": rel}
                presets_used[cpu] = man["presets"][cpu]
        models[r] = {"source": str(srcs[r].resolve()), "files": files, "modules": modules,
                     "fallback": fallbacks,
                     "compiler": man["compiler"], "model_source": meta["source"],
                     "dtype": meta["dtype"], "max_context": meta["max_context"]}
    shutil.copyfile(tok_path, staging / "tokenizer.json")
    file_list = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "kind": "build_sd.bundle",
        "gamma": gamma,
        "max_context": min(models[r]["max_context"] for r in ROLES),
        "eos_token_ids": list(t_meta["config"]["eos_token_ids"]),
        "prompt_template": prompt_template or "{prompt}",
        "iree": {"compiler": loaded["target"][0]["compiler"]["version"], "runtime_at_build": _runtime_version()},
        "placement": {r: {sub: m["preset"] for sub, m in models[r]["modules"].items()} for r in ROLES},
        **({"cpu_driver": cpu_driver} if cpu_driver else {}),
        "presets": presets_used,
        "models": models,
        "tokenizer": "tokenizer.json",
        "files": {f: {"sha256": sha256_file(staging / f), "bytes": (staging / f).stat().st_size}
                  for f in file_list},
    }
    write_json(staging / "manifest.json", manifest)
    # swap in the complete bundle; the previous one stays usable until this rename
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return manifest


def _runtime_version() -> str:
    from .runtime.verify import runtime_version
    return runtime_version()


def make_bundle(draft: str | Path, target: str | Path, places: list[str], gamma: int,
                out: str | Path, tokenizer: str | Path | None = None,
                prompt_template: str | None = None, fallback: str | None = None, link: bool = False,
                cpu_driver=None, log=print) -> dict:
    from .runtime.tokenizer import check_covers, check_pair, load_tokenizer

    srcs = {"draft": Path(draft), "target": Path(target)}
    out = Path(out)
    loaded = {r: load_artifacts(p) for r, p in srcs.items()}
    want = parse_places(places)
    if gamma < 0:
        raise UserError(f"--gamma must be >= 0, got {gamma}")
    t_meta = loaded["target"][1]
    t_verify = sorted(f["T"] - 1 for f in t_meta["subgraphs"][0]["functions"].values() if f["role"] == "verify")
    if gamma > 0 and gamma not in t_verify:
        raise UserError(f"--gamma {gamma}: the target has verify functions for gamma {t_verify} "
                        "(re-export with --gammas)")

    # tokenizer: explicit, else the target's, else the draft's; checked against both models
    tok_path = Path(tokenizer) if tokenizer else next(
        (srcs[r] / loaded[r][1]["tokenizer"] for r in ("target", "draft") if loaded[r][1].get("tokenizer")), None)
    if tok_path is None:
        raise UserError("no tokenizer.json in the artifacts: give --tokenizer")
    tok = load_tokenizer(tok_path)
    vocab = {r: loaded[r][1]["config"]["vocab_size"] for r in ROLES}
    others = [srcs[r] / loaded[r][1]["tokenizer"] for r in ROLES if loaded[r][1].get("tokenizer")]
    if not tokenizer and len(others) == 2:
        check_pair(load_tokenizer(others[0]), load_tokenizer(others[1]), vocab["draft"], vocab["target"])
    for r in ROLES:
        check_covers(tok, vocab[r], r)

    from .runtime.session import recover_interrupted_swap
    recover_interrupted_swap(out)
    if fallback not in (None, "cpu"):
        raise UserError(f"--fallback: only 'cpu' is supported, got {fallback!r}")
    placements = {r: placement_for(r, want[r], *loaded[r]) for r in ROLES}   # errors before any write
    from .runtime.session import parse_cpu_driver
    cpu_driver = parse_cpu_driver(cpu_driver)
    staging = out.with_name(f".{out.name}.partial")
    try:
        manifest = _write_bundle(staging, out, srcs, loaded, placements, gamma, tok_path, t_meta, fallback,
                                 prompt_template, link, cpu_driver)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)     # nothing half-written stays behind
        raise UserError(f"cannot write the bundle {out}: {e.strerror or e}"
                        f"{f' ({e.filename})' if getattr(e, 'filename', None) else ''}; "
                        "the previous bundle is unchanged") from None
    log(f"bundle {out}: gamma {gamma}, placement " + "; ".join(
        f"{r}: " + ", ".join(f"{s}={p}" for s, p in manifest["placement"][r].items()) for r in ROLES))
    return manifest
