"""EV-05: Wilson CI, McNemar, Cohen's h, bootstrap lift CI and Benjamini-Hochberg.

The module calls statsmodels for Wilson, McNemar and Benjamini-Hochberg, so those are
checked against published or hand-computed values and against the textbook formulas
written out here, not against statsmodels itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_effectsize

from cai_bootstrap.evaluation import statistics as st

FAST = settings(max_examples=60, deadline=None)


# -- Wilson ---------------------------------------------------------------------------------

def _wilson_formula(k: int, n: int, conf: float) -> tuple[float, float]:
    """The score interval as Wilson (1927) wrote it."""
    z = sps.norm.ppf(1 - (1 - conf) / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("k,n,expected", [
    # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval), 95%
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0000, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
    # 8 of 10 by hand: center 0.99207/1.38415 = 0.71674, half 0.31362/1.38415 = 0.22658
    (8, 10, (0.4902, 0.9433)),
])
def test_wilson_matches_published_values(k, n, expected):
    assert st.wilson_ci(k, n, 0.95) == pytest.approx(expected, abs=5e-5)


@pytest.mark.spec("EV-05")
@FAST
@given(n=hs.integers(1, 5000), frac=hs.floats(0, 1), conf=hs.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_property_matches_formula_and_contains_rate(n, frac, conf):
    k = round(frac * n)
    lo, hi = st.wilson_ci(k, n, conf)
    assert (lo, hi) == pytest.approx(_wilson_formula(k, n, conf), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k == 0:
        assert lo == 0.0
    if k == n:
        assert hi == 1.0


@pytest.mark.spec("EV-05")
def test_wilson_edge_cases():
    assert st.wilson_ci(0, 0) == (0.0, 1.0)  # no data: no information
    with pytest.raises(ValueError):
        st.wilson_ci(5, 3)
    with pytest.raises(ValueError):
        st.wilson_ci(1, 3, confidence=1.5)


# -- McNemar --------------------------------------------------------------------------------

def _chi2_1_sf(x: float) -> float:
    """Upper tail of chi-square with one degree of freedom: P(Z^2 > x) = erfc(sqrt(x / 2))."""
    return math.erfc(math.sqrt(x / 2))


@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("n01,n10,method,stat,p", [
    # exact: two-sided binomial tail, 2 * sum_{i <= k} C(n, i) / 2^n
    (1, 9, "exact_binomial", 1, 2 * (1 + 10) / 2**10),
    (9, 1, "exact_binomial", 1, 2 * (1 + 10) / 2**10),
    (0, 5, "exact_binomial", 0, 2 / 2**5),
    (1, 0, "exact_binomial", 0, 1.0),  # 2 * 1/2 caps at 1
    (12, 12, "exact_binomial", 12, 1.0),
    # corrected chi-square: (|b - c| - 1)^2 / (b + c)
    (30, 10, "chi2_continuity", 361 / 40, _chi2_1_sf(361 / 40)),
    (40, 60, "chi2_continuity", 361 / 100, _chi2_1_sf(361 / 100)),
    (13, 12, "chi2_continuity", 0.0, 1.0),
    (20, 20, "chi2_continuity", 0.0, 1.0),  # floored correction, not 1/40
])
def test_mcnemar_hand_computed(n01, n10, method, stat, p):
    res = st.mcnemar_test(n01, n10)
    assert res.method == method
    assert res.statistic == pytest.approx(stat, rel=1e-12, abs=1e-15)
    assert res.p_value == pytest.approx(p, rel=1e-9, abs=1e-15)


@pytest.mark.spec("EV-05")
@FAST
@given(n01=hs.integers(0, 400), n10=hs.integers(0, 400))
def test_mcnemar_property_matches_formulas(n01, n10):
    res = st.mcnemar_test(n01, n10)
    n = n01 + n10
    assert 0.0 <= res.p_value <= 1.0
    if n == 0:
        assert res.p_value == 1.0
    elif n < 25:
        assert res.p_value == pytest.approx(sps.binomtest(min(n01, n10), n, 0.5).pvalue, rel=1e-9)
    else:
        x = max(0, abs(n01 - n10) - 1) ** 2 / n
        assert res.statistic == pytest.approx(x, rel=1e-12)
        assert res.p_value == pytest.approx(_chi2_1_sf(x), rel=1e-7, abs=1e-300)


@pytest.mark.spec("EV-05")
def test_mcnemar_without_discordant_pairs_does_not_crash():
    res = st.mcnemar_test(0, 0)
    assert res.p_value == 1.0 and res.statistic == 0.0 and res.method == "no_discordant_pairs"


@pytest.mark.spec("EV-05")
def test_mcnemar_exact_threshold_is_configurable():
    assert st.mcnemar_test(20, 10, exact_below=40).method == "exact_binomial"
    assert st.mcnemar_test(20, 10, exact_below=25).method == "chi2_continuity"


# -- Cohen's h ------------------------------------------------------------------------------

@pytest.mark.spec("EV-05")
@FAST
@given(p1=hs.floats(0, 1), p2=hs.floats(0, 1))
def test_cohens_h_matches_statsmodels(p1, p2):
    assert st.cohens_h(p1, p2) == pytest.approx(proportion_effectsize(p2, p1), abs=1e-12)
    assert math.copysign(1, st.cohens_h(p1, p2)) == math.copysign(1, p2 - p1) or p1 == p2


@pytest.mark.spec("EV-05")
def test_cohens_h_table():
    assert st.cohens_h(0.5, 0.5) == 0.0
    assert st.cohens_h(0.0, 1.0) == pytest.approx(math.pi)
    assert st.cohens_h(0.81, 0.993) == pytest.approx(2 * math.asin(math.sqrt(0.993)) - 2 * math.asin(math.sqrt(0.81)))


# -- bootstrap ------------------------------------------------------------------------------

def _pairs(n01: int, n10: int, n11: int, n00: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.array([0] * n01 + [1] * n10 + [1] * n11 + [0] * n00, dtype=bool)
    sft = np.array([1] * n01 + [0] * n10 + [1] * n11 + [0] * n00, dtype=bool)
    return base, sft


@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("counts", [(30, 10, 100, 60), (5, 5, 50, 40), (60, 2, 300, 38), (0, 0, 10, 10)])
def test_bootstrap_lift_ci_agrees_with_scipy_paired_bootstrap(counts):
    base, sft = _pairs(*counts)
    lo, hi = st.bootstrap_lift_ci(base, sft, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((sft.astype(float), base.astype(float)), lambda s, b, axis=-1: np.mean(s - b, axis=axis),
                        paired=True, vectorized=True, n_resamples=20_000, method="percentile", confidence_level=0.95,
                        rng=np.random.default_rng(2))
    tol = 0.01 + 2 / len(base)  # Monte Carlo error plus one lattice step of the lift
    assert lo == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=tol)
    lift = sft.mean() - base.mean()
    assert lo <= lift <= hi


@pytest.mark.spec("EV-05")
def test_bootstrap_matches_explicit_index_resampling():
    """Drawing the multinomial counts is the same distribution as resampling pair indices."""
    base, sft = _pairs(25, 8, 40, 27)
    d = sft.astype(int) - base.astype(int)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(d), size=(20_000, len(d)))
    ref = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    lo, hi = st.bootstrap_lift_ci(base, sft, n_resamples=20_000, seed=4)
    assert (lo, hi) == pytest.approx(tuple(ref), abs=0.02)


@pytest.mark.spec("EV-05")
@FAST
@given(outcomes=hs.lists(hs.tuples(hs.booleans(), hs.booleans()), min_size=1, max_size=200), seed=hs.integers(0, 2**31))
def test_bootstrap_is_seeded_and_bounded(outcomes, seed):
    base = [b for b, _ in outcomes]
    sft = [s for _, s in outcomes]
    a = st.bootstrap_lift_ci(base, sft, n_resamples=500, seed=seed)
    b = st.bootstrap_lift_ci(base, sft, n_resamples=500, seed=seed)
    assert a == b
    assert -1.0 <= a[0] <= a[1] <= 1.0


@pytest.mark.spec("EV-05")
def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError):
        st.bootstrap_lift_ci([True, False], [True])
    with pytest.raises(ValueError):
        st.bootstrap_lift_ci([], [])


# -- Benjamini-Hochberg -----------------------------------------------------------------------

def _bh_formula(p: list[float]) -> list[float]:
    """Benjamini & Hochberg (1995) step-up: adj_(i) = min_{j >= i} min(1, m p_(j) / j)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    for rank, i in enumerate(order, start=1):
        adj[i] = min(min(1.0, m * p[j] / r) for r, j in enumerate(order, start=1) if r >= rank)
    return adj


@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("p, adjusted, significant", [
    # sorted 0.01, 0.03, 0.04, 0.2, 0.5 -> 5p/i = 0.05, 0.075, 0.0667, 0.25, 0.5 -> step-up minimum
    ([0.01, 0.04, 0.03, 0.2, 0.5], [0.05, 0.2 / 3, 0.2 / 3, 0.25, 0.5], [True, True, True, False, False]),
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [False, False, False]),
    ([0.1], [0.1], [True]),
    # 4p/i = 0.36, 0.2, 0.1333, 0.11 (sorted 0.09, 0.1, 0.1, 0.11) -> all 0.11
    ([0.09, 0.11, 0.1, 0.1], [0.11, 0.11, 0.11, 0.11], [False, False, False, False]),
])
def test_bh_hand_computed(p, adjusted, significant):
    adj, sig = st.benjamini_hochberg(p, 0.10)
    assert adj == pytest.approx(adjusted, abs=1e-12)
    assert sig == significant


@pytest.mark.spec("EV-05")
@FAST
@given(p=hs.lists(hs.floats(0, 1), min_size=1, max_size=30), fdr=hs.sampled_from([0.05, 0.1, 0.2]))
def test_bh_property_matches_formula(p, fdr):
    adj, sig = st.benjamini_hochberg(p, fdr)
    assert adj == pytest.approx(_bh_formula(p), abs=1e-9)
    assert sig == [a <= fdr for a in adj]
    assert all(x - 1e-15 <= a <= 1.0 for a, x in zip(adj, p))


# -- assembled comparison -----------------------------------------------------------------------

@pytest.mark.spec("EV-05")
def test_compare_by_type_blocks_and_bh():
    rng = np.random.default_rng(0)
    types = np.repeat(["a", "b", "c"], 60)
    base = rng.random(180) < 0.3
    sft = base.copy()
    sft[types == "a"] = True  # a real gain on type a only
    overall, by_type, bh = st.compare_by_type(base, sft, list(types), bootstrap_samples=2000, seed=0)
    assert overall["n"] == 180 and set(by_type) == {"a", "b", "c"}
    assert overall["discordant"]["n10"] == 0 and overall["discordant"]["n01"] == int((~base & sft).sum())
    assert by_type["a"]["significant_after_bh"] and not by_type["b"]["significant_after_bh"]
    assert by_type["b"]["mcnemar_p"] == 1.0 and by_type["b"]["lift"] == 0.0
    ref_adj = _bh_formula([by_type[t]["mcnemar_p"] for t in "abc"])
    assert [by_type[t]["p_adjusted"] for t in "abc"] == pytest.approx(ref_adj)
    assert bh == {"fdr": 0.10, "method": "benjamini-hochberg", "n_tests": 3,
                  "n_significant_raw": 1, "n_significant_adjusted": sum(a <= 0.10 for a in ref_adj)}
    # seeded: the same call gives the same intervals
    again = st.compare_by_type(base, sft, list(types), bootstrap_samples=2000, seed=0)
    assert again[0] == overall and again[1] == by_type
