"""The files of a Hugging Face checkpoint folder (no torch: used by no-op checks too)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def checkpoint_files(ckpt: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, in a stable order."""
    index = ckpt / "model.safetensors.index.json"
    single = ckpt / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise UserError(f"{index}: invalid index ({e})") from None
        files = sorted(set(weight_map.values()))
        paths = [ckpt / f for f in files]
        for p in paths:
            if not p.exists():
                raise UserError(f"{index} names a shard that is missing: {p.name}")
        return paths
    if single.exists():
        return [single]
    found = sorted(ckpt.glob("*.safetensors"))
    if found:
        return found
    raise UserError(f"no model.safetensors (or index) in {ckpt}")
