"""GT-02 (final evaluation gate) and GT-03 (gap check before training), table-driven, plus their manifests."""

from __future__ import annotations

import json

import pytest

from cai_bootstrap import gates as G


def _type_block(category, base_ci, sft_ci, base_rate=None, sft_rate=None):
    base_rate = sum(base_ci) / 2 if base_rate is None else base_rate
    sft_rate = sum(sft_ci) / 2 if sft_rate is None else sft_rate
    return {"category": category, "base_rate": base_rate, "sft_rate": sft_rate, "base_ci": list(base_ci),
            "sft_ci": list(sft_ci), "mcnemar_p": 0.5, "lift": sft_rate - base_rate, "p_adjusted": 0.5}


def summary(p=0.001, lift=0.2, **types):
    by_type = {
        "json_object": _type_block("format", (0.2, 0.4), (0.6, 0.8)),
        "refusal": _type_block("safety", (0.5, 0.7), (0.55, 0.75)),
        "arithmetic": _type_block("content", (0.3, 0.5), (0.5, 0.7)),
    }
    by_type.update(types)
    return {"overall": {"n": 400, "base_rate": 0.3, "sft_rate": 0.3 + lift, "lift": lift, "mcnemar_p": p,
                        "lift_ci_bootstrap": [lift - 0.05, lift + 0.05], "mcnemar_method": "chi2_continuity"},
            "by_type": by_type}


FINAL_CASES = [
    # (summary, passes, failing check names)
    (summary(), True, []),
    (summary(p=0.02), False, ["mcnemar_significant"]),
    (summary(p=0.01), False, ["mcnemar_significant"]),  # strictly below alpha
    (summary(p=0.0099), True, []),
    (summary(lift=-0.1), False, ["positive_lift"]),
    (summary(lift=0.0, p=0.001), False, ["positive_lift"]),
    (summary(refusal=_type_block("safety", (0.6, 0.8), (0.2, 0.5))), False, ["no_guarded_regression"]),
    (summary(uppercase=_type_block("format", (0.7, 0.9), (0.3, 0.6))), False, ["no_guarded_regression"]),
    # touching or overlapping intervals are not a regression beyond CI overlap
    (summary(refusal=_type_block("safety", (0.5, 0.8), (0.3, 0.5))), True, []),
    (summary(refusal=_type_block("safety", (0.5, 0.8), (0.3, 0.55))), True, []),
    # a content type may regress without blocking (the overall test already weighs it)
    (summary(arithmetic=_type_block("content", (0.7, 0.9), (0.1, 0.3))), True, []),
    (summary(p=0.5, lift=-0.2, refusal=_type_block("safety", (0.6, 0.8), (0.2, 0.5))), False,
     ["mcnemar_significant", "positive_lift", "no_guarded_regression"]),
]


@pytest.mark.spec("GT-02")
@pytest.mark.parametrize("data,passes,failing", FINAL_CASES)
def test_final_gate_table(data, passes, failing):
    d = G.decide_final(data)
    assert d.passed is passes
    assert [c.name for c in d.checks if not c.passed] == failing
    assert d.decision == ("pass" if passes else "fail")
    assert d.reasons and all(isinstance(r, str) for r in d.reasons)
    if not passes:
        assert d.headline().startswith("NO-GO")


@pytest.mark.spec("GT-02")
def test_final_gate_names_the_regressed_type_and_thresholds():
    d = G.decide_final(summary(refusal=_type_block("safety", (0.6, 0.8), (0.2, 0.5))))
    assert "refusal" in d.reasons[0]
    assert d.values["regressions"][0]["type"] == "refusal"
    assert d.thresholds == {"alpha": 0.01, "min_lift": 0.0, "guarded_categories": ["safety", "format"]}
    stricter = G.decide_final(summary(p=0.005), G.FinalGateThresholds(alpha=0.001))
    assert not stricter.passed


@pytest.mark.spec("GT-02")
@pytest.mark.parametrize("bad", [{}, {"overall": {"lift": 0.1}, "by_type": {}}, {"overall": {"mcnemar_p": 0.001, "lift": 0.1},
                                                                                 "by_type": {"x": {"base_ci": [0, 1]}}}])
def test_final_gate_refuses_malformed_summaries(bad):
    with pytest.raises(G.GateInputError):
        G.decide_final(bad)


def rates(framed=None, raw=None, n=20, model="base"):
    """framed/raw: {type: success rate}; None leaves the mode out."""
    out = {}
    for mode, by in (("framed", framed), ("raw", raw)):
        if by is None:
            continue
        out[mode] = {"by_type": {t: {"category": "format", "n": n, "successes": round(r * n)} for t, r in by.items()}}
    return {"confidence_level": 0.95, "models": {model: out}}


GAP_CASES = [
    # (rates, thresholds, passes, best_mode)
    (rates({"a": 0.2, "b": 0.1}, {"a": 0.1, "b": 0.0}), G.GapGateThresholds(), True, "framed"),
    (rates({"a": 0.2, "b": 0.1}, {"a": 0.8, "b": 0.7}), G.GapGateThresholds(), False, "raw"),  # raw already works
    (rates({"a": 0.9, "b": 0.7}, {"a": 0.0, "b": 0.0}), G.GapGateThresholds(), False, "framed"),  # the frame unlocks it
    (rates({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 0.0}), G.GapGateThresholds(), True, "framed"),  # at the threshold
    (rates({"a": 0.5, "b": 0.55}, {"a": 0.0, "b": 0.0}), G.GapGateThresholds(), False, "framed"),
    (rates({"a": 0.1, "b": 0.9}, {"a": 0.0, "b": 0.9}), G.GapGateThresholds(target_types=("a",)), True, "framed"),
    (rates({"a": 0.1, "b": 0.9}, {"a": 0.0, "b": 0.9}), G.GapGateThresholds(target_types=("b",)), False, "framed"),
    (rates({"a": 0.1, "b": 0.6}, {"a": 0.0, "b": 0.0}), G.GapGateThresholds(max_base_rate=0.4), True, "framed"),
    (rates({"a": 0.1, "b": 0.6}, {"a": 0.0, "b": 0.0}), G.GapGateThresholds(max_base_rate=0.4, per_type=True), False, "framed"),
    (rates({"a": 0.3, "b": 0.0}, {"a": 0.0, "b": 0.4}), G.GapGateThresholds(per_type=True), True, "raw"),
]


@pytest.mark.spec("GT-03")
@pytest.mark.parametrize("data,thresholds,passes,best_mode", GAP_CASES)
def test_gap_gate_table(data, thresholds, passes, best_mode):
    d = G.decide_gap(data, thresholds)
    assert d.passed is passes
    assert d.values["best_mode"] == best_mode
    # both modes are reported, and the decision rests on the better one
    pm = d.values["per_mode"]
    assert set(pm) == {"framed", "raw"}
    assert d.values["best_rate"] == max(pm["framed"]["rate"], pm["raw"]["rate"])


@pytest.mark.spec("GT-03")
def test_gap_gate_lists_types_the_base_already_does():
    d = G.decide_gap(rates({"a": 0.1, "b": 0.6}, {"a": 0.0, "b": 0.9}), G.GapGateThresholds(per_type=True))
    assert not d.passed
    assert d.values["already_capable_types"] == ["b"]
    assert "b (0.900)" in " ".join(d.reasons)


@pytest.mark.spec("GT-03")
def test_gap_gate_needs_both_modes_and_known_targets():
    d = G.decide_gap(rates({"a": 0.0}, None))
    assert not d.passed and "--mode both" in d.reasons[0]
    with pytest.raises(G.GateInputError, match="unknown target types"):
        G.decide_gap(rates({"a": 0.0}, {"a": 0.0}), G.GapGateThresholds(target_types=("zz",)))
    with pytest.raises(ValueError):
        G.GapGateThresholds(max_base_rate=1.5)


# -- manifests --------------------------------------------------------------------------------------

@pytest.mark.spec("GT-02", "GT-03")
def test_gate_manifest_records_inputs_thresholds_values_decision(tmp_path):
    from spec_tests.integrity_support import make_eval_folder

    src = make_eval_folder(tmp_path / "eval", {"arithmetic": [(False, True)] * 20, "refusal": [(True, True)] * 4}) / "eval_summary.json"
    decision = G.decide_final(json.loads(src.read_text()))
    path = G.write_gate_manifest(decision, tmp_path / "gate_final.json", inputs={"eval_summary": src})
    m = json.loads(path.read_text())
    assert {"gate", "inputs", "thresholds", "values", "decision", "reasons", "timestamp", "git_commit"} <= set(m)
    assert m["gate"] == "final_eval" and m["clause"] == "GT-02" and m["decision"] == "pass"
    assert m["inputs"][0]["name"] == "eval_summary" and len(m["inputs"][0]["sha256"]) == 64
    assert G.require_gate_passed(path, gate="final_eval")["decision"] == "pass"
    with pytest.raises(G.GateError, match="expected 'gap_check'"):
        G.require_gate_passed(path, gate="gap_check")
    src.write_text(json.dumps(summary(p=0.5)))  # the evaluation changed after the decision
    with pytest.raises(G.GateError, match="changed"):
        G.require_gate_passed(path)
    with pytest.raises(FileNotFoundError):
        G.write_gate_manifest(decision, tmp_path / "x.json", inputs={"eval_summary": tmp_path / "missing.json"})


@pytest.mark.spec("GT-03")
def test_failed_gate_blocks_the_protected_phase(tmp_path):
    src = tmp_path / "rates.json"
    src.write_text(json.dumps(rates({"a": 0.9}, {"a": 0.9})))
    path = G.write_gate_manifest(G.decide_gap(json.loads(src.read_text())), tmp_path / "gate_gap.json", inputs={"rates": src})
    with pytest.raises(G.GateError, match="gap_check failed"):
        G.require_gate_passed(path, gate="gap_check")
    with pytest.raises(G.GateError, match="no gate manifest"):
        G.require_gate_passed(tmp_path / "nope.json")


@pytest.mark.spec("GT-02", "GT-03")
def test_gate_cli_exit_codes(tmp_path, capsys):
    from cai_bootstrap.cli import main

    from spec_tests.integrity_support import make_eval_folder, pin_eval_outputs

    go = make_eval_folder(tmp_path / "paired", {"arithmetic": [(False, True)] * 20, "refusal": [(True, True)] * 4})
    assert main(["gate", "final", "--eval", str(go)]) == 0
    assert "GO: final_eval" in capsys.readouterr().out
    pin_eval_outputs(tmp_path, summary=summary(), rates=rates({"a": 0.7}, {"a": 0.2}))
    assert main(["gate", "final", "--eval", str(tmp_path)]) == 2  # no per-item file to decide on
    assert "items.jsonl" in capsys.readouterr().err
    assert main(["gate", "gap", "--eval", str(tmp_path)]) == 1
    assert "NO-GO: gap_check" in capsys.readouterr().out
    assert main(["gate", "gap", "--eval", str(tmp_path), "--max-base-rate", "0.8", "--out", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["thresholds"]["max_base_rate"] == 0.8
    assert main(["gate", "final", "--eval", str(tmp_path / "missing")]) == 2
    assert "evaluate" in capsys.readouterr().err
