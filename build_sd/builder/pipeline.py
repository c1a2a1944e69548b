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

from ..contract import ArtifactsManifest, Placement, Plan, PlanConfig, Profile, layout_name
from ..errors import UserError

TARGET_GAMMAS = list(range(1, 9))   # the target verifies every gamma the planner may pick
DRAFT_GAMMAS = [1]                  # the draft's verify_T2: its catch-up on [x_g, bonus] in one call
PREFILL = [16, 64]


def build_config(cfg: PlanConfig, plan: Plan, out: Path, bundle_dir: Path, validate_models: bool = True,
                 log=print, profile: Profile | None = None, link: bool = False,
                 prompt_template: str | None = None) -> Path:
    """Export/compile/validate/bundle one configuration of the plan."""
    from .bundle import make_bundle
    # gamma 0 leaves the draft unused: keep it whole beside the target's first device
    draft_p = cfg.draft or Placement(split=None, devices={"whole": next(iter(cfg.target.devices.values()))},
                                     label="-")
    arts, places, cpu_driver = {}, {}, {}
    for role, p in (("target", cfg.target), ("draft", draft_p)):
        arts[role] = _artifacts_for(plan, role, p, out, validate_models, profile, log,
                                    cfg.precision(role, plan.dtype))
        places[role] = {sub: plan.devices[dev].preset for sub, dev in p.devices.items()}
        if any(plan.devices[dev].driver == "local-sync" for dev in p.devices.values()):
            cpu_driver[role] = "local-sync"        # the plan put this model on cpu-sync
    make_bundle(arts["draft"], arts["target"], places, cfg.gamma, bundle_dir, link=link,
                prompt_template=prompt_template, cpu_driver=cpu_driver, overlap=cfg.overlap, log=log)
    return bundle_dir


def _artifacts_for(plan: Plan, role: str, p: Placement, out: Path, validate_models: bool,
                   profile: Profile | None, log, precision: str | None = None) -> Path:
    """Export the model in the placement's layout and precision, and compile it for the presets it
    uses (a precision other than the plan's dtype gets its own folders: role-layout-precision)."""
    from ..plan.precision import dtype_and_quant
    from .compile import compile_artifacts
    from .export import export_model
    precision = precision or plan.dtype
    dtype, quant = dtype_and_quant(precision, plan.dtype)
    layout = layout_name(p.split) + ("" if precision == plan.dtype else f"-{precision}")
    presets = {plan.devices[d].preset for d in p.devices.values()}
    mlir, art = out / "mlir" / f"{role}-{layout}", out / "artifacts" / f"{role}-{layout}"
    ckpt = plan.model(role).checkpoint
    # the plan's placement already holds the cuts its devices' allocation limits need
    export_model(ckpt, mlir, split=p.split, gammas=TARGET_GAMMAS if role == "target" else DRAFT_GAMMAS,
                 prefill=PREFILL, max_context=plan.max_context, dtype=dtype, quant=quant, max_module_bytes=0, log=log)
    # compile every preset this export has been asked for so far: a folder holds a union
    compile_artifacts(mlir, sorted(presets | _existing_presets(art)), art, log=log)
    if profile is not None:
        from ..runtime.profiler import check_profile_matches
        check_profile_matches(profile, art)
    if validate_models:
        from .validate import validate
        lines = []
        if not validate(art, ckpt, out=lines.append):
            raise UserError(f"{art} does not match PyTorch:\n" + "\n".join(lines[-12:]))
        log(lines[-1])
    return art


def _existing_presets(art: Path) -> set[str]:
    try:
        return set(ArtifactsManifest.read(art / "manifest.json").presets)
    except UserError:
        return set()


def run_build(plan: Plan, out: str | Path, profile: Profile | None = None, prompt_template: str | None = None,
              log=print) -> Path:
    """Write the plan into OUT and build its pick (configuration #1) into OUT/bundle."""
    from ..plan.planner import print_plan
    out = Path(out)
    print_plan(plan, 5, out=log)
    out.mkdir(parents=True, exist_ok=True)
    plan.write(out / "plan.json")
    chosen = plan.configs[0]
    log(f"building #1: {chosen.target.label} / {chosen.draft_label}, gamma {chosen.gamma}")
    build_config(chosen, plan, out, out / "bundle", profile=profile, prompt_template=prompt_template, log=log)
    log(f"bundle: {out / 'bundle'}")
    return out / "bundle"
