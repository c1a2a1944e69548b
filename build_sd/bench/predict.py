"""Step 3 of `build-sd bench`: the cost model's predictions of the measured configurations, from
a profile (the full one, or an in-situ re-profile laid over it) and alpha."""
from __future__ import annotations

from pathlib import Path

import msgspec

from ..contract import FnStats, Plan, PlanConfig, Profile
from ..errors import UserError


class Predictor:
    """The cost model's prediction of every configuration from a profile and alpha."""

    def __init__(self, root: Path, plan: Plan, platform, alpha):
        self.plan, self.platform, self.alpha = plan, platform, alpha
        self.ckpts = {r: _ckpt(plan, r, root) for r in ("draft", "target")}

    def predict(self, prof: Profile) -> dict[tuple, PlanConfig]:
        """Every configuration, not only those a plan.json keeps (keep_top=0): a re-profile
        re-ranks them, and the measured ones must be there whatever their new rank (bench once
        failed with a KeyError on the plan's 142nd configuration after an in-situ re-profile)."""
        from ..plan.planner import make_plan
        fresh = make_plan(self.ckpts["draft"], self.ckpts["target"], self.platform, self.alpha, prof,
                          dtype=self.plan.dtype, max_context=self.plan.max_context, devices=list(self.plan.devices),
                          split=self.plan.split, keep_top=0)
        return {c.key: c for c in fresh.configs}


def _ckpt(plan: Plan, role: str, root: Path) -> str:
    """The plan's checkpoint folder, else ROOT/checkpoints/ROLE (a copy of its config.json is
    enough to predict: bench --no-build on a machine the weights did not travel to)."""
    p = Path(plan.model(role).checkpoint)
    if (p / "config.json").exists():
        return str(p)
    alt = root / "checkpoints" / role
    if (alt / "config.json").exists():
        return str(alt)
    raise UserError(f"the plan's {role} checkpoint {p} is not here (nor {alt}/config.json)")


def overlay(base: Profile, fresh: Profile) -> Profile:
    """base with what `fresh` measured laid over it, function by function (an in-situ-only
    profile leaves the prefills and isolated figures to base), and fresh's host figures."""
    by_name = {m.name: m for m in fresh.models}
    models = []
    for m in base.models:
        f = by_name.get(m.name)
        if f is None:
            models.append(m)
            continue
        latency = {k: {s: dict(fns) for s, fns in subs.items()} for k, subs in m.latency.items()}
        for key, stages in f.latency.items():
            for stage, fns in stages.items():
                slot = latency.setdefault(key, {}).setdefault(stage, {})
                for fname, st in fns.items():
                    slot[fname] = _laid_over(slot.get(fname), st)
        models.append(msgspec.structs.replace(m, latency=latency, step={**m.step, **{k: v for k, v in f.step.items() if v}}))
    return msgspec.structs.replace(base, models=models, host=fresh.host or base.host,
                                   contention={**base.contention, **fresh.contention})


def _laid_over(old: FnStats | None, new: FnStats) -> FnStats:
    if old is None:
        return new
    return msgspec.structs.replace(old, **{k: getattr(new, k) for k in new.__struct_fields__
                                           if getattr(new, k) is not None})


def mean_predictions(a: dict, b: dict) -> dict:
    """Per configuration in both, the mean of two predictions (tokens/s and the cost model's terms)."""
    return {k: msgspec.structs.replace(
        v, pred_tokens_per_s=(v.pred_tokens_per_s + b[k].pred_tokens_per_s) / 2,
        parts_ms={p: (ms + b[k].parts_ms[p]) / 2 for p, ms in v.parts_ms.items()}) for k, v in a.items() if k in b}
