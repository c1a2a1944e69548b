"""Session fixtures: tiny checkpoints with odd sizes, exported and compiled once for the suite.

Everything is real: transformers makes the checkpoints, iree-turbine exports them, iree-compile
builds them, and the IREE runtime runs them on local-task and on lavapipe (vulkan). The build
folder is `build/tests/` (git-ignored) so that a re-run reuses what is already built through
build_sd's own incremental export/compile; CI starts from a clean clone.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import cli, make_checkpoint, make_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("BUILD_SD_TEST_DIR", ROOT / "build" / "tests"))
GAMMAS = "1,2,3,4,5,6"


def _vkguard() -> None:
    """Vulkan through native/vkguard.c's loader shim, in this process and the CLI processes the
    tests start (they inherit the variable): without it lavapipe loses its device now and then
    (docs/FINDINGS.md, "lavapipe DEVICE_LOST: the root cause"). `make` builds it; a plain
    `pytest` run builds it here."""
    if os.environ.get("BUILD_SD_VKGUARD"):
        return
    lib = ROOT / "build" / "vkguard" / "libbuild_sd_vkguard.so"
    if not lib.exists():
        import subprocess
        subprocess.run(["make", "-s", "-C", str(ROOT), str(lib.relative_to(ROOT))], check=True)
    os.environ["BUILD_SD_VKGUARD"] = str(lib)


_vkguard()      # before anything imports build_sd.runtime.devices, which reads it


def has_vulkan() -> bool:
    from build_sd.runtime.devices import vulkan_device_names
    return any("llvmpipe" in n for n in vulkan_device_names())


HAS_VULKAN = has_vulkan()
needs_vulkan = pytest.mark.skipif(not HAS_VULKAN, reason="no lavapipe Vulkan device (make vulkan)")
if os.environ.get("CI") and not HAS_VULKAN:
    raise RuntimeError("CI must have lavapipe: `make vulkan` installs mesa-vulkan-drivers")


def has_emulation() -> bool:
    from build_sd.builder.emulate import find
    return find("aarch64", ["--iree-llvmcpu-target-cpu=cortex-a55"])[0] is not None


HAS_EMULATION = has_emulation()
needs_emulation = pytest.mark.skipif(not HAS_EMULATION, reason="no qemu-aarch64 + aarch64 runtime (make emulation)")
if os.environ.get("CI") and not HAS_EMULATION:
    raise RuntimeError("CI must run Arm modules under qemu-user: `make emulation` sets it up")


def _build(name: str, ckpt: Path, presets: list[str], **export_opts) -> Path:
    mlir, art = BUILD / "mlir" / name, BUILD / "artifacts" / name
    args = ["export", "--model", ckpt, "--out", mlir]
    for k, v in export_opts.items():
        args += [f"--{k.replace('_', '-')}", v]
    rc, out, err = cli(*args)
    assert rc == 0, err
    args = ["compile", mlir, "--out", art]
    for p in presets:
        args += ["--preset", p]
    rc, out, err = cli(*args)
    assert rc == 0, err + out
    return art


def _presets() -> list[str]:
    return ["host"] + (["vulkan-llvmpipe"] if HAS_VULKAN else [])


@pytest.fixture(scope="session")
def tokenizer_json() -> Path:
    return make_tokenizer(BUILD / "ckpt" / "tokenizer.json")


@pytest.fixture(scope="session")
def target_ckpt(tokenizer_json) -> Path:
    # Llama, odd sizes: V=311 (> 300 tokenizer ids: padded embeddings), D=56, Dh=14, GQA 4/2
    return make_checkpoint(BUILD / "ckpt" / "target", vocab=311, hidden=56, layers=3, heads=4,
                           kv_heads=2, ffn=100, seed=1, tokenizer=tokenizer_json)


@pytest.fixture(scope="session")
def draft_ckpt(tokenizer_json) -> Path:
    # an unrelated, smaller model sharing the tokenizer; tied embeddings
    return make_checkpoint(BUILD / "ckpt" / "draft", vocab=311, hidden=24, layers=1, heads=2,
                           kv_heads=1, ffn=40, seed=2, tie=True, tokenizer=tokenizer_json)


@pytest.fixture(scope="session")
def target_whole(target_ckpt) -> Path:
    return _build("target_whole", target_ckpt, _presets(), gammas=GAMMAS, prefill="8,16", max_context=96)


@pytest.fixture(scope="session")
def target_split(target_ckpt) -> Path:
    return _build("target_split", target_ckpt, _presets(), split="0,2", gammas=GAMMAS, prefill="16",
                  max_context=96)


@pytest.fixture(scope="session")
def draft_art(draft_ckpt) -> Path:
    # gamma 1 gives the draft a verify_T2: its catch-up on [x_g, bonus] is one call
    return _build("draft", draft_ckpt, _presets(), gammas="1", prefill="8,16", max_context=96)


@pytest.fixture(autouse=True)
def _release_vulkan_after_each_test():
    """Let the process's lavapipe device go after every test: an idle one keeps two threads
    spinning (both cores of a CI runner) until it is destroyed (docs/FINDINGS.md)."""
    yield
    if HAS_VULKAN:
        from build_sd.runtime.devices import release_vulkan
        release_vulkan()
