"""SFT-01: the hard data gate in code; SFT-06: no eval item in the training data."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cai_bootstrap.dedup import jaccard, normalize, rouge_l
from cai_bootstrap.sft.config import config_from_dict
from cai_bootstrap.sft.data_gate import (
    DataGateError,
    EvalLeakageError,
    check_dataset_gate,
    check_no_leakage,
    find_leaks,
    load_eval_instructions,
)
from spec_tests.sft_support import make_generation_run, make_records, no_expectation_failures


@pytest.fixture
def run_dir(tmp_path):
    return make_generation_run(tmp_path / "run")


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load weights fails the test: the gates must stop the run before that."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded although a gate should have refused the run")

    monkeypatch.setattr("cai_bootstrap.loader.load_base_model", boom)
    monkeypatch.setattr("cai_bootstrap.model_sources.resolve_model", boom)


def _cfg(run_dir, out, **extra):
    return config_from_dict({"model": "tiny-random", "dataset": str(run_dir), "output_dir": str(out), "smoke": True,
                             "max_length": 64, "epochs": 1, "gradient_accumulation_steps": 1, **extra})


# -- SFT-01 --------------------------------------------------------------------------------------------


@pytest.mark.spec("SFT-01", "PV-05")
def test_gate_passes_a_finished_run_with_the_real_expectation_suite(run_dir):
    gate = check_dataset_gate(run_dir)  # default validator: the sft_records Great Expectations suite
    assert list(gate.checks) == ["manifest", "hashes", "qc", "qc_thresholds", "expectations", "records"]
    assert len(gate.records) == len(make_records())
    manifest = json.loads((run_dir / "session_manifest.json").read_text())
    pinned = {e["path"]: e["sha256"] for e in manifest["generated_artifacts"]}
    assert gate.dataset_sha256 == pinned["dataset.jsonl"]
    assert check_dataset_gate(run_dir / "dataset.jsonl").dataset_path == gate.dataset_path


def _no_manifest(run):
    (run / "session_manifest.json").unlink()


def _edited_dataset(run):
    with open(run / "dataset.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(make_records()[0]) + "\n")


def _missing_dataset(run):
    (run / "dataset.jsonl").unlink()


def _edited_qc(run):
    p = run / "qc_summary.json"
    p.write_text(p.read_text().replace('"thresholds_passed": true', '"thresholds_passed": true '))


def _unlisted_dataset(run):
    m = json.loads((run / "session_manifest.json").read_text())
    m["generated_artifacts"] = [e for e in m["generated_artifacts"] if e["path"] != "dataset.jsonl"]
    (run / "session_manifest.json").write_text(json.dumps(m))


@pytest.mark.spec("SFT-01", "PV-05")
@pytest.mark.parametrize(
    "damage, check, words",
    [
        pytest.param(_no_manifest, "manifest", ["session_manifest.json", "does not exist", "Fix"], id="manifest-missing"),
        pytest.param(_edited_dataset, "hashes", ["dataset.jsonl", "changed", "Fix"], id="dataset-edited"),
        pytest.param(_missing_dataset, "hashes", ["dataset.jsonl", "missing", "Fix"], id="dataset-missing"),
        pytest.param(_edited_qc, "hashes", ["qc_summary.json", "changed"], id="qc-summary-edited"),
        pytest.param(_unlisted_dataset, "hashes", ["not listed"], id="dataset-not-in-manifest"),
    ],
)
def test_gate_refuses_unverified_inputs(run_dir, damage, check, words):
    damage(run_dir)
    with pytest.raises(DataGateError) as e:
        check_dataset_gate(run_dir, validator=no_expectation_failures)
    assert e.value.check == check
    for w in words:
        assert w in str(e.value)


@pytest.mark.spec("SFT-01")
def test_gate_refuses_failed_qc(tmp_path):
    run = make_generation_run(tmp_path / "run", qc_passed=False)
    with pytest.raises(DataGateError) as e:
        check_dataset_gate(run, validator=no_expectation_failures)
    assert e.value.check == "qc"
    assert "thresholds_passed: false" in str(e.value) and "QC-05" in str(e.value) and "Fix" in str(e.value)


@pytest.mark.spec("SFT-01", "PV-06")
def test_gate_refuses_records_failing_the_expectation_suite(tmp_path):
    records = make_records()
    del records[2]["pair_critique"]  # hashed and QC-passed, but not a PV-01 record
    records[3]["metadata"]["template_disabled"] = False
    run = make_generation_run(tmp_path / "run", records)
    with pytest.raises(DataGateError) as e:
        check_dataset_gate(run)
    assert e.value.check == "expectations"
    assert "Great Expectations" in str(e.value) and "pair_critique" in str(e.value)


@pytest.mark.spec("SFT-01")
def test_gate_refuses_empty_fields(tmp_path):
    records = make_records()
    records[1]["response"] = "  "
    run = make_generation_run(tmp_path / "run", records)
    with pytest.raises(DataGateError) as e:
        check_dataset_gate(run, validator=no_expectation_failures)
    assert e.value.check == "records" and "record 2" in str(e.value)


@pytest.mark.spec("SFT-01")
def test_training_refuses_before_loading_a_model(run_dir, tmp_path, no_model_load):
    """The gate is on the training path itself, not only in nox: run_training stops at it."""
    from cai_bootstrap.sft.train import GATE_MANIFEST_NAME, run_training

    _edited_dataset(run_dir)
    out = tmp_path / "out"
    with pytest.raises(DataGateError, match=r"\[hashes\]"):
        run_training(_cfg(run_dir, out), device_info={"cuda_available": False})
    decision = json.loads((out / GATE_MANIFEST_NAME).read_text())  # GT-05: the refusal is recorded
    assert decision["decision"] == "fail" and decision["gate"] == "sft_data"
    assert not (out / "TRAINING_SUCCESS").exists()


@pytest.mark.spec("SFT-01")
def test_cli_reports_gate_failures_without_traceback(run_dir, tmp_path, capsys, no_model_load):
    from cai_bootstrap.cli import main

    _no_manifest(run_dir)
    rc = main(["train", "--dataset", str(run_dir), "--out", str(tmp_path / "o"), "--smoke", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "[manifest]" in err and "Traceback" not in err


# -- QC-08: the thresholds a summary was judged under are checked, not only its verdict ---------------


def _rehash(run):
    """Re-pin the run's files in its manifest, as someone covering an edit would."""
    from cai_bootstrap.provenance import add_generated_artifact, new_session_manifest, write_manifest

    old = json.loads((run / "session_manifest.json").read_text())
    manifest = new_session_manifest(planned_artifacts=["dataset.jsonl", "qc_summary.json"])
    if "config" in old:
        manifest["config"] = old["config"]
    for name in ("dataset.jsonl", "qc_summary.json"):
        add_generated_artifact(manifest, run / name, run)
    write_manifest(run / "session_manifest.json", manifest)


def _loosen(run, **changes):
    p = run / "qc_summary.json"
    summary = json.loads(p.read_text())
    summary["thresholds"].update(changes)
    p.write_text(json.dumps(summary))
    _rehash(run)


@pytest.mark.spec("QC-08", "SFT-01")
@pytest.mark.parametrize(
    "changes, named",
    [
        ({"max_token_limit_rate": 0.99}, ["max_token_limit_rate", "0.99", "0.1"]),
        ({"max_runaway_rate": 0.5}, ["max_runaway_rate"]),
        ({"max_delimiter_leaks": 3}, ["max_delimiter_leaks"]),
        ({"max_median_tokens": 400.0}, ["max_median_tokens"]),
        ({"min_pair_acceptance": 0.0}, ["min_pair_acceptance"]),
        ({"min_instruction_acceptance": 0.1, "max_runaway_rate": 0.9}, ["min_instruction_acceptance", "max_runaway_rate"]),
        ({"require_sentinels": False}, ["require_sentinels"]),
        ({"min_judge_auroc": 0.5}, ["min_judge_auroc"]),
        ({"constant_margin_tolerance": 0.0}, ["constant_margin_tolerance"]),
    ],
)
def test_gate_refuses_a_summary_judged_under_loosened_thresholds(run_dir, changes, named):
    _loosen(run_dir, **changes)
    with pytest.raises(DataGateError) as e:
        check_dataset_gate(run_dir, validator=no_expectation_failures)
    assert e.value.check == "qc_thresholds"
    for w in named:
        assert w in str(e.value)


@pytest.mark.spec("QC-08", "SFT-01")
@pytest.mark.parametrize(
    "changes",
    [{}, {"max_token_limit_rate": 0.05}, {"min_pair_acceptance": 0.5, "max_median_tokens": 30.0}],  # equal or stricter
)
def test_gate_accepts_thresholds_at_least_as_strict(run_dir, changes):
    _loosen(run_dir, **changes)
    assert check_dataset_gate(run_dir, validator=no_expectation_failures).checks["qc_thresholds"]


@pytest.mark.spec("QC-08", "SFT-01")
def test_gate_holds_a_summary_to_its_run_config_and_to_an_explicit_requirement(run_dir):
    from cai_bootstrap.qc import QCThresholds

    # The run's own config asked for stricter thresholds than its summary records.
    m = json.loads((run_dir / "session_manifest.json").read_text())
    m["config"] = {"qc": {**QCThresholds().to_dict(), "max_runaway_rate": 0.01}}
    (run_dir / "session_manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataGateError, match=r"\[qc_thresholds\].*max_runaway_rate"):
        check_dataset_gate(run_dir, validator=no_expectation_failures)
    fresh = make_generation_run(run_dir.parent / "fresh")
    with pytest.raises(DataGateError, match="min_pair_acceptance"):
        check_dataset_gate(fresh, validator=no_expectation_failures,
                           required_thresholds=QCThresholds(min_pair_acceptance=0.9))


# -- SFT-06 --------------------------------------------------------------------------------------------


EVAL = [
    ("e1", "Write a haiku about the ocean at night."),
    ("e2", "List exactly 5 sports, one per line, as a numbered list."),
    ("e3", "Translate 'good morning' into French."),
]


@pytest.mark.spec("SFT-06")
@pytest.mark.parametrize(
    "train, kind, eval_id",
    [
        pytest.param("Write a haiku about the ocean at night.", "exact", "e1", id="exact"),
        pytest.param("write a HAIKU about the ocean, at night!", "normalized", "e1", id="normalized"),
        pytest.param("List exactly 5 sports, one per line, as a bulleted list.", "near_duplicate", "e2", id="near-duplicate"),
        pytest.param("Translate 'thank you very much' into Spanish and German.", None, None, id="related-but-distinct"),
        pytest.param("Name a fruit that is yellow.", None, None, id="unrelated"),
    ],
)
def test_leak_kinds(train, kind, eval_id):
    hits = find_leaks([train], EVAL)
    if kind is None:
        assert hits == []
    else:
        assert [(h.kind, h.eval_id, h.train_index) for h in hits] == [(kind, eval_id, 0)]


@pytest.mark.spec("SFT-06")
def test_leak_aborts_listing_every_pair():
    records = [{"instruction": t} for t in ("Name a fruit.", EVAL[0][1], "translate 'GOOD morning' into french")]
    with pytest.raises(EvalLeakageError) as e:
        check_no_leakage(records, EVAL)
    assert [(h.kind, h.train_index, h.eval_id) for h in e.value.hits] == [("exact", 1, "e1"), ("normalized", 2, "e3")]
    msg = str(e.value)
    assert "training record 2" in msg and "eval item e1" in msg and "eval item e3" in msg and "Fix" in msg
    assert check_no_leakage([{"instruction": "Name a fruit."}], EVAL)["hits"] == 0


@pytest.mark.spec("SFT-06", "EV-01")
def test_shipped_eval_set_is_checked_by_default():
    items = load_eval_instructions()
    assert len(items) >= 100 and len({i for i, _ in items}) == len(items)
    hits = find_leaks([items[5][1], items[7][1].upper()], items)
    assert [(h.kind, h.eval_id) for h in hits] == [("exact", items[5][0]), ("normalized", items[7][0])]


@pytest.mark.spec("SFT-06")
def test_training_aborts_on_leak_before_loading(tmp_path, no_model_load):
    from cai_bootstrap.sft.train import run_training

    eval_text = load_eval_instructions()[0][1]
    records = make_records() + make_records([(eval_text.rstrip(".") + " please.", "Sure.")])
    run = make_generation_run(tmp_path / "run", records)
    with pytest.raises(EvalLeakageError) as e:
        run_training(_cfg(run, tmp_path / "out"), device_info={"cuda_available": False}, validator=no_expectation_failures)
    assert e.value.hits[0].train_index == len(records) - 1


WORDS = ["write", "a", "list", "of", "three", "short", "poems", "about", "cats", "dogs", "the", "sea"]


@pytest.mark.spec("SFT-06")
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9), min_size=1, max_size=6),
    st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9), min_size=1, max_size=6),
)
def test_pruned_search_equals_brute_force(train_words, eval_words):
    """The inverted-index pruning never hides a near duplicate that plain ROUGE-L (or the word-set
    Jaccard beside it) would find."""
    train = [" ".join(w) for w in train_words]
    evals = [(f"e{j}", " ".join(w)) for j, w in enumerate(eval_words)]
    got = {h.train_index for h in find_leaks(train, evals)}
    want = {
        i
        for i, t in enumerate(train)
        if any(t == e or normalize(t) == normalize(e) or rouge_l(t, e) > 0.7 or jaccard(t, e) >= 0.7 for _, e in evals)
    }
    assert got == want


@pytest.mark.spec("SFT-06")
def test_leak_check_is_fast_enough_for_real_datasets():
    """15k training instructions against the shipped set in seconds (bounded by the index, not 6M ROUGE-L calls)."""
    import time

    items = load_eval_instructions()
    rng = random.Random(0)
    vocab = [w for _, t in items for w in normalize(t).split()]
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 14))) for _ in range(3000)]
    t = time.perf_counter()
    find_leaks(train, items)
    assert time.perf_counter() - t < 20


@pytest.mark.spec("QC-08")
def test_every_qc_threshold_has_a_direction():
    """A threshold the comparison does not know would be loosened unnoticed."""
    from dataclasses import fields

    from cai_bootstrap import qc

    known = set(qc._STRICTER_WHEN_LOWER) | set(qc._STRICTER_WHEN_HIGHER) | set(qc._MUST_EQUAL)
    assert {f.name for f in fields(qc.QCThresholds)} == known
    # A higher probe bar is no stricter: it stops an informative judge from filtering.
    assert qc.loosened_thresholds(qc.QCThresholds(min_judge_auroc=0.9), qc.QCThresholds())


@pytest.mark.spec("SFT-06")
@pytest.mark.parametrize("text, leaks", [
    ("Write a sentence about snowfall using exactly 8 words.", True),     # the eval item's words, reordered
    ("Write, using exactly 8 words, a sentence about snowfall!", True),
    ("Describe a volcano in exactly 12 words.", False),  # the same kind of item, another one
    ("Describe the water cycle in three sentences.", False),
])
def test_leakage_check_is_word_order_free(text, leaks):
    from cai_bootstrap.dedup import rouge_l
    from cai_bootstrap.sft.data_gate import EvalLeakageError, check_no_leakage

    eval_items = [("word_count-000", "Using exactly 8 words, write a sentence about snowfall.")]
    if text.startswith("Write a sentence"):
        assert rouge_l(text, eval_items[0][1]) < 0.7  # ROUGE-L alone lets it through
    if leaks:
        with pytest.raises(EvalLeakageError) as e:
            check_no_leakage([{"instruction": text}], eval_items)
        assert e.value.hits[0].kind in ("reordered", "near_duplicate")
    else:
        assert check_no_leakage([{"instruction": text}], eval_items)["hits"] == 0


@pytest.mark.spec("SFT-06", "DG-09")
def test_word_set_matches_equal_the_pairwise_jaccard():
    import random

    from cai_bootstrap.dedup import best_set_matches, jaccard

    rng = random.Random(0)
    words = "write a short poem about the sea using exactly five words list three colours of sky".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    refs = texts[:40]
    got = {(i, j) for i, j, _ in best_set_matches(texts, refs, 0.7, batch=64)}
    for i, t in enumerate(texts):
        scores = [jaccard(t, r) for r in refs]
        best = max(range(len(refs)), key=lambda j: (scores[j], -j))
        assert ((i, best) in got) == (scores[best] >= 0.7), (t, refs[best], scores[best])


SCREEN_CASES = [  # (field, bad text, words in the refusal)
    ("instruction", "Say hi.<|im_start|>assistant", "chat/role marker"),
    ("response", "Hello <start_of_turn>model", "chat/role marker"),
    ("response", "Sure. <think>plan</think> Hi.", "chat/role marker"),
    ("response", "Hi.<|endoftext|>", "chat/role marker"),
    ("instruction", "Name a colour.\x00", "control character"),
    ("response", "Blue\x1b[31m.", "control character"),
    ("response", "The answer is \u202eeulb.", "bidirectional-text control"),
    ("instruction", "Name a\u200b colour.", "zero-width character"),
    ("response", "Blue.\nResponse: Red.", "new prompt inside the answer"),
    ("instruction", "Name a colour.\nResponse: blue\nInstruction: x", "prompt-frame line"),
    ("instruction", "x" * 50_000, "over the 2,000"),
]


@pytest.mark.spec("CG-03", "SFT-01", "PV-06")
@pytest.mark.parametrize("field, text, words", SCREEN_CASES, ids=[f"{c[0]}-{c[2]}" for c in SCREEN_CASES])
def test_validate_and_train_check_screen_content_before_any_model_loads(field, text, words, tmp_path, capsys, monkeypatch):
    from cai_bootstrap.cli import main
    import cai_bootstrap.loader as L

    monkeypatch.setattr(L, "load_base_model", lambda *a, **k: pytest.fail("a model was loaded"))
    records = make_records()
    records[2] = {**records[2], field: text}
    run = make_generation_run(tmp_path / "run", records)
    assert main(["validate", str(run)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["train", "--dataset", str(run), "--model", "tiny-random", "--out", str(tmp_path / "sft"), "--check"]) == 2
    err = capsys.readouterr().err
    assert "record 3" in err or "expect_column" in err, err
    from cai_bootstrap.screening import record_problems

    assert any(words in p for p in record_problems(records, {"instruction": "instruction", "response": "response"}))


@pytest.mark.spec("PV-06")
def test_the_suites_screen_with_the_data_gates_own_rules():
    """The suites' patterns are the screening module's, so the two cannot drift apart."""
    import json
    from pathlib import Path

    import cai_bootstrap.screening as S

    folder = Path(S.__file__).parent / "data" / "expectations"
    for name, columns in (("sft_records.json", ["instruction", "response"]),
                          ("preference_pairs.json", ["instruction", "chosen", "rejected"])):
        rules = {}
        for e in json.loads((folder / name).read_text())["expectations"]:
            rule = (e.get("meta") or {}).get("rule")
            if rule:
                value = e["kwargs"].get("regex", e["kwargs"].get("max_value"))
                rules.setdefault(rule, {})[e["kwargs"]["column"]] = value
        for rule, by_column in rules.items():
            want = getattr(S, rule.split(".", 1)[1])
            assert set(by_column.values()) == {want}, (name, rule)
        assert set(rules["screening.FORBIDDEN_PATTERN"]) == set(columns)
