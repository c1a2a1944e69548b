"""export -> compile -> validate on real IREE (local-task and lavapipe), cross-compiles, KV in place,
incremental rebuilds."""
import json
import re
import subprocess
import sys
import time


from conftest import BUILD, HAS_EMULATION, HAS_VULKAN, _build
from helpers import cli, make_checkpoint


def _validate(art, ckpt):
    rc, out, err = cli("validate", art, "--model", ckpt)
    assert rc == 0, out + err
    assert "validate: PASS" in out
    assert "local-task" in out
    if HAS_VULKAN:
        assert "llvmpipe" in out
    return out


def test_validate_whole_model(target_whole, target_ckpt):
    out = _validate(target_whole, target_ckpt)
    for fn in ("prefill_T8", "prefill_T16", "decode", "verify_T2", "verify_T7"):
        assert fn in out


def test_validate_split_model(target_split, target_ckpt):
    out = _validate(target_split, target_ckpt)
    for label in ("embed", "layers[0:2]", "layers[2:3]", "head"):
        assert label in out
    meta = json.loads((target_split / "export.json").read_text())
    assert [sg["label"] for sg in meta["subgraphs"]] == ["embed", "layers[0:2]", "layers[2:3]", "head"]


def test_validate_fails_on_wrong_module(target_whole, target_ckpt, tmp_path):
    """The check can fail: the same artifacts judged against another checkpoint must FAIL."""
    other = make_checkpoint(tmp_path / "other", vocab=311, hidden=56, layers=3, heads=4, kv_heads=2,
                            ffn=100, seed=99)
    rc, out, err = cli("validate", target_whole, "--model", other, "--preset", "host")
    assert rc == 1 and "FAIL" in out


def test_cross_compile_a55_valhall3_qwen2(tmp_path):
    ck = make_checkpoint(BUILD / "ckpt" / "qwen2", kind="qwen2", vocab=131, hidden=48, layers=2,
                         heads=6, kv_heads=2, ffn=72, seed=5, tie=True)
    art = _build("qwen2_cross", ck, ["host", "a55", "valhall3"], gammas="2", prefill="8", max_context=32)
    man = json.loads((art / "manifest.json").read_text())
    a55 = (art / "a55" / "whole.vmfb").read_bytes()
    mali = (art / "valhall3" / "whole.vmfb").read_bytes()
    assert b"arm_64" in a55                         # an aarch64 ELF inside
    assert b"\x03\x02\x23\x07" in mali              # SPIR-V magic number
    assert "--iree-vulkan-target=valhall3" in man["presets"]["valhall3"]["flags"]
    assert "cortex-a55" in " ".join(man["presets"]["a55"]["flags"])
    rc, out, err = cli("validate", art, "--model", ck)
    assert rc == 0, out + err
    assert "valhall3: compile-checked only" in out
    if HAS_EMULATION:           # the Arm module's functions ran under qemu-aarch64 (emulate.py)
        assert "a55: 3 module functions run under qemu-aarch64 -cpu cortex-a76" in out, out
        assert sum("a55 (qemu cortex-a76)" in ln and ln.endswith("ok") for ln in out.splitlines()) == 3, out
    else:
        assert "a55: compile-checked only" in out
    rc, out, err = cli("validate", art, "--model", ck, "--no-emulate")
    assert rc == 0 and "a55: compile-checked only (built for aarch64" in out, out + err


def test_kv_cache_update_is_in_place(target_split):
    """The decode function's stream IR moves no cache-sized block: the KV update is a dispatch
    writing the new row into the cache resource in place (O(T)), not a copy of the cache."""
    from build_sd.builder.compile import iree_compile_path
    from build_sd.builder.targets import get_preset
    meta = json.loads((target_split / "export.json").read_text())
    sg = next(s for s in meta["subgraphs"] if s["kind"] == "layers")
    cache_bytes = sg["kv_params"][0]["bytes"]
    src = BUILD / "mlir" / "target_split" / sg["mlir"]
    ir = subprocess.run([iree_compile_path(), str(src), "--compile-to=stream", *get_preset("host").flags],
                        capture_output=True, text=True, check=True).stdout
    body = ir[ir.index("util.func public @decode"):]
    body = body[:body.index("\n  util.func", 10)] if "\n  util.func" in body[10:] else body
    consts = {m[0]: int(m[1]) for m in re.findall(r"(%c\w*) = arith.constant (\d+) : index", ir)}
    copies = re.findall(r"stream\.(?:cmd|async)\.(?:copy|clone)[^\n]*", body)
    sizes = []
    for c in copies:
        # copy: `%src[..], %dst[..], %length : ...`; clone: `%x : !stream.resource<..>{%size}`
        m = re.search(r"\],\s*(%\w+)\s*:", c) or re.search(r"\{(%\w+)\}", c)
        assert m, f"cannot read the size of {c}"
        sizes.append(consts.get(m.group(1), cache_bytes))   # unknown size: assume the worst
    assert re.search(r"util\.global private @__auto\.kvcache[^\n]*!stream\.resource<variable>", ir), \
        "no KV cache variable resource: the check would be vacuous"
    assert all(s < cache_bytes for s in sizes), f"decode copies a cache-sized block: {copies}"


def test_second_compile_is_a_noop(target_ckpt, tmp_path):
    mlir = BUILD / "mlir" / "target_whole"
    art = tmp_path / "art"
    rc, out, err = cli("compile", mlir, "--preset", "host", "--out", art)
    assert rc == 0, err
    vmfb = art / "host" / "whole.vmfb"
    before = (vmfb.stat().st_mtime_ns, (art / "manifest.json").read_bytes())
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "build_sd.cli", "compile", str(mlir), "--preset", "host",
                        "--out", str(art)], capture_output=True, text=True)
    dt = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "iree-compile" not in r.stdout          # ninja ran nothing
    assert (vmfb.stat().st_mtime_ns, (art / "manifest.json").read_bytes()) == before
    assert dt < 2.0, f"no-op compile took {dt:.2f}s"
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, build_sd.cli, build_sd.builder.compile; print(list(sys.modules))"],
        capture_output=True, text=True).stdout.split("'")


def test_manifest_records_flags_versions_hashes(target_whole):
    man = json.loads((target_whole / "manifest.json").read_text())
    assert "3.13" in man["compiler"]["version"]
    assert "--iree-global-opt-data-tiling" in man["presets"]["host"]["flags"]
    mod = next(m for m in man["modules"] if m["preset"] == "host")
    from build_sd.fsutil import sha256_file
    assert mod["sha256"] == sha256_file(target_whole / mod["file"])
    assert man["inputs"]["whole.mlir"]
    assert man["files"]["model.irpa"]["sha256"] == sha256_file(target_whole / "model.irpa")


def test_f16_export_validates_against_f32(tmp_path):
    """f16 modules (weights, cache and hidden states in f16; scores/softmax/logits in f32) stay
    within the f16 tolerance of the f32 model on every device here, argmax included. The Arm and
    Mali presets too (a55 run under qemu where `make emulation` set it up): an f16 attention-weighted
    sum of V over the filled slots (a dynamic length) did not compile for the a55 in IREE 3.13
    ("affine.delinearize_index ... statically non-positive"); it is an f32 matmul now."""
    ck = make_checkpoint(BUILD / "ckpt" / "f16", kind="qwen2", vocab=203, hidden=40, layers=2,
                         heads=4, kv_heads=2, ffn=72, seed=8, init=0.05)
    presets = ["host", "a55", "valhall3"] + (["vulkan-llvmpipe"] if HAS_VULKAN else [])
    art = _build("f16", ck, presets, split="0,1", gammas="3", prefill="8", max_context=32, dtype="f16")
    out = _validate(art, ck)
    assert "2.0e-02" in out or "e-02" in out         # the f16 tolerance is in force


def test_llama3_vocabulary_argmax(tmp_path):
    """V = 128256 (Llama-3): IREE's one-pass argmax over such a row was wrong on vulkan-spirv
    and did not compile in f16 on llvm-cpu; the two-stage argmax must validate on both."""
    ck = make_checkpoint(BUILD / "ckpt" / "v128k", vocab=128256, hidden=32, layers=1, heads=2,
                         kv_heads=1, ffn=48, seed=4, tie=True, init=0.05)
    presets = ["host"] + (["vulkan-llvmpipe"] if HAS_VULKAN else [])
    for dtype in ("f32", "f16"):
        art = _build(f"v128k_{dtype}", ck, presets, gammas="2", prefill="8", max_context=16, dtype=dtype)
        out = _validate(art, ck)
        assert "FAIL" not in out
