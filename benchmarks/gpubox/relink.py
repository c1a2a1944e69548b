"""Give each bundle under ROOT/bench/ the module files it lists, hard-linked from ROOT/artifacts
by sha256 (the carry to the GPU box holds each .vmfb once; .irpa archives stay behind: the box
draws the weights at run time). Run there before `bench --no-build`.

    python benchmarks/gpubox/relink.py ROOT
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> int:
    root = Path(sys.argv[1])
    have = {sha(f): f for f in (root / "artifacts").rglob("*") if f.is_file() and f.suffix != ".irpa"}
    missing = 0
    for man_path in sorted((root / "bench").glob("c*/manifest.json")):
        b = man_path.parent
        for rel, info in json.loads(man_path.read_text())["files"].items():
            dst = b / rel
            if dst.exists() or rel.endswith(".irpa"):
                continue
            src = have.get(info["sha256"])
            if src is None:
                print(f"{dst}: no file with its sha256 under {root / 'artifacts'}")
                missing += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    print(f"relinked bundles under {root / 'bench'}; {missing} files missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
