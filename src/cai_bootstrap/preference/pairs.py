"""Best-of-N preference pairs (PO-01) with hard negatives (PO-02): pure selection logic.

For each instruction new to Stage 1, k candidates are sampled; each gets a score, the
A/B pair critic's calibrated ``logp_A - logp_B`` plus ``relevance_weight`` times the
relevance judge's score (conditional minus unconditional log-probability per token),
so an answer must be both judged good and about its instruction. The best candidate is
chosen; each other candidate makes a pair with it only when the score gap clears
``min_margin_gap``: below that the critic could not tell them apart and the pair would
be noise. Hard negatives are made from the chosen answer (:mod:`.negatives`), scored by
the same judges, and held to the same gap. Every dropped candidate or negative has a
stable reason, counted in the QC summary and kept in the rejects file.

The runner (:func:`run_pairs`) does the I/O: model loading, sampling, judging, writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from cai_bootstrap.preference.negatives import make_negative
from cai_bootstrap.preference.qc import DEFAULT_MIN_MARGIN_GAP
from cai_bootstrap.preference.schema import HARD_NEGATIVE_TYPES, SAMPLED, pair_record

DEFAULT_K = 3  # PO-01: candidates per instruction
DEFAULT_RELEVANCE_WEIGHT = 1.0

REASON_GAP_LOW = "margin_gap_low"
REASON_SAME_TEXT = "chosen_equals_rejected"
REASON_NOT_APPLICABLE = "negative_not_applicable"
REASON_NO_CANDIDATE = "no_usable_candidate"
REASON_SEEN_IN_STAGE1 = "seen_in_stage1"
REASON_IN_EVAL = "in_eval_set"


@dataclass(frozen=True)
class Scored:
    """One answer with what the judges said of it."""

    text: str
    ab_margin: float  # calibrated logp_A - logp_B of the pair critic (A = good)
    relevance: float | None = None  # the relevance judge's score, None when it did not take part
    source: str = SAMPLED  # "sampled" or the hard-negative type it was made as
    id: str = ""

    def score(self, relevance_weight: float) -> float:
        return self.ab_margin + (relevance_weight * self.relevance if self.relevance is not None else 0.0)

    def judged(self) -> dict:
        return {"ab_margin": self.ab_margin, "relevance": self.relevance}


@dataclass
class Selection:
    pairs: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def rank(candidates: Sequence[Scored], relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT) -> list[Scored]:
    """Best first; ties broken by id so the order never depends on sampling order."""
    return sorted(candidates, key=lambda c: (-c.score(relevance_weight), c.id))


def select_pairs(
    item_id: str,
    instruction: str,
    candidates: Sequence[Scored],
    negatives: Sequence[Scored] = (),
    *,
    min_margin_gap: float = DEFAULT_MIN_MARGIN_GAP,
    relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT,
    provenance: Callable[[Scored, Scored], Mapping[str, Any]],
) -> Selection:
    """Pairs (best sampled candidate, each other candidate or negative) above the gap; rejects with reasons.

    ``provenance(chosen, rejected)`` returns the record's PV-01 block.
    """
    out = Selection()
    ranked = rank(candidates, relevance_weight)
    if not ranked:
        out.rejects.append({"stage": "pairs", "reason": REASON_NO_CANDIDATE, "id": item_id, "instruction": instruction})
        return out
    best = ranked[0]
    use_relevance = any(c.relevance is not None for c in [*ranked, *negatives])
    for other in [*ranked[1:], *negatives]:
        gap = best.score(relevance_weight) - other.score(relevance_weight)
        base = {"stage": "pairs", "id": f"{item_id}-{other.id or other.source}", "instruction": instruction,
                "negative_type": other.source, "chosen": best.text, "rejected": other.text, "margin_gap": round(gap, 6)}
        if other.text.strip() == best.text.strip():
            out.rejects.append({**base, "reason": REASON_SAME_TEXT})
            continue
        if gap < min_margin_gap:
            out.rejects.append({**base, "reason": REASON_GAP_LOW})
            continue
        out.pairs.append(pair_record(
            id=base["id"], instruction=instruction, chosen=best.text, rejected=other.text,
            chosen_score=best.score(relevance_weight), rejected_score=other.score(relevance_weight),
            negative_type=other.source,
            judges={"pair_critic": True, "relevance_judge": use_relevance, "chosen": best.judged(), "rejected": other.judged()},
            provenance=provenance(best, other)))
    return out


def hard_negative_texts(item_id: str, chosen: str, kinds: Sequence[str], seed: int, pool: Sequence[str]
                        ) -> tuple[list[tuple[str, str]], list[dict]]:
    """(kind, text) of each applicable hard negative of ``chosen``, plus a reject per kind that does not apply."""
    made, rejects = [], []
    for j, kind in enumerate(kinds):
        text = make_negative(kind, chosen, seed + j, pool)
        if text is None:
            rejects.append({"stage": "negatives", "reason": REASON_NOT_APPLICABLE, "id": f"{item_id}-{kind}",
                            "negative_type": kind, "chosen": chosen})
        else:
            made.append((kind, text))
    return made, rejects


def check_negative_kinds(kinds: Sequence[str]) -> list[str]:
    unknown = [k for k in kinds if k not in HARD_NEGATIVE_TYPES]
    if unknown:
        raise ValueError(f"unknown hard-negative types {unknown}; known: {', '.join(HARD_NEGATIVE_TYPES)}")
    return list(kinds)


def new_instructions(items: Sequence[Mapping[str, Any]], stage1: Sequence[str], eval_items: Sequence[str]
                     ) -> tuple[list[dict], list[dict]]:
    """Instructions new to Stage 1 and to the eval set (exact, normalized, ROUGE-L > 0.7, via dedup), and the rest as rejects."""
    from cai_bootstrap.dedup import DuplicateIndex

    seen = DuplicateIndex()
    for text in stage1:
        seen.add(text)
    held_out = DuplicateIndex()
    for text in eval_items:
        held_out.add(text)
    kept, rejects = [], []
    for it in items:
        text = it["instruction"]
        hit_eval = held_out.check(text)
        hit = hit_eval or seen.check(text)
        if hit is None:
            kept.append(dict(it))
            seen.add(text)  # later items are deduplicated against earlier ones too
            continue
        kind, matched, score = hit
        rejects.append({"stage": "instructions", "reason": REASON_IN_EVAL if hit_eval else REASON_SEEN_IN_STAGE1,
                        "match": kind, "id": it.get("id"), "instruction": text, "matched": matched, "rouge_l": round(score, 4)})
    return kept, rejects
