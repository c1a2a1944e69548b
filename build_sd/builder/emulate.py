"""Arm modules run here under user-mode emulation: qemu-aarch64 + the aarch64 `iree-run-module`.

An x86 machine cannot load an aarch64 module, so the a55/a76 presets used to be compile-checked
only, and Arm's own int8 kernels (IREE's mmt4d ukernels for +dotprod) never ran before a board.
Debian's qemu-user runs the aarch64 `iree-run-module` that ships in the aarch64 wheel of the SAME
iree-base-runtime version as the host's (the vmfb format follows the runtime version), against
glibc and libstdc++ from Debian's arm64 cross packages (`-L /usr/aarch64-linux-gnu`).

One emulated call = one process: the module, the model's .irpa, a second .irpa of zero splats for
the KV caches (what ModelChain adds at run time), one function, inputs and outputs as .npy files.
So each function runs on fresh caches at position 0; the chained calls at moving positions are
validated on the host's and lavapipe's modules of the same export (same IR; what differs on Arm is
the code generated for the kernels, which these calls run).

The emulated CPU: qemu's model of the preset's -mcpu when it has one, else the smallest one that
has every feature the preset compiles for (cortex-a55 -> cortex-a76: Armv8.2 + dotprod + fp16 both,
and no i8mm, so code that used a feature the board lacks would fault here too).

Setup (`make emulation`, part of `make test`): apt-get install qemu-user libc6-arm64-cross
libstdc++6-arm64-cross; `python -m build_sd.builder.emulate` fetches the aarch64 wheel (pip
download, never installed) and unpacks its tools into the cache.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fsutil import cache_dir

SYSROOT = Path(os.environ.get("BUILD_SD_QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu"))
# qemu 7.2 (Debian 12) models cortex-a35/a53/a57/a72/a76, neoverse-n1, a64fx, max: no cortex-a55
QEMU_CPU_FOR = {"cortex-a55": "cortex-a76"}
WHEEL_PLATFORM = "manylinux_2_28_aarch64"


def runtime_version() -> str:
    return version("iree-base-runtime")


def tools_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "aarch64" / f"iree-base-runtime-{runtime_version()}"


@dataclass(frozen=True)
class Emulator:
    qemu: Path | None     # None: the host's own iree-run-module, natively (the x86 side of a comparison)
    run_module: Path      # the aarch64 iree-run-module
    host_cpu: str         # what the preset was built for (-mcpu)
    qemu_cpu: str         # what qemu emulates

    @property
    def name(self) -> str:
        return f"qemu-aarch64 -cpu {self.qemu_cpu}" if self.qemu else "iree-run-module (native)"

    def argv(self) -> list[str]:
        if self.qemu is None:
            return [str(self.run_module)]
        return [str(self.qemu), "-cpu", self.qemu_cpu, "-L", str(SYSROOT), str(self.run_module)]


def native() -> Emulator:
    """The host's iree-run-module (from the installed iree-base-runtime): same harness, no qemu."""
    import iree.runtime as rt
    tool = Path(rt.__file__).resolve().parents[1] / "_runtime_libs" / "iree-run-module"
    return Emulator(None, tool, platform.machine(), "")


def qemu_cpus(qemu: Path) -> set[str]:
    r = subprocess.run([str(qemu), "-cpu", "help"], capture_output=True, text=True)
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}


def find(arch: str, flags: list[str], cache: Path | None = None) -> tuple[Emulator | None, str]:
    """The emulator for an llvm-cpu preset built for `arch`, or (None, why not)."""
    if arch != "aarch64" or platform.machine() == "aarch64":
        return None, f"no emulation for {arch}"
    qemu = shutil.which("qemu-aarch64")
    if not qemu:
        return None, "no qemu-aarch64 (`make emulation` installs qemu-user)"
    if not (SYSROOT / "lib" / "libstdc++.so.6").exists():
        return None, f"no arm64 libraries in {SYSROOT} (`make emulation`: libc6-arm64-cross libstdc++6-arm64-cross)"
    tool = tools_dir(cache) / "iree-run-module"
    if not tool.exists():
        return None, (f"no aarch64 iree-run-module {runtime_version()} "
                      f"(`python -m build_sd.builder.emulate` fetches it)")
    cpu = next((f.split("=", 1)[1] for f in flags if f.startswith("--iree-llvmcpu-target-cpu=")), "generic")
    known = qemu_cpus(Path(qemu))
    qcpu = cpu if cpu in known else QEMU_CPU_FOR.get(cpu, "max")
    return Emulator(Path(qemu), tool, cpu, qcpu), ""


def kv_splats(path: Path, kv_params) -> Path:
    """A parameter archive of zero splats, one per KV cache (no storage on disk)."""
    import iree.runtime as rt
    idx = rt.ParameterIndex()
    for kv in kv_params:
        idx.add_splat(kv.name, np.zeros(1, np.int8), kv.bytes)
    idx.create_archive_file(str(path))
    return path


def _arg(a: np.ndarray, d: Path, i: int) -> str:
    if a.ndim == 0:                      # scalars (pos, length) as tensor<i32>
        return f"--input=i32={int(a)}"
    f = d / f"in{i}.npy"
    np.save(f, a)
    return f"--input=@{f}"


def run_function(emu: Emulator, vmfb: Path, irpa: Path, kv_irpa: Path, fname: str, inputs: list[np.ndarray],
                 n_results: int, timeout: float = 600) -> list[np.ndarray]:
    """One function of an aarch64 module under qemu on fresh caches; its results as arrays."""
    with tempfile.TemporaryDirectory(prefix="build_sd_emu_") as tmp:
        d = Path(tmp)
        outs = [d / f"out{i}.npy" for i in range(n_results)]
        cmd = emu.argv() + ["--device=local-sync", f"--module={vmfb}", f"--parameters=model={irpa}",
               f"--parameters=model={kv_irpa}", f"--function={fname}"]
        cmd += [_arg(a, d, i) for i, a in enumerate(inputs)] + [f"--output=@{o}" for o in outs]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{vmfb.name}:{fname} under {emu.name} ran past {timeout:.0f} s") from None
        if r.returncode != 0:
            err = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
            raise UserError(f"{vmfb.name}:{fname} under {emu.name} failed (exit {r.returncode}): "
                            f"{err[-1] if err else '?'}")
        return [np.load(o) for o in outs]


def fetch(cache: Path | None = None, log=print) -> Path:
    """The aarch64 wheel of this host's iree-base-runtime version, its tools unpacked (idempotent)."""
    dest = tools_dir(cache)
    if (dest / "iree-run-module").exists():
        return dest
    ver = runtime_version()
    with tempfile.TemporaryDirectory() as tmp:
        log(f"fetching iree-base-runtime {ver} for {WHEEL_PLATFORM} (pip download, not installed)")
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--platform", WHEEL_PLATFORM, "--python-version", py, "--implementation", "cp",
                            "--dest", tmp, "--progress-bar", "off", "--disable-pip-version-check",
                            f"iree-base-runtime=={ver}"], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            err = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise UserError(f"pip download of the aarch64 iree-base-runtime {ver} failed: {err}")
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name in ("iree-run-module", "iree-cpuinfo"):
                (part / name).write_bytes(z.read(f"iree/_runtime_libs/{name}"))
                (part / name).chmod(0o755)
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return dest


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m build_sd.builder.emulate",
                                 description="Fetch the aarch64 iree-run-module that validate runs Arm modules with.")
    ap.add_argument("--cache", type=Path, help="default: $BUILD_SD_CACHE or ~/.cache/build_sd")
    a = ap.parse_args(argv)
    try:
        d = fetch(a.cache)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emu, why = find("aarch64", ["--iree-llvmcpu-target-cpu=cortex-a55"], a.cache)
    print(d / "iree-run-module")
    if emu is None:
        print(f"warning: {why}", file=sys.stderr)
        return 1
    r = subprocess.run([str(emu.qemu), "-cpu", emu.qemu_cpu, "-L", str(SYSROOT), str(d / "iree-cpuinfo")],
                       capture_output=True, text=True)
    feats = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip().endswith("1")]
    print(f"{emu.name}: {', '.join(feats) or r.stdout.strip()[:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
