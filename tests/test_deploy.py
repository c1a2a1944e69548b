"""Deployable bundles: manifest, verify, pack/push, atomic builds, and every bad input -> exit 2."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import BUILD, HAS_VULKAN, _build, needs_vulkan
from helpers import cli, make_checkpoint, run_json

ROOT = Path(__file__).resolve().parent.parent
VK = "vulkan-llvmpipe"


def _one_line_error(rc, out, err, needle):
    assert rc == 2, (rc, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert needle in out + err, (out, err)


@pytest.fixture()
def bundle(target_whole, draft_art, tmp_path):
    out = tmp_path / "b"
    places = ["--place", "draft=host", "--place", "target=host"]
    if HAS_VULKAN:
        places = ["--place", "draft=host", "--place", f"target={VK}", "--fallback", "cpu"]
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_whole, *places, "--gamma", "3",
                     "--out", out)
    assert rc == 0, err
    return out


def test_manifest_contents(bundle, target_ckpt):
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["schema"] == 1 and man["kind"] == "build_sd.bundle"
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(man["files"]) == files
    for f, info in man["files"].items():
        assert len(info["sha256"]) == 64 and info["bytes"] == (bundle / f).stat().st_size
    assert "3.13" in man["iree"]["compiler"] and man["iree"]["runtime_at_build"].startswith("3.13")
    for preset in man["presets"].values():
        assert preset["flags"] and preset["arch"] and preset["backend"]
    src = man["models"]["target"]["model_source"]["sha256"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(src)
    assert man["gamma"] == 3 and man["max_context"] == 96 and man["placement"]["target"]


def test_verify_ok(bundle):
    rc, out, err = cli("verify", bundle)
    assert rc == 0 and out.startswith("OK"), err


@pytest.mark.parametrize("damage", ["vmfb", "irpa", "tokenizer"])
def test_corrupt_or_truncated_files(bundle, damage):
    man = json.loads((bundle / "manifest.json").read_text())
    rel = {"vmfb": next(m["file"] for m in man["models"]["target"]["modules"].values()),
           "irpa": "target/model.irpa", "tokenizer": "tokenizer.json"}[damage]
    f = bundle / rel
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage != "tokenizer" else data[:100])
    for cmd in (["verify", bundle], ["run", bundle, "--prompt", "hello"]):
        _one_line_error(*cli(*cmd), rel)


def test_corrupt_file_consistent_with_manifest_is_caught_at_load(bundle):
    """A file broken before bundling (hash matches the broken bytes): the loader says so."""
    man = json.loads((bundle / "manifest.json").read_text())
    rel = next(m["file"] for m in man["models"]["draft"]["modules"].values())
    (bundle / rel).write_bytes(b"\x00" * 512)
    from build_sd.fsutil import sha256_file
    man["files"][rel] = {"sha256": sha256_file(bundle / rel), "bytes": 512}
    (bundle / "manifest.json").write_text(json.dumps(man))
    _one_line_error(*cli("run", bundle, "--prompt", "hello"), "cannot load module")
    (bundle / "tokenizer.json").write_text("{\"not\": \"a tokenizer\"}")
    man["files"]["tokenizer.json"] = {"sha256": sha256_file(bundle / "tokenizer.json"),
                                      "bytes": (bundle / "tokenizer.json").stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(man))
    _one_line_error(*cli("run", bundle, "--prompt", "hello", "--gamma", "0"), "tokenizer")


def test_newer_schema_refused(bundle):
    man = json.loads((bundle / "manifest.json").read_text())
    man["schema"] = 99
    (bundle / "manifest.json").write_text(json.dumps(man))
    for cmd in (["verify", bundle], ["run", bundle, "--prompt", "x"], ["pack", bundle, "--out", bundle.parent / "x.tgz"]):
        _one_line_error(*cli(*cmd), "schema 99")


@pytest.mark.parametrize("path, value, needle", [
    (("models", "draft", "files", "irpa"), [], "models.draft.files.irpa"),     # found by hypothesis
    (("tokenizer",), {"a": 1}, "tokenizer"),
    (("cpu_driver",), {"draft": "cuda"}, "cpu_driver"),
])
def test_malformed_manifest_fields_are_one_line_errors(bundle, path, value, needle):
    man = json.loads((bundle / "manifest.json").read_text())
    d = man
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    (bundle / "manifest.json").write_text(json.dumps(man))
    for cmd in (["verify", bundle], ["run", bundle, "--prompt", "x"]):
        _one_line_error(*cli(*cmd), needle)


def test_arm_and_mali_bundle_refused_on_x86(tmp_path):
    if os.uname().machine != "x86_64":
        pytest.skip("checks an x86 host")
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    ck = make_checkpoint(BUILD / "ckpt" / "qwen2", kind="qwen2", vocab=131, hidden=48, layers=2,
                         heads=6, kv_heads=2, ffn=72, seed=5, tie=True)
    art = _build("qwen2_cross", ck, ["host", "a55", "valhall3"], gammas="2", prefill="8", max_context=32)
    for place, needle in (("a55", "built for aarch64, this machine is x86_64"), ("valhall3", "Mali")):
        b = tmp_path / place
        rc, _, err = cli("bundle", "--draft", art, "--target", art, "--place", f"draft={place}",
                         "--place", f"target={place}", "--tokenizer", tmp_path / "tok.json", "--gamma", "2",
                         "--out", b)
        assert rc == 0, err
        rc, out, err = cli("verify", b)
        assert rc == 2 and needle in out and "this machine: x86_64" in out
        _one_line_error(*cli("run", b, "--prompt", "w1 w2"), place)


@needs_vulkan
def test_no_vulkan_driver_hint_and_cpu_fallback(bundle):
    env = dict(os.environ, VK_DRIVER_FILES="/nonexistent.json", VK_ICD_FILENAMES="/nonexistent.json")
    cmd = [sys.executable, "-m", "build_sd.cli", "run", str(bundle), "--prompt", "hello world", "--json",
           "--max-new-tokens", "12"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    _one_line_error(r.returncode, r.stdout, r.stderr, "--fallback cpu")
    assert "no Vulkan device" in r.stderr
    r = subprocess.run(cmd + ["--fallback", "cpu"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    with_gpu = run_json(bundle, "hello world", max_new_tokens=12)
    assert json.loads(r.stdout)["token_ids"] == with_gpu["token_ids"]


def test_prompt_longer_than_buckets_is_chunked(bundle, target_ckpt):
    """Buckets are 8 and 16: a longer prompt is prefilled in chunks and decodes exactly."""
    import torch

    from build_sd.builder.model.llama import Subgraph
    from build_sd.builder.model.loader import load_checkpoint
    from build_sd.runtime.session import open_bundle
    text = "the quick brown fox jumps over the lazy dog"
    s = open_bundle(bundle)
    ids = s.tokenizer.encode(text).ids
    assert 16 < len(ids) <= 80
    got = run_json(bundle, text, max_new_tokens=8, gamma=0)["token_ids"]
    ref = Subgraph(load_checkpoint(target_ckpt, "f32", 96), "whole")
    seq = list(ids)
    with torch.no_grad():
        for _ in range(8):
            logits = ref(torch.tensor([seq], dtype=torch.int32), torch.tensor(0, dtype=torch.int32))[1]
            seq.append(int(logits[0, -1].argmax()))
    assert got == seq[len(ids):]
    _one_line_error(*cli("run", bundle, "--prompt", text * 4), "context size")


def test_missing_and_wrong_paths(tmp_path, bundle):
    _one_line_error(*cli("run", tmp_path / "nope", "--prompt", "x"), "not found")
    (tmp_path / "file").write_text("x")
    _one_line_error(*cli("verify", tmp_path / "file"), "not found")
    _one_line_error(*cli("pack", bundle, "--out", tmp_path / "no" / "such" / "dir" / "b.tgz"), "No such file")
    _one_line_error(*cli("bundle", "--draft", tmp_path / "nope", "--target", tmp_path / "nope",
                         "--out", tmp_path / "x"), "not found")


def test_disk_full_while_bundling_keeps_previous(bundle, target_whole, draft_art, monkeypatch):
    import build_sd.fsutil as fsutil
    before = {f: (bundle / f).read_bytes() for f in ("manifest.json", "tokenizer.json")}
    real = shutil.copyfile
    calls = {"n": 0}

    def full(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(fsutil.shutil, "copyfile", full)
    rc, out, err = cli("bundle", "--draft", draft_art, "--target", target_whole, "--place", "draft=host",
                       "--place", "target=host", "--gamma", "2", "--out", bundle)
    _one_line_error(rc, out, err, "No space left on device")
    assert "previous bundle is unchanged" in err
    assert {f: (bundle / f).read_bytes() for f in before} == before
    assert not any(p.name.endswith(".partial") for p in bundle.parent.iterdir())
    assert cli("verify", bundle)[0] == 0


def test_linked_bundle_shares_files_and_survives_a_rebuild(target_whole, draft_art, tmp_path):
    # private copies of the artifacts: the test rewrites one, the shared cache must stay intact
    t_art, d_art = tmp_path / "t", tmp_path / "d"
    shutil.copytree(target_whole, t_art)
    shutil.copytree(draft_art, d_art)
    out = tmp_path / "b"
    rc, _, err = cli("bundle", "--draft", d_art, "--target", t_art, "--place", "draft=host", "--place",
                     "target=host", "--gamma", "2", "--link", "--out", out)
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    for rel, src in (("target/model.irpa", t_art / "model.irpa"), (man["models"]["target"]["modules"]["whole"]["file"],
                                                                  t_art / "host" / "whole.vmfb")):
        assert os.path.samefile(out / rel, src), rel            # no second copy on disk
    want = run_json(out, "hello world", max_new_tokens=6)["token_ids"]
    # a rebuild replaces artifacts by rename: the link breaks, the bundle keeps its bytes
    irpa = t_art / "model.irpa"
    tmp = irpa.with_name(".new")
    tmp.write_bytes(b"rebuilt" + irpa.read_bytes()[7:])
    os.replace(tmp, irpa)
    assert not os.path.samefile(out / "target/model.irpa", irpa)
    assert cli("verify", out)[0] == 0
    assert run_json(out, "hello world", max_new_tokens=6)["token_ids"] == want
    # packing a linked bundle gives plain files, the same archive as a copied bundle's
    copied = tmp_path / "copies" / "b"                     # same folder name: same archive root
    shutil.copytree(out, copied)
    a, b = tmp_path / "a.tgz", tmp_path / "c.tgz"
    assert cli("pack", out, "--out", a)[0] == 0 and cli("pack", copied, "--out", b)[0] == 0
    with tarfile.open(a) as t:
        assert all(m.isfile() or m.isdir() for m in t.getmembers())
    assert sha(a) == sha(b)


def sha(p: Path) -> str:
    import hashlib
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_pack_is_deterministic_and_unpacks_elsewhere(bundle, tmp_path):
    a, b = tmp_path / "a.tgz", tmp_path / "b.tgz"
    assert cli("pack", bundle, "--out", a)[0] == 0
    time.sleep(1.1)                                   # different mtimes must not matter
    os.utime(bundle / "tokenizer.json")
    assert cli("pack", bundle, "--out", b)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as t:
        assert all(m.mtime == 0 and m.uid == 0 and not m.uname for m in t.getmembers())
    from build_sd.builder.deploy import unpack
    where = unpack(a, tmp_path / "board")
    assert cli("verify", where)[0] == 0
    assert run_json(where, "hello world", max_new_tokens=6)["token_ids"] == \
        run_json(bundle, "hello world", max_new_tokens=6)["token_ids"]


def test_push_sends_only_changes_and_is_atomic(bundle, target_whole, draft_art, tmp_path, monkeypatch):
    dest = tmp_path / "board" / "b"
    assert cli("push", bundle, dest)[0] == 0
    rc, out, _ = cli("push", bundle, dest)
    assert rc == 0 and "0 files sent" in out
    # a new bundle that differs in its target module and gamma only
    b2 = tmp_path / "b2"
    assert cli("bundle", "--draft", draft_art, "--target", target_whole, "--place", "draft=host",
               "--place", "target=host", "--gamma", "5", "--out", b2)[0] == 0
    import build_sd.builder.deploy as deploy
    real = deploy.Local.send
    n = {"i": 0}

    def dies(self, src, rel):
        n["i"] += 1
        if n["i"] == 1:
            raise KeyboardInterrupt          # the push is interrupted before it completes
        return real(self, src, rel)
    monkeypatch.setattr(deploy.Local, "send", dies)
    with pytest.raises(KeyboardInterrupt):
        deploy.push(b2, str(dest), log=lambda m: None)
    assert cli("verify", dest)[0] == 0                    # the previous bundle is intact and usable
    assert json.loads((dest / "manifest.json").read_text())["gamma"] == 3
    monkeypatch.setattr(deploy.Local, "send", real)
    rc, out, _ = cli("push", b2, dest)
    assert rc == 0 and "unchanged" in out
    assert json.loads((dest / "manifest.json").read_text())["gamma"] == 5
    assert cli("verify", dest)[0] == 0


def test_push_over_ssh(bundle, tmp_path, monkeypatch):
    """host:folder goes through ssh/scp; shims run them locally (no sshd in CI)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ssh").write_text('#!/bin/sh\nshift\nexec sh -c "$*"\n')
    (shim / "scp").write_text('#!/bin/sh\nexec cp "$1" "${2#*:}"\n')
    for f in shim.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("BUILD_SD_SSH", str(shim / "ssh"))
    monkeypatch.setenv("BUILD_SD_SCP", str(shim / "scp"))
    dest = tmp_path / "remote" / "b"
    rc, out, err = cli("push", bundle, f"board:{dest}")
    assert rc == 0, err
    assert cli("verify", dest)[0] == 0
    rc, out, _ = cli("push", bundle, f"board:{dest}")
    assert "0 files sent" in out


# ---- builds: byte-identical, atomic, resumable -------------------------------------------------------
def _build_script(ck, root):
    return (f"set -e\n"
            f"{sys.executable} -m build_sd.cli export --model {ck} --out {root}/m --split 0,1 --gammas 1,2 "
            f"--prefill 8 --max-context 32\n"
            f"{sys.executable} -m build_sd.cli compile {root}/m --preset host --out {root}/a\n"
            f"{sys.executable} -m build_sd.cli bundle --draft {root}/a --target {root}/a --place draft=host "
            f"--place target=host --gamma 2 --out {root}/b\n")


def _digest(bundle: Path) -> dict:
    man = json.loads((bundle / "manifest.json").read_text())
    return {f: i["sha256"] for f, i in man["files"].items()}


def _wait_for_orphans(root: Path, timeout: float = 120.0):
    """ninja starts each job in its own process group, so SIGKILL to a build's group leaves its
    running iree-compile jobs to finish on their own (each into its own temporary name)."""
    t_end = time.time() + timeout
    while time.time() < t_end:
        if subprocess.run(["pgrep", "-f", str(root)], capture_output=True).returncode != 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"processes still working in {root} after {timeout}s")


@pytest.mark.slow
def test_kill_9_loop_then_resume_gives_identical_bundle(tmp_path, tokenizer_json):
    ck = make_checkpoint(tmp_path / "ck", vocab=311, hidden=32, layers=2, heads=4, kv_heads=2, ffn=48,
                         seed=21, tokenizer=tokenizer_json)
    root = tmp_path / "work"
    script = _build_script(ck, root)
    # reference: an uninterrupted build (same paths), then moved aside
    t = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True, capture_output=True)
    full_s = time.perf_counter() - t
    ref = _digest(root / "b")
    ref_bytes = {p.name: p.read_bytes() for p in (root / "a" / "host").iterdir()}
    shutil.rmtree(root)
    rng = random.Random(0)
    kills = 0
    for i in range(8):
        if i:
            # start from an earlier stage again, so that every run has work to be killed in
            # (export, compile or bundle, depending on the moment)
            shutil.rmtree(root / rng.choice(["m", "a"]), ignore_errors=True)
        p = subprocess.Popen(["bash", "-c", script], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 0.9) * full_s)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert kills >= 3
    _wait_for_orphans(root)
    assert _digest(root / "b") == ref
    assert {p.name: p.read_bytes() for p in (root / "a" / "host").iterdir()} == ref_bytes
    assert not list(root.rglob("*.tmp*")) and not list(root.rglob("*.partial"))
