"""`build-sd build`: plan, then export + compile what the plan needs, validate, bundle.

OUT/
  plan.json
  mlir/{role}-{layout}/         exports (layout: whole or split at k), shared by configurations
  artifacts/{role}-{layout}/    compiled for the presets the configuration uses
  bundle/                       the chosen configuration, ready for `build-sd run` / `pack`
Every stage is incremental (export fingerprints, Ninja), so building several configurations of
one pair (as `build-sd bench` does) compiles each export/preset once.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def layout_name(split) -> str:
    return "whole" if not split else "split" + "-".join(str(k) for k in split[1:])


def build_config(cfg: dict, plan: dict, out: Path, bundle_dir: Path, validate_models: bool = True,
                 log=print, profile: dict | None = None, link: bool = False,
                 prompt_template: str | None = None) -> Path:
    """Export/compile/validate/bundle one plan configuration (a dict from plan['configs'])."""
    from .bundle import make_bundle
    from .compile import compile_artifacts
    from .export import export_model
    devices = plan["devices"]
    ckpts = {"draft": plan["draft"]["checkpoint"], "target": plan["target"]["checkpoint"]}
    # gamma 0 leaves the draft unused: keep it whole beside the target's first device
    draft_p = cfg["draft"] or {"split": None, "devices": {"whole": next(iter(cfg["target"]["devices"].values()))}}
    arts = {}
    places = []
    cpu_driver = {}
    for role, p in (("target", cfg["target"]), ("draft", draft_p)):
        layout = layout_name(p["split"])
        presets = sorted({devices[d]["preset"] for d in p["devices"].values()})
        mlir = out / "mlir" / f"{role}-{layout}"
        art = out / "artifacts" / f"{role}-{layout}"
        gammas = list(range(1, 9)) if role == "target" else [1]
        export_model(ckpts[role], mlir, split=p["split"], gammas=gammas, prefill=[16, 64],
                     max_context=plan["max_context"], dtype=plan["dtype"], log=log)
        # compile every preset this export has been asked for so far: a folder holds a union
        have = _existing_presets(art)
        compile_artifacts(mlir, sorted(set(presets) | have), art, log=log)
        if profile is not None:
            from .runtime.profiler import check_profile_matches
            check_profile_matches(profile, art)
        if validate_models:
            from .validate import validate
            lines = []
            if not validate(art, ckpts[role], out=lines.append):
                raise UserError(f"{art} does not match PyTorch:\n" + "\n".join(lines[-12:]))
            log(lines[-1])
        arts[role] = art
        for sub, dev in p["devices"].items():
            places.append(f"{role}.{_label(sub)}={devices[dev]['preset']}")
            if devices[dev].get("driver") == "local-sync":     # the plan put this model on cpu-sync
                cpu_driver[role] = "local-sync"
    make_bundle(arts["draft"], arts["target"], places, cfg["gamma"], bundle_dir, link=link,
                prompt_template=prompt_template, cpu_driver=cpu_driver or None, log=log)
    return bundle_dir


def _label(sub: str) -> str:
    if sub.startswith("layers_"):
        a, b = sub.split("_")[1:]
        return f"layers[{a}:{b}]"
    return sub


def _existing_presets(art: Path) -> set[str]:
    import json
    try:
        return set(json.loads((art / "manifest.json").read_text())["presets"])
    except (OSError, ValueError, KeyError):
        return set()


def check_template(t: str | None) -> None:
    if t is not None and "{prompt}" not in t:
        raise UserError("--prompt-template must contain {prompt}")


def run_build(a) -> int:
    from .plan import make_plan, print_plan, read_alpha, write_plan
    check_template(a.prompt_template)
    prof = None
    if a.profile:
        from .runtime.profiler import load_profile
        prof = load_profile(a.profile)
    alpha = read_alpha(a.alpha, a.calibration)
    out = Path(a.out)
    plan = make_plan(a.draft, a.target, a.platform, alpha, prof, dtype=a.dtype, max_context=a.max_context)
    print_plan(plan, 5)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan, out / "plan.json")
    chosen = plan["configs"][0]
    print(f"building #1: {chosen['target']['label']} / {chosen['draft']['label'] if chosen['draft'] else '-'}"
          f", gamma {chosen['gamma']}")
    build_config(chosen, plan, out, out / "bundle", profile=prof, prompt_template=a.prompt_template)
    print(f"bundle: {out / 'bundle'}")
    return 0
