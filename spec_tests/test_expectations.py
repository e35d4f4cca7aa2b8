"""PV-06: every artifact type has a Great Expectations suite; good batches pass, each broken one fails by name.

Great Expectations costs about a second per file on a laptop CPU, so each fixture folder
is validated once per module and the tests read the shared reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cai_bootstrap import provenance as pv
from cai_bootstrap import validation as v

FIXTURES = Path(__file__).parent / "fixtures" / "artifacts"
GOOD = FIXTURES / "good"
BROKEN = FIXTURES / "broken"


@pytest.fixture(scope="module")
def suites():
    return v.load_suites()


@pytest.fixture(scope="module")
def good_reports(suites):
    return {r.path.name: r for r in v.validate_paths([GOOD])}


@pytest.fixture(scope="module")
def broken_reports(suites):
    return {r.path.parent.name: r for r in v.validate_paths([BROKEN])}


# -- the suites themselves ------------------------------------------------------------------------


@pytest.mark.spec("PV-06")
def test_every_artifact_type_has_a_suite_naming_its_clauses(suites):
    covered = {s.artifact_type for s in suites}
    assert covered == set(pv.ARTIFACT_TYPES)
    for s in suites:
        assert "PV-06" in s.clauses and len(s.clauses) >= 2, f"{s.path.name} must name the clauses it checks"
        assert s.file_names, f"{s.path.name} names no files it applies to"
        for e in s.definition["expectations"]:
            assert (e.get("meta") or {}).get("clause") in s.clauses, f"{s.path.name}: {e} names no clause of the suite"


@pytest.mark.spec("PV-06")
def test_every_checked_column_has_an_existence_expectation(suites):
    """A missing column must fail with its own named expectation, not an opaque error."""
    for s in suites:
        exists = set()
        for e in s.definition["expectations"]:
            if e["type"] == "expect_table_columns_to_match_set":
                assert e["kwargs"].get("exact_match") is False, "extra fields are allowed; required ones are listed"
                exists.update(e["kwargs"]["column_set"])
            elif e["type"] == "expect_column_to_exist":
                exists.add(e["kwargs"]["column"])
        assert s.columns <= exists, f"{s.path.name}: no existence check for {sorted(s.columns - exists)}"


@pytest.mark.spec("PV-06")
def test_malformed_suite_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text('{"name": "x", "meta": {"artifact_type": "nonsense"}}')
    with pytest.raises(v.ValidationSetupError, match="x.json"):
        v.load_suites(tmp_path)
    with pytest.raises(v.ValidationSetupError, match="no expectation suites"):
        v.load_suites(tmp_path / "missing")


# -- table shaping ----------------------------------------------------------------------------------------


def test_flatten_keeps_empty_objects_lists_and_named_objects():
    rec = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "h": {"x": 1}}
    assert v.flatten(rec, keep=["h"]) == {"a.b": 1, "a.c.d": [1, 2], "e": {}, "h": {"x": 1}}


@pytest.mark.spec("PV-06")
def test_artifact_type_from_name_or_content(tmp_path, suites):
    assert v.detect_artifact_type(GOOD / "dataset.jsonl", suites) == pv.SFT_RECORDS
    renamed = tmp_path / "batch_0007.jsonl"
    shutil.copy(GOOD / "dataset.jsonl", renamed)
    assert v.detect_artifact_type(renamed, suites) == pv.SFT_RECORDS, "metadata.artifact_type names the suite"
    other = tmp_path / "summary_copy.json"
    shutil.copy(GOOD / "training_manifest.json", other)
    assert v.detect_artifact_type(other, suites) == pv.TRAINING_MANIFEST
    (tmp_path / "notes.json").write_text("{}")
    report = v.validate_file(tmp_path / "notes.json", suites=suites)
    assert not report.ok and "--type" in report.error


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.mark.spec("PV-06")
def test_good_batches_pass(good_reports):
    assert {r.artifact_type for r in good_reports.values()} == set(pv.ARTIFACT_TYPES)
    for r in good_reports.values():
        assert r.ok, r.format()
        assert r.n_checks > 20 and r.n_rows >= 1


BROKEN_CASES = [
    # (fixture folder, expectation that must fail, column it must name)
    ("sft_missing_field", "expect_column_values_to_not_be_null", "pair_critique.margin"),
    ("sft_margin_wrong_type", "expect_column_values_to_be_in_type_list", "pair_critique.margin"),
    ("sft_duplicate_instruction", "expect_column_values_to_be_unique", "instruction"),
    ("sft_delimiter_leak", "expect_column_values_to_not_match_regex", "response"),
    ("qc_rate_out_of_range", "expect_column_values_to_be_between", "rates.runaway_rate"),
    ("session_bad_hash", "expect_column_values_to_match_regex", "sha256"),
    ("training_missing_lora_r", "expect_table_columns_to_match_set", "hyperparameters.lora.r"),
    ("eval_p_adjusted_out_of_range", "expect_column_values_to_be_between", "p_adjusted"),
    ("pairs_unknown_type", "expect_column_values_to_be_in_set", "negative_type"),
    ("sft_empty", "expect_table_row_count_to_be_between", None),
]


@pytest.mark.spec("PV-06")
@pytest.mark.parametrize("case, expectation, column", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_batch_fails_with_the_right_expectation(broken_reports, case, expectation, column):
    r = broken_reports[case]
    assert not r.ok and r.error is None, r.format()
    assert [(f.expectation, f.column) for f in r.failures] == [(expectation, column)], r.format()
    assert expectation in r.format() and (column is None or column in r.format())


@pytest.mark.spec("PV-06", "OPS-02")
def test_malformed_line_is_reported_with_its_number(broken_reports):
    r = broken_reports["sft_malformed_line"]
    assert not r.ok and "line 2" in r.error


@pytest.mark.spec("PV-06")
def test_failure_messages_point_at_lines(broken_reports):
    assert "line 2" in broken_reports["sft_delimiter_leak"].format()
    assert "by_type['word_count']" in broken_reports["eval_p_adjusted_out_of_range"].format()


# -- what the code writes is what the suites accept ----------------------------------------------------------


@pytest.mark.spec("PV-01", "PV-02", "PV-06")
def test_records_and_manifest_built_by_provenance_pass_their_suites(tmp_path):
    crit = {"is_good": True, "predicted_label": "A", "logp_a": -0.1, "logp_b": -2.3, "margin": 2.2, "confident": True}
    load_prov = {"loader_version": "abc123", "model_name": "tiny-random", "quantization": "none", "template_disabled": True}
    gen = {"seed": 7, "temperature": 0.4, "max_new_tokens": 80, "do_sample": True, "top_p": 0.9}
    records = [
        pv.sft_record(f"Name {n} fruits.", "Apple, pear.", instruction_critique=crit, pair_critique=crit,
                      metadata=pv.record_metadata(script_name="test", generation=gen, load_provenance=load_prov))
        for n in ("two", "three")
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = pv.new_session_manifest(planned_artifacts=["dataset.jsonl"], budgets={"target": 2}, notes="test run")
    pv.add_generated_artifact(manifest, run / "dataset.jsonl", run)
    pv.write_manifest(run / "session_manifest.json", manifest)
    reports = v.validate_paths([run])
    assert sorted(r.artifact_type for r in reports) == [pv.SESSION_MANIFEST, pv.SFT_RECORDS]
    assert all(r.ok for r in reports), "\n".join(r.format() for r in reports)


# -- command line and dependencies ------------------------------------------------------------------------------


@pytest.mark.spec("PV-06")
def test_validate_command_exit_codes_and_messages(capsys):
    from cai_bootstrap.cli import main

    assert main(["validate", str(GOOD / "training_manifest.json")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["validate", str(BROKEN / "training_missing_lora_r")]) == 1
    out = capsys.readouterr().out
    assert "expect_table_columns_to_match_set(hyperparameters.lora.r)" in out and "FAIL" in out
    assert main(["validate", "--type", "nonsense", str(GOOD)]) == 2
    assert "known:" in capsys.readouterr().err
    assert main(["validate", str(GOOD / "no_such_file.json")]) == 1
    assert "no such file" in capsys.readouterr().out


@pytest.mark.spec("PV-06")
def test_validation_does_not_import_torch():
    """CI jobs that only check artifacts install the validate extra, without torch."""
    code = textwrap.dedent(
        f"""
        import sys
        import cai_bootstrap.validation as v
        import cai_bootstrap.commands.validate_cmds
        reports = v.validate_paths([{str(GOOD / "training_manifest.json")!r}])
        assert reports[0].ok, reports[0].format()
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.spec("QC-09", "PV-06")
@pytest.mark.parametrize(
    "judges, pair_good, ok",
    [
        ({"instruction_filters": True, "pair_filters": True, "relevance_filters": False, "relevance_passed": False}, True, True),
        # The A/B pair critic is below the probe bar: its B verdict stays on the record, relevance filtered.
        ({"instruction_filters": True, "pair_filters": False, "relevance_filters": True, "relevance_passed": True}, False, True),
        # A filtering critic said B: the record should have been dropped.
        ({"instruction_filters": True, "pair_filters": True, "relevance_filters": False, "relevance_passed": False}, False, False),
        # The filtering relevance judge failed the pair: likewise.
        ({"instruction_filters": True, "pair_filters": False, "relevance_filters": True, "relevance_passed": False}, True, False),
    ],
)
def test_kept_records_passed_every_judge_that_filtered(tmp_path, judges, pair_good, ok):
    good = {"is_good": True, "predicted_label": "A", "logp_a": -0.1, "logp_b": -2.3, "margin": 2.2, "confident": True}
    bad = {"is_good": False, "predicted_label": "B", "logp_a": -2.3, "logp_b": -0.1, "margin": 2.2, "confident": True}
    md = pv.record_metadata(script_name="test", generation={"seed": 1, "temperature": 0.4, "max_new_tokens": 80, "do_sample": True},
                            load_provenance={"loader_version": "abc", "model_name": "m", "quantization": "none", "template_disabled": True})
    recs = [pv.sft_record(f"Name {n} fruits.", "Apple, pear.", instruction_critique=good,
                          pair_critique=good if pair_good else bad, metadata=md, judges=judges) for n in ("two", "three")]
    path = tmp_path / "dataset.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (report,) = v.validate_paths([path])
    assert report.ok is ok, report.format()
