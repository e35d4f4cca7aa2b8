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
REASON_DUPLICATE_PAIR = "duplicate_pair"
REASON_NOT_APPLICABLE = "negative_not_applicable"
REASON_NO_CANDIDATE = "no_usable_candidate"
REASON_SEEN_IN_STAGE1 = "seen_in_stage1"
REASON_FORBIDDEN_TEXT = "forbidden_text"
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
    paired: set[str] = set()
    for other in [*ranked[1:], *negatives]:
        gap = best.score(relevance_weight) - other.score(relevance_weight)
        base = {"stage": "pairs", "id": f"{item_id}-{other.id or other.source}", "instruction": instruction,
                "negative_type": other.source, "chosen": best.text, "rejected": other.text, "margin_gap": round(gap, 6)}
        if other.text.strip() == best.text.strip():
            out.rejects.append({**base, "reason": REASON_SAME_TEXT})
            continue
        if other.text.strip() in paired:  # two samples with the same text would make the same pair twice
            out.rejects.append({**base, "reason": REASON_DUPLICATE_PAIR})
            continue
        if gap < min_margin_gap:
            out.rejects.append({**base, "reason": REASON_GAP_LOW})
            continue
        paired.add(other.text.strip())
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
    """Instructions new to Stage 1 and to the eval set, and the rest as rejects: against Stage 1 by the
    dedup rule (exact, normalized, ROUGE-L > 0.7), against the eval set by the SFT-06 check the DPO
    gate applies (that rule plus the order-free word-set test); instructions the data gate would
    refuse for their content (screening.py) are rejects too."""
    from cai_bootstrap.dedup import DuplicateIndex
    from cai_bootstrap.screening import text_problems
    from cai_bootstrap.sft.data_gate import find_leaks

    seen = DuplicateIndex()
    for text in stage1:
        seen.add(text)
    leaks = {h.train_index: (h.kind, h.eval_text, h.score)
             for h in find_leaks([it["instruction"] for it in items], [(str(k), t) for k, t in enumerate(eval_items)])}
    kept, rejects = [], []
    for i, it in enumerate(items):
        text = it["instruction"]
        problems = text_problems(text, kind="instruction")
        if problems:
            rejects.append({"stage": "instructions", "reason": REASON_FORBIDDEN_TEXT, "id": it.get("id"),
                            "instruction": text[:500], "problems": problems})
            continue
        hit_eval = leaks.get(i)
        hit = hit_eval or seen.check(text)
        if hit is None:
            kept.append(dict(it))
            seen.add(text)  # later items are deduplicated against earlier ones too
            continue
        kind, matched, score = hit
        rejects.append({"stage": "instructions", "reason": REASON_IN_EVAL if hit_eval else REASON_SEEN_IN_STAGE1,
                        "match": kind, "id": it.get("id"), "instruction": text, "matched": matched, "rouge_l": round(score, 4)})
    return kept, rejects


# -- the runner (I/O) ------------------------------------------------------------------------------------

SCRIPT_NAME = "cai_bootstrap.preference.pairs"


def _read_instructions(path) -> list[dict]:
    from cai_bootstrap.io_utils import iter_jsonl

    items = []
    first_line: dict[str, int] = {}
    for line, rec in iter_jsonl(path):
        if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
            raise ValueError(f"{path}: line {line}: needs a non-empty 'instruction'")
        raw_id = rec.get("id", f"line-{line}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
            raise ValueError(f"{path}: line {line}: 'id' must be a non-empty string or a whole number, got {raw_id!r:.80}")
        item_id = str(raw_id)
        if item_id in first_line:  # pair ids derive from it; a repeat would fail only after all the sampling
            raise ValueError(f"{path}: line {line}: id {item_id!r} repeats line {first_line[item_id]}; give each instruction its own id")
        first_line[item_id] = line
        items.append({"id": item_id, "instruction": rec["instruction"].strip()})
    if not items:
        raise ValueError(f"{path}: no instructions")
    return items


def stage1_instructions(stage1_data) -> list[str]:
    """Instructions of the Stage-1 dataset, read only after its manifest's hashes check out."""
    from pathlib import Path

    from cai_bootstrap.io_utils import read_jsonl
    from cai_bootstrap.provenance import verify_inputs
    from cai_bootstrap.sft.data_gate import DATASET_FILE, MANIFEST_FILE

    verified = verify_inputs(Path(stage1_data) / MANIFEST_FILE, required=[DATASET_FILE])
    return [r["instruction"] for r in read_jsonl(verified[DATASET_FILE])]


def check_pairs_output(cfg) -> None:
    """OPS-06 / PV-07: the output folder is not one of the run's inputs and holds no run of another kind."""
    from pathlib import Path

    from cai_bootstrap.preference.run_dir import MANIFEST_FILE, PAIRS_FILE
    from cai_bootstrap.safe_paths import refuse_foreign

    out = Path(cfg.out_dir).resolve()
    for name in ("stage1_data", "sft_run", "instructions"):
        src = getattr(cfg, name)
        if src is not None and (out == Path(src).resolve() or out in Path(src).resolve().parents
                                or Path(src).resolve() in out.parents):
            refuse_foreign(out, f"overlaps the run's input {name} ({src})", option="out_dir")
    manifest = out / MANIFEST_FILE
    # A pairs run's manifest lists its pairs file; any other run in the folder is not ours to replace.
    if manifest.is_file() and PAIRS_FILE not in manifest.read_text(encoding="utf-8", errors="replace"):
        refuse_foreign(out, f"holds a run that is not a pairs run ({manifest.name} lists no {PAIRS_FILE})", option="out_dir")


def run_pairs(cfg, *, lm=None) -> dict:
    """Sample, judge, pair and write one pairs run (``cfg``: :class:`PairsConfig`); return its QC summary.

    One writer at a time holds the output folder (OPS-06); it may not overlap the inputs.
    """
    from cai_bootstrap.run_lock import run_lock

    check_pairs_output(cfg)
    with run_lock(cfg.out_dir, "pairs"):
        return _run_pairs_locked(cfg, lm=lm)


def _run_pairs_locked(cfg, *, lm=None) -> dict:
    from pathlib import Path

    from cai_bootstrap import cleaning, prompts
    from cai_bootstrap.critic import pair_critic, relevance_judge
    from cai_bootstrap.preference.qc import compute_pair_qc
    from cai_bootstrap.preference.run_dir import write_pairs_run
    from cai_bootstrap.provenance import PREFERENCE_PAIRS, record_metadata, utc_now
    from cai_bootstrap.sft.data_gate import load_eval_instructions

    started = utc_now()
    out = Path(cfg.out_dir)
    items, rejects = new_instructions(_read_instructions(cfg.instructions), stage1_instructions(cfg.stage1_data),
                                      [t for _, t in load_eval_instructions(cfg.eval_set)])
    kinds = check_negative_kinds(cfg.negative_types)
    own = lm is None
    if own:
        lm = _load(cfg)
    critic = pair_critic(lm, threshold=cfg.critic_threshold, batch_size=cfg.batch_size, calibrate=True)
    judge = relevance_judge(lm, batch_size=cfg.batch_size) if cfg.relevance_weight > 0 else None

    def scored_many(groups: Sequence[tuple[str, Sequence[tuple[str, str, str]]]]) -> list[list[Scored]]:
        """Per group (instruction, [(id, source, text)]), its texts judged by the pair critic and the relevance
        judge, all groups in one batched pass per judge."""
        flat = [(ins, t) for ins, texts in groups for t in texts]
        if not flat:
            return [[] for _ in groups]
        ab = critic.score([{"instruction": ins, "response": t} for ins, (_, _, t) in flat])
        rel = judge.score([(ins, t) for ins, (_, _, t) in flat]) if judge else [None] * len(flat)
        it = iter(zip(flat, ab, rel))
        return [[Scored(t, a.difference, r.score if r else None, source=s, id=i) for ((_, (i, s, t)), a, r) in
                 (next(it) for _ in texts)] for _, texts in groups]

    from cai_bootstrap.decoding import BLANK_LINE, DEFAULT_TOP_K

    gen = {"seed": cfg.seed, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "do_sample": True,
           "top_p": cfg.top_p, "top_k": DEFAULT_TOP_K, "k": cfg.k, "batch_size": cfg.batch_size, "stop_at_blank_line": True}
    # All k samples of every instruction in one batched call: seeded per batch, reproducible for a fixed
    # seed and batch size; a row stops at its first blank line (cleaning keeps the first paragraph only).

    rows = [(it, j) for it in items for j in range(cfg.k)]
    gens = lm.generate([prompts.render_response_prompt(it["instruction"]) for it, _ in rows], max_new_tokens=cfg.max_new_tokens,
                       do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=gen["top_k"], seed=cfg.seed,
                       batch_size=cfg.batch_size,
                       progress=not getattr(cfg, "quiet", False), desc="pairs: candidates", stop_strings=(BLANK_LINE,))
    texts_of: dict[str, list[tuple[str, str, str]]] = {it["id"]: [] for it in items}
    for (it, j), g in zip(rows, gens):
        res = cleaning.clean_response(g.text, n_tokens=g.n_tokens, max_new_tokens=cfg.max_new_tokens, special_tokens=g.special_tokens)
        if res.kept:
            texts_of[it["id"]].append((f"c{j}", SAMPLED, res.text))
        else:
            rejects.append(cleaning.reject_record(res, g.text, id=f"{it['id']}-c{j}", instruction=it["instruction"]))
    judged = scored_many([(it["instruction"], texts_of[it["id"]]) for it in items])
    per_item = [(it, cfg.seed + 7919 * (n + 1), cands) for n, (it, cands) in enumerate(zip(items, judged))]
    pool = [rank(cands, cfg.relevance_weight)[0].text for _, _, cands in per_item if cands]
    made_of = {}
    for it, seed, cands in per_item:
        if cands:
            made, neg_rejects = hard_negative_texts(it["id"], rank(cands, cfg.relevance_weight)[0].text, kinds, seed, pool)
            rejects += neg_rejects
            made_of[it["id"]] = made
    instruction_of = {it["id"]: it["instruction"] for it in items}
    negs_of = dict(zip(made_of, scored_many([(instruction_of[k], [(n, n, t) for n, t in m]) for k, m in made_of.items()])))
    pairs = []
    for it, seed, cands in per_item:
        if not cands:
            rejects.append({"stage": "pairs", "reason": REASON_NO_CANDIDATE, "id": it["id"], "instruction": it["instruction"]})
            continue
        negs = negs_of[it["id"]]

        def prov(chosen: Scored, rejected: Scored, _it=it, _seed=seed) -> dict:
            return record_metadata(script_name=SCRIPT_NAME, artifact_type=PREFERENCE_PAIRS, load_provenance=lm.provenance,
                                   generation={**gen, "negative_seed": _seed},
                                   extra={"instruction_id": _it["id"], "chosen_id": chosen.id, "rejected_id": rejected.id,
                                          "rejected_from": "sampled candidate" if rejected.source == SAMPLED else "rule on the chosen answer"})

        sel = select_pairs(it["id"], it["instruction"], cands, negs, min_margin_gap=cfg.min_margin_gap,
                           relevance_weight=cfg.relevance_weight, provenance=prov)
        pairs += sel.pairs
        rejects += sel.rejects
    from collections import Counter

    drops = Counter(f"{r['stage']}:{r['reason']}" for r in rejects)
    summary = compute_pair_qc(pairs, n_instructions=len(items), drop_reasons=dict(drops), thresholds=cfg.qc)
    write_pairs_run(out, pairs, rejects, summary, config=cfg.model_dump(mode="json"), load_provenance=lm.provenance,
                    started_at=started)
    if own:
        lm.release()
    return summary


def _load(cfg):
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.model_sources import resolve_model

    resolved = resolve_model(cfg.model, profile=cfg.profile)
    if cfg.sft_run is None:
        return load_base_model(resolved.source, profile=resolved.profile, device=cfg.device)
    from cai_bootstrap.evaluation.runner import load_trained_model
    from cai_bootstrap.preference.train_dpo import check_sft_run

    adapter = check_sft_run(cfg.sft_run, resolved.source)["adapter_path"]  # PV-07: the base weights it was trained on
    return load_trained_model(resolved.source, adapter, profile=resolved.profile, device=cfg.device)
