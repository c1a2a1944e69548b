"""`verify --numerics`: the reference's numbers travel in the bundle (validate's golden case) and
the board checks its own modules against them, module by module."""
import json
import shutil

import pytest

from conftest import BUILD, HAS_VULKAN, _build
from helpers import cli, make_checkpoint

VK = "vulkan-llvmpipe"


@pytest.fixture(scope="module")
def validated(target_whole, draft_art, target_ckpt, draft_ckpt, tmp_path_factory):
    """Private copies of the test artifacts, validated (validate writes golden.json into them)."""
    root = tmp_path_factory.mktemp("numerics")
    arts = {}
    for role, art, ck in (("target", target_whole, target_ckpt), ("draft", draft_art, draft_ckpt)):
        arts[role] = root / role
        shutil.copytree(art, arts[role])
        rc, out, err = cli("validate", arts[role], "--model", ck, "--preset", "host")
        assert rc == 0, out + err
        assert (arts[role] / "golden.json").exists()
    return arts


def _bundle(arts, out, target_preset="host"):
    rc, _, err = cli("bundle", "--draft", arts["draft"], "--target", arts["target"], "--place", "draft=host",
                     "--place", f"target={target_preset}", "--gamma", "2", "--out", out)
    assert rc == 0, err
    return out


@pytest.mark.parametrize("preset", ["host", VK])
def test_a_good_bundle_passes_module_by_module(validated, tmp_path, preset):
    if preset == VK and not HAS_VULKAN:
        pytest.skip("needs lavapipe")
    b = _bundle(validated, tmp_path / "b", preset)
    man = json.loads((b / "manifest.json").read_text())
    assert man["models"]["target"]["files"]["golden"] == "target/golden.json"
    rc, out, err = cli("verify", b, "--numerics")
    assert rc == 0, out + err
    assert "PASS target.whole" in out and "PASS draft.whole" in out and "FAIL" not in out


def test_a_wrong_but_loadable_module_fails(validated, tmp_path):
    """The target's module swapped for one built from the same weights with another RoPE base:
    it loads and runs, its files match the manifest, and its numbers are wrong."""
    from build_sd.fsutil import sha256_file
    other = make_checkpoint(BUILD / "ckpt" / "target_rope", vocab=311, hidden=56, layers=3, heads=4, kv_heads=2,
                            ffn=100, seed=1, rope_theta=1e6)
    art = _build("target_rope", other, ["host"], gammas="1,2,3,4,5,6", prefill="8,16", max_context=96)
    b = _bundle(validated, tmp_path / "b")
    rel = "target/host/whole.vmfb"
    shutil.copyfile(art / "host" / "whole.vmfb", b / rel)
    man = json.loads((b / "manifest.json").read_text())
    man["files"][rel] = {"sha256": sha256_file(b / rel), "bytes": (b / rel).stat().st_size}
    (b / "manifest.json").write_text(json.dumps(man))
    assert cli("verify", b)[0] == 0                     # whole and loadable: only the numbers tell
    rc, out, err = cli("verify", b, "--numerics")
    assert rc == 2 and "FAIL target.whole" in out and "PASS draft.whole" in out, out + err
    assert err.strip().splitlines()[-1].startswith("error: ")


def test_a_bundle_without_golden_cases_says_so(target_whole, draft_art, tmp_path):
    src = tmp_path / "arts"
    for name, art in (("t", target_whole), ("d", draft_art)):
        shutil.copytree(art, src / name, ignore=shutil.ignore_patterns("golden.json"))
    rc, _, err = cli("bundle", "--draft", src / "d", "--target", src / "t", "--place", "draft=host",
                     "--place", "target=host", "--out", tmp_path / "b")
    assert rc == 0, err
    rc, out, err = cli("verify", tmp_path / "b", "--numerics")
    assert rc == 2 and "no golden case" in err, out + err
