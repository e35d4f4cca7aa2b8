"""PV-06 for preference pairs: the record schema, the pair QC summary and a validated pairs run directory."""

from __future__ import annotations

import json

import pytest

from cai_bootstrap import validation as v
from cai_bootstrap.preference import qc as pqc
from cai_bootstrap.preference.schema import (
    NEGATIVE_TYPES,
    PAIR_QC_FILE,
    PAIRS_FILE,
    PairSchemaError,
    check_pair_record,
    check_pair_records,
    pair_record,
)
from cai_bootstrap.provenance import PAIR_QC_SUMMARY, PREFERENCE_PAIRS, SESSION_MANIFEST

from spec_tests.preference_support import make_pairs, make_pairs_run, provenance


@pytest.mark.spec("PV-06", "PO-01")
def test_pair_record_carries_the_exact_pr01_prompt_and_derived_fields():
    rec = make_pairs()[2]
    assert rec["prompt"] == "Instruction: Say how many legs a spider has.\nResponse:"
    assert rec["margin_gap"] == pytest.approx(2.0) and rec["length_ratio"] == pytest.approx(len("A spider has six legs.") / len("A spider has eight legs."))
    assert rec["negative_type"] == "wrong_fact" and rec["provenance"]["artifact_type"] == PREFERENCE_PAIRS
    assert check_pair_record(rec) == []


def _mutate(**changes):
    def f(rec):
        rec.update(changes)
        return rec
    return f


SCHEMA_CASES = [
    # (change to a valid record, words the problem must contain)
    (_mutate(prompt="Q: Say how many legs a spider has.\nA:"), "not the zero-shot PR-01 prompt"),
    (_mutate(prompt="Instruction: Say how many legs a spider has.\n\nResponse:"), "not the zero-shot PR-01 prompt"),
    (_mutate(rejected="A spider has eight legs."), "same text"),
    (_mutate(negative_type="rudeness"), "negative_type 'rudeness' is unknown"),
    (_mutate(margin_gap=5.0), "is not chosen_score - rejected_score"),
    (_mutate(chosen_score=0.5, rejected_score=2.5, margin_gap=-2.0), "must be positive"),
    (_mutate(length_ratio=1.0), "length_ratio 1.0 does not match"),
    (_mutate(chosen_score=float("nan")), "chosen_score must be a finite number"),
    (_mutate(judges={"pair_critic": True}), "judges must be an object"),
    (lambda r: {k: x for k, x in r.items() if k != "provenance"}, "missing field 'provenance'"),
    (lambda r: {**r, "provenance": {**r["provenance"], "artifact_type": "sft_records"}}, "provenance.artifact_type must be"),
    (_mutate(chosen="  "), "chosen must be a non-empty string"),
]


@pytest.mark.spec("PV-06", "PO-01", "PO-02")
@pytest.mark.parametrize("change, expected", SCHEMA_CASES, ids=[c[1][:30] for c in SCHEMA_CASES])
def test_schema_check_names_each_broken_field(change, expected):
    rec = change(json.loads(json.dumps(make_pairs()[2])))
    problems = check_pair_record(rec)
    assert any(expected in p for p in problems), problems


@pytest.mark.spec("PV-06")
def test_builder_refuses_an_invalid_pair_and_ids_must_be_unique():
    with pytest.raises(PairSchemaError, match="same text"):
        pair_record(id="x", instruction="Name a fruit.", chosen="Apple.", rejected=" Apple. ", chosen_score=2.0,
                    rejected_score=1.0, negative_type="sampled", judges={"pair_critic": True, "relevance_judge": False,
                                                                          "chosen": {}, "rejected": {}}, provenance=provenance())
    a, b = make_pairs()[:2]
    assert any("repeats record 1" in p for p in check_pair_records([a, {**b, "id": a["id"]}]))


QC_CASES = [
    # (pair indices from make_pairs, thresholds, failed-reason fragments)
    ((0, 1, 2, 3, 4), pqc.PairQCThresholds(), []),
    ((0, 1, 2, 3, 4), pqc.PairQCThresholds(min_margin_gap=2.0), ["margin_gap min"]),
    ((1,), pqc.PairQCThresholds(), ["share of unwarranted_refusal 1.0 > max_type_share"]),
    ((0, 1), pqc.PairQCThresholds(min_pairs=3), ["pairs 2 < min_pairs 3"]),
]


@pytest.mark.spec("PO-01", "PO-02")
@pytest.mark.parametrize("idx, thresholds, expected", QC_CASES)
def test_pair_qc_verdict_follows_from_shares_gaps_and_counts(idx, thresholds, expected):
    pairs = [make_pairs()[i] for i in idx]
    s = pqc.compute_pair_qc(pairs, n_instructions=4, drop_reasons={"margin_gap_low": 2}, thresholds=thresholds)
    assert s["thresholds_passed"] is (not expected)
    assert len(s["failed_reasons"]) == len(expected)
    assert all(any(e in r for r in s["failed_reasons"]) for e in expected), s["failed_reasons"]
    assert set(s["shares"]) == set(NEGATIVE_TYPES) and s["counts"]["chosen_equals_rejected"] == 0
    assert s["length_ratio"]["all"]["n"] == len(pairs) and s["counts"]["rejects"] == 2


@pytest.mark.spec("PO-01")
def test_pair_qc_counts_chosen_equal_to_rejected_and_fails_it():
    bad = dict(make_pairs()[0], rejected=make_pairs()[0]["chosen"])
    s = pqc.compute_pair_qc([bad, *make_pairs()[1:]], n_instructions=4, drop_reasons={}, thresholds=pqc.PairQCThresholds())
    assert s["counts"]["chosen_equals_rejected"] == 1 and not s["thresholds_passed"]
    with pytest.raises(ValueError, match="never allowed"):
        pqc.PairQCThresholds(max_chosen_equals_rejected=1)


@pytest.mark.spec("PO-01", "QC-08")
def test_gate_reading_refuses_an_edited_verdict_and_reports_loosened_thresholds(tmp_path):
    run = make_pairs_run(tmp_path / "run", [make_pairs()[1]])  # one type only: fails the share threshold
    passed, reasons = pqc.read_pair_qc_decision(run)
    assert passed is False and reasons
    path = run / PAIR_QC_FILE
    s = json.loads(path.read_text())
    s.update(thresholds_passed=True, failed_reasons=[])
    path.write_text(json.dumps(s))
    with pytest.raises(pqc.PairQCError, match="inconsistent summary"):
        pqc.read_pair_qc_decision(run)
    loose = pqc.loosened_pair_thresholds(pqc.PairQCThresholds(max_type_share=1.0, min_margin_gap=0.1), pqc.PairQCThresholds())
    assert [x.split()[0] for x in loose] == ["min_margin_gap", "max_type_share"]


@pytest.mark.spec("PV-06", "PV-05")
def test_pairs_run_dir_validates_like_a_stage1_run(tmp_path, capsys):
    from cai_bootstrap.cli import main

    run = make_pairs_run(tmp_path / "pairs")
    reports = v.validate_paths([run])
    assert sorted(r.artifact_type for r in reports) == sorted([PREFERENCE_PAIRS, PAIR_QC_SUMMARY, SESSION_MANIFEST])
    assert all(r.ok for r in reports), "\n".join(r.format() for r in reports)
    assert main(["validate", str(run)]) == 0
    capsys.readouterr()
    # A pair whose type is unknown fails its suite by name, through the same command.
    lines = (run / PAIRS_FILE).read_text().splitlines()
    rec = json.loads(lines[0])
    rec["negative_type"] = "rudeness"
    (run / PAIRS_FILE).write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
    assert main(["validate", str(run)]) == 1
    assert "expect_column_values_to_be_in_set(negative_type)" in capsys.readouterr().out


@pytest.mark.spec("PV-06")
def test_suite_catches_what_only_a_suite_sees(tmp_path):
    """Rows the builder would refuse, written by hand: the suite must still name each one."""
    rows = [dict(r) for r in make_pairs()]
    rows[0]["prompt"] = "Q: " + rows[0]["instruction"]
    rows[1]["rejected_score"] = rows[1]["chosen_score"] + 1
    rows[2]["judges"] = {**rows[2]["judges"], "pair_critic": "yes"}
    path = tmp_path / "x.pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = v.validate_file(path)
    got = {(f.expectation, f.column) for f in r.failures}
    assert ("expect_column_values_to_match_regex", "prompt") in got
    assert ("expect_column_pair_values_a_to_be_greater_than_b", "chosen_score, rejected_score") in got
    assert ("expect_column_values_to_be_in_type_list", "judges.pair_critic") in got
