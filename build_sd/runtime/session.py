"""Load a bundle on the board: check it, then build the draft and target chains (no torch)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import sha256_file
from .chain import ModelChain, PlacedSubgraph
from .compat import can_run
from .devices import DevicePool
from .tokenizer import load_tokenizer

BUNDLE_SCHEMA = 1


def read_manifest(bundle: Path) -> dict:
    p = bundle / "manifest.json"
    if not bundle.is_dir():
        raise UserError(f"bundle folder not found: {bundle}")
    if not p.exists():
        raise UserError(f"{bundle} is not a bundle (no manifest.json)")
    try:
        man = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: invalid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("kind") != "build_sd.bundle":
        raise UserError(f"{p} is not a build_sd bundle manifest")
    if not isinstance(man.get("schema"), int) or man["schema"] > BUNDLE_SCHEMA:
        raise UserError(f"{p} has schema {man.get('schema')!r}; this runner reads up to {BUNDLE_SCHEMA} "
                        "(update build_sd on the board)")
    return man


def check_files(bundle: Path, man: dict) -> list[str]:
    """Problems with the bundle's files (missing, size or sha256 differs from the manifest)."""
    problems = []
    for rel, info in man.get("files", {}).items():
        f = bundle / rel
        if not f.exists():
            problems.append(f"{rel}: missing")
        elif f.stat().st_size != info["bytes"]:
            problems.append(f"{rel}: {f.stat().st_size} bytes, manifest says {info['bytes']}")
        elif sha256_file(f) != info["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


@dataclass
class Session:
    path: Path
    manifest: dict
    target: ModelChain
    draft: ModelChain | None
    tokenizer: object
    pool: DevicePool

    @property
    def gamma(self) -> int:
        return int(self.manifest["gamma"])

    @property
    def eos_ids(self) -> list[int]:
        return list(self.manifest.get("eos_token_ids") or [])

    def warmup(self) -> float:
        return sum(c.warmup() for c in (self.target, self.draft) if c is not None)

    def max_gamma(self) -> int:
        return max([T - 1 for T in self.target.verify_T] + [0])


def open_bundle(path: str | Path, load_draft: bool = True, check_hashes: bool = True,
                fallback: str | None = None) -> Session:
    """Check the bundle (files, schema, this machine: `build-sd verify`), then load it.

    fallback="cpu": subgraphs placed on a device this machine lacks run on the CPU modules the
    bundle carries for them (bundles made with `bundle --fallback cpu`)."""
    from .verify import problems
    bundle = Path(path)
    recover_interrupted_swap(bundle)
    man = read_manifest(bundle)
    found = problems(bundle, man, check_hashes=check_hashes, fallback=fallback)
    if found:
        raise UserError(f"{bundle}: {found[0]}" + (f" (+{len(found) - 1} more: build-sd verify)" if len(found) > 1 else ""))
    pool = DevicePool()
    chains = {}
    for role in ("target", "draft"):
        if role == "draft" and not load_draft:
            chains[role] = None
            continue
        m = man["models"][role]
        meta = json.loads((bundle / m["files"]["export"]).read_text())
        placed = []
        for sg in meta["subgraphs"]:
            mod = m["modules"][sg["name"]]
            if fallback == "cpu" and not can_run(man["presets"][mod["preset"]])[0]:
                mod = m["fallback"][sg["name"]]
            driver = man["presets"][mod["preset"]]["driver"]
            placed.append(PlacedSubgraph(sg, bundle / mod["file"], driver, mod["preset"]))
        chains[role] = ModelChain(pool, meta, bundle / m["files"]["irpa"], placed)
    tok = load_tokenizer(bundle / man["tokenizer"])
    return Session(bundle, man, chains["target"], chains["draft"], tok, pool)


def recover_interrupted_swap(bundle: Path) -> None:
    """A bundle replaced in place is renamed to .NAME.old just before the new one moves in; if
    that was interrupted, put the previous bundle back."""
    old = bundle.with_name(f".{bundle.name}.old")
    if not bundle.exists() and old.is_dir() and (old / "manifest.json").exists():
        old.rename(bundle)
