"""ST-01 / ST-03: the stage registry, the rule that a stage starts only from the model its
predecessor's final gate passed, the Stage-2 entry that enforces it, and model lineage."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from cai_bootstrap.gates import FINAL_GATE, Check, GateDecision, write_gate_manifest
from cai_bootstrap.io_utils import atomic_write_json, sha256_file
from cai_bootstrap.stages.registry import (
    STAGES,
    Stage,
    StageInputError,
    Step,
    check_registry,
    get_stage,
    resolve_input_model,
)

# -- the registry ---------------------------------------------------------------------------------------

STATUS_CASES = [  # (stage, status, training method)
    (1, "built", "sft"),
    (2, "partial", "dpo"),
    (3, "planned", "sft"),
    (4, "planned", "sft"),
    (5, "planned", "dpo"),
    (6, "partial", "sft"),
]


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("stage_id,status,method", STATUS_CASES)
def test_each_stage_names_input_recipe_method_evaluation_gate_and_status(stage_id, status, method):
    s = get_stage(stage_id)
    assert s.input_model == ("base" if stage_id == 1 else f"stage-{stage_id - 1}")  # output of k-1 generates for k
    assert s.data_recipe and s.evaluation and s.gate == FINAL_GATE
    assert (s.status, s.training_method) == (status, method)


@pytest.mark.spec("ST-01")
def test_registry_is_stages_one_to_six_and_built_steps_name_real_code():
    assert list(STAGES) == [1, 2, 3, 4, 5, 6] and check_registry() == []
    for s in STAGES.values():
        for step in s.steps:
            if step.built:
                module, func = step.entry_point.split(":")
                assert callable(getattr(importlib.import_module(module), func)), f"stage {s.id} step {step.name}"
        if s.command:
            assert hasattr(importlib.import_module(s.command), "main")
    assert get_stage(6).steps[1].entry_point == "cai_bootstrap.constitution:critique_and_revise"
    assert get_stage(2).planned_steps() == ["instructions", "evaluate", "final_gate"]


BAD_STAGES = [  # (fields, error fragment)
    ({"input_model": "base"}, "breaks the chain rule (expected 'stage-2')"),
    ({"training_method": "rlhf"}, "known: sft, dpo"),
    ({"steps": (Step("a"), Step("a"))}, "each once"),
]


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("fields,error", BAD_STAGES)
def test_a_malformed_stage_is_refused_with_the_reason(fields, error):
    base = dict(id=3, name="x", input_model="stage-2", data_recipe="r", training_method="sft", evaluation="e",
                gate=FINAL_GATE, steps=(Step("generate"),))
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Stage(**{**base, **fields})


@pytest.mark.spec("ST-01")
def test_registry_gaps_and_unknown_stages_are_named():
    assert check_registry({1: STAGES[1], 3: STAGES[3]}) == ["stage ids must be 1..2 in order, got [1, 3]"]
    with pytest.raises(KeyError, match="known stages: 1, 2, 3, 4, 5, 6"):
        get_stage(7)


# -- a stage's input model: the previous stage's final gate must say GO ------------------------------------------


def _stage1_run(root: Path, *, passed: bool = True) -> Path:
    """A finished Stage-1 layout: sft/ (adapter + training manifest), eval/eval_summary.json, gates/final_eval.json."""
    adapter = root / "sft" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    atomic_write_json(root / "sft" / "training_manifest.json", {"dataset": {"run_dir": str(root / "merged")}})
    files = {p.name: sha256_file(p) for p in sorted(adapter.iterdir())}
    summary = atomic_write_json(root / "eval" / "eval_summary.json", {"metadata": {"models": {
        "base": {"model_name": "/models/base"},
        "sft": {"model_name": "/models/base", "adapter": {"path": str(adapter), "files": files}}}}})
    decision = GateDecision(FINAL_GATE, "GT-02", {"alpha": 0.05}, {}, (Check("mcnemar", passed, "p = 0.01" if passed else "p = 0.4 >= 0.05"),))
    return write_gate_manifest(decision, root / "gates" / "final_eval.json", inputs={"eval_summary": summary})


def _damage(root: Path, gate: Path, what: str) -> Path:
    if what == "missing":
        gate.unlink()
    elif what == "summary_changed":
        (root / "eval" / "eval_summary.json").write_text('{"metadata": {}}')
    elif what == "adapter_changed":
        (root / "sft" / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    elif what == "wrong_gate":
        m = json.loads(gate.read_text())
        gate.write_text(json.dumps({**m, "gate": "pilot_gate"}))
    return gate


RESOLVE_CASES = [  # (gate passed, damage, override, error fragment or None)
    (True, None, None, None),
    (False, None, None, "says FAIL: p = 0.4 >= 0.05"),
    (False, None, "probing the pairs code on a weak model", None),
    (False, None, "   ", "an override needs a reason"),
    (True, "missing", None, "does not exist"),
    (True, "missing", "any reason", "does not exist"),  # an override lifts the decision, never the evidence
    (True, "summary_changed", None, "changed since the decision"),
    (True, "adapter_changed", None, "has changed or lost files"),
    (False, "adapter_changed", "any reason", "has changed or lost files"),
    (True, "wrong_gate", None, "is not stage 1's final gate manifest"),
]


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("passed,damage,override,error", RESOLVE_CASES)
def test_stage2_starts_only_from_the_model_stage1s_final_gate_passed(tmp_path, passed, damage, override, error):
    gate = _damage(tmp_path, _stage1_run(tmp_path, passed=passed), damage)
    if error:
        with pytest.raises(StageInputError, match=error):
            resolve_input_model(2, gate_manifest=gate, override=override)
        return
    inp = resolve_input_model(2, gate_manifest=gate, override=override)
    assert (inp.source, inp.base_model, inp.run_dir) == ("stage-1", "/models/base", tmp_path / "sft")
    assert inp.gate["decision"] == ("pass" if passed else "fail") and inp.gate["sha256"] == sha256_file(gate)
    assert inp.override == (None if passed else {"reason": override, "decision": "fail"})


@pytest.mark.spec("ST-01")
def test_stage1_starts_from_a_named_base_model():
    assert resolve_input_model(1, base_model="gemma-3-270m").to_dict()["source"] == "base"
    with pytest.raises(StageInputError, match="starts from a base model"):
        resolve_input_model(1)


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("passed,override,rc", [(True, None, 3), (False, None, 2), (False, "an experiment", 3)])
def test_stage2_entry_refuses_without_go_and_records_an_override(tmp_path, capsys, passed, override, rc):
    from cai_bootstrap.stages.stage2 import INPUT_RECORD, STATE_DIR, main

    gate = _stage1_run(tmp_path / "s1", passed=passed)
    run = tmp_path / "s2"
    argv = [str(gate), "--run-dir", str(run)] + (["--override", override] if override else [])
    assert main(argv) == rc
    out, err = capsys.readouterr()
    record = run / STATE_DIR / INPUT_RECORD
    if rc == 2:
        assert "REFUSED" in err and "says FAIL" in err and not record.exists()
        return
    rec = json.loads(record.read_text())
    assert rec["override"] == (None if passed else {"reason": override, "decision": "fail"})
    assert rec["gate"]["path"] == str(gate.resolve()) and rec["planned_steps"] == ["instructions", "evaluate", "final_gate"]
    assert f"--sft-run {tmp_path / 's1' / 'sft'}" in out and f"--stage1-data {tmp_path / 's1' / 'merged'}" in out
    assert f"stage1_gate={gate.resolve()}" in out and "cai-bootstrap validate" in out
    assert "NOT RUN" in err and "evaluate" in err


@pytest.mark.spec("ST-01", "OPS-01")
def test_noxfile_stage2_session_runs_the_gated_entry():
    import ast

    text = (Path(__file__).resolve().parent.parent / "noxfile.py").read_text()
    fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "stage2")
    assert ast.get_docstring(fn) and "cai_bootstrap.stages.stage2" in ast.unparse(fn)


@pytest.mark.spec("ST-01", "GT-04")
def test_the_chain_engine_serves_any_stage(tmp_path):
    from types import SimpleNamespace

    from cai_bootstrap.stages.chain import Chain, Phase, PhaseResult

    class Cfg(SimpleNamespace):
        def model_dump(self, mode="json"):
            return {"run_dir": str(self.run_dir)}

    def run(ch):
        return PhaseResult([atomic_write_json(ch.p("x.json"), {})])

    Chain(Cfg(run_dir=tmp_path), cli=lambda argv: 0, label="stage9").run([Phase("x", "one phase", lambda ch: [], run)])
    assert json.loads((tmp_path / "stage9" / "x.json").read_text())["status"] == "done"
