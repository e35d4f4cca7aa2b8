"""ST-01 / ST-03: the stage registry, the rule that a stage starts only from the model its
predecessor's final gate passed, the Stage-2 entry that enforces it, and model lineage."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from cai_bootstrap.gates import FINAL_GATE, Check, GateDecision, write_gate_manifest
from cai_bootstrap.io_utils import atomic_write_json, sha256_file
from cai_bootstrap.stages.lineage import LineageError, adapter_digest, build_lineage, format_lineage
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
    (2, "built", "dpo"),
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
    assert get_stage(2).planned_steps() == []


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
    from cai_bootstrap.gates import decide_final
    from spec_tests.integrity_support import make_eval_folder

    outcomes = [(False, True)] * 20 if passed else [(False, True), (True, False)] * 6
    folder = make_eval_folder(root / "eval", {"arithmetic": outcomes, "refusal": [(True, True)] * 4}, models={
        "base": {"model_name": "/models/base"},
        "sft": {"model_name": "/models/base", "adapter": {"path": str(adapter), "files": files}}})
    summary = folder / "eval_summary.json"
    decision = decide_final(json.loads(summary.read_text()))
    assert decision.passed is passed
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
    (False, None, None, "says FAIL: McNemar p = 1 >= 0.01"),
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


@pytest.mark.spec("ST-01", "GT-04")
def test_a_changed_setting_redoes_the_phases_that_read_it(tmp_path, capsys):
    """Changing a gate's threshold must not leave its old decision standing; other phases stay done."""
    from types import SimpleNamespace

    from cai_bootstrap.stages.chain import Chain, Phase, PhaseResult

    class Cfg(SimpleNamespace):
        def model_dump(self, mode="json"):
            return {"run_dir": str(self.run_dir), "size": self.size, "alpha": self.alpha, "quiet": self.quiet}

    runs = []

    def make(ch):
        runs.append("make")
        return PhaseResult([atomic_write_json(ch.p("data.json"), {"size": ch.cfg.size})])

    def gate(ch):
        runs.append("gate")
        return PhaseResult([atomic_write_json(ch.p("gate.json"), {"alpha": ch.cfg.alpha})])

    phases = [Phase("make", "data", lambda ch: [], make, settings=("size",)),
              Phase("gate", "decide", lambda ch: [ch.p("data.json")], gate, gate=True, settings=("alpha",)),
              Phase("all", "reads every setting", lambda ch: [ch.p("gate.json")], lambda ch: PhaseResult([]))]
    for size, alpha, quiet in ((1, 0.01, False), (1, 0.01, True), (1, 0.05, False), (2, 0.05, False)):
        Chain(Cfg(run_dir=tmp_path, size=size, alpha=alpha, quiet=quiet), cli=lambda argv: 0, label="stage9").run(phases)
    assert runs == ["make", "gate", "gate", "make", "gate"]  # quiet changes nothing; alpha only the gate
    out = capsys.readouterr().out
    assert "gate: redo, settings changed since it finished: ['alpha']" in out
    assert "all: redo, settings changed since it finished: ['size']" in out  # no list: every setting but quiet
    assert json.loads((tmp_path / "gate.json").read_text()) == {"alpha": 0.05}


# -- lineage (pure) -----------------------------------------------------------------------------------------------


def _manifest(weights="w" * 64, dataset="d" * 64, adapter="a" * 64, kind=None) -> dict:
    return {"model": {"spec": "tiny"}, "loader_provenance": {"weights": {"mode": "sha256", "combined": weights, "files": {}}},
            "dataset": {"path": "/data/dataset.jsonl", "sha256": dataset, "records": 6, **({"kind": kind} if kind else {})},
            "files": [{"path": "adapter/adapter_model.safetensors", "sha256": adapter}]}


def _gate(name, decision="pass"):
    return {"gate": name, "clause": "GT-02", "decision": decision, "reasons": [], "inputs": [{"name": "x", "sha256": "s"}]}


@pytest.mark.spec("ST-03")
def test_lineage_chains_base_dataset_gates_and_adapters_across_stages():
    s1 = build_lineage(_manifest(), stage=1, method="sft", gates=[(1, _gate("sft_data"))])
    assert [(s["kind"], s["stage"]) for s in s1["steps"]] == [("base_model", 0), ("dataset", 1), ("gate", 1), ("model", 1)]
    assert s1["steps"][0]["weights"] == {"mode": "sha256", "combined": "w" * 64} and s1["steps"][1]["sha256"] == "d" * 64
    assert s1["steps"][3]["adapter_sha256"] == adapter_digest({"adapter/adapter_model.safetensors": "a" * 64})
    s2 = build_lineage(_manifest(dataset="p" * 64, adapter="b" * 64, kind="preference_pairs"), stage=2, method="dpo",
                       gates=[(1, _gate(FINAL_GATE)), (2, _gate("dpo_data"))], parent=s1,
                       started_from={"adapter/adapter_model.safetensors": "a" * 64})
    assert s2["steps"][:4] == s1["steps"] and s2["stages"] == [1, 2]
    assert [(s["kind"], s.get("gate") or s.get("role") or s.get("method")) for s in s2["steps"][4:]] == [
        ("gate", FINAL_GATE), ("dataset", "preference_pairs"), ("gate", "dpo_data"), ("model", "dpo")]
    lines = format_lineage(s2)
    assert lines[0].startswith("1. base model `tiny`: weights sha256 wwwwwwwwwwww") and lines[-1].startswith("8. stage 2 dpo adapter")


LINEAGE_ERRORS = [  # (manifest changes, parent base weights, started_from adapter hash, error)
    ({"dataset": {"path": "x"}}, None, None, "lacks 'dataset.sha256'"),
    ({"files": []}, None, None, "lists no adapter/"),
    ({}, "v" * 64, "a" * 64, "loaded base weights"),
    ({}, "w" * 64, "z" * 64, "started from adapter"),
]


@pytest.mark.spec("ST-03")
@pytest.mark.parametrize("changes,parent_weights,started,error", LINEAGE_ERRORS)
def test_lineage_refuses_manifests_that_do_not_make_one_chain(changes, parent_weights, started, error):
    parent = build_lineage(_manifest(weights=parent_weights), stage=1, method="sft") if parent_weights else None
    kw = {"parent": parent, "started_from": {"adapter/adapter_model.safetensors": started}} if parent else {}
    with pytest.raises(LineageError, match=error):
        build_lineage({**_manifest(), **changes}, stage=2 if parent else 1, method="dpo" if parent else "sft", **kw)


@pytest.mark.spec("ST-03", "GT-04")
def test_stage1_report_prints_the_model_lineage(tmp_path):
    from cai_bootstrap.stage1_report import write_report

    lineage = build_lineage(_manifest(), stage=1, method="sft", gates=[(1, _gate("sft_data"))])
    atomic_write_json(tmp_path / "sft" / "training_manifest.json", {**_manifest(), "lineage": lineage})
    atomic_write_json(tmp_path / "gates" / "final_eval.json", {**_gate(FINAL_GATE, "fail"), "reasons": ["no lift"]})
    write_report(tmp_path)
    text = (tmp_path / "report" / "REPORT.md").read_text()
    assert "## Model lineage (ST-03)" in text
    assert "2. stage 1 sft_records: 6 records, sha256 dddddddddddd..." in text and "5. stage 1 gate final_eval: FAIL" in text
