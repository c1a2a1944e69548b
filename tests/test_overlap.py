"""The overlapped loop (runtime/overlap.py) on real IREE modules: the draft drafts the next block
while the target verifies. Exact greedy output on host (both drivers, pinned) and lavapipe, the
sampling law through it (with the broken-correction control), exact stopping, errors in the draft
thread, and the CLI/manifest contract."""
import json
import threading

import numpy as np
import pytest

from helpers import cli
from test_runtime import PROMPTS, _bundle, _session, bundles  # noqa: F401 - a fixture
from test_sampling import (PROMPT, BrokenSampler, chi2_rejects, tiny_vocab_chains)  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def self_bundle(target_whole):
    """The target as its own draft: every draft is accepted, so every block after the first is the
    one the draft made ready during the previous verify."""
    return _bundle("overlap-self", target_whole, target_whole, "draft=host", "target=host", gamma=3)


def _gen(session, ids, gamma, n, overlap, eos=(), cpus=None, acceptor=None):
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.speculative import generate
    return generate(session.target, session.draft if gamma else None, ids, gamma, acceptor or GreedyAcceptor(),
                    n, list(eos), overlap=overlap, cpus=cpus)


def _no_draft_thread():
    return not any(t.name.startswith("build-sd-draft") for t in threading.enumerate())


@pytest.mark.parametrize("placement", ["cpu", "cpu-sync-pinned", "vulkan", "mixed"])
def test_greedy_overlapped_equals_target_only(bundles, self_bundle, placement, tmp_path):
    from build_sd.runtime.session import open_bundle
    cpus = None
    if placement == "cpu-sync-pinned":
        import os
        cores = sorted(os.sched_getaffinity(0))
        s = open_bundle(bundles["cpu"], cpu_driver={"draft": "local-sync", "target": "local-sync"})
        s.warmup()
        cpus = {"draft": {cores[0]}, "target": {cores[-1]}}
    elif placement not in bundles:
        pytest.skip("no Vulkan device")
    else:
        s = _session(bundles[placement])
    on_cpu = placement.startswith("cpu")      # lavapipe calls are slow: fewer cases there
    for prompt in PROMPTS if on_cpu else PROMPTS[:2]:
        ids = s.tokenizer.encode(prompt).ids
        want = _gen(s, ids, 0, 24, False).token_ids
        for gamma in (1, 3, 4) if on_cpu else (1, 4):
            g = _gen(s, ids, gamma, 24, True, cpus=cpus)
            assert g.token_ids == want, (prompt, gamma)
            assert g.metrics.overlap and g.metrics.stop_reason == "max_new_tokens"
    assert _no_draft_thread()
    # all accepted: blocks come ready from the speculation, nothing is wasted but the last block
    me = _session(self_bundle)
    ids = me.tokenizer.encode(PROMPTS[1]).ids
    want = _gen(me, ids, 0, 25, False).token_ids
    g = _gen(me, ids, 3, 25, True)
    m = g.metrics.to_dict()
    assert g.token_ids == want and m["alpha"] == 1.0
    # 24 tokens after the first, 4 a block (3 drafts + e_0): 6 iterations; only the last
    # speculation (3 tokens, e_0..e_2, made ready for a block that never runs) is discarded
    assert m["iterations"] == 6 and m["wasted_draft_tokens"] <= 3
    assert 0 < m["overlap_fraction"] <= 1


def test_overlap_stops_exactly(bundles):
    s = _session(bundles["cpu"])
    ids = s.tokenizer.encode(PROMPTS[0]).ids
    base = _gen(s, ids, 0, 20, False).token_ids
    for n in (1, 2, 5, 7, 20):                      # max tokens, with every gamma's budget cut
        for gamma in (1, 4):
            got = _gen(s, ids, gamma, n, True)
            assert got.token_ids == base[:n] and got.metrics.stop_reason == "max_new_tokens", (n, gamma)
    eos = base[7]
    got = _gen(s, ids, 3, 20, True, eos=[eos])
    assert got.token_ids == base[:base.index(eos) + 1] and got.metrics.stop_reason == "eos"
    rc, out, err = cli("run", bundles["cpu"], "--prompt", PROMPTS[0], "--gamma", "4", "--max-new-tokens", "500",
                       "--overlap", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["metrics"]["stop_reason"] == "context"
    assert r["prompt_tokens"] + len(r["token_ids"]) == 96 + 1       # every slot used, as sequentially
    rc, out2, _ = cli("run", bundles["cpu"], "--prompt", PROMPTS[0], "--gamma", "4", "--max-new-tokens", "500",
                      "--json")
    assert json.loads(out2)["token_ids"] == r["token_ids"]
    assert _no_draft_thread()


def test_an_error_in_the_draft_thread_ends_the_run_in_one_line(bundles, monkeypatch):
    from build_sd.runtime.chain import ModelChain
    real = ModelChain.step

    def step(self, tokens, pos, *a, **k):
        if threading.current_thread().name.startswith("build-sd-draft"):
            raise RuntimeError("injected failure in the draft\nsecond line")
        return real(self, tokens, pos, *a, **k)
    monkeypatch.setattr(ModelChain, "step", step)
    before = threading.active_count()
    rc, out, err = cli("run", bundles["cpu"], "--prompt", PROMPTS[0], "--gamma", "3", "--overlap")
    assert rc == 2 and "Traceback" not in err and "second line" not in err
    assert err.startswith("error: ") and "injected failure in the draft" in err and err.count("\n") == 1
    assert _no_draft_thread() and threading.active_count() <= before


def test_bundle_records_the_schedule_and_run_overrides_it(bundles, target_whole, draft_art, tmp_path):
    b = tmp_path / "ov"
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_whole, "--place", "draft=host",
                     "--place", "target=host", "--gamma", "3", "--cpu-driver", "local-sync", "--overlap",
                     "--pin", "draft=0", "--out", b)
    assert rc == 0, err
    man = json.loads((b / "manifest.json").read_text())
    assert man["overlap"] == {"schedule": "post-verify", "draft_cpus": [0], "target_cpus": []}
    rc, out, err = cli("run", b, "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--json")
    on = json.loads(out)["metrics"]
    rc2, out2, _ = cli("run", b, "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--json", "--no-overlap")
    off = json.loads(out2)["metrics"]
    assert rc == rc2 == 0 and on["overlap"] and not off["overlap"] and off["overlap_fraction"] == 0.0
    assert json.loads(out)["token_ids"] == json.loads(out2)["token_ids"]
    for args, needle in ((["--pin", "draft=x"], "--pin"), (["--pin", "gpu=0"], "--pin"),
                         (["--no-overlap", "--pin", "draft=0"], "--pin")):
        rc, _, err = cli("run", b, "--prompt", "hi", *args)
        assert rc == 2 and needle in err and "Traceback" not in err, args
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_whole, "--gamma", "0", "--overlap",
                     "--out", tmp_path / "g0")
    assert rc == 2 and "--overlap" in err
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", target_whole, "--pin", "draft=0",
                     "--out", tmp_path / "p")
    assert rc == 2 and "--pin" in err


# ---- the sampling law through the overlapped loop -------------------------------------------------
def _exact_marginals(target, params):
    """Target-only law of the 2nd, 3rd and 4th generated tokens (marginals), from its own logits."""
    from build_sd.runtime.sampling import probs
    out = target.prefill(np.array(PROMPT, np.int32))
    p1 = probs(out.logits()[-1], params)[0]
    m2, m3, m4 = np.zeros(16), np.zeros(16), np.zeros(16)
    for t1 in range(16):
        for t2 in range(16):
            for t3 in range(16):
                rows = probs(target.step(np.array([t1, t2, t3], np.int32), len(PROMPT)).logits(), params)
                w = p1[t1] * rows[0][t2] * rows[1][t3]
                if t2 == 0 and t3 == 0:
                    m2 += p1[t1] * rows[0]
                if t3 == 0:
                    m3 += p1[t1] * rows[0][t2] * rows[1]
                m4 += w * rows[2]
    return m2, m3, m4


def _overlapped_draws(target, draft, params, n, sampler_cls):
    """gamma 1, 5 tokens: the first verify judges d_1 and e_0; after a full accept the second one
    verifies [e_0, e_1] with e_1 drafted during the first verify: every path of the loop is drawn."""
    from build_sd.runtime.speculative import generate
    counts = np.zeros((3, 16), int)
    ready = 0
    for seed in range(n):
        g = generate(target, draft, PROMPT, 1, sampler_cls(params, np.random.default_rng(seed)), 5, [],
                     overlap=True)
        for k in range(3):
            counts[k, g.token_ids[k + 1]] += 1
        ready += g.metrics.ready_blocks > 0
    return counts, ready


def test_overlapped_sampling_matches_target_only(tiny_vocab_chains):
    from build_sd.runtime.sampling import RejectionSampler, SamplingParams
    target, draft = tiny_vocab_chains
    params = SamplingParams(temperature=1.0)
    laws = _exact_marginals(target, params)
    counts, ready = _overlapped_draws(target, draft, params, 3000, RejectionSampler)
    assert ready > 100, f"only {ready} runs used a block made ready during a verify"
    for c, law in zip(counts, laws):
        rejected, stat, crit = chi2_rejects(c, law)
        assert not rejected, f"chi2 {stat:.1f} > {crit:.1f}: the overlapped loop is biased"
    broken, _ = _overlapped_draws(target, draft, params, 3000, BrokenSampler)
    assert any(chi2_rejects(c, law)[0] for c, law in zip(broken, laws)), \
        "a wrong correction step went unnoticed through the overlapped loop: the test has no power"


def test_a_seed_gives_the_same_sampled_output(bundles):
    s = _session(bundles["cpu"])
    ids = s.tokenizer.encode(PROMPTS[2]).ids
    from build_sd.runtime.sampling import RejectionSampler, SamplingParams
    runs = [_gen(s, ids, 3, 20, True, acceptor=RejectionSampler(SamplingParams(0.8), np.random.default_rng(5))).token_ids
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


# ---- the cost model of the overlapped loop ----------------------------------------------------------
def test_overlapped_cost_model_by_hand():
    from build_sd.plan.costmodel import Contention, ModelCosts, predict_overlapped, together_ms
    draft = ModelCosts({1: 1.0})
    k = Contention(target=1.1, draft=1.2, sync_ms=0.05)
    # the draft's 4 steps (4.8 ms slowed) end first; the verify then runs alone:
    # 4.8 + (12 - 4.8 / 1.1) = 12.436364 ms, for both and for the verify
    assert together_ms(12.0, 4.0, 1.1, 1.2) == pytest.approx((12.436364, 12.436364), abs=1e-6)
    p = predict_overlapped(ModelCosts({4: 12.0}), draft, 3, 0.5, k)
    # E[N] = (1 - 0.5^4) / 0.5 = 1.875; P(all 4 judged accepted) = 0.0625
    # cold drafting (1 - P) 3 x 1 = 2.8125; wait 12.436364 (the draft is done before the verify)
    assert p.expected_tokens == pytest.approx(1.875)
    assert p.iteration_ms == pytest.approx(2.8125 + 12.436364 + 0.05, abs=1e-6)
    assert p.ms_per_token == pytest.approx((2.8125 + 12.436364 + 0.05) / 1.875, abs=1e-6)
    # a verify (2 ms, x1.5 while the draft runs) done first: 3.0 ms, the draft's rest 4 - 3.0/1.2
    # = 1.5 ms alone; a rejection waits for the verify and half a draft step
    k = Contention(target=1.5, draft=1.2, sync_ms=0.05)
    assert together_ms(2.0, 4.0, 1.5, 1.2) == pytest.approx((4.5, 3.0))
    p = predict_overlapped(ModelCosts({4: 2.0}), draft, 3, 0.5, k)
    assert p.iteration_ms == pytest.approx(2.8125 + 0.0625 * 4.5 + 0.9375 * (3.0 + 0.5) + 0.05)
    # everything accepted: no cold drafting, every iteration waits for both
    p = predict_overlapped(ModelCosts({4: 2.0}), draft, 3, 1.0, k)
    assert p.iteration_ms == pytest.approx(4.5 + 0.05) and p.expected_tokens == 4


def test_contention_comes_from_the_profile_else_an_estimate():
    import msgspec
    from build_sd.contract import HostInfo, Profile
    from build_sd.plan.planner import SHARED_BUS_SLOWDOWN, contention_for
    from build_sd.plan.platforms import get_platform, host_platform
    host = host_platform(HostInfo(arch="x86_64", cpu="test", cores=2, mem_bw_gbs=10.0, gflops_f32=50.0,
                                  vulkan_devices=["llvmpipe (LLVM 15.0.7, 256 bits)"]))
    assert contention_for(host, None, "cpu", "cpu") is None             # one worker pool, one model at a time
    assert contention_for(host, None, "cpu-sync", "cpu-sync").target == SHARED_BUS_SLOWDOWN
    assert contention_for(host, None, "vulkan", "cpu").target == 2.0   # lavapipe: the same cores
    prof = msgspec.convert({"models": [], "contention": {"host@local-sync|host": {"target": 1.7, "draft": 1.3,
                                                                                 "sync_ms": 0.04}}}, Profile)
    got = contention_for(host, prof, "cpu-sync", "cpu")
    assert (got.target, got.draft, got.sync_ms, got.source) == (1.7, 1.3, 0.04, "profile")
    # the pair's sequential factors scale each model's calls (1 for one key or when not measured)
    from build_sd.plan.costmodel import ModelCosts
    from build_sd.plan.planner import pair_factors
    prof = msgspec.convert({"models": [], "contention": {
        "host@local-sync|host": {"target": 1.7, "draft": 1.3, "sequential": [1.1, 1.25]},
        "host@local-sync|host@local-sync": {"target": 1.1, "draft": 1.0, "sequential": [3.0, 3.0]}}}, Profile)
    assert pair_factors(host, prof, "cpu-sync", "cpu") == (1.1, 1.25)
    assert pair_factors(host, prof, "cpu-sync", "cpu-sync") == (1.0, 1.0)      # one key: its in-situ loop
    assert pair_factors(host, prof, "cpu", "cpu-sync") == (1.0, 1.0)           # not measured
    assert pair_factors(host, None, "cpu-sync", "cpu") == (1.0, 1.0)
    mc = ModelCosts({1: 2.0, 4: 3.0}, crossings=1, hidden_bytes_per_token=8).scaled(1.25)
    assert mc.step_ms == {1: 2.5, 4: 3.75} and mc.crossings == 1 and mc.hidden_bytes_per_token == 8
    board = get_platform("imx95")           # concurrent, one LPDDR5 bus: the shared-bus estimate
    got = contention_for(board, None, "gpu", "cpu")
    assert (got.target, got.source) == (SHARED_BUS_SLOWDOWN, "estimate")
    assert contention_for(board, None, "cpu", "cpu") is None
