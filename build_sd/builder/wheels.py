"""The wheels an offline board installs the runner from (`build-sd pack --wheels PLATFORM`).

build_sd's own wheel (built from this source checkout with a fixed timestamp, or found in
--find-links) and the whole closure of its core dependencies for the board's platform and
Python, resolved by `pip download` (tokenizers and iree-base-runtime have dependencies of their
own). The board then runs `pip install --no-index --find-links wheels/ build_sd`.
Downloads go through pip's own cache; the wheels are gathered in a fresh folder each time, so
the archive holds exactly what this resolution chose.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import __version__
from ..errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
# a fixed timestamp for the zip entries of build_sd's own wheel: same sources -> same bytes
SOURCE_DATE_EPOCH = "315532800"          # 1980-01-01, the zip format's earliest date


def platform_tags(tag: str) -> list[str]:
    """pip matches --platform exactly: manylinux_2_28_aarch64 must also name the older glibc
    tags (2_27 ... 2_17, manylinux2014) that wheels such as tokenizers' are published under."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
    if not m:
        return [tag]
    minor, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{k}_{arch}" for k in range(minor, 16, -1)]
    return tags + ([f"manylinux2014_{arch}"] if minor >= 17 else [])


def own_wheel(dest: Path, find_links: list[str], log) -> Path:
    """build_sd's wheel: from --find-links when one of this version is there, else built from
    this source checkout (in a copy, so the checkout gets no build/ or egg-info)."""
    name = f"build_sd-{__version__}-py3-none-any.whl"
    for d in find_links:
        if (Path(d) / name).is_file():
            return Path(shutil.copy(Path(d) / name, dest / name))
    if not (REPO_ROOT / "pyproject.toml").is_file():
        raise UserError(f"pack --wheels needs build_sd's own wheel: run it from a source checkout, or give "
                        f"--find-links DIR holding {name}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(REPO_ROOT / "build_sd", src / "build_sd",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "runs"))
        for f in ("pyproject.toml", "README.md"):
            shutil.copy(REPO_ROOT / f, src / f)
        log(f"building {name}")
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dest), str(src)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise UserError(f"building build_sd's wheel failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return dest / name


def collect(platform: str, python: str, find_links: list[str], dest: Path, log=print) -> list[Path]:
    """Every wheel the board needs into `dest` (empty folder): build_sd and its core closure."""
    if not re.fullmatch(r"\d+\.\d+", python):
        raise UserError(f"--python: expected X.Y, e.g. 3.11, got {python!r}")
    dest.mkdir(parents=True, exist_ok=True)
    own = own_wheel(dest, find_links, log)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--dest", str(dest), "--progress-bar", "off", "--disable-pip-version-check"]
    for t in platform_tags(platform):
        cmd += ["--platform", t]
    for d in find_links:
        cmd += ["--find-links", str(d)]
    log(f"resolving the runner's dependencies for {platform}, Python {python} (pip download)")
    r = subprocess.run(cmd + [str(own)], capture_output=True, text=True)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("ERROR")] or r.stderr.strip().splitlines()
        raise UserError(f"pip download for {platform} / Python {python} failed: {err[-1] if err else r.returncode} "
                        "(is the package index reachable? a wheel missing for that platform?)")
    return sorted(dest.glob("*.whl"))
