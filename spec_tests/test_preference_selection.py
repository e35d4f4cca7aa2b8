"""PO-01 / PO-02: Best-of-N ranking, the margin-gap rule, hard negatives and new instructions, on plain data."""

from __future__ import annotations

import pytest

from cai_bootstrap.preference import negatives as neg
from cai_bootstrap.preference.pairs import (
    DEFAULT_K,
    REASON_GAP_LOW,
    REASON_IN_EVAL,
    REASON_NOT_APPLICABLE,
    REASON_SAME_TEXT,
    REASON_SEEN_IN_STAGE1,
    Scored,
    hard_negative_texts,
    new_instructions,
    rank,
    select_pairs,
)
from cai_bootstrap.preference.schema import HARD_NEGATIVE_TYPES, check_pair_record

from spec_tests.preference_support import provenance

INSTR = "Say how many legs a spider has."


def _prov(chosen, rejected):
    return provenance()


def _sel(cands, negs=(), **kw):
    return select_pairs("i0", INSTR, cands, negs, provenance=_prov, **kw)


@pytest.mark.spec("PO-01")
def test_default_k_is_three():
    assert DEFAULT_K == 3


RANK_CASES = [
    # (candidates as (id, ab_margin, relevance), relevance_weight, expected order)
    ([("a", 1.0, None), ("b", 3.0, None), ("c", 2.0, None)], 1.0, ["b", "c", "a"]),
    ([("a", 2.0, 1.5), ("b", 3.0, -1.0)], 1.0, ["a", "b"]),  # relevance turns the critic's order
    ([("a", 2.0, 1.5), ("b", 3.0, -1.0)], 0.0, ["b", "a"]),
    ([("b", 1.0, None), ("a", 1.0, None)], 1.0, ["a", "b"]),  # ties by id, not by sampling order
]


@pytest.mark.spec("PO-01")
@pytest.mark.parametrize("cands, weight, order", RANK_CASES)
def test_rank_by_critic_margin_plus_relevance(cands, weight, order):
    scored = [Scored(f"answer {i}", m, r, id=i) for i, m, r in cands]
    assert [c.id for c in rank(scored, weight)] == order


GAP_CASES = [
    # (ab margins of k=3 candidates, min gap, kept rejected ids, dropped ids)
    ((3.0, 2.0, 0.5), 0.5, ["c1", "c2"], []),
    ((3.0, 2.8, 0.5), 0.5, ["c2"], ["c1"]),
    ((3.0, 2.9, 2.8), 0.5, [], ["c1", "c2"]),
    ((3.0, 2.0, 0.5), 1.5, ["c2"], ["c1"]),
]


@pytest.mark.spec("PO-01")
@pytest.mark.parametrize("margins, gap, kept, dropped", GAP_CASES)
def test_pairs_best_with_each_other_only_above_the_gap(margins, gap, kept, dropped):
    cands = [Scored(f"A spider has {n} legs.", m, id=f"c{i}") for i, (m, n) in enumerate(zip(margins, ("eight", "six", "ten")))]
    sel = _sel(cands, min_margin_gap=gap)
    assert [p["id"] for p in sel.pairs] == [f"i0-{k}" for k in kept]
    assert all(p["chosen"] == "A spider has eight legs." and p["negative_type"] == "sampled" for p in sel.pairs)
    assert all(p["margin_gap"] >= gap and check_pair_record(p) == [] for p in sel.pairs)
    assert [r["id"] for r in sel.rejects] == [f"i0-{d}" for d in dropped]
    assert all(r["reason"] == REASON_GAP_LOW for r in sel.rejects)


@pytest.mark.spec("PO-01")
def test_identical_candidate_is_never_a_pair_and_selection_is_deterministic():
    cands = [Scored("A spider has eight legs.", 3.0, id="c0"), Scored("A spider has eight legs. ", 0.0, id="c1")]
    sel = _sel(cands)
    assert sel.pairs == [] and [r["reason"] for r in sel.rejects] == [REASON_SAME_TEXT]
    many = [Scored(f"Answer number {i}.", float(i), id=f"c{i}") for i in range(3)]
    assert [p["id"] for p in _sel(many).pairs] == [p["id"] for p in _sel(list(reversed(many))).pairs]


@pytest.mark.spec("PO-01")
def test_two_samples_with_the_same_text_make_one_pair():
    """k samples often repeat an answer; each repeat would be the same (instruction, chosen, rejected) row again."""
    from cai_bootstrap.preference.pairs import REASON_DUPLICATE_PAIR
    from cai_bootstrap.preference.schema import HARD_NEGATIVE_TYPES

    cands = [Scored("Eight.", 3.0, id="c0"), Scored("It has legs.", 0.0, id="c1"), Scored("It has legs.", 0.5, id="c2"),
             Scored("Six.", 1.0, id="c3")]
    negs = [Scored("It has legs.", -1.0, source=HARD_NEGATIVE_TYPES[0], id=HARD_NEGATIVE_TYPES[0])]
    sel = _sel(cands, negs, min_margin_gap=0.5)
    assert sorted(p["rejected"] for p in sel.pairs) == ["It has legs.", "Six."]
    assert [r["reason"] for r in sel.rejects] == [REASON_DUPLICATE_PAIR, REASON_DUPLICATE_PAIR]
    assert len({(p["instruction"], p["chosen"], p["rejected"]) for p in sel.pairs}) == len(sel.pairs)


NEGATIVE_CASES = [
    # (type, chosen, what the negative must show)
    ("unwarranted_refusal", "A spider has eight legs.", lambda t: t in neg.REFUSALS),
    ("wrong_fact", "Water boils at 100 degrees Celsius.", lambda t: "100" not in t and t.startswith("Water boils at 10")),
    ("wrong_fact", "A spider has eight legs.", lambda t: "eight" not in t and t.endswith(" legs.")),
    ("off_topic", "A spider has eight legs.", lambda t: t == "Jupiter is the largest planet."),
    ("format_violation", "Red, blue and yellow.", lambda t: t.startswith("- RED") and "\n" in t),
    ("format_violation", "1. Red\n2. Blue", lambda t: t == "Red Blue"),
    ("over_verbose", "A spider has eight legs.", lambda t: "A spider has eight legs." in t and len(t) >= 3 * 24),
    ("under_explained", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.", lambda t: len(t.split()) <= 4),
]


@pytest.mark.spec("PO-02")
@pytest.mark.parametrize("kind, chosen, check", NEGATIVE_CASES, ids=[c[0] for c in NEGATIVE_CASES])
def test_each_hard_negative_rule(kind, chosen, check):
    pool = ["Jupiter is the largest planet.", chosen]
    text = neg.make_negative(kind, chosen, seed=3, pool=pool)
    assert text and text.strip() != chosen.strip() and check(text), text
    assert neg.make_negative(kind, chosen, seed=3, pool=pool) == text  # deterministic


@pytest.mark.spec("PO-02")
def test_inapplicable_negatives_are_rejected_with_a_reason_and_unknown_types_fail():
    assert set(neg.NEGATIVE_RULES) == set(HARD_NEGATIVE_TYPES)
    made, rejects = hard_negative_texts("i0", "Hot.", HARD_NEGATIVE_TYPES, seed=0, pool=[])
    assert {k for k, _ in made} == {"unwarranted_refusal", "format_violation", "over_verbose"}
    assert {r["negative_type"] for r in rejects} == {"wrong_fact", "off_topic", "under_explained"}
    assert all(r["reason"] == REASON_NOT_APPLICABLE for r in rejects)
    with pytest.raises(ValueError, match="known: unwarranted_refusal"):
        neg.make_negative("rudeness", "Hot.", 0)


@pytest.mark.spec("PO-02")
def test_hard_negatives_become_typed_pairs_under_the_same_gap():
    cands = [Scored("A spider has eight legs.", 3.0, 0.5, id="c0")]
    negs = [Scored("A spider has nine legs.", 2.9, 0.5, source="wrong_fact", id="wrong_fact"),
            Scored("I am not able to answer that.", -2.0, -1.0, source="unwarranted_refusal", id="unwarranted_refusal")]
    sel = _sel(cands, negs)
    assert [(p["negative_type"], p["judges"]["relevance_judge"]) for p in sel.pairs] == [("unwarranted_refusal", True)]
    assert sel.pairs[0]["judges"]["rejected"] == {"ab_margin": -2.0, "relevance": -1.0}
    assert [(r["negative_type"], r["reason"]) for r in sel.rejects] == [("wrong_fact", REASON_GAP_LOW)]


@pytest.mark.spec("PO-01")
def test_instructions_must_be_new_to_stage1_and_the_eval_set():
    items = [{"id": "n1", "instruction": "Name a fruit that is yellow."},
             {"id": "n2", "instruction": "Explain why the sky looks blue during the day."},
             {"id": "n3", "instruction": "name a fruit that is YELLOW!"},
             {"id": "n4", "instruction": "List three uses of copper wire at home."},
             {"id": "n5", "instruction": "List three uses of copper wire in the home."}]
    kept, rejects = new_instructions(items, stage1=["Name a fruit that is yellow."],
                                     eval_items=["Explain why the sky looks blue during the day"])
    assert [k["id"] for k in kept] == ["n4"]
    assert {r["id"]: r["reason"] for r in rejects} == {"n1": REASON_SEEN_IN_STAGE1, "n2": REASON_IN_EVAL,
                                                       "n3": REASON_SEEN_IN_STAGE1, "n5": REASON_SEEN_IN_STAGE1}


@pytest.mark.spec("PO-01", "PO-02", "PV-06")
def test_pairs_runner_writes_a_valid_typed_run_of_new_instructions(tiny_lm, tmp_path):
    """Real critic and relevance judge on the tiny model; sampling scripted so answers are text."""
    import json

    from cai_bootstrap import validation as v
    from cai_bootstrap.io_utils import read_jsonl
    from cai_bootstrap.preference.pairs import run_pairs
    from cai_bootstrap.preference.pairs_config import PairsConfig
    from cai_bootstrap.preference.qc import PairQCThresholds

    from spec_tests.scripted_lm import ScriptedLM
    from spec_tests.sft_support import make_generation_run

    stage1 = make_generation_run(tmp_path / "stage1")
    instr = tmp_path / "instructions.jsonl"
    rows = [{"id": "a", "instruction": "Describe how bees find flowers in spring."},
            {"id": "b", "instruction": "Name a fruit that is yellow."},  # in the Stage-1 dataset
            {"id": "c", "instruction": "Explain why winter tires help on icy roads."},
            {"id": "d", "instruction": "Summarize the history of paper money in two sentences."}]
    instr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"id": "e", "instruction": "Summarize the history of paper money in two sentences"}) + "\n")
    cfg = PairsConfig(model="tiny-random", stage1_data=stage1, instructions=instr, out_dir=tmp_path / "pairs", eval_set=eval_set,
                      min_margin_gap=1e-4, max_new_tokens=40, batch_size=4,
                      qc=PairQCThresholds(min_margin_gap=1e-4, max_type_share=1.0))
    summary = run_pairs(cfg, lm=ScriptedLM(tiny_lm, style="clean"))
    pairs = read_jsonl(tmp_path / "pairs" / "pairs.jsonl")
    rejects = read_jsonl(tmp_path / "pairs" / "pair_rejects.jsonl")
    assert {r["id"]: r["reason"] for r in rejects if r["stage"] == "instructions"} == {"b": "seen_in_stage1", "d": "in_eval_set"}
    assert pairs and {p["instruction"] for p in pairs} <= {rows[0]["instruction"], rows[2]["instruction"]}
    assert {p["negative_type"] for p in pairs} - {"sampled"}, "hard negatives reach the pairs with their type"
    assert all(p["margin_gap"] >= 1e-4 and p["chosen"] != p["rejected"] for p in pairs)
    assert summary["counts"]["pairs"] == len(pairs) and sum(summary["counts"]["by_negative_type"].values()) == len(pairs)
    reports = v.validate_paths([tmp_path / "pairs"])
    assert all(r.ok for r in reports), "\n".join(r.format() for r in reports)


@pytest.mark.spec("PO-01")
def test_shipped_pairs_yaml_validates_and_cli_lists_both_commands(capsys):
    from pathlib import Path

    from cai_bootstrap.cli import build_parser
    from cai_bootstrap.preference.pairs_config import load_pairs_config

    p = Path(__file__).resolve().parent.parent / "src" / "cai_bootstrap" / "configs" / "pairs_default.yaml"
    cfg = load_pairs_config(p)
    assert cfg.k == DEFAULT_K and cfg.negative_types == list(HARD_NEGATIVE_TYPES) and cfg.qc.min_margin_gap == cfg.min_margin_gap
    help_text = build_parser().format_help()
    assert "pairs" in help_text and "train-dpo" in help_text
    from cai_bootstrap.sft.config import ConfigError

    with pytest.raises(ConfigError, match="k must be >= 2"):
        load_pairs_config(p, {"k": 1})
