"""`build-sd verify BUNDLE`: is this bundle whole, and can this machine run it? (no torch)

The runner runs the same checks before it loads anything. Each problem is one line that names
the file or the requirement, what was expected and what was found.
"""
from __future__ import annotations

import platform
from pathlib import Path

from ..errors import UserError
from .compat import can_run
from .session import BUNDLE_SCHEMA, check_files


def runtime_version() -> str:
    try:
        from importlib.metadata import version
        return version("iree-base-runtime")
    except Exception:  # noqa: BLE001 - a source build without metadata
        return "unknown"


def _major_minor(v: str) -> tuple[int, ...] | None:
    import re
    m = re.search(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def problems(bundle: Path, man: dict, check_hashes: bool = True, fallback: str | None = None) -> list[str]:
    out = []
    if check_hashes:
        out += check_files(bundle, man)
    # every module the manifest places must be listed with a hash
    for role, m in man.get("models", {}).items():
        for sub, info in m.get("modules", {}).items():
            if info.get("file") not in man.get("files", {}):
                out.append(f"{role}.{sub}: module {info.get('file')} is not in the manifest's file list")
    # compiler / runtime compatibility (vmfb format follows the release)
    rv = runtime_version()
    for role, m in man.get("models", {}).items():
        comp = m.get("compiler")
        cv = comp.get("version", "") if isinstance(comp, dict) else ""
        if _major_minor(cv) and _major_minor(rv) and _major_minor(cv) != _major_minor(rv):
            out.append(f"{role}: compiled by IREE {'.'.join(map(str, _major_minor(cv)))}, this runtime is "
                       f"iree-base-runtime {rv}: install the matching 3.x release")
    # the devices the placement needs
    for name, preset in man.get("presets", {}).items():
        ok, why = can_run(preset)
        if ok:
            continue
        if fallback == "cpu" and preset.get("backend") != "llvm-cpu" and _has_cpu_fallback(man, name):
            continue
        hint = ""
        if preset.get("backend") != "llvm-cpu":
            hint = " (hint: install the Vulkan driver for this GPU"
            hint += (", or run with --fallback cpu: the bundle holds CPU modules for these subgraphs)"
                     if _has_cpu_fallback(man, name) else ")")
        out.append(f"preset {name} ({preset.get('arch')}, {preset.get('description', '')}) cannot run here: "
                   f"{why}; this machine: {platform.machine()}, {_devices_here()}{hint}")
    return out


def _has_cpu_fallback(man: dict, preset: str) -> bool:
    """True when every subgraph placed on `preset` also has a runnable CPU module in the bundle."""
    for role, m in man.get("models", {}).items():
        for sub, info in m.get("modules", {}).items():
            if info.get("preset") != preset:
                continue
            fb = (m.get("fallback") or {}).get(sub)
            if not fb or not can_run(man["presets"].get(fb["preset"], {"backend": "?"}))[0]:
                return False
    return True


def _devices_here() -> str:
    from .devices import vulkan_device_names
    names = vulkan_device_names()
    return "Vulkan: " + (", ".join(names) if names else "none")


def read_manifest_any(path: Path) -> dict:
    from .session import read_manifest
    return read_manifest(path)


def run_verify_cli(a) -> int:
    bundle = Path(a.bundle)
    from .session import read_manifest
    man = read_manifest(bundle)
    found = problems(bundle, man, fallback=getattr(a, "fallback", None))
    n_files = len(man.get("files", {}))
    if found:
        for p in found:
            print(f"FAIL {p}")
        raise UserError(f"{bundle}: {len(found)} problem(s) (above)")
    print(f"OK {bundle}: schema {man['schema']} (reader {BUNDLE_SCHEMA}), {n_files} files match their sha256, "
          f"presets {', '.join(man['presets'])} run here (IREE runtime {runtime_version()})")
    return 0

