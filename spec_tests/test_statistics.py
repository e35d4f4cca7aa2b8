"""EV-05: Wilson CI, McNemar, Cohen's h, bootstrap lift CI and Benjamini-Hochberg, checked against statsmodels/scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from cai_bootstrap.evaluation import statistics as st

FAST = settings(max_examples=60, deadline=None)


# -- Wilson ---------------------------------------------------------------------------------

@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (81, 100), (397, 400), (1, 400), (200, 400)])
def test_wilson_table_matches_statsmodels(k, n):
    lo, hi = st.wilson_ci(k, n, 0.95)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert lo == pytest.approx(ref[0], abs=1e-12)
    assert hi == pytest.approx(ref[1], abs=1e-12)


@pytest.mark.spec("EV-05")
@FAST
@given(n=hs.integers(1, 5000), frac=hs.floats(0, 1), conf=hs.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_property_matches_statsmodels_and_contains_rate(n, frac, conf):
    k = round(frac * n)
    lo, hi = st.wilson_ci(k, n, conf)
    ref = proportion_confint(k, n, alpha=1 - conf, method="wilson")
    assert (lo, hi) == pytest.approx(ref, abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@pytest.mark.spec("EV-05")
def test_wilson_edge_cases():
    assert st.wilson_ci(0, 0) == (0.0, 1.0)  # no data: no information
    with pytest.raises(ValueError):
        st.wilson_ci(5, 3)
    with pytest.raises(ValueError):
        st.wilson_ci(1, 3, confidence=1.5)


# -- McNemar --------------------------------------------------------------------------------

def _table(n01: int, n10: int, n00: int = 7, n11: int = 11) -> list[list[int]]:
    # rows: base fail/pass; columns: sft fail/pass
    return [[n00, n01], [n10, n11]]


@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("n01,n10", [(1, 0), (5, 2), (12, 3), (0, 24), (20, 4), (30, 10), (130, 16), (40, 60), (25, 0), (13, 12)])
def test_mcnemar_table_matches_statsmodels(n01, n10):
    res = st.mcnemar_test(n01, n10)
    exact = n01 + n10 < 25
    ref = sm_mcnemar(_table(n01, n10), exact=exact, correction=True)
    assert res.method == ("exact_binomial" if exact else "chi2_continuity")
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-9)


@pytest.mark.spec("EV-05")
@FAST
@given(n01=hs.integers(0, 400), n10=hs.integers(0, 400))
def test_mcnemar_property_matches_statsmodels(n01, n10):
    res = st.mcnemar_test(n01, n10)
    assert 0.0 <= res.p_value <= 1.0
    if n01 + n10 == 0:
        assert res.p_value == 1.0
        return
    if n01 + n10 >= 25 and n01 == n10:
        # statsmodels' (|b-c|-1)^2 overcorrects to 1/(b+c) here; the floored correction gives 0 and p = 1.
        assert res.statistic == 0.0 and res.p_value == 1.0
        return
    ref = sm_mcnemar(_table(n01, n10), exact=n01 + n10 < 25, correction=True)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
    if n01 + n10 < 25:  # exact test agrees with scipy's binomial test too
        assert res.p_value == pytest.approx(sps.binomtest(min(n01, n10), n01 + n10, 0.5).pvalue, rel=1e-9)


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

@pytest.mark.spec("EV-05")
@pytest.mark.parametrize("p", [
    [0.01, 0.04, 0.03, 0.2, 0.5],
    [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216, 0.222, 0.251, 0.269, 0.275, 0.34],
    [1.0, 1.0, 1.0],
    [0.1],
    [0.09, 0.11, 0.1, 0.1],
])
def test_bh_table_matches_statsmodels(p):
    adj, sig = st.benjamini_hochberg(p, 0.10)
    ref_sig, ref_adj, _, _ = multipletests(p, alpha=0.10, method="fdr_bh")
    assert adj == pytest.approx(list(ref_adj), abs=1e-12)
    assert sig == list(ref_sig)


@pytest.mark.spec("EV-05")
@FAST
@given(p=hs.lists(hs.floats(0, 1), min_size=1, max_size=30), fdr=hs.sampled_from([0.05, 0.1, 0.2]))
def test_bh_property_matches_statsmodels(p, fdr):
    adj, sig = st.benjamini_hochberg(p, fdr)
    ref_sig, ref_adj, _, _ = multipletests(p, alpha=fdr, method="fdr_bh")
    assert adj == pytest.approx(list(ref_adj), abs=1e-9)
    assert sig == list(ref_sig)
    assert all(a >= x - 1e-15 for a, x in zip(adj, p))


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
    ref_sig, ref_adj, _, _ = multipletests([by_type[t]["mcnemar_p"] for t in "abc"], alpha=0.10, method="fdr_bh")
    assert [by_type[t]["p_adjusted"] for t in "abc"] == pytest.approx(list(ref_adj))
    assert bh == {"fdr": 0.10, "method": "benjamini-hochberg", "n_tests": 3,
                  "n_significant_raw": 1, "n_significant_adjusted": int(ref_sig.sum())}
    # seeded: the same call gives the same intervals
    again = st.compare_by_type(base, sft, list(types), bootstrap_samples=2000, seed=0)
    assert again[0] == overall and again[1] == by_type
