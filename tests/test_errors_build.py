"""Bad input to export/compile/validate: a one-line error and exit code 2, never a traceback."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import cli, make_checkpoint


@pytest.fixture()
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ck", vocab=40, hidden=16, layers=1, heads=2, kv_heads=1, ffn=24)


def _export(ck, out, *extra):
    return cli("export", "--model", ck, "--out", out, "--gammas", "1", "--prefill", "4",
               "--max-context", "16", *extra)


def _assert_user_error(rc, out, err, needle):
    assert rc == 2, (rc, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err + out


def _edit_config(ck, **patch):
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(patch)
    (ck / "config.json").write_text(json.dumps(cfg))


def test_missing_checkpoint(tmp_path):
    _assert_user_error(*_export(tmp_path / "nope", tmp_path / "m"), "not found")


def test_missing_config(ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "no config.json")


def test_invalid_config_json(ckpt, tmp_path):
    (ckpt / "config.json").write_text("{not json")
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "invalid JSON")


def test_unsupported_model_type(ckpt, tmp_path):
    _edit_config(ckpt, model_type="mamba")
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "unsupported model_type 'mamba'")


def test_unsupported_feature(ckpt, tmp_path):
    _edit_config(ckpt, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "unsupported RoPE type 'yarn'")


def test_missing_tensor(ckpt, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    del sd["model.layers.0.mlp.up_proj.weight"]
    save_file(sd, ckpt / "model.safetensors")
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "missing tensor model.layers.0.mlp.up_proj.weight")


def test_misshaped_tensor(ckpt, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(17)
    save_file(sd, ckpt / "model.safetensors")
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "model.norm.weight has shape [17], expected [16]")


def test_corrupt_safetensors(ckpt, tmp_path):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "not a readable safetensors file")


def test_garbage_safetensors(ckpt, tmp_path):
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 64)
    _assert_user_error(*_export(ckpt, tmp_path / "m"), "not a readable safetensors file")


def test_gamma_beyond_context(ckpt, tmp_path):
    rc, out, err = cli("export", "--model", ckpt, "--out", tmp_path / "m", "--gammas", "16",
                       "--prefill", "4", "--max-context", "16")
    _assert_user_error(rc, out, err, "gamma 16")


def test_prefill_beyond_context(ckpt, tmp_path):
    rc, out, err = cli("export", "--model", ckpt, "--out", tmp_path / "m", "--gammas", "1",
                       "--prefill", "4,32", "--max-context", "16")
    _assert_user_error(rc, out, err, "--prefill bucket 32")


def test_bad_split(ckpt, tmp_path):
    _assert_user_error(*_export(ckpt, tmp_path / "m", "--split", "0,5"), "--split")


def test_unknown_preset(tmp_path):
    _assert_user_error(*cli("compile", tmp_path, "--preset", "mali-g999", "--out", tmp_path / "a"),
                       "unknown preset 'mali-g999'")


def test_compile_without_export(tmp_path):
    _assert_user_error(*cli("compile", tmp_path, "--preset", "host", "--out", tmp_path / "a"),
                       "export.json")


def test_validate_missing_artifacts(tmp_path, ckpt):
    _assert_user_error(*cli("validate", tmp_path / "none", "--model", ckpt), "not found")


def test_real_process_prints_one_line(ckpt, tmp_path):
    (ckpt / "config.json").write_text("[]")
    r = subprocess.run([sys.executable, "-m", "build_sd.cli", "export", "--model", str(ckpt),
                        "--out", str(tmp_path / "m")], capture_output=True, text=True)
    _assert_user_error(r.returncode, r.stdout, r.stderr, "expected a JSON object")
