"""`build-sd verify BUNDLE [--numerics]`: is this bundle whole, can this machine run it, and
(--numerics) do its modules compute here what PyTorch computed on the build machine? (no torch)

The runner runs the same file and device checks (checks.py) before it loads anything."""
from __future__ import annotations

from pathlib import Path

import msgspec

from ..contract import SCHEMAS, GoldenCase
from ..errors import UserError
from .checks import problems, read_bundle_manifest, runtime_version


def verify_bundle(bundle: str | Path, fallback: str | None = None, numerics: bool = False, out=print) -> None:
    """Print OK and what was checked, or FAIL per problem and raise a UserError."""
    bundle = Path(bundle)
    man = read_bundle_manifest(bundle)
    found = problems(bundle, man, fallback=fallback)
    if found:
        for p in found:
            out(f"FAIL {p}")
        raise UserError(f"{bundle}: {len(found)} problem(s) (above)")
    out(f"OK {bundle}: schema {man.schema} (reader {SCHEMAS[man.KIND][0]}), {len(man.files)} files match "
        f"their sha256, presets {', '.join(man.presets)} run here (IREE runtime {runtime_version()})")
    if numerics:
        verify_numerics(bundle, man, fallback, out)


def verify_numerics(bundle: Path, man, fallback: str | None, out) -> None:
    """Each model's golden case on its placed modules, module by module (runtime/numerics.py)."""
    from .numerics import check_chain
    from .session import open_bundle
    missing = [role for role, m in man.models.items() if m.files.golden is msgspec.UNSET]
    if len(missing) == 2:
        raise UserError(f"{bundle}: no golden case in it (bundle artifacts that `build-sd validate` has checked)")
    session = open_bundle(bundle, fallback=fallback, check_hashes=False)
    failed = 0
    for role, m in man.models.items():
        if m.files.golden is msgspec.UNSET:
            out(f"SKIP {role}: no golden case (its artifacts were not validated before bundling)")
            continue
        golden = GoldenCase.read(bundle / m.files.golden)
        for c in check_chain(role, getattr(session, role), golden):
            failed += not c.ok
            what = "" if c.ids_ok else "; greedy ids differ"
            out(f"{'PASS' if c.ok else 'FAIL'} {role}.{c.label} on {c.device}: max|diff| {c.max_diff:.2e} "
                f"(tolerance {c.tol:.1e}){what}")
    if failed:
        raise UserError(f"{bundle}: {failed} module(s) compute other numbers here than the reference (above)")
