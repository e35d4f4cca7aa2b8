"""GT-04 / GT-05 / PV-05: the Stage-1 chain runs phases in order, stops at the first failed gate
with a readable reason, resumes from the last completed phase, and redoes a phase whose inputs changed."""

from __future__ import annotations

import json

import pytest

from cai_bootstrap.io_utils import atomic_write_json
from cai_bootstrap.stage1 import Chain, Phase, PhaseResult, Stage1Config, Stage1Error, load_stage1_config, main, phases


_RUNS = iter(range(10**6))


def _fake_phases(calls, gate_passes=True):
    def make(name, *, gate=False, needs=None):
        def run(ch):
            calls.append(name)
            out = ch.p(f"{name}.out")
            atomic_write_json(out, {"phase": name, "run": next(_RUNS)})  # every run writes new content
            if gate and not gate_passes:
                return PhaseResult([out], False, f"{name}: QC failed: pair acceptance 0.100 < 0.5")
            return PhaseResult([out])

        inputs = (lambda ch: [ch.p(f"{needs}.out")]) if needs else (lambda ch: [])
        return Phase(name, f"fake {name}", inputs, run, gate=gate)

    return [make("a"), make("gate_b", gate=True, needs="a"), make("c", needs="gate_b")]


@pytest.mark.spec("GT-04")
def test_phases_run_in_order_and_a_failed_gate_stops_the_chain(tmp_path):
    calls: list[str] = []
    ch = Chain(Stage1Config(run_dir=tmp_path), cli=lambda argv: 0)
    with pytest.raises(Stage1Error, match=r"gate gate_b stopped the chain: gate_b: QC failed: pair acceptance"):
        ch.run(_fake_phases(calls, gate_passes=False))
    assert calls == ["a", "gate_b"]  # c never ran
    state = json.loads((tmp_path / "stage1" / "gate_b.json").read_text())
    assert state["status"] == "gate_failed" and "pair acceptance" in state["reason"]


@pytest.mark.spec("GT-04", "PV-05")
def test_rerun_resumes_from_last_completed_phase_and_redoes_changed_inputs(tmp_path):
    calls: list[str] = []
    ch = Chain(Stage1Config(run_dir=tmp_path), cli=lambda argv: 0)
    ch.run(_fake_phases(calls))
    assert calls == ["a", "gate_b", "c"]
    calls.clear()
    Chain(Stage1Config(run_dir=tmp_path), cli=lambda argv: 0).run(_fake_phases(calls))
    assert calls == []  # every phase done, every hash verified
    (tmp_path / "a.out").write_text('{"tampered": true}')  # an output of a, input of gate_b
    Chain(Stage1Config(run_dir=tmp_path), cli=lambda argv: 0).run(_fake_phases(calls))
    assert calls == ["a", "gate_b", "c"]  # a redone (its output changed), so everything reading it too
    state = json.loads((tmp_path / "stage1" / "gate_b.json").read_text())
    assert "a.out" in state["inputs"]  # inputs recorded by hash, named relative to the run folder


@pytest.mark.spec("GT-04", "PV-05")
def test_a_moved_run_folder_resumes_without_redoing_finished_phases(tmp_path):
    calls: list[str] = []
    Chain(Stage1Config(run_dir=tmp_path / "run"), cli=lambda argv: 0).run(_fake_phases(calls))
    (tmp_path / "run").rename(tmp_path / "moved")
    calls.clear()
    Chain(Stage1Config(run_dir=tmp_path / "moved"), cli=lambda argv: 0).run(_fake_phases(calls))
    assert calls == []
    (tmp_path / "moved" / "a.out").write_text('{"tampered": true}')  # still checked where it now lives
    Chain(Stage1Config(run_dir=tmp_path / "moved"), cli=lambda argv: 0).run(_fake_phases(calls))
    assert calls == ["a", "gate_b", "c"]


@pytest.mark.spec("GT-04", "PV-05")
def test_missing_input_is_refused(tmp_path):
    calls: list[str] = []
    ps = _fake_phases(calls)
    with pytest.raises(Stage1Error, match="inputs missing"):
        Chain(Stage1Config(run_dir=tmp_path), cli=lambda argv: 0).run(ps[1:])


@pytest.mark.spec("GT-04")
def test_chain_order_matches_the_spec():
    names = [p.name for p in phases()]
    assert names == ["preflight", "load", "gap_check", "pilot", "pilot_gate", "scale", "merge", "scale_gate",
                     "sft", "evaluate", "final_gate", "report"]
    gates = [p.name for p in phases() if p.gate]
    assert gates == ["preflight", "load", "gap_check", "pilot_gate", "scale_gate", "final_gate"]


@pytest.mark.spec("GT-04", "OPS-01")
def test_shipped_stage1_configs_load_and_bad_fields_are_named(tmp_path):
    from pathlib import Path

    import cai_bootstrap

    for f in (Path(cai_bootstrap.__file__).parent / "configs").glob("stage1_*.yaml"):
        assert load_stage1_config(f).model
        assert f.read_text().startswith("# nox -s stage1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage1:\n  pilot_target: -3\n  modle: x\n")
    with pytest.raises(Stage1Error, match="pilot_target") as e:
        load_stage1_config(bad)
    assert "modle" in str(e.value)


@pytest.mark.spec("OPS-01", "GT-04")
def test_noxfile_has_one_session_per_gate_chain():
    """Sessions are read from the noxfile's syntax tree (nox itself need not be importable here)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parent.parent / "noxfile.py").read_text())
    sessions = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any("session" in ast.unparse(d) for d in node.decorator_list):
            sessions[node.name] = ast.get_docstring(node)
    for name in ("conformance", "stage1", "expectations", "bench", "gpu"):
        assert sessions.get(name), f"nox session {name} missing or without a one-line docstring"
    assert "cai_bootstrap.stage1" in (Path(__file__).resolve().parent.parent / "noxfile.py").read_text()


@pytest.mark.spec("EV-08")
def test_report_prints_intervals_and_p_values_readably(tmp_path):
    from cai_bootstrap.io_utils import atomic_write_json
    from cai_bootstrap.stage1_report import write_report

    ci = [0.006892291919440893, 0.03233463358482672]
    atomic_write_json(tmp_path / "eval" / "eval_summary.json", {
        "overall": {"n": 400, "base_rate": 0.015, "base_ci": ci, "sft_rate": 0.0775, "sft_ci": [0.0551329, 0.1079049],
                    "lift": 0.0625, "lift_ci_bootstrap": [0.035, 0.09], "mcnemar_p": 2.9425984036183864e-05, "cohens_h": 0.31866},
        "by_type": {"arithmetic": {"n": 30, "base_rate": 0.033, "sft_rate": 0.167, "p_adjusted": 0.123456789}},
        "arms": {"base_zero_shot": {"n": 400, "successes": 6, "rate": 0.015, "ci": ci}},
        "vs_incontext": {"overall": {"lift": -0.04, "lift_ci_bootstrap": [-0.07, -0.01], "mcnemar_p": 0.014961017675175686,
                                     "discordant": {"n01": 11, "n10": 27}}},
    })
    write_report(tmp_path)
    text = (tmp_path / "report" / "REPORT.md").read_text()
    assert "[0.007, 0.032]" in text and "0.006892291919440893" not in text
    assert "McNemar p = 2.94e-05" in text and "McNemar p = 0.015" in text and "| 0.123 |" in text


@pytest.mark.spec("GT-04", "PV-05")
def test_a_run_recorded_with_relative_paths_still_resumes(tmp_path, monkeypatch):
    """Phase manifests written before run files were named relative to the run folder recorded them
    relative to the current directory, and path settings as typed: such a run resumes, not restarts."""
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []
    Chain(Stage1Config(run_dir=tmp_path / "runs" / "s1"), cli=lambda argv: 0).run(_fake_phases(calls))
    for state in (tmp_path / "runs" / "s1" / "stage1").glob("*.json"):
        m = json.loads(state.read_text())
        for key in ("inputs", "outputs"):
            m[key] = {f"runs/s1/{k}": v for k, v in m[key].items()}
        m["config"]["run_dir"] = "runs/s1"
        state.write_text(json.dumps(m))
    calls.clear()
    Chain(Stage1Config(run_dir="runs/s1"), cli=lambda argv: 0).run(_fake_phases(calls))
    assert calls == []
