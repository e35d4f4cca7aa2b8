"""Quality control of a data-generation run: the pilot gate before scale (QC-01..QC-09).

The summary is computed once, from the run's own per-item records, and written to
``qc_summary.json`` together with the thresholds used. Every later decision reads that
file (``read_qc_decision``) instead of recomputing with whatever thresholds happen to be
in scope, so a gate can never be passed by loosening a number after the fact.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cai_bootstrap.cleaning import PARTIAL_DELIMITER
from cai_bootstrap.critic_probes import DEFAULT_AUROC_BAR, PAIR_JUDGES, check_bar, pair_judges_filtering, with_policy

MARGIN_BINS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, float("inf"))
REQUIRED_KEYS = ("counts", "rates", "acceptance", "token_stats", "margins", "sentinels_ok", "critic_probes", "thresholds",
                 "thresholds_passed", "failed_reasons")
# QC-07 fields inside the groups, and the values the decision is re-derived from.
REQUIRED_FIELDS = {
    "counts": ("generated", "kept", "delimiter_found", "delimiter_missing", "heuristic_cutoff", "hit_token_limit",
               "delimiter_leak_in_kept"),
    "rates": ("runaway_rate", "token_limit_rate"),
    "acceptance": ("instructions_good", "instructions_bad", "instructions_low_confidence", "pairs_good", "pairs_bad",
                   "pairs_low_confidence", "instruction_acceptance_rate", "pair_acceptance_rate"),
    "token_stats": ("median", "mean", "p95"),
    "margins": ("instruction", "pair"),
}


@dataclass(frozen=True)
class QCThresholds:
    """QC-01..QC-06 and QC-09 defaults; configuration, recorded in the summary (QC-08)."""

    max_runaway_rate: float = 0.05
    max_token_limit_rate: float = 0.10
    max_delimiter_leaks: int = 0
    max_median_tokens: float = 40.0
    min_instruction_acceptance: float = 0.50
    min_pair_acceptance: float = 0.50
    require_sentinels: bool = True
    # QC-09: the probe AUROC a judge needs to filter, and the spread of pair margins (nats)
    # at or below which a run that accepted every pair is taken for a label-biased critic.
    min_judge_auroc: float = DEFAULT_AUROC_BAR
    constant_margin_tolerance: float = 0.05

    def __post_init__(self) -> None:
        check_bar(self.min_judge_auroc)
        t = self.constant_margin_tolerance
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
            raise ValueError(f"QC threshold constant_margin_tolerance must be a non-negative number, got {t!r}")
        for name in ("max_runaway_rate", "max_token_limit_rate", "min_instruction_acceptance", "min_pair_acceptance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"QC threshold {name} must be a rate in [0, 1], got {v!r}")
        if isinstance(self.max_delimiter_leaks, bool) or not isinstance(self.max_delimiter_leaks, int) or self.max_delimiter_leaks < 0:
            raise ValueError(f"QC threshold max_delimiter_leaks must be a non-negative integer, got {self.max_delimiter_leaks!r}")
        if not isinstance(self.max_median_tokens, (int, float)) or self.max_median_tokens <= 0:
            raise ValueError(f"QC threshold max_median_tokens must be positive, got {self.max_median_tokens!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# Which way each threshold tightens: "max" thresholds are stricter when lower, "min" when
# higher, require_sentinels when true; a wider constant-margin tolerance flags more runs as
# label-biased, so it is stricter when higher too.
_STRICTER_WHEN_LOWER = ("max_runaway_rate", "max_token_limit_rate", "max_delimiter_leaks", "max_median_tokens")
_STRICTER_WHEN_HIGHER = ("min_instruction_acceptance", "min_pair_acceptance", "require_sentinels",
                         "constant_margin_tolerance")
# The probe bar cuts both ways: lower lets an uninformative judge drop data, higher stops an
# informative one from filtering. Only the required bar itself is accepted.
_MUST_EQUAL = ("min_judge_auroc",)


def loosened_thresholds(recorded: QCThresholds, required: QCThresholds) -> list[str]:
    """Each threshold ``recorded`` sets looser than ``required``, as a readable line; empty if none.

    A summary whose verdict is consistent with its own thresholds proves nothing if those
    thresholds were raised until the run passed (QC-08): a gate compares them too.
    """
    out = [f"{name} {getattr(recorded, name)!r} differs from the required {getattr(required, name)!r}"
           for name in _MUST_EQUAL if getattr(recorded, name) != getattr(required, name)]
    for name in _STRICTER_WHEN_LOWER + _STRICTER_WHEN_HIGHER:
        got, want = getattr(recorded, name), getattr(required, name)
        looser = got > want if name in _STRICTER_WHEN_LOWER else got < want
        if looser:
            out.append(f"{name} {got!r} is looser than the required {want!r}")
    return out


def _rate(num: int, den: int) -> float:
    return num / den if den else 0.0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def distribution(values: Sequence[float]) -> dict:
    vals = list(values)
    if not vals:
        return {"n": 0, "median": None, "mean": None, "p95": None, "min": None, "max": None}
    return {
        "n": len(vals),
        "median": statistics.median(vals),
        "mean": statistics.fmean(vals),
        "p95": _percentile(vals, 0.95),
        "min": min(vals),
        "max": max(vals),
    }


def histogram(values: Iterable[float], bins: Sequence[float] = MARGIN_BINS) -> dict:
    counts = {f"[{bins[i]}, {bins[i + 1]})": 0 for i in range(len(bins) - 1)}
    keys = list(counts)
    for v in values:
        for i in range(len(bins) - 1):
            if bins[i] <= v < bins[i + 1]:
                counts[keys[i]] += 1
                break
    return counts


def _acceptance(verdicts: Sequence[dict], prefix: str) -> dict:
    good = sum(1 for v in verdicts if v["is_good"])
    low = sum(1 for v in verdicts if not v["confident"])
    bad = len(verdicts) - good - low
    return {f"{prefix}_judged": len(verdicts), f"{prefix}_good": good, f"{prefix}_bad": bad, f"{prefix}_low_confidence": low}


def compute_qc_summary(
    *,
    instruction_verdicts: Sequence[dict],
    responses: Sequence[dict],
    pair_verdicts: Sequence[dict],
    kept_response_tokens: Sequence[int],
    kept_responses: Sequence[str],
    drop_reasons: dict[str, int],
    sentinels_ok: bool | None,
    thresholds: QCThresholds,
    critic_probes: dict | None,
) -> dict:
    """Summarize a run and apply the thresholds.

    ``instruction_verdicts`` / ``pair_verdicts``: critic results (CR-04 fields) for every
    judged instruction / pair. ``responses``: one dict per generated response with the
    cleaning flags (delimiter_found, heuristic_cutoff, hit_token_limit, reason).
    ``critic_probes``: the run's probe results (CR-06, ``critic_probes.evaluate_probes``);
    None means no judge was measured, which fails QC-09. Their ``filters`` flags are set
    again here under the recorded bar.
    """
    if critic_probes is not None:
        critic_probes = {**critic_probes, "judges": with_policy(critic_probes.get("judges") or {}, thresholds.min_judge_auroc)}
    n_resp = len(responses)
    runaways = sum(1 for r in responses if r.get("reason") == "runaway")
    limit_hits = sum(1 for r in responses if r.get("hit_token_limit"))
    # The partial delimiter is a prefix of the whole one, so this counts both: a delimiter
    # cut off by the token limit leaks as much as a whole one.
    leaks = sum(1 for t in kept_responses if PARTIAL_DELIMITER in t)
    counts = {
        "generated": n_resp,
        "kept": len(kept_responses),
        "delimiter_found": sum(1 for r in responses if r.get("delimiter_found")),
        "delimiter_missing": sum(1 for r in responses if not r.get("delimiter_found")),
        "heuristic_cutoff": sum(1 for r in responses if r.get("heuristic_cutoff")),
        "hit_token_limit": limit_hits,
        "runaway": runaways,
        "delimiter_leak_in_kept": leaks,
    }
    acc = {**_acceptance(instruction_verdicts, "instructions"), **_acceptance(pair_verdicts, "pairs")}
    acc["instruction_acceptance_rate"] = _rate(acc["instructions_good"], acc["instructions_judged"])
    # Pairs are counted against every generated response: a response dropped by cleaning
    # is a failed pair, not one that never existed (stricter than judged-only).
    acc["pair_acceptance_rate"] = _rate(acc["pairs_good"], n_resp)
    tok = distribution(kept_response_tokens)
    rates = {"runaway_rate": _rate(runaways, n_resp), "token_limit_rate": _rate(limit_hits, n_resp)}
    margins = {
        "instruction": {**distribution([v["margin"] for v in instruction_verdicts]),
                        "histogram": histogram(v["margin"] for v in instruction_verdicts)},
        "pair": {**distribution([v["margin"] for v in pair_verdicts]), "histogram": histogram(v["margin"] for v in pair_verdicts)},
    }
    failed = apply_thresholds(thresholds, n_generated=n_resp, rates=rates, delimiter_leaks=leaks,
                              median_tokens=tok["median"], acceptance=acc, sentinels_ok=sentinels_ok,
                              pair_margins=margins["pair"], critic_probes=critic_probes)
    return {
        "counts": counts,
        "rates": rates,
        "acceptance": acc,
        "token_stats": tok,
        "margins": margins,
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "sentinels_ok": sentinels_ok,
        "critic_probes": critic_probes,
        "thresholds": thresholds.to_dict(),
        "thresholds_passed": not failed,
        "failed_reasons": failed,
    }


def apply_thresholds(t: QCThresholds, *, n_generated: int, rates: dict, delimiter_leaks: int, median_tokens: float | None,
                     acceptance: dict, sentinels_ok: bool | None, pair_margins: dict, critic_probes: dict | None) -> list[str]:
    """The failed checks (QC-01..QC-06, QC-09), one readable reason each; empty means the gate passes."""
    failed: list[str] = []
    if n_generated == 0:
        failed.append("no responses were generated")
    if rates["runaway_rate"] >= t.max_runaway_rate and n_generated:
        failed.append(f"QC-01 runaway rate {rates['runaway_rate']:.3f} >= {t.max_runaway_rate}")
    if rates["token_limit_rate"] >= t.max_token_limit_rate and n_generated:
        failed.append(f"QC-02 token-limit hit rate {rates['token_limit_rate']:.3f} >= {t.max_token_limit_rate}")
    if delimiter_leaks > t.max_delimiter_leaks:
        failed.append(f"QC-03 delimiter leaks in kept responses {delimiter_leaks} > {t.max_delimiter_leaks}")
    if median_tokens is None:
        failed.append("QC-04 no kept responses, median tokens undefined")
    elif median_tokens >= t.max_median_tokens:
        failed.append(f"QC-04 median tokens of kept responses {median_tokens} >= {t.max_median_tokens}")
    if acceptance["instruction_acceptance_rate"] < t.min_instruction_acceptance:
        failed.append(f"QC-05 instruction acceptance {acceptance['instruction_acceptance_rate']:.3f} < {t.min_instruction_acceptance}")
    if acceptance["pair_acceptance_rate"] < t.min_pair_acceptance:
        failed.append(f"QC-05 pair acceptance {acceptance['pair_acceptance_rate']:.3f} < {t.min_pair_acceptance}")
    if t.require_sentinels and sentinels_ok is not True:
        failed.append(f"QC-06 contamination sentinels not passed (result: {sentinels_ok})")
    failed += label_bias_failures(t, acceptance=acceptance, pair_margins=pair_margins, critic_probes=critic_probes)
    return failed


def label_bias_failures(t: QCThresholds, *, acceptance: dict, pair_margins: dict, critic_probes: dict | None) -> list[str]:
    """QC-09: no pair judge measured to discriminate, or a pair critic that accepted everything alike."""
    failed: list[str] = []
    if not pair_judges_filtering(critic_probes, t.min_judge_auroc):
        judges = (critic_probes or {}).get("judges") or {}
        measured = [f"{n} {judges[n]['auroc']:.3f}" for n in PAIR_JUDGES if isinstance((judges.get(n) or {}).get("auroc"), (int, float))]
        what = ", ".join(measured) if measured else "no pair judge was scored on the critic probes"
        failed.append(f"QC-09 no pair judge clears the probe AUROC bar {t.min_judge_auroc} ({what}): every pair judge is uninformative")
    judged, good = acceptance.get("pairs_judged", 0), acceptance.get("pairs_good", 0)
    lo, hi = pair_margins.get("min"), pair_margins.get("max")
    if judged and good == judged and lo is not None and hi is not None and hi - lo <= t.constant_margin_tolerance:
        failed.append(f"QC-09 pair acceptance is total ({good}/{judged}) with a constant margin (spread {hi - lo:.4f} <= "
                      f"{t.constant_margin_tolerance}): a label-biased critic")
    return failed


class QCSummaryError(ValueError):
    """qc_summary.json is missing, unreadable or incomplete."""


def read_qc_decision(path: str | Path) -> tuple[bool, list[str]]:
    """The gate's view of a run: what the summary says, verified complete, never recomputed."""
    path = Path(path)
    if path.is_dir():
        path = path / "qc_summary.json"
    if not path.exists():
        raise QCSummaryError(f"{path}: no QC summary; run data generation first (it writes qc_summary.json)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QCSummaryError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from e
    if not isinstance(summary, dict):
        raise QCSummaryError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    missing += [f"{group}.{k}" for group, keys in REQUIRED_FIELDS.items() if isinstance(summary.get(group), dict)
                for k in keys if k not in summary[group]]
    if missing:
        raise QCSummaryError(f"{path}: missing keys {missing}; regenerate the summary")
    passed, reasons = summary["thresholds_passed"], summary["failed_reasons"]
    if not isinstance(passed, bool):
        raise QCSummaryError(f"{path}: thresholds_passed must be true/false, got {passed!r}")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise QCSummaryError(f"{path}: failed_reasons must be a list of strings, got {reasons!r}")
    if passed == bool(reasons):
        raise QCSummaryError(f"{path}: inconsistent summary: thresholds_passed={passed} but failed_reasons={reasons}")
    try:
        thresholds = QCThresholds(**summary["thresholds"])
        derived = apply_thresholds(
            thresholds, n_generated=summary["counts"]["generated"], rates=summary["rates"],
            delimiter_leaks=summary["counts"]["delimiter_leak_in_kept"], median_tokens=summary["token_stats"]["median"],
            acceptance=summary["acceptance"], sentinels_ok=summary["sentinels_ok"],
            pair_margins=summary["margins"]["pair"], critic_probes=summary["critic_probes"],
        )
        judges = (summary["critic_probes"] or {}).get("judges") or {}
        recorded = {n: r.get("filters") for n, r in judges.items()}
        policy = {n: r["filters"] for n, r in with_policy(judges, thresholds.min_judge_auroc).items()}
    except (TypeError, ValueError, KeyError) as e:
        raise QCSummaryError(f"{path}: thresholds or values malformed ({e}); regenerate the summary") from None
    # The recorded decision must follow from the recorded values under the recorded
    # thresholds: a hand-edited verdict is refused, and the thresholds in force now are never consulted.
    if recorded != policy:
        raise QCSummaryError(f"{path}: inconsistent summary: critic_probes filters {recorded} do not follow from "
                             f"the recorded AUROCs under the bar {thresholds.min_judge_auroc} ({policy})")
    if passed != (not derived):
        raise QCSummaryError(f"{path}: inconsistent summary: thresholds_passed={passed} but its own values "
                             f"and thresholds give {derived or 'no failures'}")
    return passed, list(reasons)
