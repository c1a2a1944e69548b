"""Every module fits its device: the automatic cut (`export --max-module-bytes`), placements over
a cut export, the planner's limits, and the one-line error for a module over a device's largest
allocation (docs/FINDINGS.md, "One allocation per module")."""
import json

import pytest

from conftest import BUILD, HAS_VULKAN, _build, _presets, needs_vulkan
from helpers import cli, make_checkpoint, run_json

VK = "vulkan-llvmpipe"


@pytest.fixture(scope="module")
def target_cut(target_ckpt):
    # the test target (3 layers, D=56, f32): one layer's weights are 105280 bytes (its KV caches
    # at S=96: 21504), embed and head ~70 KB, the whole model 455 KB; 250000 bytes holds two
    # layers per module: embed, layers[0:2], layers[2:3], head
    return _build("target_cut", target_ckpt, _presets(), gammas="1,2,3,4,5,6", prefill="8,16", max_context=96,
                  max_module_bytes=250000)


def test_cut_keeps_every_module_within_the_limit(target_cut, target_ckpt):
    from build_sd.contract import ExportRecord, ModelConfig
    from build_sd.contract.layout import kv_bytes, weight_bytes
    meta = ExportRecord.read(target_cut / "export.json")
    assert [sg.label for sg in meta.subgraphs] == ["embed", "layers[0:2]", "layers[2:3]", "head"]
    cfg = ModelConfig.from_hf(target_ckpt)
    for sg in meta.subgraphs:
        assert 0 < sg.parameter_bytes <= 250000 and sg.kv_bytes <= 250000, sg.label
        # the planner's arithmetic is the exporter's measurement
        assert weight_bytes(cfg, sg.spec, "f32") == sg.parameter_bytes, sg.label
        assert kv_bytes(cfg, sg.spec, "f32", 96) == sg.kv_bytes, sg.label


@pytest.mark.parametrize("preset", ["host", VK])
def test_a_cut_model_gives_the_whole_models_tokens(target_cut, target_whole, draft_art, tmp_path, preset):
    """Placed as a whole model (every module on one device), the cut export runs like the whole
    export; `--place target.layers[0:3]=P` places every module inside the range."""
    if preset == VK and not HAS_VULKAN:
        pytest.skip("needs lavapipe")
    got = {}
    for name, art, places in (("whole", target_whole, [f"target={preset}"]),
                              ("cut", target_cut, [f"target={preset}"]),
                              ("range", target_cut, ["target=host", f"target.layers[0:3]={preset}"])):
        out = tmp_path / name
        args = ["bundle", "--draft", draft_art, "--target", art, "--place", "draft=host", "--gamma", "3", "--out", out]
        for p in places:
            args += ["--place", p]
        rc, _, err = cli(*args)
        assert rc == 0, err
        got[name] = run_json(out, "the quick brown fox", max_new_tokens=16, gamma=3)["token_ids"]
    man = json.loads((tmp_path / "range" / "manifest.json").read_text())
    assert man["placement"]["target"] == {"embed": "host", "layers_0_2": preset, "layers_2_3": preset, "head": "host"}
    assert got["cut"] == got["whole"] == got["range"]


def test_a_range_across_a_module_is_refused(target_cut, draft_art, tmp_path):
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_cut, "--place", "draft=host",
                     "--place", "target=host", "--place", "target.layers[1:3]=host", "--out", tmp_path / "b")
    assert rc == 2 and "layers[0:2] lies across its bounds" in err, err


def test_export_refuses_a_limit_below_one_layer(target_ckpt, tmp_path):
    rc, _, err = cli("export", "--model", target_ckpt, "--out", tmp_path / "m", "--max-module-bytes", "100000",
                     "--max-context", "96")
    assert rc == 2 and "one layer holds" in err and err.count("\n") == 1, err


def test_planner_cuts_to_the_limit_or_refuses(tmp_path):
    """A GPU whose largest allocation holds a few layers gets cut placements, each module within
    it; a GPU too small for one layer gets no placement at all."""
    from build_sd.contract import ModelConfig, SubgraphSpec
    from build_sd.contract.layout import kv_bytes, usable, weight_bytes
    from build_sd.plan.planner import make_plan
    from build_sd.plan.platforms import DeviceSpec, Platform
    from helpers import toy_pair
    d, t = toy_pair(tmp_path)
    tcfg = ModelConfig.from_hf(t)
    layer = weight_bytes(tcfg, SubgraphSpec("layers", 0, 1), "f32")      # 50 MB

    def platform(limit):
        return Platform("toy", {
            "cpu": DeviceSpec("cpu", "cpu", "host", "local-task", {"f32": 1000.0}, 10.0),
            "gpu": DeviceSpec("gpu", "gpu", "vulkan-generic", "vulkan", {"f32": 1000.0}, 30.0,
                              max_allocation_bytes=limit)})
    plan = make_plan(d, t, platform(3 * layer + layer // 2), 0.8, max_context=128)
    on_gpu = [c for c in plan.configs if "gpu" in c.target.devices.values()]
    assert on_gpu
    for c in on_gpu:
        for name, dev in c.target.devices.items():
            if dev == "gpu":
                spec = SubgraphSpec.from_name(name)
                assert weight_bytes(tcfg, spec, "f32") <= usable(3 * layer + layer // 2), (c.target.label, name)
                assert kv_bytes(tcfg, spec, "f32", 128) <= usable(3 * layer + layer // 2)
    whole_gpu = next(c for c in on_gpu if c.target.label == "gpu")
    assert whole_gpu.target.split and len(whole_gpu.target.devices) > 3    # cut: embed, layer ranges, head
    small = make_plan(d, t, platform(layer // 2), 0.8, max_context=128)
    assert all("gpu" not in c.target.devices.values() for c in small.configs)


@pytest.fixture(scope="module")
def oversized(draft_art, tokenizer_json):
    """A bundle whose target module cannot load on lavapipe: one layer whose two KV caches
    (context 17.8M, f32) need one 2.28 GB allocation, over lavapipe's 2 GiB. Cheap to make: the
    caches are runtime parameters (no bytes in the .irpa) and export never writes them."""
    ck = make_checkpoint(BUILD / "ckpt" / "bigkv", vocab=311, hidden=16, layers=1, heads=1, kv_heads=1, ffn=16,
                         seed=9, tokenizer=tokenizer_json)
    art = _build("bigkv", ck, [VK], gammas="1", prefill="4", max_context=(1 << 24) + (1 << 20),
                 max_module_bytes=0)
    out = BUILD / "bundles" / "bigkv"
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", art, "--place", "draft=host",
                     "--place", f"target={VK}", "--gamma", "1", "--out", out)
    assert rc == 0, err
    return out


@needs_vulkan
def test_a_module_over_the_devices_limit_is_one_line(oversized):
    for cmd in (["verify", oversized], ["run", oversized, "--prompt", "hi", "--max-new-tokens", "2"]):
        rc, out, err = cli(*cmd)
        last = err.strip().splitlines()[-1]
        assert rc == 2 and last.startswith("error: ") and "Traceback" not in err, err
        assert "KV caches of 2281701376 bytes exceed the largest allocation of the Vulkan device (2147483648 bytes)" \
            in out + err, (out, err)


@needs_vulkan
def test_irees_refusal_at_load_names_the_sizes(oversized):
    """The same module loaded past the check: IREE's RESOURCE_EXHAUSTED becomes one line with the
    module's sizes and the device's probed limit."""
    from build_sd.contract import BundleManifest, ExportRecord
    from build_sd.errors import UserError
    from build_sd.runtime.chain import ModelChain, PlacedSubgraph
    from build_sd.runtime.devices import DevicePool
    man = BundleManifest.read(oversized / "manifest.json")
    m = man.models.target
    export = ExportRecord.read(oversized / m.files.export)
    placed = [PlacedSubgraph(sg, oversized / m.modules[sg.name].file, "vulkan", VK) for sg in export.subgraphs]
    with pytest.raises(UserError) as e:
        ModelChain(DevicePool(), export, oversized / m.files.irpa, placed)
    msg = str(e.value)
    assert "does not fit the vulkan device" in msg and "KV caches 2281701376 bytes" in msg and "2147483648" in msg
    assert "\n" not in msg


@needs_vulkan
def test_profile_records_the_devices_largest_allocation(draft_art):
    from build_sd.runtime.memory import ram_bytes
    from build_sd.runtime.profiler import profile
    prof = profile([draft_art], devices=["vulkan"], budget_s=0.01, log=lambda m: None, in_situ_tokens=4)
    assert prof.machine.max_allocation_bytes == {"vulkan": 2 ** 31}       # lavapipe
    assert prof.machine.ram_bytes == ram_bytes() > 2 ** 30                # MemTotal, for the planner
