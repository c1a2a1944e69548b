"""Speculative sampling is exact: its tokens are distributed as sampling from the target alone.

Two levels: the acceptance step alone on synthetic p/q (numpy), and the whole loop on real IREE
modules of a 16-token vocabulary, against the target's exact distribution computed from its own
logits. Each test also breaks the correction step once (sampling the replacement from p instead
of norm(max(0, p - q))) and checks that the same test then fails, so it has the power to fail.
"""
import numpy as np
import pytest

from build_sd.runtime.sampling import Dense, RejectionSampler, SamplingParams, Sparse, dist, probs, sample
from conftest import BUILD, _build
from helpers import make_checkpoint

Z_999 = 3.09       # one-sided normal quantile for a 0.001 false-alarm rate


def chi2_critical(df: int, z: float = Z_999) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (good to ~1% for df >= 3)."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def chi2_rejects(counts: np.ndarray, expected_p: np.ndarray) -> tuple[bool, float, float]:
    n = counts.sum()
    exp = expected_p * n
    keep = exp >= 5                                # pool the rare cells into one
    obs = np.append(counts[keep], counts[~keep].sum())
    e = np.append(exp[keep], exp[~keep].sum())
    obs, e = obs[e > 0], e[e > 0]
    assert len(e) >= 3, "too few populated cells for a chi-square test"
    stat = float(((obs - e) ** 2 / e).sum())
    crit = chi2_critical(len(e) - 1)
    return stat > crit, stat, crit


class BrokenSampler(RejectionSampler):
    """The classic bug: on rejection, resample from p instead of the residual max(0, p - q)."""

    def accept(self, drafts, q_rows, target_ids, target_logits_fn, bonus=True):
        p = probs(target_logits_fn(), self.params)
        for i, x in enumerate(drafts):
            if self.rng.random() * q_rows[i][x] < p[i, x]:
                continue
            return i, sample(p[i], self.rng)
        if not bonus:
            return len(drafts), None
        return len(drafts), sample(p[len(drafts)], self.rng)


# ---- the acceptance step alone ------------------------------------------------------------------
def _first_tokens(sampler_cls, p, q, n, seed=0):
    rng = np.random.default_rng(seed)
    s = sampler_cls(SamplingParams(temperature=1.0), rng)
    logits = np.log(p)
    first = np.zeros(p.shape[1], int)
    for _ in range(n):
        drafts = [sample(q[i], rng) for i in range(len(q))]
        _, nxt = s.accept(drafts, list(q), None, lambda: logits)
        # the first emitted token is x_1 if accepted, else the replacement
        first[drafts[0] if _ > 0 else nxt] += 1
    return first


def test_acceptance_step_is_exact():
    rng = np.random.default_rng(7)
    V, g = 8, 3
    p = rng.dirichlet(np.full(V, 0.5), size=g + 1)
    q = rng.dirichlet(np.full(V, 0.5), size=g)
    counts = _first_tokens(RejectionSampler, p, q, 20000)
    rejected, stat, crit = chi2_rejects(counts, p[0])
    assert not rejected, (stat, crit)
    broken = _first_tokens(BrokenSampler, p, q, 20000)
    rejected, stat, crit = chi2_rejects(broken, p[0])
    assert rejected, f"the test cannot see a wrong correction step ({stat:.1f} <= {crit:.1f})"


def test_probs_transforms():
    logits = np.array([[3.0, 2.0, 1.0, 0.0, -1.0]])
    p = probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert np.count_nonzero(p) == 2 and np.isclose(p.sum(), 1)
    p = probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    full = probs(logits, SamplingParams(temperature=1.0))[0]
    kept = np.flatnonzero(p[0])
    assert list(kept) == [0, 1] and full[0] < 0.7 <= full[0] + full[1]
    cold = probs(logits, SamplingParams(temperature=0.1))[0]
    assert cold[0] > 0.99
    assert probs(logits, SamplingParams(temperature=1.0, top_p=1e-9))[0][0] == 1.0


def _reference_law(z: np.ndarray, sp: SamplingParams) -> np.ndarray:
    """The law written plainly (float64, a full stable sort, HF's warpers' order): temperature, then
    top-k (ties with the k-th kept), then the smallest most-likely prefix whose mass reaches top_p."""
    z = z.astype(np.float64) / sp.temperature
    if 0 < sp.top_k < len(z):
        z = np.where(z < np.sort(z)[-sp.top_k], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sp.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = order[before < sp.top_p]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return p


@pytest.mark.parametrize("sp", [SamplingParams(0.8, 0, 0.95), SamplingParams(1.0, 0, 0.5), SamplingParams(0.7),
                                SamplingParams(1.0, 40, 1.0), SamplingParams(0.9, 40, 0.9)],
                         ids=["t0.8-p0.95", "t1-p0.5", "t0.7", "k40", "t0.9-k40-p0.9"])
def test_fast_sampling_law_equals_the_plain_one(sp):
    """dist() (sparse nucleus, no full sort, no shift pass when exp cannot overflow) gives the law of
    the plain float64 implementation on peaked, flat (no id reaches the first threshold) and huge
    (the shifted path) rows of V = 4096."""
    rng = np.random.default_rng(3)
    rows = [rng.normal(0, s, 4096) * 1.0 for s in (0.05, 0.5, 3.0, 8.0)] + [rng.normal(0, 3, 4096) + 200.0]
    for z in rows:
        z = z.astype(np.float32)
        got, want = dist(z, sp).dense(), _reference_law(z, sp)
        if sp.top_p < 1.0:
            assert set(np.flatnonzero(got)) == set(np.flatnonzero(want))
        assert np.allclose(got, want, rtol=1e-5, atol=1e-9), np.abs(got - want).max()
        assert np.array_equal(probs(z, sp)[0], got)


def test_residual_and_sampling_of_sparse_and_dense_rows():
    """norm(max(0, p - q)) from each pair of forms equals the dense arithmetic, and a sparse row
    draws its ids with their probabilities (chi-square)."""
    rng = np.random.default_rng(4)
    sp = SamplingParams(1.0, 0, 0.9)
    zp, zq = rng.normal(0, 2, 64).astype(np.float32), rng.normal(0, 2, 64).astype(np.float32)
    forms = {"sparse": lambda z: dist(z, sp), "dense": lambda z: dist(z, SamplingParams(1.0))}
    for fp in forms.values():
        for fq in forms.values():
            p, q = fp(zp), fq(zq)
            want = np.maximum(p.dense() - q.dense(), 0.0)
            want /= want.sum()
            assert np.allclose(p.residual(q).dense(), want, atol=1e-12)
            assert np.allclose(p.residual(q.dense()).dense(), want, atol=1e-12)
    p = dist(zp, sp)
    assert isinstance(p, Sparse) and isinstance(dist(zp, SamplingParams(1.0)), Dense)
    assert p.residual(p) is p                                 # nothing to correct: p itself
    counts = np.bincount([p.sample(rng) for _ in range(20000)], minlength=64)
    rejected, stat, crit = chi2_rejects(counts, p.dense())
    assert not rejected, (stat, crit)
    assert all(p[x] == pytest.approx(p.dense()[x]) for x in range(64))


# ---- the whole loop on IREE modules -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vocab_chains():
    from build_sd.contract import ExportRecord
    from build_sd.runtime.chain import ModelChain, PlacedSubgraph
    from build_sd.runtime.devices import DevicePool
    # V=16 so the exact law is cheap to enumerate; the inits make p moderately peaked and q
    # different from it (measured: a wrong correction step gives chi2 ~150 against a 38 limit)
    tck = make_checkpoint(BUILD / "ckpt" / "v16_target", vocab=16, hidden=32, layers=2, heads=4,
                          kv_heads=2, ffn=48, seed=11, init=0.3)
    dck = make_checkpoint(BUILD / "ckpt" / "v16_draft", vocab=16, hidden=16, layers=1, heads=2,
                          kv_heads=1, ffn=48, seed=12, init=0.5)
    chains = []
    pool = DevicePool()
    for name, ck, gammas in (("v16_target", tck, "1,2"), ("v16_draft", dck, "1")):
        art = _build(name, ck, ["host"], gammas=gammas, prefill="4", max_context=16)
        meta = ExportRecord.read(art / "export.json")
        placed = [PlacedSubgraph(sg, art / "host" / f"{sg.name}.vmfb", "local-task", "host")
                  for sg in meta.subgraphs]
        chain = ModelChain(pool, meta, art / "model.irpa", placed)
        chain.warmup()
        chains.append(chain)
    return chains


PROMPT = [3, 7, 1]


def _exact_t2_t3(target, params, prompt=PROMPT):
    """Target-only law of the 2nd and 3rd generated tokens (marginals), from its own logits."""
    out = target.prefill(np.array(prompt, np.int32))
    p1 = probs(out.logits()[-1], params)[0]
    m2, m3 = np.zeros(16), np.zeros(16)
    for t1 in range(16):
        for t2 in range(16):
            o = target.step(np.array([t1, t2], np.int32), len(prompt))
            rows = probs(o.logits(), params)
            if t2 == 0:
                m2 += p1[t1] * rows[0]
            m3 += p1[t1] * rows[0][t2] * rows[1]
    return m2, m3


def _speculative_draws(target, draft, params, n, sampler_cls, prompt=PROMPT, lookup=None):
    """(counts of the 2nd and 3rd tokens over n seeds, how many generations lookup proposed in);
    lookup: a factory of a fresh NgramLookup per generation."""
    from build_sd.runtime.speculative import generate
    c2, c3 = np.zeros(16, int), np.zeros(16, int)
    looked = 0
    for seed in range(n):
        g = generate(target, draft, prompt, 2, sampler_cls(params, np.random.default_rng(seed)), 3, [],
                     lookup=lookup() if lookup else None)
        c2[g.token_ids[1]] += 1
        c3[g.token_ids[2]] += 1
        looked += g.metrics.lookup_blocks > 0
    return c2, c3, looked


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0),
                                    SamplingParams(temperature=0.8, top_k=6, top_p=0.9)],
                         ids=["t1", "t0.8-k6-p0.9"])
def test_speculative_sampling_matches_target_only(tiny_vocab_chains, params):
    target, draft = tiny_vocab_chains
    m2, m3 = _exact_t2_t3(target, params)
    c2, c3, _ = _speculative_draws(target, draft, params, 3000, RejectionSampler)
    for counts, law in ((c2, m2), (c3, m3)):
        rejected, stat, crit = chi2_rejects(counts, law)
        assert not rejected, f"chi2 {stat:.1f} > {crit:.1f}: speculative sampling is biased"


def test_broken_correction_is_detected(tiny_vocab_chains):
    target, draft = tiny_vocab_chains
    params = SamplingParams(temperature=1.0)
    m2, m3 = _exact_t2_t3(target, params)
    c2, c3, _ = _speculative_draws(target, draft, params, 3000, BrokenSampler)
    assert any(chi2_rejects(c, law)[0] for c, law in ((c2, m2), (c3, m3))), \
        "a wrong correction step went unnoticed: the test has no power"
