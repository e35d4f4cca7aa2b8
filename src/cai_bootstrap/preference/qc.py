"""Pair QC (PO-01/02): what a pairs run is made of, and whether it may train a model.

A preference set can look large and teach little: every pair the same kind of
negative (the model learns "never refuse" and nothing else), chosen and rejected
answers the critic barely told apart, or rejected answers that differ mainly in length
(the model learns "be long"). The summary records each of these and the verdict
follows from the recorded values under the recorded thresholds, so a gate can re-derive
it instead of trusting it (the same rule as Stage-1 QC, QC-08).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from cai_bootstrap.preference.schema import NEGATIVE_TYPES, PAIR_QC_FILE
from cai_bootstrap.provenance import PAIR_QC_SUMMARY
from cai_bootstrap.qc import distribution

# The A/B margin gap (plus relevance) a pair needs to be kept (PO-01): below it the critic
# could not tell the answers apart and the pair is noise.
DEFAULT_MIN_MARGIN_GAP = 0.5
# No negative type may make up more than this share of the pairs.
DEFAULT_MAX_TYPE_SHARE = 0.6
REQUIRED_KEYS = ("artifact_type", "counts", "shares", "margin_gap", "length_ratio", "thresholds", "thresholds_passed",
                 "failed_reasons")


class PairQCError(ValueError):
    """A pair QC summary is missing, malformed or inconsistent with its own values."""


@dataclass(frozen=True)
class PairQCThresholds:
    min_pairs: int = 1
    min_margin_gap: float = DEFAULT_MIN_MARGIN_GAP
    max_type_share: float = DEFAULT_MAX_TYPE_SHARE
    # A pair whose two sides are the same text teaches nothing and is never allowed.
    max_chosen_equals_rejected: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.min_pairs, int) or self.min_pairs < 1:
            raise ValueError(f"min_pairs must be an integer >= 1, got {self.min_pairs!r}")
        if not isinstance(self.min_margin_gap, (int, float)) or self.min_margin_gap <= 0:
            raise ValueError(f"min_margin_gap must be > 0, got {self.min_margin_gap!r}")
        if not isinstance(self.max_type_share, (int, float)) or not 0 < self.max_type_share <= 1:
            raise ValueError(f"max_type_share must be in (0, 1], got {self.max_type_share!r}")
        if self.max_chosen_equals_rejected != 0:
            raise ValueError("max_chosen_equals_rejected is 0: chosen == rejected is never allowed")

    def to_dict(self) -> dict:
        return asdict(self)


def loosened_pair_thresholds(recorded: PairQCThresholds, required: PairQCThresholds) -> list[str]:
    """Each recorded threshold looser than the required one (QC-08 applied to pairs)."""
    out = []
    for name, looser in (("min_pairs", recorded.min_pairs < required.min_pairs),
                         ("min_margin_gap", recorded.min_margin_gap < required.min_margin_gap),
                         ("max_type_share", recorded.max_type_share > required.max_type_share)):
        if looser:
            out.append(f"{name} {getattr(recorded, name)!r} is looser than the required {getattr(required, name)!r}")
    return out


def apply_pair_thresholds(t: PairQCThresholds, *, counts: Mapping[str, Any], shares: Mapping[str, float],
                          margin_gap: Mapping[str, Any]) -> list[str]:
    """Failed reasons, from recorded values only (so a reader can re-derive the verdict)."""
    reasons = []
    if counts["pairs"] < t.min_pairs:
        reasons.append(f"pairs {counts['pairs']} < min_pairs {t.min_pairs}")
    if counts["chosen_equals_rejected"] > t.max_chosen_equals_rejected:
        reasons.append(f"chosen_equals_rejected {counts['chosen_equals_rejected']} > 0")
    if margin_gap["min"] is not None and margin_gap["min"] < t.min_margin_gap:
        reasons.append(f"margin_gap min {margin_gap['min']} < min_margin_gap {t.min_margin_gap}")
    for kind in NEGATIVE_TYPES:
        if shares[kind] > t.max_type_share:
            reasons.append(f"share of {kind} {shares[kind]} > max_type_share {t.max_type_share}")
    return reasons


def compute_pair_qc(records: Sequence[Mapping[str, Any]], *, n_instructions: int, drop_reasons: Mapping[str, int],
                    thresholds: PairQCThresholds) -> dict:
    """The QC summary of a pairs run from its kept records and its drop counts."""
    n = len(records)
    by_type = Counter(r["negative_type"] for r in records)
    unknown = sorted(set(by_type) - set(NEGATIVE_TYPES))
    if unknown:
        raise ValueError(f"records carry unknown negative types {unknown}")
    counts = {
        "pairs": n,
        "instructions": n_instructions,
        "instructions_with_pairs": len({r["instruction"] for r in records}),
        "chosen_equals_rejected": sum(1 for r in records if r["chosen"].strip() == r["rejected"].strip()),
        "by_negative_type": {k: by_type.get(k, 0) for k in NEGATIVE_TYPES},
        "rejects": int(sum(drop_reasons.values())),
    }
    shares = {k: round(by_type.get(k, 0) / n, 6) if n else 0.0 for k in NEGATIVE_TYPES}
    gaps = distribution([r["margin_gap"] for r in records])
    ratios = {
        "all": distribution([r["length_ratio"] for r in records]),
        "by_negative_type": {k: distribution([r["length_ratio"] for r in records if r["negative_type"] == k])["median"]
                             for k in NEGATIVE_TYPES},
    }
    reasons = apply_pair_thresholds(thresholds, counts=counts, shares=shares, margin_gap=gaps)
    return {
        "artifact_type": PAIR_QC_SUMMARY,
        "counts": counts,
        "shares": shares,
        "margin_gap": gaps,
        "length_ratio": ratios,
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "thresholds": thresholds.to_dict(),
        "thresholds_passed": not reasons,
        "failed_reasons": reasons,
    }


def read_pair_qc_decision(path: str | Path) -> tuple[bool, list[str]]:
    """The gate's view: the recorded verdict, refused unless it follows from the recorded values."""
    path = Path(path)
    if path.is_dir():
        path = path / PAIR_QC_FILE
    if not path.is_file():
        raise PairQCError(f"{path}: no pair QC summary; run `cai-bootstrap pairs` first (it writes {PAIR_QC_FILE})")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PairQCError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(summary, dict):
        raise PairQCError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        raise PairQCError(f"{path}: missing keys {missing}; regenerate the pairs run")
    passed, reasons = summary["thresholds_passed"], summary["failed_reasons"]
    if not isinstance(passed, bool) or not isinstance(reasons, list):
        raise PairQCError(f"{path}: thresholds_passed must be true/false and failed_reasons a list")
    try:
        t = thresholds_from(summary["thresholds"])
        derived = apply_pair_thresholds(t, counts=summary["counts"], shares=summary["shares"], margin_gap=summary["margin_gap"])
    except (TypeError, ValueError, KeyError) as e:
        raise PairQCError(f"{path}: thresholds or values malformed ({e}); regenerate the pairs run") from None
    if passed != (not derived) or passed == bool(reasons):
        raise PairQCError(f"{path}: inconsistent summary: thresholds_passed={passed}, failed_reasons={reasons}, "
                          f"but its own values and thresholds give {derived or 'no failures'}")
    return passed, list(reasons)


def thresholds_from(data: Mapping[str, Any]) -> PairQCThresholds:
    known = {f.name for f in fields(PairQCThresholds)}
    extra = sorted(set(data) - known)
    if extra:
        raise ValueError(f"unknown pair QC thresholds {extra}; known: {sorted(known)}")
    return PairQCThresholds(**data)
