"""`build-sd bundle`: draft + target artifacts and a placement -> one self-contained folder.

  B/manifest.json           schema, placement, gamma, context, presets, sha256 + size of files
                            (contract.BundleManifest)
  B/tokenizer.json, B/tokenizer_config.json (the chat template, when the checkpoint has one)
  B/draft/model.irpa, B/draft/export.json, B/draft/{preset}/{subgraph}.vmfb   (placed ones)
  B/target/...               same for the target
`draft/` and `target/` keep names apart even when both come from one artifacts folder; weights and
modules with the same bytes are stored once (the manifest points both models at the draft's copy).

Placement: {role: {subgraph name or None (the whole model): preset}} (the CLI's `--place
MODEL=PRESET` and `--place MODEL.SUBGRAPH=PRESET`). `cpu` and `vulkan` stand for the one
preset of that kind the artifacts hold. A model with no placement uses its artifacts' preset
when there is only one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from ..contract import (ROLES, ArtifactsManifest, BundleFile, BundleManifest, BundleModel, BundleModels, Overlap,
                        ExportRecord, IreeVersions, ModelFiles, ModuleRef, SubgraphSpec)
from ..errors import UserError
from ..fsutil import copy_atomic, sha256_file
from .compile import load_artifacts

Places = dict[str, dict[str | None, str]]       # role -> subgraph name (None: whole model) -> preset


def _resolve_preset(name: str, man: ArtifactsManifest, role: str) -> str:
    if name in man.presets:
        return name
    if name in ("cpu", "vulkan"):
        match = man.presets_of("llvm-cpu" if name == "cpu" else "vulkan-spirv")
        if len(match) == 1:
            return match[0]
        raise UserError(f"--place {role}={name}: the {role} artifacts hold "
                        f"{len(match) or 'no'} {name} presets ({', '.join(match) or 'none'}); name one")
    raise UserError(f"--place {role}: preset {name!r} is not in the {role} artifacts "
                    f"(they hold: {', '.join(man.presets)})")


def placement_for(role: str, want: dict[str | None, str], man: ArtifactsManifest,
                  export: ExportRecord) -> dict[str, str]:
    """Subgraph name -> preset for every subgraph of the model. A layer range places every
    module inside it (an export cut to fit a device has several), the whole model all of them."""
    subs = [sg.name for sg in export.subgraphs]
    targets = {key: _modules_in(key, export, role) for key in want if key is not None}
    default = want.get(None)
    covered = {m for ms in targets.values() for m in ms}
    if default is None and set(subs) <= covered:          # every subgraph placed by name: no default needed
        default = want[next(k for k, ms in targets.items() if subs[0] in ms)]
    if default is None:
        if len(man.presets) != 1:
            raise UserError(f"no placement for the {role}: add --place {role}=PRESET "
                            f"(its artifacts hold {', '.join(man.presets)})")
        default = next(iter(man.presets))
    placement = {s: _resolve_preset(default, man, role) for s in subs}
    for key, modules in targets.items():
        for m in modules:
            placement[m] = _resolve_preset(want[key], man, role)
    return placement


def _modules_in(key: str, export: ExportRecord, role: str) -> list[str]:
    """The modules a placement key names: itself, or for layers[a:b] every module inside it."""
    names = [sg.name for sg in export.subgraphs]
    if key in names:
        return [key]
    labels = ", ".join(sg.label for sg in export.subgraphs)
    spec = SubgraphSpec.from_name(key)
    if spec.kind == "layers":
        inside = [sg.name for sg in export.subgraphs
                  if sg.kind == "layers" and spec.start <= sg.start and sg.end <= spec.end]
        straddle = [sg.label for sg in export.subgraphs if sg.kind == "layers" and sg.start < spec.end
                    and sg.end > spec.start and sg.name not in inside]
        if straddle:
            raise UserError(f"--place {role}.{spec.label}: module {straddle[0]} lies across its bounds "
                            f"(the {role} has: {labels})")
        if inside:
            return inside
    raise UserError(f"--place {role}: the {role} has no subgraph {key!r} (it has: {labels})")


def make_bundle(draft: str | Path, target: str | Path, places: Places, gamma: int, out: str | Path,
                tokenizer: str | Path | None = None, prompt_template: str | None = None,
                fallback: str | None = None, link: bool = False, cpu_driver: dict[str, str] | None = None,
                overlap: bool = False, pin: dict[str, set[int]] | None = None, log=print) -> BundleManifest:
    """Check everything, then write the bundle in a staging folder and swap it in atomically."""
    from ..runtime.checks import recover_interrupted_swap
    from ..runtime.session import check_cpu_driver

    srcs = {"draft": Path(draft), "target": Path(target)}
    out = Path(out)
    loaded = {r: load_artifacts(p) for r, p in srcs.items()}
    if gamma < 0:
        raise UserError(f"--gamma must be >= 0, got {gamma}")
    if pin and not overlap:
        raise UserError("--pin goes with --overlap (it places the two models' threads on cores)")
    if overlap and gamma < 1:
        raise UserError("--overlap needs a draft: --gamma >= 1")
    t_export = loaded["target"][1]
    if gamma > 0 and gamma not in t_export.gammas_built:
        raise UserError(f"--gamma {gamma}: the target has verify functions for gamma {t_export.gammas_built} "
                        "(re-export with --gammas)")
    if prompt_template is not None and "{prompt}" not in prompt_template:
        raise UserError("--prompt-template must contain {prompt}")
    tok_path = _tokenizer(srcs, loaded, tokenizer)
    recover_interrupted_swap(out)
    if fallback not in (None, "cpu"):
        raise UserError(f"--fallback: only 'cpu' is supported, got {fallback!r}")
    placements = {r: placement_for(r, (places or {}).get(r, {}), *loaded[r]) for r in ROLES}   # before any write
    cpu_driver = check_cpu_driver(cpu_driver or {})
    sched = (Overlap(draft_cpus=sorted((pin or {}).get("draft", ())), target_cpus=sorted((pin or {}).get("target", ())))
             if overlap else None)
    staging = out.with_name(f".{out.name}.partial")
    try:
        manifest = _write_bundle(staging, out, srcs, loaded, placements, gamma, tok_path, fallback,
                                 prompt_template, link, cpu_driver, sched)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)     # nothing half-written stays behind
        raise UserError(f"cannot write the bundle {out}: {e.strerror or e}"
                        f"{f' ({e.filename})' if getattr(e, 'filename', None) else ''}; "
                        "the previous bundle is unchanged") from None
    log(f"bundle {out}: gamma {gamma}, placement " + "; ".join(
        f"{r}: " + ", ".join(f"{s}={p}" for s, p in manifest.placement[r].items()) for r in ROLES))
    return manifest


def _tokenizer(srcs: dict, loaded: dict, tokenizer: str | Path | None) -> Path:
    """The tokenizer to bundle: given, else the target's, else the draft's; checked against both
    models (the same ids must mean the same strings, and each embedding must cover them)."""
    from ..runtime.tokenizer import check_covers, check_pair, load_tokenizer
    exports = {r: loaded[r][1] for r in ROLES}
    tok_path = Path(tokenizer) if tokenizer else next(
        (srcs[r] / exports[r].tokenizer for r in ("target", "draft") if exports[r].tokenizer), None)
    if tok_path is None:
        raise UserError("no tokenizer.json in the artifacts: give --tokenizer")
    tok = load_tokenizer(tok_path)
    vocab = {r: exports[r].config.vocab_size for r in ROLES}
    others = [srcs[r] / exports[r].tokenizer for r in ROLES if exports[r].tokenizer]
    if not tokenizer and len(others) == 2:
        check_pair(load_tokenizer(others[0]), load_tokenizer(others[1]), vocab["draft"], vocab["target"])
    for r in ROLES:
        check_covers(tok, vocab[r], r)
    return tok_path


def _copy_model(staging: Path, role: str, src: Path, man: ArtifactsManifest, export: ExportRecord,
                placement: dict[str, str], fallback: str | None, link: bool, presets_used: dict,
                stored: dict[str, str]) -> BundleModel:
    """One model's weights, contract and placed modules (and CPU fallbacks) into the staging folder.
    stored: sha256 -> bundle path of the weights and modules already copied; a model whose files
    are the same (a pair of one artifacts folder, e.g. self-speculation) points at them instead."""
    golden = (src / "golden.json").is_file()       # written by validate: the board's numbers check

    def once(path: Path, rel: str, sha: str | None = None) -> str:
        sha = sha or sha256_file(path)
        if sha not in stored:
            copy_atomic(path, staging / rel, link)
            stored[sha] = rel
        return stored[sha]

    files = ModelFiles(irpa=once(src / "model.irpa", f"{role}/model.irpa", export.parameters.sha256 or None),
                       export=f"{role}/export.json", golden=f"{role}/golden.json" if golden else msgspec.UNSET)
    copy_atomic(src / "export.json", staging / files.export, link)
    if golden:
        copy_atomic(src / "golden.json", staging / files.golden, link)

    def module(sub: str, preset: str) -> ModuleRef:
        rel = once(src / preset / f"{sub}.vmfb", f"{role}/{preset}/{sub}.vmfb")
        presets_used[preset] = man.presets[preset]
        return ModuleRef(preset, rel)
    modules = {sub: module(sub, preset) for sub, preset in placement.items()}
    fallbacks = {}
    if fallback == "cpu":
        # a CPU module for every subgraph placed on a GPU, for boards without its driver
        for sub, preset in placement.items():
            if man.presets[preset].backend != "llvm-cpu":
                fallbacks[sub] = module(sub, _resolve_preset("cpu", man, role))
    return BundleModel(source=str(src.resolve()), files=files, modules=modules, fallback=fallbacks,
                       compiler=man.compiler, model_source=export.source, dtype=export.dtype,
                       max_context=export.max_context)


def _write_bundle(staging, out, srcs, loaded, placements, gamma, tok_path, fallback, prompt_template,
                  link=False, cpu_driver=None, overlap=None) -> BundleManifest:
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    presets_used: dict = {}
    stored: dict[str, str] = {}
    models = {r: _copy_model(staging, r, srcs[r], *loaded[r], placements[r], fallback, link, presets_used, stored)
              for r in ROLES}
    shutil.copyfile(tok_path, staging / "tokenizer.json")
    tok_cfg = next((srcs[r] / loaded[r][1].tokenizer_config for r in ("target", "draft")
                    if loaded[r][1].tokenizer_config and (srcs[r] / loaded[r][1].tokenizer_config).is_file()), None)
    if tok_cfg is not None:
        shutil.copyfile(tok_cfg, staging / "tokenizer_config.json")
    file_list = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    manifest = BundleManifest(
        gamma=gamma, max_context=min(m.max_context for m in models.values()),
        eos_token_ids=list(loaded["target"][1].config.eos_token_ids),
        prompt_template=prompt_template or "{prompt}",
        iree=IreeVersions(compiler=loaded["target"][0].compiler.version, runtime_at_build=_runtime_version()),
        placement={r: {sub: ref.preset for sub, ref in models[r].modules.items()} for r in ROLES},
        cpu_driver=cpu_driver or msgspec.UNSET,
        overlap=overlap if overlap is not None else msgspec.UNSET,
        presets=presets_used, models=BundleModels(draft=models["draft"], target=models["target"]),
        tokenizer="tokenizer.json",
        tokenizer_config="tokenizer_config.json" if tok_cfg is not None else msgspec.UNSET,
        files={f: BundleFile(sha256_file(staging / f), (staging / f).stat().st_size) for f in file_list})
    manifest.write(staging / "manifest.json")
    _swap_in(staging, out)
    return manifest


def _swap_in(staging: Path, out: Path) -> None:
    """Swap in the complete bundle; the previous one stays usable until this rename."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def _runtime_version() -> str:
    from ..runtime.checks import runtime_version
    return runtime_version()
