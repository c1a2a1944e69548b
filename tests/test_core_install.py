"""`pip install build_sd` is the board's install: the runner without torch or the compiler.

A fresh virtualenv gets build_sd's wheel and its core dependencies only (from pip's cache or the
package index), then runs a bundle the suite built: the same tokens as the full install, and
`import torch` impossible there; a build command says which extra to install. `pack --wheels`
puts into the archive every wheel an offline aarch64 board needs (checked with pip's resolver
for that platform), and packing twice gives the same bytes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import cli, cpu_bundle, run_json

PIP_QUIET = ["--disable-pip-version-check", "-q"]


def _pip(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pip", *args, *PIP_QUIET], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    from build_sd.builder.wheels import own_wheel
    dest = tmp_path_factory.mktemp("wheel")
    return own_wheel(dest, [], log=lambda m: None)


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory):
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *PIP_QUIET, str(wheel)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if "Could not find a version" in r.stderr or "connection" in r.stderr.lower():
            pytest.skip(f"the core dependencies are neither in pip's cache nor reachable: {r.stderr[-300:]}")
        raise AssertionError(r.stderr)
    return venv


@pytest.fixture(scope="module")
def bundle(draft_art, target_whole, tmp_path_factory):
    return cpu_bundle(tmp_path_factory.mktemp("cb") / "b", draft_art, target_whole, gamma=3)


def _core(venv: Path, *args, cwd: Path):
    """build-sd of the core venv, from a folder outside the checkout (no source on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / "build-sd"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_core_install_has_no_build_tools(core_venv, tmp_path):
    py = str(core_venv / "bin" / "python")
    for mod in ("torch", "iree.compiler", "iree.turbine"):
        r = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, mod
    r = subprocess.run([py, "-c", "import build_sd, iree.runtime, tokenizers, msgspec; print(build_sd.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(core_venv) in r.stdout                      # the installed copy, not the checkout


def test_core_install_runs_a_bundle_like_the_full_install(core_venv, bundle, tmp_path):
    want = run_json(bundle, "the quick brown fox", max_new_tokens=12, gamma=3)["token_ids"]
    r = _core(core_venv, "run", bundle, "--prompt", "the quick brown fox", "--max-new-tokens", "12",
              "--gamma", "3", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token_ids"] == want
    r = _core(core_venv, "verify", bundle, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr
    r = _core(core_venv, "profile", bundle, "--devices", "cpu", "--budget", "0.02", "--out", tmp_path / "p.json",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["kind"] == "build_sd.profile" and prof["models"][0]["latency"]["host"]


def test_core_install_plans_from_config_files(core_venv, tmp_path):
    shapes = ROOT / "examples" / "shapes"
    r = _core(core_venv, "plan", "--draft", shapes / "llama-3.2-1b", "--target", shapes / "llama-3.2-3b",
              "--platform", "imx95", "--alpha", "0.8", "--dtype", "f16", "--out", tmp_path / "plan.json",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["configs"]


@pytest.mark.parametrize("cmd", [["export", "--model", "x", "--out", "y"], ["compile", "x", "--out", "y"],
                                 ["validate", "x", "--model", "y"], ["demo"]])
def test_build_commands_name_the_extra(core_venv, tmp_path, cmd):
    r = _core(core_venv, *cmd, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'build_sd[build]'" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())


# ---- pack --wheels --------------------------------------------------------------------------------
AARCH64 = "manylinux_2_28_aarch64"


def _index_reachable(tmp: Path) -> str | None:
    r = _pip("download", "--no-deps", "--only-binary=:all:", "--platform", "manylinux2014_aarch64",
             "--python-version", "3.11", "--implementation", "cp", "-d", str(tmp), "msgspec", timeout=120)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def test_pack_wheels_holds_what_an_offline_aarch64_board_installs(bundle, wheel, tmp_path):
    why = _index_reachable(tmp_path / "probe")
    if why:
        pytest.skip(f"the package index is unreachable ({why})")
    from build_sd.builder.wheels import platform_tags
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    for out in (a, b):
        rc, so, err = cli("pack", bundle, "--wheels", AARCH64, "--python", "3.11", "--find-links", wheel.parent,
                          "--out", out)
        assert rc == 0, err
    assert a.read_bytes() == b.read_bytes()               # same bundle and wheels -> same bytes
    import tarfile
    with tarfile.open(a) as t:
        t.extractall(tmp_path / "board", filter="data")
    root = tmp_path / "board" / bundle.name
    wheels = root / "wheels"
    names = sorted(p.name for p in wheels.iterdir())
    for pkg in ("build_sd-", "iree_base_runtime-3.13.0-cp311", "numpy-", "tokenizers-", "msgspec-"):
        assert any(n.startswith(pkg) for n in names), (pkg, names)
    assert all("x86_64" not in n for n in names), names
    packed = json.loads((root / "pack.json").read_text())
    from build_sd.fsutil import sha256_file
    assert set(packed["wheels"]) == set(names)
    assert all(packed["wheels"][n]["sha256"] == sha256_file(wheels / n) for n in names)
    # pip's own resolver, offline, for the board's platform: everything build_sd needs is there
    plat = [x for t in platform_tags(AARCH64) for x in ("--platform", t)]
    r = _pip("install", "--dry-run", "--no-index", "--find-links", str(wheels), *plat, "--python-version", "3.11",
             "--implementation", "cp", "--only-binary=:all:", "--target", str(tmp_path / "t"), "build_sd")
    assert r.returncode == 0, r.stderr
    rc, _, err = cli("verify", root)                       # the bundle inside is whole
    assert rc == 0, err
