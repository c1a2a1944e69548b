"""Bundles of older build_sd versions: a kept bundle of schema 1 (tests/data/bundle-schema1, made
by build_sd at 6c1aa9e, before the contract module) still verifies and runs, giving the tokens
that build_sd gave then; a bundle of another schema is refused in one line that says what to do.
The records written today keep the fields of the kept files (the JSON is a contract)."""
import json
import shutil
from pathlib import Path

import pytest

from helpers import cli, cpu_bundle

KEPT = Path(__file__).resolve().parent / "data" / "bundle-schema1"
GOLDEN = json.loads((KEPT.parent / "bundle-schema1.golden.json").read_text())


@pytest.fixture()
def kept(tmp_path):
    out = tmp_path / KEPT.name
    shutil.copytree(KEPT, out)
    return out


def _runs_here(bundle: Path) -> str | None:
    """Why this machine cannot run the kept bundle (its modules are x86-64-v3, IREE 3.13), or None."""
    from build_sd.runtime.checks import problems, read_bundle_manifest
    found = problems(bundle, read_bundle_manifest(bundle))
    return found[0] if found else None


def test_schema1_bundle_still_runs(kept):
    why = _runs_here(kept)
    rc, out, err = cli("verify", kept)
    if why:
        # refused, in one line, saying why (here: the CPU or the IREE release)
        assert rc == 2 and err.strip().splitlines()[-1].startswith("error: "), err
        pytest.skip(f"this machine cannot run the kept bundle: {why}")
    assert rc == 0 and out.startswith("OK"), err
    rc, out, err = cli("run", kept, "--prompt", GOLDEN["prompt"], "--max-new-tokens", GOLDEN["max_new_tokens"],
                       "--gamma", GOLDEN["gamma"], "--json")
    assert rc == 0, err
    assert json.loads(out)["token_ids"] == GOLDEN["token_ids"]


@pytest.mark.parametrize("schema, needle", [(0, "from an older build_sd"), (2, "update build_sd on the board"),
                                            ("1", "schema is missing or not an integer")])
def test_other_schemas_are_refused_in_one_line(kept, schema, needle):
    man = json.loads((kept / "manifest.json").read_text())
    man["schema"] = schema
    (kept / "manifest.json").write_text(json.dumps(man))
    for cmd in (["verify", kept], ["run", kept, "--prompt", "x"]):
        rc, out, err = cli(*cmd)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


# fields whose keys are names (files, presets, subgraphs, functions...), not field names, and how
# many levels of such tables they hold (placement: role -> subgraph -> preset)
TABLES = {"files": 1, "presets": 1, "modules": 1, "fallback": 1, "placement": 2, "sha256": 1, "functions": 1,
          "tensors": 1, "versions": 1, "inputs": 1, "cpu_driver": 1}


def _shape(obj, tables: int = 0):
    """The JSON's structure: field names and value types; a table's entries merged under '*'."""
    if isinstance(obj, dict):
        if tables:
            return {"*": _merge([_shape(v, tables - 1) for v in obj.values()])}
        return {k: _shape(v, TABLES.get(k, 0)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_merge([_shape(v) for v in obj])] if obj else []
    return "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) else type(obj).__name__


def _merge(shapes):
    out = {}
    for s in shapes:
        if not isinstance(s, dict):
            return s
        out.update(s)
    return out


def test_todays_records_keep_the_kept_fields(kept, target_whole, draft_art, tmp_path):
    """A bundle made today has every field the kept schema-1 bundle has, with the same types."""
    out = cpu_bundle(tmp_path / "today", draft_art, target_whole, gamma=2)
    for rel in ("manifest.json", "target/export.json", "draft/export.json"):
        old = _shape(json.loads((kept / rel).read_text()))
        new = _shape(json.loads((out / rel).read_text()))
        assert _covers(new, old), (rel, old, new)


def _covers(new, old) -> bool:
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and _covers(new[k], v) for k, v in old.items())
    if isinstance(old, list):
        return isinstance(new, list) and (not old or not new or _covers(new[0], old[0]))
    return old == new or "NoneType" in (old, new)
