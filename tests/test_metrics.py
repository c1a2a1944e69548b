"""alpha is Leviathan's (accepted / judged), not llama.cpp's acceptance rate (accepted / proposed)."""
from build_sd.runtime.metrics import Metrics


def test_alpha_counts_only_judged_drafts():
    m = Metrics(gamma=4)
    m.judge(4, 4)        # all 4 accepted: 4 judged
    m.judge(1, 4)        # x1 accepted, x2 rejected, x3 x4 never judged
    m.judge(0, 4)        # x1 rejected
    m.emitted = 5 + 2 + 1
    assert m.accepted == 5 and m.rejected == 2 and m.proposed == 12
    assert m.alpha == 5 / 7
    assert m.acceptance_rate == 5 / 12
    assert m.mean_accepted == 5 / 3
    assert m.tokens_per_iteration == 8 / 3
    # position i: accepted / reached (reached = judged at that position)
    assert m.reached == [3, 2, 1, 1] and m.hits == [2, 1, 1, 1]
    assert m.per_position_acceptance == [2 / 3, 1 / 2, 1.0, 1.0]


def test_expected_tokens_formula_consistency():
    """With i.i.d. acceptance a, E[tokens/iteration] = (1 - a^(g+1)) / (1 - a): simulate it."""
    import numpy as np
    rng = np.random.default_rng(0)
    a, g = 0.7, 4
    m = Metrics(gamma=g)
    for _ in range(20000):
        n = 0
        while n < g and rng.random() < a:
            n += 1
        m.judge(n, g)
        m.emitted += n + 1
    assert abs(m.alpha - a) < 0.01
    assert abs(m.tokens_per_iteration - (1 - a ** (g + 1)) / (1 - a)) < 0.03
