"""Fuzzing (hypothesis): manifests and command lines never give a traceback or a partial write."""
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import cli, cpu_bundle

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10 ** 6) | st.floats(allow_nan=False)
                    | st.text(max_size=12), lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.text(max_size=8), c, max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def good_bundle(target_whole, draft_art, tmp_path_factory):
    return cpu_bundle(tmp_path_factory.mktemp("good") / "b", draft_art, target_whole, gamma=2)


def _paths(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _mutate(man, path, value, delete):
    node = man
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _mutated(obj, data):
    """obj with 1..3 of its fields replaced by arbitrary JSON or deleted (in place)."""
    paths = _all_paths(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            _mutate(obj, path, data.draw(JSON), data.draw(st.booleans()))
        except (KeyError, IndexError, TypeError):
            pass
        paths = _all_paths(obj) or [("schema",)]
    return obj


def _all_paths(obj, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _all_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _all_paths(v, prefix + (i,))
    return out


@SETTINGS
@given(data=st.data())
def test_manifest_mutations_never_crash(good_bundle, tmp_path_factory, data):
    work = tmp_path_factory.mktemp("fz") / "b"
    shutil.copytree(good_bundle, work)
    man = _mutated(json.loads((work / "manifest.json").read_text()), data)
    text = json.dumps(man) if data.draw(st.booleans()) else data.draw(st.text(max_size=40))
    (work / "manifest.json").write_text(text)
    before = _paths(work)
    for cmd in (["verify", work], ["run", work, "--prompt", "hello", "--max-new-tokens", "3", "--json"]):
        rc, out, err = cli(*cmd)          # an unexpected exception fails the test right here
        assert rc in (0, 2), (rc, err)
        if rc == 2:
            assert err.strip().splitlines()[-1].startswith("error: ")
    assert _paths(work) == before         # reading a bundle writes nothing into it


def test_a_non_string_compiler_version_is_a_clear_error(good_bundle, tmp_path):
    """The case the fuzzer found (2026-11-28): compiler.version = true crashed `verify`."""
    work = tmp_path / "b"
    shutil.copytree(good_bundle, work)
    man = json.loads((work / "manifest.json").read_text())
    man["models"]["draft"]["compiler"]["version"] = True
    (work / "manifest.json").write_text(json.dumps(man))
    rc, out, err = cli("verify", work)
    assert rc == 2 and "models.draft.compiler.version" in err, (rc, err)


ARGS = st.lists(st.sampled_from(["--gamma", "--temperature", "--top-k", "--top-p", "--max-new-tokens",
                                 "--seed", "--json", "--raw", "--prompt", "-1", "0", "1", "2.5", "99",
                                 "nan", "inf", "x", "", "--place", "draft=host", "target.head=vulkan",
                                 "--out", "--fallback", "cpu"]), max_size=8)


@SETTINGS
@given(cmd=st.sampled_from(["run", "verify", "bundle", "pack", "plan", "calibrate", "profile", "export",
                            "compile"]), args=ARGS)
def test_cli_arguments_never_crash(good_bundle, tmp_path_factory, cmd, args):
    out_dir = tmp_path_factory.mktemp("cli")
    argv = [cmd]
    if cmd in ("run", "verify", "pack", "calibrate", "profile"):
        argv.append(str(good_bundle))
    argv += [a if a != "--out" else f"--out={out_dir / 'o'}" for a in args]
    rc, out, err = cli(*argv)
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err
    if rc != 0:
        # a failed command leaves no partial output behind
        leftovers = [p for p in out_dir.rglob("*") if p.name.endswith((".partial", ".tmp"))]
        assert not leftovers, leftovers


# ---- the contract itself: every record's reader, many mutations per second --------------------------
@pytest.fixture(scope="module")
def good_records(good_bundle, target_whole, tmp_path_factory):
    """One real file of each kind build_sd writes, as JSON values."""
    from build_sd.runtime.calibrate import calibrate
    from build_sd.runtime.profiler import profile
    from build_sd.plan.planner import make_plan
    from build_sd.plan.platforms import get_platform
    ck = json.loads((target_whole / "export.json").read_text())["source"]["path"]
    prof = profile([target_whole], devices=["cpu"], budget_s=0.01, log=lambda m: None, cpu_drivers=("local-task",))
    as_json = lambda rec: json.loads(json.dumps(rec.to_dict()))     # noqa: E731 - what the file holds
    return {
        "bundle": json.loads((good_bundle / "manifest.json").read_text()),
        "export": json.loads((target_whole / "export.json").read_text()),
        "artifacts": json.loads((target_whole / "manifest.json").read_text()),
        "profile": as_json(prof),
        "plan": as_json(make_plan(ck, ck, get_platform("imx95"), 0.7, max_context=96, gammas=range(0, 3))),
        "calibration": as_json(calibrate(good_bundle, ["hello world"], gamma=2, max_new_tokens=4,
                                         log=lambda m: None)),
    }


RECORDS = {"bundle": "BundleManifest", "export": "ExportRecord", "artifacts": "ArtifactsManifest",
           "profile": "Profile", "plan": "Plan", "calibration": "Calibration"}


def test_good_records_read_back_unchanged(good_records):
    """Reading a file and writing it again gives the same JSON: the records hold every field."""
    import build_sd.contract as c
    for kind, obj in good_records.items():
        rec = getattr(c, RECORDS[kind]).from_obj(json.loads(json.dumps(obj)))
        assert json.loads(json.dumps(rec.to_dict())) == obj, kind


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_record_reader_gives_a_record_or_one_line_error(good_records, data):
    """Mutate any field of any record (type, value, deletion; up to 3 at once): the reader returns
    the record or raises a UserError whose one line names the file and, for a bad field, the field."""
    import copy

    import build_sd.contract as c
    from build_sd.errors import UserError
    kind = data.draw(st.sampled_from(sorted(RECORDS)))
    obj = _mutated(copy.deepcopy(good_records[kind]), data)
    try:
        rec = getattr(c, RECORDS[kind]).from_obj(obj, f"{kind}.json")
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{kind}.json"), msg
        return
    json.dumps(rec.to_dict())          # a record that reads also writes
