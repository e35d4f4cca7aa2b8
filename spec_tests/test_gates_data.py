"""GT-01: the pilot must pass QC and validation before scale; the scale phase enforces it itself."""

from __future__ import annotations

import json

import pytest

from cai_bootstrap.gates import PILOT_GATE, SCALE_GATE, DataGateThresholds, decide_data, write_gate_manifest
from cai_bootstrap.io_utils import atomic_write_json
from cai_bootstrap.qc import QCThresholds, compute_qc_summary

from spec_tests.probe_support import INFORMATIVE_PROBES_AUROC, probe_results

GOOD = {"is_good": True, "predicted_label": "A", "logp_a": -0.1, "logp_b": -3.0, "margin": 2.9, "confident": True}
BAD = {"is_good": False, "predicted_label": "B", "logp_a": -3.0, "logp_b": -0.1, "margin": 2.9, "confident": True}
CLEAN = {"reason": None, "delimiter_found": False, "heuristic_cutoff": False, "hit_token_limit": False}


def _summary(tmp_path, *, target=120, pair=GOOD, name="qc_summary.json", thresholds=None):
    s = compute_qc_summary(instruction_verdicts=[GOOD] * target, pair_verdicts=[{**pair, "margin": pair["margin"] + 0.1 * (i % 5)} for i in range(target)],
                           responses=[CLEAN] * target, kept_response_tokens=[15] * target,
                           kept_responses=["Fine."] * target, drop_reasons={}, sentinels_ok=True,
                           thresholds=thresholds or QCThresholds(),
                           critic_probes=probe_results(INFORMATIVE_PROBES_AUROC))
    s["run"] = {"mode": "pilot", "target": target}
    return atomic_write_json(tmp_path / name, s)


@pytest.mark.spec("GT-01")
@pytest.mark.parametrize(
    "target,pair,failures,gate,passed,failed_check",
    [
        (120, GOOD, [], PILOT_GATE, True, None),
        (120, BAD, [], PILOT_GATE, False, "qc_thresholds"),  # pair acceptance 0 < 0.5
        (120, GOOD, ["dataset.jsonl: instruction not unique"], PILOT_GATE, False, "expectations"),
        (20, GOOD, [], PILOT_GATE, False, "pilot_size"),  # too small to be a pilot
        (500, GOOD, [], PILOT_GATE, False, "pilot_size"),
        (500, GOOD, [], SCALE_GATE, True, None),  # the size rule is for pilots only
    ],
)
def test_data_gate_table(tmp_path, target, pair, failures, gate, passed, failed_check):
    d = decide_data(_summary(tmp_path, target=target, pair=pair), validation_failures=failures, gate=gate)
    assert d.passed is passed and d.clause == "GT-01"
    if failed_check:
        assert [c.name for c in d.checks if not c.passed] == [failed_check]


@pytest.mark.spec("GT-01", "GT-05")
def test_data_gate_manifest_records_inputs_thresholds_values(tmp_path):
    qc = _summary(tmp_path)
    d = decide_data(qc, validation_failures=[], thresholds=DataGateThresholds(min_items=100, max_items=150))
    path = write_gate_manifest(d, tmp_path / "pilot_gate.json", inputs={"qc_summary": qc})
    m = json.loads(path.read_text())
    assert m["decision"] == "pass" and m["inputs"][0]["sha256"] and m["thresholds"]["max_items"] == 150
    assert m["thresholds"]["min_pair_acceptance"] == 0.5 and m["values"]["acceptance"]["pair_acceptance_rate"] == 1.0


@pytest.mark.spec("GT-01", "GT-04")
def test_scale_refuses_without_a_passed_pilot_gate(tmp_path, monkeypatch):
    """Enforced by the scale phase itself, before any model loads."""
    import cai_bootstrap.loader as loader
    from cai_bootstrap.datagen.config import load_config
    from cai_bootstrap.datagen.pipeline import PilotGateError, run_generation

    def no_load(*a, **k):
        raise AssertionError("the model must not load when the pilot gate refuses")

    monkeypatch.setattr(loader, "load_base_model", no_load)
    cfg = load_config(None, mode="scale", shard="0/2", out_dir=str(tmp_path / "s0"), model="tiny-random")
    with pytest.raises(PilotGateError, match="needs a passed pilot gate"):
        run_generation(cfg)
    qc = _summary(tmp_path, pair=BAD)
    failed = write_gate_manifest(decide_data(qc, validation_failures=[]), tmp_path / "pilot_gate.json", inputs={"qc_summary": qc})
    with pytest.raises(PilotGateError, match="failed"):
        run_generation(cfg.model_copy(update={"pilot_gate": failed}))
    good_qc = _summary(tmp_path, name="good_qc.json")
    passed = write_gate_manifest(decide_data(good_qc, validation_failures=[]), tmp_path / "ok_gate.json",
                                 inputs={"qc_summary": good_qc})
    good_qc.write_text(good_qc.read_text() + " ")  # the pilot's QC summary changed after the decision
    with pytest.raises(PilotGateError, match="changed after the decision"):
        run_generation(cfg.model_copy(update={"pilot_gate": passed}))


@pytest.mark.spec("GT-01", "QC-08")
@pytest.mark.parametrize("loosened", [{"min_pair_acceptance": 0.0}, {"max_token_limit_rate": 0.99}, {"min_judge_auroc": 0.9}])
def test_data_gate_refuses_a_run_judged_under_loosened_thresholds(tmp_path, loosened):
    """A pilot whose config loosened QC passes its own thresholds; the gate to scale still says no."""
    path = _summary(tmp_path, thresholds=QCThresholds(**loosened))
    decision = decide_data(path, validation_failures=[], gate=PILOT_GATE)
    failed = [c for c in decision.checks if not c.passed]
    assert not decision.passed and [c.name for c in failed] == ["qc_thresholds_required"]
    assert next(iter(loosened)) in failed[0].detail
