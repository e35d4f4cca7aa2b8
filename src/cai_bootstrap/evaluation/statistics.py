"""Paired statistics for base-vs-trained success (EV-05).

The same items go to both models, so the right tests are paired: McNemar on the
discordant pairs and a bootstrap over item pairs for the lift. Independent-sample
tests would overstate or understate significance. The Wilson interval, McNemar's test
and Benjamini-Hochberg are statsmodels' own; this module only fixes the conventions
around them (edge cases, method choice, return types) that the reports and gates rely on.

Conventions: ``n01`` counts items the base model failed and the trained model passed
(improvements), ``n10`` the reverse (regressions); lift = sft_rate - base_rate, and
Cohen's h has the same sign.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# statsmodels is imported where it is used: it takes seconds to import, and the CLI reads
# the defaults below on every start.

DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP_SAMPLES = 10_000
DEFAULT_FDR = 0.10
# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial.
EXACT_BELOW = 25


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_ci(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval; unlike the Wald interval it stays sensible at 0% and 100%.

    With n = 0 there is no information, and the interval is the whole of [0, 1].
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    _check_confidence(confidence)
    if n == 0:
        return (0.0, 1.0)
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=1.0 - confidence, method="wilson")
    # At 0 and n the bounds are exactly 0 and 1; say so rather than leave rounding residue.
    lo = 0.0 if successes == 0 else max(0.0, float(lo))
    hi = 1.0 if successes == n else min(1.0, float(hi))
    return (lo, hi)


@dataclass(frozen=True)
class McNemarResult:
    statistic: float
    p_value: float
    method: str  # "exact_binomial" | "chi2_continuity" | "no_discordant_pairs"


def mcnemar_test(n01: int, n10: int, *, exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's test on the discordant counts (statsmodels' ``mcnemar``).

    Exact two-sided binomial (statistic = min(n01, n10)) when there are fewer than
    ``exact_below`` discordant pairs; otherwise the continuity-corrected chi-square
    (|n01 - n10| - 1)^2 / (n01 + n10). With n01 == n10 the correction is floored at zero,
    statistic 0 and p = 1, where statsmodels would overcorrect to 1/(n01 + n10).
    No discordant pairs: no evidence, p = 1.
    """
    if n01 < 0 or n10 < 0:
        raise ValueError(f"discordant counts must be >= 0, got n01={n01}, n10={n10}")
    n = n01 + n10
    if n == 0:
        return McNemarResult(0.0, 1.0, "no_discordant_pairs")
    exact = n < exact_below
    if not exact and n01 == n10:
        return McNemarResult(0.0, 1.0, "chi2_continuity")
    from statsmodels.stats.contingency_tables import mcnemar

    # Only the discordant cells enter the test; the concordant ones are set to zero.
    res = mcnemar([[0, n01], [n10, 0]], exact=exact, correction=True)
    return McNemarResult(float(res.statistic), float(res.pvalue), "exact_binomial" if exact else "chi2_continuity")


def cohens_h(p_base: float, p_sft: float) -> float:
    """Effect size for two proportions: 2*asin(sqrt(p_sft)) - 2*asin(sqrt(p_base))."""
    for p in (p_base, p_sft):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must be in [0, 1], got {p}")
    return 2.0 * math.asin(math.sqrt(p_sft)) - 2.0 * math.asin(math.sqrt(p_base))


def _as_bool_pair(base: Sequence[bool], sft: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(base, dtype=bool)
    s = np.asarray(sft, dtype=bool)
    if b.shape != s.shape or b.ndim != 1:
        raise ValueError(f"paired outcomes must be two equal-length 1-D sequences, got {b.shape} and {s.shape}")
    if b.size == 0:
        raise ValueError("no paired outcomes")
    return b, s


def discordant_counts(base: Sequence[bool], sft: Sequence[bool]) -> tuple[int, int]:
    b, s = _as_bool_pair(base, sft)
    return int(np.sum(~b & s)), int(np.sum(b & ~s))


def bootstrap_lift_ci(
    base: Sequence[bool],
    sft: Sequence[bool],
    *,
    n_resamples: int = DEFAULT_BOOTSTRAP_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the paired lift, resampling item pairs.

    A pair contributes +1 (improvement), -1 (regression) or 0 to n * lift, so resampling
    n pairs with replacement is a multinomial draw over those three outcomes; drawing the
    counts directly gives the same distribution as resampling indices, at O(resamples).
    """
    b, s = _as_bool_pair(base, sft)
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    _check_confidence(confidence)
    n = b.size
    n01, n10 = int(np.sum(~b & s)), int(np.sum(b & ~s))
    rng = np.random.default_rng(seed)
    p01, p10 = n01 / n, n10 / n
    counts = rng.multinomial(n, [p01, p10, max(0.0, 1.0 - p01 - p10)], size=n_resamples)
    lifts = (counts[:, 0] - counts[:, 1]) / n
    alpha = 1.0 - confidence
    lo, hi = np.quantile(lifts, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(lo), float(hi))


def benjamini_hochberg(p_values: Sequence[float], fdr: float = DEFAULT_FDR) -> tuple[list[float], list[bool]]:
    """Adjusted p-values (step-up, monotone, capped at 1) and which tests are significant at ``fdr``."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return [], []
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"p-values must be in [0, 1], got {p_values}")
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(p, alpha=fdr, method="fdr_bh")
    return [float(x) for x in adjusted], [bool(x) for x in reject]


def compare_paired(
    base: Sequence[bool],
    sft: Sequence[bool],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
    seed: int = 0,
    exact_below: int = EXACT_BELOW,
) -> dict:
    """The PV-04 comparison block for one set of paired outcomes."""
    b, s = _as_bool_pair(base, sft)
    n = int(b.size)
    kb, ks = int(b.sum()), int(s.sum())
    n01, n10 = discordant_counts(b, s)
    mc = mcnemar_test(n01, n10, exact_below=exact_below)
    base_rate, sft_rate = kb / n, ks / n
    return {
        "n": n,
        "base_successes": kb,
        "sft_successes": ks,
        "base_rate": base_rate,
        "base_ci": list(wilson_ci(kb, n, confidence)),
        "sft_rate": sft_rate,
        "sft_ci": list(wilson_ci(ks, n, confidence)),
        "lift": sft_rate - base_rate,
        "lift_ci_bootstrap": list(bootstrap_lift_ci(b, s, n_resamples=bootstrap_samples, confidence=confidence, seed=seed)),
        "mcnemar_stat": mc.statistic,
        "mcnemar_p": mc.p_value,
        "mcnemar_method": mc.method,
        "cohens_h": cohens_h(base_rate, sft_rate),
        "discordant": {"n01": n01, "n10": n10},
    }


def type_seed(seed: int, name: str) -> int:
    """A per-type bootstrap seed that does not depend on the order types are visited in."""
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**32)


def compare_by_type(
    base: Sequence[bool],
    sft: Sequence[bool],
    types: Sequence[str],
    *,
    fdr: float = DEFAULT_FDR,
    confidence: float = DEFAULT_CONFIDENCE,
    bootstrap_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
    seed: int = 0,
    exact_below: int = EXACT_BELOW,
) -> tuple[dict, dict, dict]:
    """Overall block, per-type blocks with BH-adjusted p-values, and the BH summary."""
    b, s = _as_bool_pair(base, sft)
    t = np.asarray(types, dtype=object)
    if t.shape != b.shape:
        raise ValueError("types must align with the paired outcomes")
    kw = dict(confidence=confidence, bootstrap_samples=bootstrap_samples, exact_below=exact_below)
    overall = compare_paired(b, s, seed=seed, **kw)
    names = sorted(set(types))
    by_type = {name: compare_paired(b[t == name], s[t == name], seed=type_seed(seed, name), **kw) for name in names}
    adjusted, significant = benjamini_hochberg([by_type[n]["mcnemar_p"] for n in names], fdr)
    for name, p_adj, sig in zip(names, adjusted, significant):
        by_type[name]["p_adjusted"] = p_adj
        by_type[name]["significant_after_bh"] = sig
    bh = {
        "fdr": fdr,
        "method": "benjamini-hochberg",
        "n_tests": len(names),
        "n_significant_raw": sum(by_type[n]["mcnemar_p"] <= fdr for n in names),
        "n_significant_adjusted": int(sum(significant)),
    }
    return overall, by_type, bh
