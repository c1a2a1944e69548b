"""The layout's import rules, read from the sources (ast), lazy imports inside functions included.

  helpers    errors, fsutil                 import nothing of build_sd but each other
  contract/  the files' typed records       helpers only; msgspec
  runtime/   the board (numpy, iree.runtime, tokenizers)    contract + helpers
  plan/      pure Python planning (no torch, no IREE)       contract + helpers
  builder/   the build machine (torch, iree-turbine, iree-compile)   + runtime, plan
  drivers    cli, cli_parser, bench/, demo/, chatpair/      anything; nothing imports them
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "build_sd"
HELPERS = {"build_sd", "build_sd.errors", "build_sd.fsutil"}
LAYERS = ("contract", "runtime", "plan", "builder")
DRIVERS = {"cli", "cli_parser", "bench", "demo", "chatpair"}
# which layers each layer may import (besides the helpers and itself)
MAY_IMPORT = {"helpers": set(), "contract": set(), "runtime": {"contract"}, "plan": {"contract"},
              "builder": {"contract", "runtime", "plan"}}
# third-party packages each layer may import (the standard library is always allowed)
THIRD_PARTY = {"helpers": set(), "contract": {"msgspec"}, "plan": {"msgspec"},
               "runtime": {"msgspec", "numpy", "iree.runtime", "tokenizers", "jinja2"}}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module in HELPERS:
        return "helpers"
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in DRIVERS:
        return "driver"
    raise AssertionError(f"{module}: not in any layer (add it to one)")


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module `path` imports, anywhere in the file, as absolute names with line numbers."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((name, node.lineno))
            # `from . import x` / `from ..runtime import devices`: x may be a module
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names if f"{name}.{a.name}" in ALL]
    return out


ALL = modules()


def _internal_target(name: str) -> str | None:
    """The build_sd module an import names (the longest known prefix), or None if external."""
    if not name.startswith("build_sd"):
        return None
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in ALL:
            return ".".join(parts[:k])
    return name


def violations() -> list[str]:
    bad = []
    std = set(sys.stdlib_module_names) | {"__future__"}
    for mod, path in sorted(ALL.items()):
        src = layer_of(mod)
        for name, line in imports(mod, path):
            where = f"{mod} (line {line}) imports {name}"
            target = _internal_target(name)
            if target is not None:
                dst = layer_of(target)
                if dst == "driver" and src != "driver":
                    bad.append(f"{where}: nothing below the drivers imports a driver")
                elif src != "driver" and dst not in ({src, "helpers"} | MAY_IMPORT[src]):
                    bad.append(f"{where}: {src} may import only {sorted({'helpers'} | MAY_IMPORT[src])}")
            elif src in THIRD_PARTY and name.split(".")[0] not in std:
                if not any(name == t or name.startswith(t + ".") for t in THIRD_PARTY[src]):
                    bad.append(f"{where}: {src} may use only the standard library and {sorted(THIRD_PARTY[src])}")
    return bad


def test_every_module_is_in_a_layer():
    for mod in ALL:
        layer_of(mod)


def test_imports_follow_the_layers():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: a board-side module importing a build-side one is reported, also when
    the import hides inside a function."""
    f = tmp_path / "bad.py"
    f.write_text("def load():\n    from ..builder.export import export_model\n    import torch\n")
    monkeypatch.setitem(ALL, "build_sd.runtime.bad", f)
    found = violations()
    assert any(v.startswith("build_sd.runtime.bad (line 2) imports build_sd.builder.export") for v in found), found
    assert any(v.startswith("build_sd.runtime.bad (line 3) imports torch") for v in found), found


def test_planning_runs_without_iree_or_torch():
    """Plan a board from config.json files with iree and torch impossible to import."""
    shapes = Path(__file__).resolve().parent.parent / "examples" / "shapes"
    code = ("import sys\n"
            "for m in ('torch', 'iree', 'iree.runtime', 'iree.compiler', 'iree.turbine'):\n"
            "    sys.modules[m] = None\n"
            "from build_sd.plan.planner import make_plan\n"
            f"p = make_plan({str(shapes / 'llama-3.2-1b')!r}, {str(shapes / 'llama-3.2-3b')!r}, 'imx95', 0.8,"
            " dtype='f16', max_context=1024)\n"
            "assert p.configs[0].speedup > 1.0\n"
            "print(p.configs[0].gamma)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) >= 0


@pytest.mark.parametrize("layer", ["runtime", "plan", "contract"])
def test_board_side_sources_name_no_build_tool(layer):
    for f in (PKG / layer).rglob("*.py"):
        src = f.read_text()
        for word in ("import torch", "from torch", "iree.turbine", "iree.compiler", "safetensors"):
            assert word not in src, f"{f}: {word}"
