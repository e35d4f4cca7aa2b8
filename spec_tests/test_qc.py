"""QC-01..QC-09: the pilot gate's thresholds, the summary's contents, and a gate that
reads the summary instead of recomputing it."""

from __future__ import annotations

import json
import pytest

from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.config import ConfigError, load_config
from cai_bootstrap.qc import QCSummaryError, QCThresholds, compute_qc_summary, read_qc_decision
from spec_tests.datagen_support import flowing_lm, small_config
from spec_tests.probe_support import INFORMATIVE_PROBES_AUROC, probe_results
from spec_tests.scripted_lm import ScriptedLM


def _verdict(good: bool, confident: bool = True, margin: float | None = None) -> dict:
    return {"is_good": good and confident, "predicted_label": "A" if good else "B", "logp_a": -0.3, "logp_b": -2.3,
            "margin": margin if margin is not None else (2.0 if confident else 0.3), "confident": confident}


def summary(
    *,
    n: int = 100,
    runaways: int = 0,
    limit_hits: int = 0,
    kept_texts: list[str] | None = None,
    kept_tokens: list[int] | None = None,
    instr_good: int | None = None,
    n_instr: int | None = None,
    pairs_good: int | None = None,
    n_pairs: int | None = None,
    sentinels_ok=True,
    thresholds: QCThresholds = QCThresholds(),
    probes: dict | None = None,
    pair_margin=lambda i: 2.0 + 0.1 * (i % 7),
) -> dict:
    """A summary over ``n`` generated responses; every other count defaults to a passing run
    (judges measured informative on the probes, pair margins that vary)."""
    probes = probe_results(INFORMATIVE_PROBES_AUROC) if probes is None else probes
    n_instr = n if n_instr is None else n_instr
    instr_good = n_instr if instr_good is None else instr_good
    responses = [{"id": str(i), "reason": "runaway" if i < runaways else None, "hit_token_limit": i < limit_hits,
                  "delimiter_found": i % 2 == 0, "heuristic_cutoff": i % 3 == 0} for i in range(n)]
    n_pairs = n - runaways if n_pairs is None else n_pairs
    pairs_good = n_pairs if pairs_good is None else pairs_good
    kept_tokens = [12] * pairs_good if kept_tokens is None else kept_tokens
    kept_texts = ["A short answer."] * len(kept_tokens) if kept_texts is None else kept_texts
    return compute_qc_summary(
        instruction_verdicts=[_verdict(i < instr_good) for i in range(n_instr)],
        responses=responses,
        pair_verdicts=[_verdict(i < pairs_good, margin=pair_margin(i)) for i in range(n_pairs)],
        kept_response_tokens=kept_tokens,
        kept_responses=kept_texts,
        drop_reasons={"clean_response:runaway": runaways} if runaways else {},
        sentinels_ok=sentinels_ok,
        thresholds=thresholds,
        critic_probes=probes,
    )


def failed_clauses(s: dict) -> set[str]:
    return {r.split()[0] for r in s["failed_reasons"]}


# -- QC-01..QC-06: one passing and one failing row per threshold, at the boundary --------------


@pytest.mark.spec("QC-01")
@pytest.mark.parametrize("runaways, passes", [(0, True), (4, True), (5, False), (30, False)])
def test_runaway_rate_below_five_percent(runaways, passes):
    s = summary(runaways=runaways)
    assert s["rates"]["runaway_rate"] == runaways / 100 and s["counts"]["runaway"] == runaways
    assert ("QC-01" not in failed_clauses(s)) is passes
    assert s["thresholds_passed"] is passes


@pytest.mark.spec("QC-02")
@pytest.mark.parametrize("hits, passes", [(0, True), (9, True), (10, False), (55, False)])
def test_token_limit_hit_rate_below_ten_percent(hits, passes):
    s = summary(limit_hits=hits)
    assert s["counts"]["hit_token_limit"] == hits and s["rates"]["token_limit_rate"] == hits / 100
    assert ("QC-02" not in failed_clauses(s)) is passes
    assert s["thresholds_passed"] is passes


@pytest.mark.spec("QC-03")
@pytest.mark.parametrize(
    "texts, leaks",
    [(["Fine.", "Also fine."], 0), (["Fine.", "Cut###END###"], 1), (["Cut short ###END"], 1), (["a###END###", "b###END###"], 2)],
)
def test_no_delimiter_may_leak_into_kept_responses(texts, leaks):
    s = summary(n=len(texts), kept_texts=texts, kept_tokens=[5] * len(texts))
    assert s["counts"]["delimiter_leak_in_kept"] == leaks
    assert ("QC-03" not in failed_clauses(s)) is (leaks == 0)


@pytest.mark.spec("QC-04")
@pytest.mark.parametrize(
    "tokens, median, passes", [([10, 20, 39], 20, True), ([38, 39, 41, 80], 40, False), ([39], 39, True), ([40], 40, False)]
)
def test_median_kept_tokens_below_forty_with_distribution(tokens, median, passes):
    s = summary(n=len(tokens), kept_tokens=tokens)
    stats = s["token_stats"]
    assert stats["median"] == median and stats["n"] == len(tokens)
    assert stats["mean"] == pytest.approx(sum(tokens) / len(tokens))
    assert min(tokens) <= stats["p95"] <= max(tokens)
    assert ("QC-04" not in failed_clauses(s)) is passes


@pytest.mark.spec("QC-04")
def test_no_kept_response_fails_median_check():
    s = summary(n=4, runaways=4, kept_tokens=[], n_pairs=0)
    assert s["token_stats"]["median"] is None and "QC-04" in failed_clauses(s)


@pytest.mark.spec("QC-05")
@pytest.mark.parametrize("good, passes", [(50, True), (100, True), (49, False), (0, False)])
def test_instruction_acceptance_at_least_half(good, passes):
    s = summary(instr_good=good)
    assert s["acceptance"]["instructions_good"] == good
    assert s["acceptance"]["instruction_acceptance_rate"] == good / 100
    assert any(r.startswith("QC-05 instruction") for r in s["failed_reasons"]) is not passes


@pytest.mark.spec("QC-05")
@pytest.mark.parametrize(
    "n, n_pairs, pairs_good, rate, passes",
    [
        (10, 10, 5, 0.5, True),
        (10, 10, 4, 0.4, False),
        # Every judged pair was good, but cleaning dropped 6 of 10 responses: 4/10, not 4/4.
        (10, 4, 4, 0.4, False),
        (10, 6, 6, 0.6, True),
    ],
)
def test_pair_acceptance_counts_every_generated_response(n, n_pairs, pairs_good, rate, passes):
    s = summary(n=n, n_pairs=n_pairs, pairs_good=pairs_good)
    assert s["acceptance"]["pair_acceptance_rate"] == rate
    assert any(r.startswith("QC-05 pair") for r in s["failed_reasons"]) is not passes


@pytest.mark.spec("QC-05")
def test_low_confidence_and_bad_verdicts_are_told_apart():
    s = compute_qc_summary(
        instruction_verdicts=[_verdict(True), _verdict(False), _verdict(True, confident=False), _verdict(False, confident=False)],
        responses=[{"id": "1"}], pair_verdicts=[_verdict(True)], kept_response_tokens=[3], kept_responses=["ok"],
        drop_reasons={}, sentinels_ok=True, thresholds=QCThresholds(), critic_probes=probe_results(INFORMATIVE_PROBES_AUROC),
    )
    acc = s["acceptance"]
    assert (acc["instructions_good"], acc["instructions_bad"], acc["instructions_low_confidence"]) == (1, 1, 2)


@pytest.mark.spec("QC-06")
@pytest.mark.parametrize("sentinels_ok, require, passes", [(True, True, True), (False, True, False), (None, True, False),
                                                           (None, False, True)])
def test_contamination_sentinels_must_have_passed(sentinels_ok, require, passes):
    s = summary(sentinels_ok=sentinels_ok, thresholds=QCThresholds(require_sentinels=require))
    assert s["sentinels_ok"] == sentinels_ok
    assert ("QC-06" not in failed_clauses(s)) is passes


@pytest.mark.spec("QC-06")
def test_run_takes_the_sentinel_result_from_the_generating_model(clean_run):
    lm, run = clean_run["lm"], clean_run["summary"]
    assert lm.provenance["sentinels"]["ok"] is True and run["sentinels_ok"] is True


# -- QC-07: what a run's summary file holds -----------------------------------------------------


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A run whose scripted text is clean and whose critic accepts everything it prefers: QC passes.

    The tiny model's pair margins are nearly equal for every pair, so the label-bias check
    (QC-09) is switched off for this run by a zero tolerance; the gate under test here is
    QC-08's reading of the recorded decision.
    """
    lm, model_dir, _ = flowing_lm(tmp_path_factory)
    out = tmp_path_factory.mktemp("qc") / "run"
    cfg = small_config(out, model_dir, target=4, **{"qc.constant_margin_tolerance": 0.0})
    summary = P.run_generation(cfg, lm=ScriptedLM(lm, style="clean"))
    return {"lm": lm, "model_dir": model_dir, "out": out, "cfg": cfg, "summary": summary}


@pytest.mark.spec("QC-07")
def test_summary_file_holds_every_qc07_field(clean_run):
    s = json.loads((clean_run["out"] / P.QC_SUMMARY).read_text())
    assert {"generated", "kept", "delimiter_found", "delimiter_missing", "heuristic_cutoff", "hit_token_limit"} <= set(s["counts"])
    assert {"instructions_good", "instructions_bad", "instructions_low_confidence",
            "pairs_good", "pairs_bad", "pairs_low_confidence"} <= set(s["acceptance"])
    assert {"median", "mean", "p95"} <= set(s["token_stats"])
    for critic in ("instruction", "pair"):
        m = s["margins"][critic]
        assert {"median", "mean", "p95", "histogram"} <= set(m)
        assert sum(m["histogram"].values()) == m["n"]
    assert s["thresholds"] == clean_run["cfg"].qc.model_dump()
    assert isinstance(s["thresholds_passed"], bool) and isinstance(s["failed_reasons"], list)
    c = s["counts"]
    assert c["delimiter_found"] + c["delimiter_missing"] == c["generated"]


# -- QC-08: thresholds are configuration; the gate reads the recorded decision ------------------


@pytest.mark.spec("QC-08")
def test_thresholds_come_from_the_run_configuration(tmp_path):
    cfg = load_config(None, **{"qc.max_runaway_rate": 0.02, "qc.min_pair_acceptance": 0.8})
    t = cfg.qc.thresholds()
    assert (t.max_runaway_rate, t.min_pair_acceptance) == (0.02, 0.8)
    s = summary(runaways=3, thresholds=t)
    assert s["thresholds"]["max_runaway_rate"] == 0.02 and "QC-01" in failed_clauses(s)
    with pytest.raises(ConfigError, match=r"qc\.max_runaway_rate"):
        load_config(None, **{"qc.max_runaway_rate": 1.5})


@pytest.mark.spec("QC-08")
@pytest.mark.parametrize("field, value", [("max_runaway_rate", 1.2), ("min_pair_acceptance", -0.1), ("max_delimiter_leaks", -1),
                                          ("max_delimiter_leaks", 0.5), ("max_median_tokens", 0), ("max_token_limit_rate", True)])
def test_bad_thresholds_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QCThresholds(**{field: value})


@pytest.mark.spec("QC-08")
def test_gate_reads_the_decision_recorded_by_the_run(clean_run, monkeypatch):
    import cai_bootstrap.qc as qc

    monkeypatch.setattr(qc, "compute_qc_summary", lambda **_: pytest.fail("the gate recomputed the summary"))
    assert read_qc_decision(clean_run["out"]) == (True, [])
    assert read_qc_decision(clean_run["out"] / P.QC_SUMMARY) == (True, [])
    assert clean_run["summary"]["thresholds_passed"] is True


@pytest.mark.spec("QC-08")
def test_editing_thresholds_after_the_run_does_not_change_the_decision(clean_run, tmp_path):
    strict = small_config(clean_run["out"], clean_run["model_dir"], target=4, **{"qc.max_median_tokens": 2})
    # The decision is in the file; the thresholds in force now are not an input of the gate.
    assert read_qc_decision(clean_run["out"]) == (True, [])
    # Re-running the same directory with the new thresholds, to rewrite the summary, is refused.
    with pytest.raises(ValueError, match=r"changed: \['qc'\]"):
        P.run_generation(strict, lm=ScriptedLM(clean_run["lm"], style="clean"))
    assert read_qc_decision(clean_run["out"]) == (True, [])

    # The same holds the other way round: a failed run stays failed under looser thresholds.
    failed = summary(runaways=8)
    path = tmp_path / "qc_summary.json"
    path.write_text(json.dumps(failed))
    passed, reasons = read_qc_decision(path)
    assert passed is False and reasons == failed["failed_reasons"]
    assert not summary(runaways=8, thresholds=QCThresholds(max_runaway_rate=0.5))["failed_reasons"]
    assert read_qc_decision(path) == (False, failed["failed_reasons"])


def _edit(s: dict, fn) -> dict:
    s = json.loads(json.dumps(s))
    fn(s)
    return s


@pytest.mark.spec("QC-08")
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.update(thresholds_passed=True), "inconsistent"),  # a failed run marked as passed
        (lambda s: s.update(thresholds_passed=True, failed_reasons=[]), "inconsistent"),  # ... with its reasons wiped
        (lambda s: s.update(failed_reasons=[]), "inconsistent"),  # failed without a reason
        (lambda s: s.pop("thresholds"), "missing keys"),
        (lambda s: s["counts"].pop("generated"), "counts.generated"),
        (lambda s: s["acceptance"].pop("pairs_low_confidence"), "acceptance.pairs_low_confidence"),
        (lambda s: s.update(thresholds_passed="yes"), "true/false"),
        (lambda s: s["thresholds"].update(max_runaway_rate=7), "malformed"),
        (lambda s: s["thresholds"].update(max_runaway_rate=0.5), "inconsistent"),  # loosened in the file after the fact
    ],
)
def test_incomplete_or_inconsistent_summary_is_an_error(tmp_path, edit, match):
    path = tmp_path / "qc_summary.json"
    path.write_text(json.dumps(_edit(summary(runaways=8), edit)))
    with pytest.raises(QCSummaryError, match=match):
        read_qc_decision(path)


@pytest.mark.spec("QC-08")
def test_missing_or_unreadable_summary_is_an_error(tmp_path):
    with pytest.raises(QCSummaryError, match="no QC summary"):
        read_qc_decision(tmp_path)
    (tmp_path / "qc_summary.json").write_text('{"counts": \n')
    with pytest.raises(QCSummaryError, match="line 2"):
        read_qc_decision(tmp_path)


# -- QC-09: judges measured on the probes ----------------------------------------------------------


@pytest.mark.spec("QC-09")
@pytest.mark.parametrize("aurocs, margin, expected", [
    ({"instruction": 0.9, "pair": 0.9, "relevance": 0.9}, lambda i: 2.0 + 0.1 * (i % 7), []),
    ({"instruction": 0.9, "pair": 0.5, "relevance": 0.92}, lambda i: 2.0 + 0.1 * (i % 7), []),
    ({"instruction": 0.9, "pair": 0.5, "relevance": 0.6}, lambda i: 2.0 + 0.1 * (i % 7), ["QC-09 no pair judge clears"]),
    ({"instruction": 0.9, "pair": 0.9, "relevance": 0.9}, lambda i: 2.0, ["QC-09 pair acceptance is total"]),
    ({"instruction": 0.5, "pair": 0.5, "relevance": 0.5}, lambda i: 2.0,
     ["QC-09 no pair judge clears", "QC-09 pair acceptance is total"]),
])
def test_qc_gate_fails_without_an_informative_pair_judge_or_with_a_label_biased_critic(tmp_path, aurocs, margin, expected):
    s = summary(probes=probe_results(aurocs), pair_margin=margin)
    qc09 = [r for r in s["failed_reasons"] if r.startswith("QC-09")]
    assert [next(e for e in expected if r.startswith(e)) for r in qc09] == expected
    path = tmp_path / "qc_summary.json"
    path.write_text(json.dumps(s))
    assert read_qc_decision(path) == (not s["failed_reasons"], s["failed_reasons"])
    if "QC-09 no pair judge clears" in expected:
        assert "pair 0.500" in qc09[0] and "bar 0.75" in qc09[0]


@pytest.mark.spec("QC-09")
def test_a_summary_without_probe_results_fails_qc09_and_edited_filters_are_refused(tmp_path):
    s = summary(probes=None)
    assert not any(r.startswith("QC-09") for r in s["failed_reasons"])
    bare = compute_qc_summary(instruction_verdicts=[_verdict(True)], responses=[{"id": "1"}], pair_verdicts=[_verdict(True)],
                              kept_response_tokens=[3], kept_responses=["ok"], drop_reasons={}, sentinels_ok=True,
                              thresholds=QCThresholds(), critic_probes=None)
    assert any("no pair judge was scored" in r for r in bare["failed_reasons"])
    weak = summary(probes=probe_results({"instruction": 0.5, "pair": 0.5, "relevance": 0.5}))
    forged = _edit(weak, lambda d: d["critic_probes"]["judges"]["pair"].update(filters=True))
    path = tmp_path / "qc_summary.json"
    path.write_text(json.dumps(forged))
    with pytest.raises(QCSummaryError, match="critic_probes filters"):
        read_qc_decision(path)


@pytest.mark.spec("QC-09")
def test_qc09_settings_are_config_with_their_defaults_from_qc():
    cfg = load_config(None)
    assert cfg.qc.thresholds().min_judge_auroc == QCThresholds().min_judge_auroc == 0.75
    assert cfg.critic.calibrate is True
    with pytest.raises(ConfigError, match="min_judge_auroc"):
        load_config(None, **{"qc.min_judge_auroc": 1.5})


@pytest.mark.spec("CR-06", "QC-09")
def test_tiny_run_with_default_bar_records_probes_and_fails_qc09(tmp_path_factory):
    """The tiny random model cannot discriminate: under the default bar its run fails QC-09,
    its probe results are in the summary and the manifest, and the GX suite accepts the summary."""
    from cai_bootstrap.validation import validate_file

    lm, model_dir, _ = flowing_lm(tmp_path_factory)
    out = tmp_path_factory.mktemp("qc09") / "run"
    cfg = small_config(out, model_dir, target=2, **{"qc.min_judge_auroc": 0.75, "critic.calibrate": True,
                                                     "critic.relevance_threshold": 0.0})
    s = P.run_generation(cfg, lm=ScriptedLM(lm, style="clean"))
    judges = s["critic_probes"]["judges"]
    assert set(judges) == {"instruction", "pair", "relevance"}
    for name, j in judges.items():
        assert 0 <= j["auroc"] <= 1 and j["n"] == j["n_good"] + j["n_bad"] >= 120
        assert j["filters"] is (j["auroc"] >= 0.75)
    assert judges["pair"]["calibration_offset"] is not None and judges["relevance"]["calibration_offset"] is None
    assert any(r.startswith("QC-09 no pair judge clears") for r in s["failed_reasons"])
    manifest = json.loads((out / P.SESSION_MANIFEST).read_text())
    assert manifest["critic_probes"] == s["critic_probes"]
    assert (out / P.WORK / P.CRITIC_PROBES).exists()
    report = validate_file(out / P.QC_SUMMARY)
    assert report.ok and report.artifact_type == "qc_summary", (report.error, report.failures)
    assert any("critic_probes.judges.pair.auroc" in str(c) for c in json.loads((__import__("pathlib").Path(__file__).parents[1] / "expectations" / "qc_summary.json").read_text())["expectations"])
