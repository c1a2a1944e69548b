"""`export --attention filled` (the default): each call attends to the cache slots 0..pos+T-1, a
dynamic length, instead of all max_context slots masked. The numbers must not change: the same
calls on an `--attention all` export of the same checkpoint give the same ids and logits, at every
position up to the last slot, on every device that runs them (host, and lavapipe where present)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from build_sd.contract import ExportRecord
from conftest import BUILD, _build, _presets

S = 24


@pytest.fixture(scope="module")
def exports(target_ckpt):
    return {att: _build(f"attention_{att}", target_ckpt, _presets(), gammas="3", prefill="8", max_context=S,
                        attention=att) for att in ("filled", "all")}


def test_the_record_and_the_module_say_which_slots(exports, tmp_path):
    for att, art in exports.items():
        rec = ExportRecord.read(art / "export.json")
        assert rec.attention == att
    # the filled export slices the cache to a dynamic length; the other reads static S-slot caches only
    mlir = {att: (BUILD / "mlir" / f"attention_{att}" / "whole.mlir").read_text() for att in exports}
    dynamic = re.compile(r"vtensor<\[[0-9,]*\?[0-9?,]*\],f32>")
    assert dynamic.search(mlir["filled"])
    assert not dynamic.search(mlir["all"])
    # an export.json written before the field existed: its modules attended to every slot
    old = json.loads((exports["filled"] / "export.json").read_text())
    del old["attention"]
    (tmp_path / "export.json").write_text(json.dumps(old))
    assert ExportRecord.read(tmp_path / "export.json").attention == "all"


@pytest.mark.parametrize("preset", _presets())
def test_filled_attention_gives_the_numbers_of_all_slots(exports, preset):
    from build_sd.runtime.chain import ModelChain, PlacedSubgraph
    from build_sd.runtime.devices import DevicePool
    pool = DevicePool()
    chains = {}
    for att, art in exports.items():
        meta = ExportRecord.read(art / "export.json")
        driver = "vulkan" if preset.startswith("vulkan") else "local-task"
        placed = [PlacedSubgraph(sg, art / preset / f"{sg.name}.vmfb", driver, preset) for sg in meta.subgraphs]
        chains[att] = ModelChain(pool, meta, art / "model.irpa", placed)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 300, size=6).astype(np.int32)
    # decodes and verifies up to the last slot: the attended length grows from 7 to S
    steps, pos = [], len(prompt)
    while pos + 4 <= S:
        steps.append((rng.integers(3, 300, size=4 if pos % 2 else 1).astype(np.int32), pos))
        pos += len(steps[-1][0])
    outs = {}
    for att, c in chains.items():
        o = c.prefill(prompt)
        outs[att] = [(o.ids.copy(), o.logits())]
        for toks, p in steps:
            o = c.step(toks, p)
            outs[att].append((o.ids.copy(), o.logits()))
    assert len(outs["filled"]) >= 5
    for (ia, la), (ib, lb) in zip(outs["filled"], outs["all"]):
        np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5 * max(1.0, float(np.abs(lb).max())))
        assert np.array_equal(ia, ib)
