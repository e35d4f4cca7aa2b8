"""The preference-pair record (PO-01/02, PV-06): fields, builder and pure validation.

A pair is only as good as what it says about itself: which instruction, which exact
prompt the model is trained under, how far apart the critic put the two answers, and
how the rejected answer came about. The prompt is the zero-shot PR-01 frame rendered
by :func:`cai_bootstrap.prompts.render_response_prompt`, stored on the record so a
reader (and the data gate) can check it was not framed some other way.

This module holds no pipeline step and imports neither torch nor the generators: the
validation suites and the data gate import it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from cai_bootstrap.prompts import render_response_prompt
from cai_bootstrap.provenance import PREFERENCE_PAIRS, RECORD_METADATA_FIELDS

PAIRS_FILE = "pairs.jsonl"
PAIR_REJECTS_FILE = "pair_rejects.jsonl"
PAIR_QC_FILE = "pairs_qc_summary.json"

# How the rejected answer came about: a ranked-lower sample (PO-01) or a hard negative (PO-02).
SAMPLED = "sampled"
HARD_NEGATIVE_TYPES = ("unwarranted_refusal", "wrong_fact", "off_topic", "format_violation", "over_verbose", "under_explained")
NEGATIVE_TYPES = (SAMPLED, *HARD_NEGATIVE_TYPES)

PAIR_FIELDS = ("id", "instruction", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin_gap",
               "length_ratio", "negative_type", "judges", "provenance")
# judges: which judges ranked the pair and what each said of either side.
JUDGE_FIELDS = ("pair_critic", "relevance_judge", "chosen", "rejected")
# Stored numbers are rounded; derived fields must agree with their parts to this tolerance.
_TOLERANCE = 1e-6
_ROUND = 6


class PairSchemaError(ValueError):
    """A pair record breaks the schema; the message lists every problem."""


def length_ratio(chosen: str, rejected: str) -> float:
    """Rejected over chosen length in characters: over-verbose negatives sit far above 1, terse ones below."""
    return round(len(rejected.strip()) / max(1, len(chosen.strip())), _ROUND)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nonempty(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def check_pair_record(rec: Mapping[str, Any]) -> list[str]:
    """Every problem of one record, as readable lines (empty: the record is valid)."""
    if not isinstance(rec, Mapping):
        return [f"a pair record must be an object, got {type(rec).__name__}"]
    problems = [f"missing field {f!r}" for f in PAIR_FIELDS if f not in rec]
    if problems:
        return problems
    for f in ("id", "instruction", "chosen", "rejected"):
        if not _nonempty(rec[f]):
            problems.append(f"{f} must be a non-empty string")
    if not problems and rec["prompt"] != render_response_prompt(rec["instruction"]):
        problems.append(f"prompt {rec['prompt'][:60]!r} is not the zero-shot PR-01 prompt of its instruction "
                        f"{render_response_prompt(rec['instruction'])[:60]!r}")
    if _nonempty(rec["chosen"]) and _nonempty(rec["rejected"]) and rec["chosen"].strip() == rec["rejected"].strip():
        problems.append("chosen and rejected are the same text; a pair must prefer one answer over another")
    if rec["negative_type"] not in NEGATIVE_TYPES:
        problems.append(f"negative_type {rec['negative_type']!r} is unknown; known: {', '.join(NEGATIVE_TYPES)}")
    numbers = ("chosen_score", "rejected_score", "margin_gap", "length_ratio")
    bad_numbers = [f for f in numbers if not _is_number(rec[f])]
    problems += [f"{f} must be a finite number, got {rec[f]!r}" for f in bad_numbers]
    if not bad_numbers:
        if abs(rec["margin_gap"] - (rec["chosen_score"] - rec["rejected_score"])) > _TOLERANCE:
            problems.append(f"margin_gap {rec['margin_gap']} is not chosen_score - rejected_score "
                            f"({rec['chosen_score']} - {rec['rejected_score']})")
        if rec["margin_gap"] <= 0:
            problems.append(f"margin_gap {rec['margin_gap']} must be positive: the chosen answer scores higher")
        if _nonempty(rec["chosen"]) and _nonempty(rec["rejected"]) and \
                abs(rec["length_ratio"] - length_ratio(rec["chosen"], rec["rejected"])) > _TOLERANCE:
            problems.append(f"length_ratio {rec['length_ratio']} does not match the texts "
                            f"({length_ratio(rec['chosen'], rec['rejected'])})")
    judges = rec["judges"]
    if not isinstance(judges, Mapping) or any(k not in judges for k in JUDGE_FIELDS):
        problems.append(f"judges must be an object with {list(JUDGE_FIELDS)}")
    elif not all(isinstance(judges[k], bool) for k in ("pair_critic", "relevance_judge")):
        problems.append("judges.pair_critic and judges.relevance_judge must be true/false")
    prov = rec["provenance"]
    if not isinstance(prov, Mapping):
        problems.append("provenance must be an object (the PV-01 metadata block)")
    else:
        missing = [f for f in RECORD_METADATA_FIELDS if prov.get(f) is None]
        if missing:
            problems.append(f"provenance lacks {missing}")
        elif prov["artifact_type"] != PREFERENCE_PAIRS:
            problems.append(f"provenance.artifact_type must be {PREFERENCE_PAIRS!r}, got {prov['artifact_type']!r}")
    return problems


def check_pair_records(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems of a whole file: each record's, by line, and ids that repeat."""
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for i, rec in enumerate(records, start=1):
        problems += [f"record {i}: {p}" for p in check_pair_record(rec)]
        rid = rec.get("id") if isinstance(rec, Mapping) else None
        if rid is not None:
            if rid in seen:
                problems.append(f"record {i}: id {rid!r} repeats record {seen[rid]}")
            seen.setdefault(rid, i)
    return problems


def pair_record(
    *,
    id: str,
    instruction: str,
    chosen: str,
    rejected: str,
    chosen_score: float,
    rejected_score: float,
    negative_type: str,
    judges: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> dict:
    """One valid pair record; the prompt, margin gap and length ratio are derived here, never passed in."""
    rec = {
        "id": id,
        "instruction": instruction,
        "prompt": render_response_prompt(instruction) if _nonempty(instruction) else instruction,
        "chosen": chosen.strip() if isinstance(chosen, str) else chosen,
        "rejected": rejected.strip() if isinstance(rejected, str) else rejected,
        "chosen_score": round(chosen_score, _ROUND) if _is_number(chosen_score) else chosen_score,
        "rejected_score": round(rejected_score, _ROUND) if _is_number(rejected_score) else rejected_score,
        "margin_gap": None,
        "length_ratio": None,
        "negative_type": negative_type,
        "judges": dict(judges),
        "provenance": dict(provenance),
    }
    if _is_number(rec["chosen_score"]) and _is_number(rec["rejected_score"]):
        rec["margin_gap"] = round(rec["chosen_score"] - rec["rejected_score"], _ROUND)
    if _nonempty(chosen) and _nonempty(rejected):
        rec["length_ratio"] = length_ratio(chosen, rejected)
    problems = check_pair_record(rec)
    if problems:
        raise PairSchemaError(f"pair {id!r}: " + "; ".join(problems))
    return rec
