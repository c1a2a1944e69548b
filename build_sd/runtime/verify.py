"""`build-sd verify BUNDLE`: is this bundle whole, and can this machine run it? (no torch)

The runner runs the same checks (checks.py) before it loads anything."""
from __future__ import annotations

from pathlib import Path

from ..contract import SCHEMAS
from ..errors import UserError
from .checks import problems, read_bundle_manifest, runtime_version


def verify_bundle(bundle: str | Path, fallback: str | None = None, out=print) -> None:
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
