"""Is a bundle whole, and can this machine run it? The checks `build-sd verify` prints and the
runner makes before it loads anything (no torch). Each problem is one line that names the file
or the requirement, what was expected and what was found."""
from __future__ import annotations

import platform
import re
from pathlib import Path

from ..contract import BundleManifest, ExportRecord
from ..errors import UserError
from ..fsutil import sha256_file
from .compat import can_run


def read_bundle_manifest(bundle: Path) -> BundleManifest:
    """The bundle's manifest, checked field by field (contract.BundleManifest)."""
    if not bundle.is_dir():
        raise UserError(f"bundle folder not found: {bundle}")
    if not (bundle / "manifest.json").exists():
        raise UserError(f"{bundle} is not a bundle (no manifest.json)")
    return BundleManifest.read(bundle / "manifest.json")


def recover_interrupted_swap(bundle: Path) -> None:
    """A bundle replaced in place is renamed to .NAME.old just before the new one moves in; if
    that was interrupted, put the previous bundle back."""
    old = bundle.with_name(f".{bundle.name}.old")
    if not bundle.exists() and old.is_dir() and (old / "manifest.json").exists():
        old.rename(bundle)


def check_files(bundle: Path, man: BundleManifest, skip: set[str] = frozenset()) -> list[str]:
    """Problems with the bundle's files (missing, size or sha256 differs from the manifest).
    skip: files not to check (the .irpa archives, which random weights do not read)."""
    problems = []
    for rel, info in man.files.items():
        if rel in skip:
            continue
        f = bundle / rel
        if not f.exists():
            problems.append(f"{rel}: missing")
        elif f.stat().st_size != info.bytes:
            problems.append(f"{rel}: {f.stat().st_size} bytes, manifest says {info.bytes}")
        elif sha256_file(f) != info.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


def runtime_version() -> str:
    try:
        from importlib.metadata import version
        return version("iree-base-runtime")
    except Exception:  # noqa: BLE001 - a source build without metadata
        return "unknown"


def _major_minor(v: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def problems(bundle: Path, man: BundleManifest, check_hashes: bool = True, fallback: str | None = None,
             random_weights: int | None = None) -> list[str]:
    """Everything that keeps this bundle from running here, one line each (empty: it runs)."""
    out = []
    if check_hashes:
        # under random weights the .irpa archives are not read: a bundle may travel without them
        out += check_files(bundle, man, skip=man.irpa_files() if random_weights is not None else set())
    # compiler / runtime compatibility (vmfb format follows the release)
    rv = runtime_version()
    for role, m in man.models.items():
        cv = m.compiler.version
        if _major_minor(cv) and _major_minor(rv) and _major_minor(cv) != _major_minor(rv):
            out.append(f"{role}: compiled by IREE {'.'.join(map(str, _major_minor(cv)))}, this runtime is "
                       f"iree-base-runtime {rv}: install the matching 3.x release")
    out += fit_problems(bundle, man)
    # the devices the placement needs
    for name, preset in man.presets.items():
        ok, why = can_run(preset)
        if ok:
            continue
        if fallback == "cpu" and preset.backend != "llvm-cpu" and _has_cpu_fallback(man, name):
            continue
        hint = ""
        if preset.backend != "llvm-cpu":
            hint = " (hint: install the Vulkan driver for this GPU"
            hint += (", or run with --fallback cpu: the bundle holds CPU modules for these subgraphs)"
                     if _has_cpu_fallback(man, name) else ")")
        out.append(f"preset {name} ({preset.arch}, {preset.description}) cannot run here: "
                   f"{why}; this machine: {platform.machine()}, {_devices_here()}{hint}")
    return out


def fit_problems(bundle: Path, man: BundleManifest) -> list[str]:
    """Modules placed on a GPU here whose weights or KV caches exceed one allocation of it: IREE
    would fail to load them (RESOURCE_EXHAUSTED; docs/FINDINGS.md). Checked before loading, from
    the bytes export.json records and the device's probed limit."""
    from .devices import max_allocation_bytes
    out = []
    for role, m in man.models.items():
        gpu = {sub: ref for sub, ref in m.modules.items()
               if man.presets[ref.preset].backend == "vulkan-spirv" and can_run(man.presets[ref.preset])[0]}
        if not gpu:
            continue
        limit = max_allocation_bytes("vulkan")
        if limit is None:
            continue
        try:
            export = ExportRecord.read(bundle / m.files.export)
        except UserError:
            continue                 # the load says what is wrong with it
        for sg in export.subgraphs:
            if sg.name in gpu:
                out += [f"{role}.{sg.label} ({gpu[sg.name].file}): {what} of {n} bytes exceed the largest "
                        f"allocation of the Vulkan device ({limit} bytes): export again with "
                        f"--max-module-bytes below it{hint}, or place it on the CPU"
                        for what, n, hint in (("weights", sg.parameter_bytes, ""),
                                              ("KV caches", sg.kv_bytes, " or a shorter --max-context"))
                        if n > limit]
    return out


def _has_cpu_fallback(man: BundleManifest, preset: str) -> bool:
    """True when every subgraph placed on `preset` also has a runnable CPU module in the bundle."""
    for _, m in man.models.items():
        for sub, ref in m.modules.items():
            if ref.preset != preset:
                continue
            fb = m.fallback.get(sub)
            if not fb or not can_run(man.presets[fb.preset])[0]:
                return False
    return True


def _devices_here() -> str:
    from .devices import vulkan_device_names
    names = vulkan_device_names()
    return "Vulkan: " + (", ".join(names) if names else "none")
