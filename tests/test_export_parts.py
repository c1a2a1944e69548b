"""The parallel export (`export --jobs`, builder/export_parts.py): functions traced in several
processes and merged write the same bytes as one process, for split and quantized models; the
merge refuses parts that do not belong together."""
from __future__ import annotations

import shutil

import pytest

from build_sd.builder.export import export_model
from build_sd.builder.mlir_merge import MergeError, merge_modules
from conftest import BUILD


def test_parallel_export_writes_the_bytes_of_one_process(target_ckpt):
    split, quant = [0, 2], "w8a8"           # several modules; SmoothQuant's scales reach the children
    out = BUILD / "export_parts"
    shutil.rmtree(out, ignore_errors=True)      # exports are skipped when up to date
    opts = dict(split=split, gammas=[1, 2, 3], prefill=[4], max_context=16, quant=quant, log=lambda m: None)
    one = export_model(target_ckpt, out / "one", jobs=1, **opts)
    lines = []
    two = export_model(target_ckpt, out / "two", jobs=2, **dict(opts, log=lines.append))
    assert any("in 2 processes" in line for line in lines), lines
    assert [s.name for s in one.subgraphs] == [s.name for s in two.subgraphs]
    assert len(one.subgraphs) == 4          # embed, layers 0-2, 2-3, head
    for s in one.subgraphs:
        a, b = (out / "one" / s.mlir).read_bytes(), (out / "two" / s.mlir).read_bytes()
        assert a == b, f"{s.mlir}: the merged module differs from the one-process export"
        assert a.count(b"func.func @") == 5          # prefill_T4, decode, verify_T2..T4
    assert one.fingerprint == two.fingerprint
    assert not list((out / "two").glob(".*")), "the parts' temporary files are left behind"


def _module(globals_: list[str], funcs: list[str], resource: str = "0x0400") -> str:
    g = [f"  util.global private @{n} = 0 : i32" for n in globals_]
    f = [f"  func.func @{n}(%arg0: i32) -> i32 {{\n    return %arg0 : i32\n  }}" for n in funcs]
    return "\n".join(["module @m {", *g, *f, "}", "", "{-#", "  dialect_resources: {", "    builtin: {",
                      f"      r: \"{resource}\"", "    }", "  }", "#-}"]) + "\n"


def test_merge_orders_functions_and_refuses_parts_that_do_not_belong_together():
    merged = merge_modules([_module(["w"], ["decode"]), _module(["w"], ["prefill_T4", "verify_T2"])],
                           ["prefill_T4", "decode", "verify_T2"])
    assert merged == _module(["w"], ["prefill_T4", "decode", "verify_T2"])
    with pytest.raises(MergeError, match="different globals"):
        merge_modules([_module(["w"], ["decode"]), _module(["u"], ["verify_T2"])], ["decode", "verify_T2"])
    with pytest.raises(MergeError, match="in two parts"):
        merge_modules([_module(["w"], ["decode"]), _module(["w"], ["decode"])], ["decode"])
    with pytest.raises(MergeError, match="expected"):
        merge_modules([_module(["w"], ["decode"])], ["decode", "verify_T2"])
    with pytest.raises(MergeError, match="resource r differs"):
        merge_modules([_module(["w"], ["decode"]), _module(["w"], ["verify_T2"], "0x0500")], ["decode", "verify_T2"])
    with pytest.raises(MergeError, match="not a module"):
        merge_modules(["func.func @x()"], ["x"])


def test_a_failed_export_process_is_one_user_error_and_leaves_nothing(target_ckpt, tmp_path):
    """A child that cannot trace (here: its checkpoint is gone) ends the export with a UserError that
    says which process failed and how to avoid the processes; no part or log file stays behind."""
    from build_sd.builder.export import _load, function_table
    from build_sd.builder.export_parts import PartsExport
    from build_sd.contract import ModelConfig, subgraph_specs
    from build_sd.errors import UserError
    cfg = ModelConfig.from_hf(target_ckpt)
    fns, specs = function_table([1], [4]), subgraph_specs(cfg.num_layers, None)
    load = dict(ckpt=str(tmp_path / "gone"), dtype="f32", max_context=16, fuse=True, quant="none", scales_file=None)
    parts = PartsExport(2, fns, specs, tmp_path, load, log=lambda m: None)
    try:
        full = _load(target_ckpt, "f32", 16, cfg, True, lambda m: None)
        with pytest.raises(UserError, match=r"export process 1 of 2 failed .*--jobs 1"):
            parts.finish(full, cfg, "f32")
    finally:
        parts.close()
    assert not list(tmp_path.glob(".*"))
