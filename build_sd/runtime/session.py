"""Load a bundle on the board: check it, then build the draft and target chains (no torch)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import sha256_file
from .chain import ModelChain, PlacedSubgraph
from .compat import can_run
from .devices import DevicePool, retry_if_lost
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
    problem = manifest_shape_problem(man)
    if problem:
        raise UserError(f"{p}: {problem}")
    return man


def manifest_shape_problem(man: dict) -> str | None:
    """The first structural problem of a bundle manifest (types and cross-references), or None."""
    def bad(path, want):
        return f"field {path} is missing or not {want}"
    if not isinstance(man.get("gamma"), int) or isinstance(man.get("gamma"), bool) or man["gamma"] < 0:
        return bad("gamma", "an integer >= 0")
    if not isinstance(man.get("max_context"), int) or man["max_context"] < 2:
        return bad("max_context", "an integer >= 2")
    if not isinstance(man.get("tokenizer"), str):
        return bad("tokenizer", "a file name")
    eos = man.get("eos_token_ids", [])
    if not isinstance(eos, list) or not all(isinstance(e, int) for e in eos):
        return bad("eos_token_ids", "a list of integers")
    if not isinstance(man.get("prompt_template", "{prompt}"), str):
        return bad("prompt_template", "a string")
    files = man.get("files")
    if not isinstance(files, dict):
        return bad("files", "an object")
    for rel, info in files.items():
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str)
                or not isinstance(info.get("bytes"), int)):
            return bad(f"files[{rel!r}]", "{sha256, bytes}")
        if rel.startswith("/") or ".." in Path(rel).parts:
            return f"file {rel!r} points outside the bundle"
    presets = man.get("presets")
    if not isinstance(presets, dict) or not presets:
        return bad("presets", "an object")
    for name, pr in presets.items():
        if (not isinstance(pr, dict) or pr.get("backend") not in ("llvm-cpu", "vulkan-spirv")
                or pr.get("driver") not in ("local-task", "vulkan") or not isinstance(pr.get("arch"), str)):
            return bad(f"presets.{name}", "{backend, driver, arch}")
    models = man.get("models")
    if not isinstance(models, dict) or set(models) != {"draft", "target"}:
        return bad("models", "{draft, target}")
    for role, m in models.items():
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(m.get("modules"), dict):
            return bad(f"models.{role}", "{files, modules}")
        comp = m.get("compiler", {})
        if not isinstance(comp, dict):
            return bad(f"models.{role}.compiler", "an object")
        if not isinstance(comp.get("version", ""), str):
            return bad(f"models.{role}.compiler.version", "a string")
        for key in ("irpa", "export"):
            if not _listed(m["files"].get(key), files):
                return f"models.{role}.files.{key} is not a listed file"
        fb = m.get("fallback", {})
        if not isinstance(fb, dict):
            return bad(f"models.{role}.fallback", "an object")
        for kind, group in (("modules", m["modules"]), ("fallback", fb)):
            for sub, info in group.items():
                if not isinstance(info, dict) or not _listed(info.get("preset"), presets) \
                        or not _listed(info.get("file"), files):
                    return f"models.{role}.{kind}.{sub} names an unknown preset or file"
    if not _listed(man["tokenizer"], files):
        return "the tokenizer is not a listed file"
    cpu_driver = man.get("cpu_driver", {})
    if not isinstance(cpu_driver, dict) or any(k not in ("draft", "target") or v not in CPU_DRIVERS
                                               for k, v in cpu_driver.items()):
        return bad("cpu_driver", f"{{role: {'|'.join(CPU_DRIVERS)}}}")
    return None


def _listed(name, table: dict) -> bool:
    """name is a string key of table (a mutated manifest may hold lists or objects there)."""
    return isinstance(name, str) and name in table


def check_files(bundle: Path, man: dict) -> list[str]:
    """Problems with the bundle's files (missing, size or sha256 differs from the manifest)."""
    from . import chain
    problems = []
    # under --random-weights the .irpa archives are not read: a bundle may travel without them
    unread = ({m.get("files", {}).get("irpa") for m in man.get("models", {}).values() if isinstance(m, dict)}
              if chain.RANDOM_WEIGHTS is not None else set())
    for rel, info in man.get("files", {}).items():
        f = bundle / rel
        if rel in unread:
            continue
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


CPU_DRIVERS = ("local-task", "local-sync")


def parse_cpu_driver(spec) -> dict[str, str]:
    """'local-sync' (both models) or ['draft=local-sync', ...] -> {role: driver}."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        spec = [f"{r}={d}" for r, d in spec.items()]
    items = [spec] if isinstance(spec, str) else list(spec)
    out = {}
    for it in items:
        role, _, drv = it.rpartition("=")
        roles = [role] if role else ["draft", "target"]
        if drv not in CPU_DRIVERS or any(r not in ("draft", "target") for r in roles):
            raise UserError(f"--cpu-driver {it!r}: expected [draft=|target=]{'|'.join(CPU_DRIVERS)}")
        out.update({r: drv for r in roles})
    return out


def open_bundle(path: str | Path, load_draft: bool = True, check_hashes: bool = True,
                fallback: str | None = None, threads: int | None = None,
                cpu_driver: str | list | dict | None = None) -> Session:
    """Check the bundle (files, schema, this machine: `build-sd verify`), then load it.

    fallback="cpu": subgraphs placed on a device this machine lacks run on the CPU modules the
    bundle carries for them (bundles made with `bundle --fallback cpu`).
    cpu_driver: run a model's llvm-cpu modules under local-sync (every dispatch on the calling
    thread) instead of local-task (a worker pool): for a small model, such as most drafts, the
    pool's wake-ups cost more than the second core gives (benchmarks/FINDINGS.md, section 1).
    Same executables, either driver; default: the bundle's `cpu_driver`, else local-task."""
    from .verify import problems
    bundle = Path(path)
    recover_interrupted_swap(bundle)
    man = read_manifest(bundle)
    found = problems(bundle, man, check_hashes=check_hashes, fallback=fallback)
    if found:
        raise UserError(f"{bundle}: {found[0]}" + (f" (+{len(found) - 1} more: build-sd verify)" if len(found) > 1 else ""))
    # the manifest's cpu_driver was checked by read_manifest (manifest_shape_problem)
    drivers = {**man.get("cpu_driver", {}), **parse_cpu_driver(cpu_driver)}
    placement = {role: _placement(bundle, man, role, fallback, drivers)
                 for role in ("target", "draft") if role == "target" or load_draft}

    def load():
        pool = DevicePool(threads if threads is not None else man.get("threads"))
        chains = {role: ModelChain(pool, meta, bundle / man["models"][role]["files"]["irpa"], placed)
                  for role, (meta, placed) in placement.items()}
        return pool, chains
    pool, chains = retry_if_lost(load, bundle.name)
    tok = load_tokenizer(bundle / man["tokenizer"])
    return Session(bundle, man, chains["target"], chains.get("draft"), tok, pool)


def _placement(bundle: Path, man: dict, role: str, fallback: str | None,
               drivers: dict[str, str]) -> tuple[dict, list[PlacedSubgraph]]:
    """A model's export.json and where each of its subgraphs runs (module file, driver)."""
    m = man["models"][role]
    try:
        meta = json.loads((bundle / m["files"]["export"]).read_text())
        placed = []
        for sg in meta["subgraphs"]:
            mod = m["modules"][sg["name"]]
            if fallback == "cpu" and not can_run(man["presets"][mod["preset"]])[0]:
                mod = m["fallback"][sg["name"]]
            driver = man["presets"][mod["preset"]]["driver"]
            if driver in CPU_DRIVERS and role in drivers:
                driver = drivers[role]
            placed.append(PlacedSubgraph(sg, bundle / mod["file"], driver, mod["preset"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{bundle}: the {role}'s export.json does not match its modules "
                        f"({type(e).__name__}: {e})") from None
    return meta, placed


def recover_interrupted_swap(bundle: Path) -> None:
    """A bundle replaced in place is renamed to .NAME.old just before the new one moves in; if
    that was interrupted, put the previous bundle back."""
    old = bundle.with_name(f".{bundle.name}.old")
    if not bundle.exists() and old.is_dir() and (old / "manifest.json").exists():
        old.rename(bundle)
