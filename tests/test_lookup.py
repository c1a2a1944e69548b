"""N-gram lookup drafting (runtime/lookup.py) on its own and in the speculative loop on real IREE
modules: greedy output equals target-only token for token, the sampling law is the target's
(chi-square, with the broken-correction control), and the CLI. A conversation with lookup:
tests/test_chat.py (multi-turn)."""
import json
import random

import pytest

from helpers import cli, run_json
from test_runtime import PROMPTS, _session, bundles  # noqa: F401 - a fixture
from test_sampling import BrokenSampler, _exact_t2_t3, _speculative_draws, chi2_rejects, tiny_vocab_chains  # noqa: F401


def _brute(seq, gamma, n_max, n_min=2):
    """The definition: the longest suffix n-gram that occurred before, its latest occurrence."""
    L = len(seq)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        for s in range(L - n - 1, -1, -1):
            if seq[s:s + n] == seq[L - n:]:
                return seq[s + n:s + n + gamma]
    return []


def test_lookup_proposes_what_followed_the_longest_latest_match():
    from build_sd.runtime.lookup import NgramLookup
    lk = NgramLookup(4)
    assert lk.propose([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert NgramLookup(4).propose([1, 2, 9, 1, 2, 7, 1, 2], 3) == [7, 1, 2]        # the latest
    assert NgramLookup(4).propose([5, 1, 2, 8, 9, 1, 2, 6, 5, 1, 2], 3) == [8, 9, 1]  # the longest
    assert NgramLookup(4).propose([1, 2], 3) == []                       # its own suffix never matches
    assert NgramLookup(4).propose([1, 2, 3, 4], 3) == []
    assert NgramLookup(4).propose([1, 2, 1, 2], 5) == [1, 2]             # what there is, up to gamma
    assert NgramLookup(4).propose([1, 2, 3, 1, 2], 0) == []
    with pytest.raises(ValueError):
        NgramLookup(1)


def test_incremental_index_equals_the_definition():
    """Grown token by token (as the loop grows its text), replaced by another text, and fresh."""
    from build_sd.runtime.lookup import NgramLookup
    rng = random.Random(0)
    lk = NgramLookup(4)
    hits = 0
    for _ in range(3):                                   # three texts through one index: it restarts
        seq = [rng.randrange(6) for _ in range(3)]
        for _ in range(120):
            seq += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]
            want = _brute(seq, 3, 4)
            assert lk.propose(seq, 3) == want == NgramLookup(4).propose(seq, 3)
            hits += bool(want)
    assert hits > 200


def _gen(session, ids, gamma, n, lookup=None, eos=()):
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.speculative import generate
    return generate(session.target, session.draft if gamma else None, ids, gamma, GreedyAcceptor(), n, list(eos),
                    lookup=lookup)


def test_greedy_with_lookup_equals_target_only(bundles):
    from build_sd.runtime.lookup import NgramLookup
    s = _session(bundles["cpu"])
    blocks = accepted = 0
    for text in PROMPTS + [f"{PROMPTS[0]} {PROMPTS[0]}"]:       # the last one repeats itself
        ids = s.tokenizer.encode(text).ids
        assert len(ids) + 32 <= s.target.max_context
        want = _gen(s, ids, 0, 32).token_ids
        for gamma in (1, 3, 4, 6):
            g = _gen(s, ids, gamma, 32, NgramLookup(4))
            assert g.token_ids == want, (text, gamma)
            m = g.metrics
            blocks += m.lookup_blocks
            accepted += m.lookup_accepted
            assert m.lookup_accepted <= m.accepted and m.stop_reason == "max_new_tokens"
        for n in (1, 2, 5, 7):                               # stops exactly, at the budget or at EOS
            assert _gen(s, ids, 3, n, NgramLookup(4)).token_ids == want[:n]
        eos = want[9]
        got = _gen(s, ids, 3, 32, NgramLookup(4), eos=[eos])
        assert got.token_ids == want[:want.index(eos) + 1] and got.metrics.stop_reason == "eos"
    # lookup proposed, and some proposals were accepted, so the draft's catch-up after them ran too
    # (this random tiny model copies its prompt rarely: 17 blocks, 7 tokens accepted when written)
    assert blocks > 5 and accepted > 0, (blocks, accepted)


def test_greedy_with_lookup_on_a_small_vocabulary(tiny_vocab_chains):
    """V = 16: the text soon repeats, lookup is right often, and the draft catches up on what its
    proposals got accepted: the output is still the target's, token for token."""
    from build_sd.runtime.lookup import NgramLookup
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.speculative import generate
    target, draft = tiny_vocab_chains
    rng = random.Random(1)
    accepted = 0
    for _ in range(12):
        prompt = [rng.randrange(16) for _ in range(6)]
        want = generate(target, None, prompt, 0, GreedyAcceptor(), 9, []).token_ids    # 6 + 9 of 16 slots
        for gamma in (1, 2):
            g = generate(target, draft, prompt, gamma, GreedyAcceptor(), 9, [], lookup=NgramLookup(2, 1))
            assert g.token_ids == want, (prompt, gamma)
            accepted += g.metrics.lookup_accepted
    assert accepted > 10, accepted


def test_sampling_with_lookup_matches_target_only(tiny_vocab_chains):
    """Lookup proposals are drafts whose q is all on the proposed token: the law stays the target's.
    A prompt whose tokens recur, and unigram matches allowed, so that lookup proposes in most runs."""
    from build_sd.runtime.lookup import NgramLookup
    from build_sd.runtime.sampling import RejectionSampler, SamplingParams
    target, draft = tiny_vocab_chains
    prompt = [3, 7, 1, 5, 2, 9, 3, 7]
    params = SamplingParams(temperature=1.0)
    m2, m3 = _exact_t2_t3(target, params, prompt)
    c2, c3, looked = _speculative_draws(target, draft, params, 3000, RejectionSampler, prompt,
                                        lambda: NgramLookup(2, 1))
    assert looked > 600, looked
    for counts, law in ((c2, m2), (c3, m3)):
        rejected, stat, crit = chi2_rejects(counts, law)
        assert not rejected, f"chi2 {stat:.1f} > {crit:.1f}: lookup makes speculative sampling biased"
    b2, b3, _ = _speculative_draws(target, draft, params, 3000, BrokenSampler, prompt, lambda: NgramLookup(2, 1))
    assert any(chi2_rejects(c, law)[0] for c, law in ((b2, m2), (b3, m3))), \
        "a wrong correction step went unnoticed: the test has no power"


def test_run_takes_lookup(bundles):
    text = "hello world, hello world, hello world"          # a prompt whose 2-grams recur in the answer
    plain = run_json(bundles["cpu"], text, max_new_tokens=24, gamma=3)
    rc, out, err = cli("run", bundles["cpu"], "--prompt", text, "--max-new-tokens", 24, "--gamma", 3, "--lookup",
                       "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["token_ids"] == plain["token_ids"] and got["metrics"]["lookup_blocks"] > 0
    assert plain["metrics"]["lookup_blocks"] == 0 and not got["metrics"]["overlap"]
    for args, message in ((["--gamma", 0, "--lookup"], "gamma >= 1"), (["--lookup", 1], "must be >= 2"),
                          (["--lookup", "--overlap"], "drop --overlap")):
        rc, _, err = cli("run", bundles["cpu"], "--prompt", text, *args)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
