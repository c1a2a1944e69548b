"""The cost model and the planner (pure: no IREE, no torch)."""
import json
from pathlib import Path

import pytest

from build_sd.contract import ModelConfig, Profile
from build_sd.errors import UserError
from build_sd.plan import planner
from build_sd.plan.costmodel import (ModelCosts, expected_tokens, expected_tokens_positional,
                                     leviathan_speedup, predict)
from build_sd.plan.planner import placements
from build_sd.plan.platforms import DeviceSpec, Platform, get_platform
from build_sd.plan.roofline import work
from helpers import cli


def make_plan(*args, **kw) -> dict:
    """The plan as plan.json holds it (the file is the contract these tests check)."""
    return planner.make_plan(*args, **kw).to_dict()


def _profile(models: list[dict], config: Path | None = None, **top) -> Profile:
    """A profile holding these (partial) model entries; the fields they leave out take neutral
    values (a profile from `build-sd profile` has them all)."""
    cfg = ModelConfig.from_hf(config).to_dict() if config else None
    full = [dict({"name": "m", "dtype": "f32", "max_context": 128, "config": cfg,
                  "source": {"path": "", "sha256": {}}}, **m) for m in models]
    return Profile.from_obj(dict({"schema": 1, "kind": "build_sd.profile", "models": full}, **top))


@pytest.mark.parametrize("alpha, gamma, want", [(0.8, 5, 3.69), (0.9, 10, 6.86), (0.6, 2, 1.96)])
def test_leviathan_table1(alpha, gamma, want):
    # Leviathan et al. 2023, Table 1 (c = 0): the improvement factor is E[N]
    assert round(leviathan_speedup(alpha, gamma, 0.0), 2) == want
    # the full model in its reduced form: verify costs one target step, free draft, no transfers
    target = ModelCosts({T: 1.0 for T in range(1, gamma + 2)})
    draft = ModelCosts({1: 0.0, 2: 0.0})
    base = predict(target, None, 0, alpha)
    spec = predict(target, draft, gamma, alpha)
    assert round(base.ms_per_token / spec.ms_per_token, 2) == want


def test_expected_tokens_edges():
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens_positional([0.7] * 4, 4) == pytest.approx(expected_tokens(0.7, 4))
    assert expected_tokens_positional([0.9, 0.5], 3) == pytest.approx(1 + 0.9 + 0.45 + 0.225)


def test_leviathan_with_draft_cost():
    # c = 0.1: speedup = E[N] / (g c + 1)
    assert leviathan_speedup(0.8, 4, 0.1) == pytest.approx(expected_tokens(0.8, 4) / 1.4)
    target = ModelCosts({T: 10.0 for T in range(1, 6)})
    draft = ModelCosts({1: 1.0, 2: 1.0})
    assert 10.0 / predict(target, draft, 4, 0.8).ms_per_token == pytest.approx(leviathan_speedup(0.8, 4, 0.1))


def _platform(gpu_speed=1.0, cross_ms=0.0):
    """Two devices with different speed; memory bandwidth decides (decode is memory-bound)."""
    return Platform("toy", {
        "cpu": DeviceSpec("cpu", "cpu", "host", "local-task", {"f32": 1000.0}, 10.0, 1.0, 1.0, 0.0, 0.0),
        "gpu": DeviceSpec("gpu", "gpu", "vulkan-generic", "vulkan", {"f32": 1000.0}, 10.0 * gpu_speed,
                          1.0, 1.0, 0.0, 0.0),
    }, transfer_fixed_ms=cross_ms, transfer_ms_per_mb=0.0, host_ms_per_iteration=0.0)


@pytest.fixture()
def pair(tmp_path):
    from helpers import toy_pair
    return toy_pair(tmp_path)


def test_gamma0_wins_when_alpha_is_small(pair):
    plan = make_plan(*pair, _platform(), 0.02, max_context=128)
    assert plan["configs"][0]["gamma"] == 0


def test_gamma0_wins_when_the_draft_is_slow(pair, tmp_path):
    d, t = pair
    # a "draft" as big as the target: c ~ 1, speculation cannot pay even at alpha 0.8
    plan = make_plan(t, t, _platform(), 0.8, max_context=128)
    assert plan["configs"][0]["gamma"] == 0


def test_speculation_chosen_when_it_pays(pair):
    plan = make_plan(*pair, _platform(), 0.9, max_context=128)
    best = plan["configs"][0]
    assert best["gamma"] >= 2 and best["speedup"] > 1.5


def test_faster_device_gets_the_draft(pair):
    # the gpu has 3x the bandwidth but a crossing is expensive: draft goes to the gpu, and a
    # split model would pay the crossing every call
    plan = make_plan(*pair, _platform(gpu_speed=3.0, cross_ms=5.0), 0.8, max_context=128)
    best = plan["configs"][0]
    assert best["draft"]["devices"] == {"whole": "gpu"}
    assert best["target"]["devices"] == {"whole": "gpu"}
    slow_gpu = make_plan(*pair, _platform(gpu_speed=0.3, cross_ms=5.0), 0.8, max_context=128)
    assert slow_gpu["configs"][0]["draft"]["devices"] == {"whole": "cpu"}


def test_split_placements_pay_their_transfers(pair):
    free = make_plan(*pair, _platform(cross_ms=0.0), 0.8, max_context=128, keep_top=0)
    costly = make_plan(*pair, _platform(cross_ms=3.0), 0.8, max_context=128, keep_top=0)

    def ms(plan, label, gamma):
        return next(c["pred_ms_per_token"] for c in plan["configs"]
                    if c["target"]["label"] == label and c["gamma"] == gamma and c["draft"]
                    and c["draft"]["label"] == "cpu")
    label = "cpu[embed,0:4] gpu[4:8] head@gpu"
    for g in (1, 4):
        # one crossing per target call; the draft (cpu, whole) crosses nothing
        e_n = next(c["expected_tokens"] for c in free["configs"] if c["target"]["label"] == label
                   and c["gamma"] == g)
        assert ms(costly, label, g) - ms(free, label, g) == pytest.approx(3.0 / e_n, rel=1e-4)
    label2 = "cpu[embed,0:4] gpu[4:8] head@cpu"           # head back on the cpu: two crossings
    e_n = next(c["expected_tokens"] for c in free["configs"] if c["target"]["label"] == label2
               and c["gamma"] == 4)
    assert ms(costly, label2, 4) - ms(free, label2, 4) == pytest.approx(6.0 / e_n, rel=1e-4)


def test_placements_enumeration():
    ps = placements(6, ["cpu", "gpu"])
    assert len(ps) == 2 + 5 * 2 * 2
    assert all(set(p.devices) == {"whole"} or len(p.devices) == 4 for p in ps)


def test_profile_of_other_models_refused(pair):
    prof = _profile([{"source": {"path": "", "sha256": {"config.json": "0" * 64}}}], pair[1])
    with pytest.raises(UserError, match="other models"):
        make_plan(*pair, _platform(), 0.8, prof)


def test_whole_placement_reads_the_whole_module_not_a_split_exports_parts(pair):
    # the same target profiled as two exports (split at 4 first, whole second), as `build-sd
    # bench` does: the whole placement must read the whole module's figures
    from build_sd.plan.planner import config_sha
    d, t = pair

    def entry(subs):
        return {"name": "t", "source": {"path": "", "sha256": {"config.json": config_sha(t)}}, "dtype": "f32",
                "max_context": 128, "latency": {"host": subs}}
    fns = lambda ms: {f: {"mean_ms": ms} for f in ["decode"] + [f"verify_T{g + 1}" for g in range(1, 9)]}
    split = entry({"embed": fns(0.1), "layers_0_4": fns(1.0), "layers_4_8": fns(1.0), "head": fns(0.1)})
    whole = entry({"whole": fns(7.0)})
    plan = make_plan(d, t, _platform(), 0.8, _profile([split, whole], t), max_context=128, devices=["cpu"])
    base = next(c for c in plan["configs"] if c["gamma"] == 0 and c["target"]["split"] is None)
    assert base["pred_ms_per_token"] == pytest.approx(7.0 + _platform().host_ms_per_iteration, rel=1e-3)


def test_plan_round_trip(pair, tmp_path):
    from build_sd.cli import main
    d, t = pair
    out = tmp_path / "plan.json"
    assert main(["plan", "--draft", str(d), "--target", str(t), "--platform", "imx95", "--alpha", "0.8",
                 "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    again = make_plan(d, t, "imx95", 0.8)
    assert plan["configs"] == json.loads(json.dumps(again["configs"]))
    assert plan["configs"][0]["pred_ms_per_token"] <= plan["configs"][-1]["pred_ms_per_token"]


def test_imx95_llama32_plan():
    from pathlib import Path
    shapes = Path(__file__).resolve().parents[1] / "examples" / "shapes"
    plan = make_plan(shapes / "llama-3.2-1b", shapes / "llama-3.2-3b", "imx95", 0.8, dtype="f16",
                     max_context=1024)
    best = plan["configs"][0]
    assert best["speedup"] > 1.0
    assert plan["target"]["parameters"] > 3.0e9


def test_platform_file_cites_its_figures():
    p = get_platform("imx95")
    assert p.devices["cpu"].preset == "a55" and p.devices["gpu"].preset == "valhall3"
    from build_sd.plan.platforms import load_platforms
    data = load_platforms()
    for name in ("imx95", "rk3588"):
        assert data[name]["sources"] and all(s["url"] and s["says"] for s in data[name]["sources"])


def test_roofline_counts():
    cfg = ModelConfig(model_type="llama", hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=128, vocab_size=100, num_layers=2, rms_norm_eps=1e-6)
    w1 = work(cfg, "layers", 0, 2, 1, 32, 4)
    w4 = work(cfg, "layers", 0, 2, 4, 32, 4)
    assert w4.flops == pytest.approx(4 * w1.flops)          # FLOPs scale with T
    assert w4.bytes - w1.bytes < 0.1 * w1.bytes              # weights dominate the bytes
    assert work(cfg, "head", 0, 0, 8, 32, 4, prefill=True).flops == 2 * 64 * 100
    with pytest.raises(UserError):
        get_platform("nope")


def test_profile_artifact_mismatch_refused(target_whole, tmp_path):
    """A profile whose module hashes differ from the artifacts' is refused, not silently used."""
    import copy
    from build_sd.runtime.profiler import check_profile_matches, profile
    prof = profile([target_whole], devices=["cpu"], budget_s=0.02, log=lambda m: None)
    assert check_profile_matches(prof, target_whole) >= 1
    # the overlapped loop's contention, per pair of devices that can compute at once (the model plays
    # draft and target); one worker pool never serves two models at once: not measured
    sync = prof.contention["host@local-sync|host@local-sync"]
    assert sync.target >= 1.0 and sync.draft >= 1.0 and sync.verify_T >= 1 and len(sync.alone_ms) == 2
    assert "host|host" not in prof.contention and "host@local-sync|host" in prof.contention
    # a pair of two device keys also records what each model's calls cost in its sequential loop
    # over its own device's in-situ figures; one key is its own in-situ loop: nothing to record
    cross = prof.contention["host@local-sync|host"]
    assert len(cross.sequential) == 2 and all(0.2 < f < 5.0 for f in cross.sequential)
    assert cross.rounds >= 3 and sync.rounds >= 3         # profile(contention_rounds=3), loops of ms
    assert sync.sequential == [] and len(cross.together_ms) == 2
    bad = copy.deepcopy(prof.to_dict())
    rel = next(iter(bad["models"][0]["modules"]))
    bad["models"][0]["modules"][rel] = "0" * 64
    with pytest.raises(UserError, match="measured on a different"):
        check_profile_matches(Profile.from_obj(bad), target_whole)
    # a profile of other models, or another dtype/context, is refused by the planner too
    ck = json.loads((target_whole / "export.json").read_text())["source"]["path"]
    with pytest.raises(UserError, match="context"):
        make_plan(ck, ck, _platform(), 0.8, prof, max_context=512)
    plan = make_plan(ck, ck, _platform(), 0.8, prof, max_context=96)
    assert plan["latency_sources"]["target"].get("profile", 0) > 0


def test_sequential_factors_are_timed_in_the_same_rounds(target_whole):
    """ContentionFit.sequential is the pair's sequential loop over each model's own device's loop,
    the loops taking turns in the same rounds. Given its own loop as the reference, a pair must read
    about 1: computed from the in-situ phase's figures, minutes earlier, the ratio read this
    machine's drift instead (the real pair: 1.19 / 1.34 in one run, 0.99 / 0.95 in the next)."""
    from build_sd.runtime.chain import ModelChain, PlacedSubgraph
    from build_sd.runtime.devices import DevicePool
    from build_sd.runtime.profiler import _measure_contention, load_model_source
    src = load_model_source(target_whole)[0]
    pool = DevicePool()

    def chain(driver: str) -> ModelChain:
        c = ModelChain(pool, src.export, src.irpa, [PlacedSubgraph(sg, src.dir / src.module_file("host", sg.name),
                                                                   driver, "host") for sg in src.export.subgraphs], None)
        c.warmup()
        return c
    draft, target = chain("local-sync"), chain("local-task")
    fit = _measure_contention(draft, target, 0.05, 0.0, tokens=16, own=((draft, target), (draft, target)))
    assert fit.rounds >= 3 and len(fit.sequential) == 2
    # the same loop timed in turn with itself: only this machine's noise apart from 1
    assert all(0.5 < f < 2.0 for f in fit.sequential), fit
    # without its own devices' loops a pair records nothing here (the profiler falls back to the
    # in-situ figures)
    assert _measure_contention(draft, target, 0.01, 0.0, tokens=8, min_rounds=1).sequential == []


def test_cpu_drivers_are_two_devices_of_one_processor(target_whole):
    """The profile measures the CPU modules under local-task and local-sync; the planner reads
    each for its own device (cpu, cpu-sync) and never splits a model across the two."""
    from build_sd.plan.platforms import host_platform
    from build_sd.runtime.hostinfo import detect_host
    from build_sd.runtime.profiler import profile
    prof_rec = profile([target_whole], devices=["cpu"], budget_s=0.02, log=lambda m: None)
    prof = prof_rec.to_dict()
    lat = prof["models"][0]["latency"]
    assert {"host", "host@local-sync"} <= set(lat)
    assert lat["host"]["whole"]["decode"]["mean_ms"] > 0 and lat["host@local-sync"]["whole"]["decode"]["mean_ms"] > 0
    plat = host_platform(detect_host(measure=False))
    assert plat.devices["cpu-sync"].profile_key == "host@local-sync" and plat.devices["cpu"].profile_key == "host"
    assert all(p.split is None for p in placements(4, ["cpu", "cpu-sync"], {frozenset(("cpu", "cpu-sync"))}))
    ck = json.loads((target_whole / "export.json").read_text())["source"]["path"]
    plan = make_plan(ck, ck, plat, 0.8, prof_rec, max_context=96, devices=["cpu", "cpu-sync"])
    by = {(c["draft"]["label"] if c["draft"] else "-", c["target"]["label"], c["gamma"]): c for c in plan["configs"]}
    for dev in ("cpu", "cpu-sync"):
        want = lat[plat.devices[dev].profile_key]["whole"]["decode"]["mean_ms"] + prof["host"]["by_gamma"]["0"]
        assert by[("-", dev, 0)]["pred_ms_per_token"] == pytest.approx(want, rel=1e-3)
    assert plan["devices"]["cpu-sync"]["driver"] == "local-sync"


@pytest.mark.slow
def test_bench_measures_the_plans_configurations(draft_ckpt, target_ckpt, tmp_path):
    """`build-sd bench` end to end on the tiny pair: builds the chosen configurations (bundles
    hard-linked to the artifacts), profiles, predicts and measures every round, writes the JSON."""
    import os
    from helpers import cli
    plan = tmp_path / "plan.json"
    rc, _, err = cli("plan", "--draft", draft_ckpt, "--target", target_ckpt, "--platform", "host",
                     "--devices", "cpu,cpu-sync", "--alpha", "0.6", "--max-context", "128", "--out", plan)
    assert rc == 0, err
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("en\tde\nthe quick brown fox\tx\nhello world\ty\n")     # header row skipped
    out = tmp_path / "bench.json"
    rc, so, err = cli("bench", tmp_path / "work", "--plan", plan, "--configs", "1,2", "--prompts", prompts,
                      "--rounds", "2", "--warmup", "1", "--max-new-tokens", "8", "--simulate-alpha", "0.6",
                      "--json", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["prompts"] == 2 and res["rounds"] == 2 and res["warmup"] == 1
    assert len(res["rows"]) >= 2 and any(r["gamma"] == 0 for r in res["rows"])    # the baseline is added
    for r in res["rows"]:
        assert r["measured_tokens_per_s"] > 0 and r["predicted_tokens_per_s"] > 0
        assert len(r["rounds"]) == len(r["predicted_rounds"]) == 2
    assert 0 <= res["median_abs_error"] < 10 and "gap_to_measured_best" in res["pick"]
    assert "median |error|" in so
    # both speedups are over the same row, the fastest measured target-only one
    base = max((r for r in res["rows"] if r["gamma"] == 0), key=lambda r: r["measured_tokens_per_s"])
    assert base["measured_speedup"] == base["predicted_speedup"] == 1
    for r in res["rows"]:
        assert r["predicted_speedup"] == pytest.approx(r["predicted_tokens_per_s"] / base["predicted_tokens_per_s"],
                                                       rel=1e-3)
    work = tmp_path / "work"
    arts = {p.name: p for p in (work / "artifacts").iterdir()}
    man = json.loads((work / "bench" / "c0" / "manifest.json").read_text())
    src = arts[Path(man["models"]["target"]["source"]).name]
    assert os.path.samefile(work / "bench" / "c0" / "target" / "model.irpa", src / "model.irpa")


@pytest.mark.slow
def test_bench_build_here_measure_elsewhere(draft_ckpt, target_ckpt, tmp_path):
    """The GPU-box flow (benchmarks/gpubox/): `bench --build-only` here; what travels has no
    .irpa and no checkpoint weights (only the configs at ROOT/checkpoints/ROLE); `bench
    --no-build --random-weights` there measures exactly those bundles."""
    import shutil
    from helpers import cli
    plan = tmp_path / "plan.json"
    rc, _, err = cli("plan", "--draft", draft_ckpt, "--target", target_ckpt, "--platform", "host",
                     "--devices", "cpu", "--alpha", "0.6", "--max-context", "128", "--no-split", "--out", plan)
    assert rc == 0, err
    p = json.loads(plan.read_text())
    assert p["split"] is False and all(c["target"]["split"] is None for c in p["configs"])
    # the best speculative configuration: on a loaded host the plan's figures for `host` can rank
    # target-only first (it once did, and this test measured one bundle instead of two)
    pick = str(next(i for i, c in enumerate(p["configs"], 1) if c["gamma"] > 0))
    other = "1" if pick != "1" else "2"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the quick brown fox\nhello world\n")
    work = tmp_path / "work"
    rc, so, err = cli("bench", work, "--plan", plan, "--configs", pick, "--prompts", prompts, "--build-only")
    assert rc == 0, err
    assert (work / "bench" / "configs.json").exists() and "built 2 bundles" in so    # + the g0 baseline
    # the carry: no weights, no MLIR; the plan's checkpoint paths do not exist there
    there = tmp_path / "there"
    shutil.copytree(work, there, ignore=shutil.ignore_patterns("*.irpa", "mlir", "*.safetensors"))
    for role, ck in (("draft", draft_ckpt), ("target", target_ckpt)):
        (there / "checkpoints" / role).mkdir(parents=True)
        shutil.copy(Path(ck) / "config.json", there / "checkpoints" / role)
        p[role]["checkpoint"] = str(tmp_path / "gone" / role)
    (there / "plan.json").write_text(json.dumps(p))
    assert not list(there.rglob("*.irpa"))
    args = ["bench", there, "--plan", there / "plan.json", "--configs", pick, "--prompts", prompts,
            "--rounds", "2", "--warmup", "0", "--max-new-tokens", "6", "--no-reprofile", "--no-build"]
    rc, _, err = cli(*args, "--simulate-alpha", "0.6")
    assert rc != 0 and "model.irpa" in err                    # without --random-weights: the weights
    rc, _, err = cli(*args, "--random-weights", "3")
    assert rc != 0 and "--simulate-alpha" in err              # random weights make noise tokens
    out = tmp_path / "bench.json"
    rc, so, err = cli(*args, "--random-weights", "3", "--simulate-alpha", "0.6", "--json", out)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 2 and all(r["measured_tokens_per_s"] > 0 for r in res["rows"])
    for r in res["rows"]:       # the model's terms, predicted and measured, side by side
        assert set(r["measured_parts_ms"]) == {"draft", "verify", "host"} == set(r["predicted_parts_ms"])
        assert r["measured_parts_ms"]["verify"] > 0 and (r["measured_parts_ms"]["draft"] > 0) == (r["gamma"] > 0)
        assert r["measured_tokens_per_iteration"] >= 1
    assert "where it comes from" in so
    # --no-build measures only what was built: other configurations are refused
    rc, _, err = cli("bench", there, "--plan", there / "plan.json", "--configs", other, "--prompts", prompts,
                     "--no-build", "--random-weights", "3", "--simulate-alpha", "0.6")
    assert rc != 0 and "other configurations" in err


def test_random_weights_last_one_command():
    """`main()` runs in-process in the tests and in scripts: --random-weights must not outlive
    its command (it once did, and the next test's validation compared noise with PyTorch). It is
    now a parameter of opening a bundle: no module of the runtime keeps such a switch."""
    import importlib
    import pkgutil

    import build_sd.runtime as rt_pkg
    from build_sd.cli import main
    assert main(["bench", "/nonexistent", "--plan", "/nonexistent/plan.json", "--prompts", "/nonexistent",
                 "--random-weights", "7"]) != 0
    for m in pkgutil.iter_modules(rt_pkg.__path__):
        mod = importlib.import_module(f"build_sd.runtime.{m.name}")
        assert not hasattr(mod, "RANDOM_WEIGHTS") and not hasattr(mod, "set_random_weights"), m.name


def test_a_three_device_plan_keeps_the_top_and_the_best_of_each_mapping(tmp_path):
    """imx95 ranks ~10^5 placements of a 30-layer pair (SmolLM2-135M's shape); plan.json keeps the top
    100 and the best of every (target devices, draft devices, gamma), well under 1 MB."""
    from build_sd.contract import Plan
    shape = tmp_path / "smol"
    shape.mkdir()
    (shape / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "max_position_embeddings": 8192}))
    rc, out, err = cli("plan", "--draft", shape, "--target", shape, "--platform", "imx95", "--alpha", "0.8",
                       "--out", tmp_path / "plan.json")
    assert rc == 0, err
    plan = Plan.read(tmp_path / "plan.json")
    assert plan.configs_ranked > 10_000 and len(plan.configs) < 1000
    assert (tmp_path / "plan.json").stat().st_size < 1_000_000
    ms = [c.pred_ms_per_token for c in plan.configs]
    assert ms == sorted(ms)
    keys = {(frozenset(c.target.device_set), frozenset(c.draft.device_set) if c.draft else None, c.gamma)
            for c in plan.configs}
    assert len(keys) > 20 and any(c.draft and c.draft.device_set == {"gpu"} and c.target.device_set == {"cpu"}
                                  for c in plan.configs)
    assert f"ranked {plan.configs_ranked} configurations" in out


def test_bench_predicts_every_configuration_not_only_the_kept_ones(pair, tmp_path):
    """bench re-predicts after each in-situ re-profile, which re-ranks: a measured configuration
    past plan.json's kept ones (--configs 142 of a plan keeping 100 + the best per mapping) must
    still be predicted (it was once a KeyError after the first round)."""
    import msgspec
    from build_sd.bench.options import BenchOptions
    from build_sd.bench.predict import Predictor, mean_predictions
    from build_sd.bench.run import choose
    plan = planner.make_plan(*pair, _platform(), 0.6, max_context=128, keep_top=1)
    assert len(plan.configs) < plan.configs_ranked
    pred = Predictor(tmp_path, plan, _platform(), 0.6).predict(None)
    assert len(pred) == plan.configs_ranked and {c.key for c in plan.configs} <= set(pred)
    # two predictions over different key sets average over the common ones
    some = dict(list(pred.items())[:3])
    avg = mean_predictions(pred, some)
    assert set(avg) == set(some)
    k = next(iter(some))
    assert avg[k].pred_tokens_per_s == pytest.approx(pred[k].pred_tokens_per_s)
    # a plan with a precision dimension is refused in one line (its predictions would need alpha
    # per precision pair)
    with pytest.raises(UserError, match="one precision"):
        choose(msgspec.structs.replace(plan, precisions=["f16", "w8a8"]), BenchOptions(configs=[0]))
