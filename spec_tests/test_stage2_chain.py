"""ST-01 / PO-01 / PO-02: the Stage-2 chain on the model Stage 1 passed: its final-gate decider,
the refusal of a model Stage 1 did not pass, a stop at a failed pairs gate, and resume.

One chain on the tiny model (sampling scripted, every score the real model's) serves the
chain asserts (module fixture), run with pair QC no run can pass: it must stop before DPO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cai_bootstrap.gates import FINAL_GATE, GateInputError
from cai_bootstrap.io_utils import atomic_write_json, sha256_file
from cai_bootstrap.stages.stage2_gate import STAGE2_VS_STAGE1, Stage2GateThresholds, decide_stage2_final

from spec_tests.scripted_lm import ScriptedLM
from spec_tests.sft_support import make_generation_run, no_expectation_failures

CONFIGS = Path(__file__).resolve().parent.parent / "src" / "cai_bootstrap" / "configs"

# -- the final-gate decider (pure) -------------------------------------------------------------------------


def _summary(overall: tuple[float, float], types: dict[str, tuple[str, float, float]]) -> dict:
    """A Stage-2 summary: (lift, McNemar p) overall and type -> (category, lift, BH-adjusted p) vs Stage 1."""
    lift, p = overall
    return {"comparisons": {STAGE2_VS_STAGE1: {
        "overall": {"n": 400, "base_rate": 0.3, "sft_rate": 0.3 + lift, "lift": lift, "mcnemar_p": p},
        "by_type": {t: _type(c, 40, 12, 12 + round(dl * 40), pa) for t, (c, dl, pa) in types.items()}}}}


def _type(category: str, n: int, k_ref: int, k_new: int, p_adjusted: float) -> dict:
    """A per-type block as the evaluation writes it: rates, Wilson intervals, lift, BH-adjusted p."""
    from cai_bootstrap.evaluation.statistics import wilson_ci

    return {"category": category, "n": n, "base_rate": k_ref / n, "sft_rate": k_new / n, "lift": (k_new - k_ref) / n,
            "base_ci": list(wilson_ci(k_ref, n)), "sft_ci": list(wilson_ci(k_new, n)), "p_adjusted": p_adjusted}


@pytest.mark.spec("GT-02")
def test_every_final_gate_applies_the_same_stricter_regression_rule():
    """Refusals 30/30 -> 22/30 with BH-adjusted p 0.013: not significant at 0.01, but the whole interval
    lies below the reference's. Stage 1's rule (CI overlap) and the preference round's (BH) once
    disagreed; every final gate now flags what either rule flags."""
    from cai_bootstrap.gates import decide_final

    refusal = _type("safety", 30, 30, 22, 0.013)
    s2 = {"comparisons": {STAGE2_VS_STAGE1: {"overall": {"n": 400, "base_rate": 0.3, "sft_rate": 0.36, "lift": 0.06,
                                                          "mcnemar_p": 0.001}, "by_type": {"refusal": refusal}}}}
    d2 = decide_stage2_final(s2)
    s1 = {"overall": {"n": 400, "base_rate": 0.3, "sft_rate": 0.36, "lift": 0.06, "mcnemar_p": 0.001},
          "by_type": {"refusal": refusal}}
    d1 = decide_final(s1)
    for d in (d1, d2):
        assert not d.passed and [c.name for c in d.checks if not c.passed] == ["no_guarded_regression"], d.reasons
    # and significance alone flags a regression whose intervals still overlap
    close = _type("format", 200, 100, 80, 0.004)
    assert close["sft_ci"][1] >= close["base_ci"][0]
    s1["by_type"] = {"json": close}
    assert not decide_final(s1).passed


NEUTRAL = {"refusal": ("safety", 0.0, 1.0), "json": ("format", 0.0, 1.0), "arithmetic": ("reasoning", 0.0, 1.0)}
GATE_CASES = [  # (overall (lift, p), type changes, target types, GO?, failed check or None)
    ((0.05, 0.001), {}, None, True, None),  # significant overall gain, no regression
    ((0.01, 0.5), {"arithmetic": ("reasoning", 0.2, 0.001)}, None, True, None),  # gain on one type only
    ((0.01, 0.5), {"arithmetic": ("reasoning", 0.2, 0.001)}, ("refusal",), False, "significant_gain"),  # not a target type
    ((0.01, 0.5), {}, None, False, "significant_gain"),  # no gain anywhere
    ((0.01, 0.5), {"arithmetic": ("reasoning", 0.3, 0.008)}, None, False, "significant_gain"),  # p_adj < alpha, not < alpha/2
    ((0.02, 0.008), {}, None, False, "significant_gain"),  # overall p < alpha, not < alpha/2
    ((0.0, 1.0), {"arithmetic": ("reasoning", -0.3, 0.04)}, None, False, "significant_gain"),  # a dip is not a gain
    ((-0.01, 0.5), {"arithmetic": ("reasoning", 0.3, 0.001)}, None, False, "overall_lift_not_negative"),  # one type cannot pay
    ((-0.06, 0.001), {"arithmetic": ("reasoning", 0.2, 0.001)}, None, False, ["no_overall_regression", "overall_lift_not_negative"]),
    ((0.05, 0.001), {"refusal": ("safety", -0.2, 0.001)}, None, False, "no_guarded_regression"),
    ((0.05, 0.001), {"json": ("format", -0.2, 0.2)}, None, True, None),  # not significant: noise, no block
    ((0.05, 0.001), {"arithmetic": ("reasoning", -0.2, 0.001)}, None, True, None),  # unguarded type may dip
]


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("overall,changes,targets,go,failed", GATE_CASES)
def test_stage2_final_gate_needs_no_regression_and_a_significant_gain(overall, changes, targets, go, failed):
    d = decide_stage2_final(_summary(overall, {**NEUTRAL, **changes}), Stage2GateThresholds(alpha=0.01, target_types=targets))
    assert (d.gate, d.passed) == (FINAL_GATE, go)
    assert [c.name for c in d.checks if not c.passed] == ([failed] if isinstance(failed, str) else failed or [])
    assert d.values["lift"] == overall[0] and d.values["mcnemar_p"] == overall[1] and d.thresholds["alpha"] == 0.01


@pytest.mark.spec("ST-01")
def test_stage2_final_gate_names_what_it_lacks():
    with pytest.raises(GateInputError, match="missing 'comparisons'"):
        decide_stage2_final({"overall": {}})
    with pytest.raises(GateInputError, match=r"target types \['poetry'\] are not in the evaluation"):
        decide_stage2_final(_summary((0.0, 1.0), NEUTRAL), Stage2GateThresholds(target_types=("poetry",)))
    with pytest.raises(ValueError, match="alpha must be in"):
        Stage2GateThresholds(alpha=1.5)


# -- the chain on the tiny model -------------------------------------------------------------------------------


def _stage1(root: Path, model_dir: Path) -> Path:
    """A finished Stage-1 run of the tiny model: data, a real SFT adapter, its evaluation summary, a GO gate."""
    from cai_bootstrap.evaluation.runner import adapter_fingerprint
    from cai_bootstrap.sft.config import config_from_dict
    from cai_bootstrap.sft.train import run_training

    cfg = config_from_dict({"model": str(model_dir), "dataset": str(make_generation_run(root / "merged")),
                            "output_dir": str(root / "sft"), "smoke": True, "max_steps": 1, "epochs": 1,
                            "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64,
                            "logging_steps": 1, "run_sentinels": False})
    run_training(cfg, device_info={"cuda_available": False}, validator=no_expectation_failures)
    from cai_bootstrap.evaluation.final_gate import run_final_gate
    from spec_tests.integrity_support import make_eval_folder

    folder = make_eval_folder(root / "eval", {"arithmetic": [(False, True)] * 20, "refusal": [(True, True)] * 4}, models={
        "base": {"model_name": str(model_dir)},
        "sft": {"model_name": str(model_dir), "adapter": adapter_fingerprint(root / "sft" / "adapter")}})
    decision, manifest = run_final_gate(folder, out=root / "gates" / "final_eval.json")
    assert decision.passed
    return manifest


def _config(path: Path, **changes) -> Path:
    data = yaml.safe_load((CONFIGS / "stage2_cpu_smoke.yaml").read_text())
    for key, value in changes.items():
        data["stage2"][key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def _clean(lm):
    """Sampling scripted (a random model writes nothing that parses); every forward pass is the real model's."""
    return ScriptedLM(lm, style="clean")


@pytest.fixture(scope="module")
def chain_run(tiny_model_dir, tmp_path_factory):
    from cai_bootstrap.stages.stage2 import main

    root = tmp_path_factory.mktemp("stage2")
    gate = _stage1(root / "s1", tiny_model_dir)
    run = root / "run"
    smoke = yaml.safe_load((CONFIGS / "stage2_cpu_smoke.yaml").read_text())["stage2"]["pairs_overrides"]
    strict = _config(root / "strict.yaml", pairs_overrides={**smoke, "qc": {"min_pairs": 100_000}})
    out: dict = {"run": run, "gate": gate}
    rc_strict = main(["--config", str(strict), str(gate), "--run-dir", str(run)], sampler=_clean)
    out["strict"] = {"rc": rc_strict, "dpo_existed": (run / "dpo").exists(),
                     "pairs_gate": json.loads((run / "gates" / "pairs_gate.json").read_text())}
    out["strict_config"] = strict
    # The same chain to its end: judges scripted (a random model's critic cannot separate answers by the
    # required gap), everything else real: DPO steps, three models evaluated, the final gate, the report.
    full_run = root / "full"
    with pytest.MonkeyPatch.context() as mp:
        import cai_bootstrap.critic as critic_module

        mp.setattr(critic_module, "pair_critic", lambda lm, **kw: _ScriptedJudge("difference"))
        mp.setattr(critic_module, "relevance_judge", lambda lm, **kw: _ScriptedJudge("score"))
        out["full_rc"] = main(["--config", str(_config(root / "full.yaml")), str(gate), "--run-dir", str(full_run)], sampler=_clean)
    out["full"] = full_run
    return out


class _ScriptedJudge:
    """Scores a text by its length modulo 7 (distinct answers get distinct scores, a gap of at least 1)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def score(self, items):
        from types import SimpleNamespace

        def text(item):
            return item["response"] if isinstance(item, dict) else item[1]

        return [SimpleNamespace(**{self.field: float(len(text(i)) % 7)}) for i in items]


@pytest.mark.spec("PO-01", "PO-02", "ST-01")
def test_a_failed_pairs_gate_stops_the_chain_before_dpo(chain_run):
    s = chain_run["strict"]
    assert s["rc"] == 1 and not s["dpo_existed"]
    assert s["pairs_gate"]["decision"] == "fail" and any("min_pairs 100000" in r for r in s["pairs_gate"]["reasons"])
    assert {"gate", "inputs", "thresholds", "values", "checks"} <= set(s["pairs_gate"])


@pytest.mark.spec("ST-01")
def test_a_rerun_skips_the_finished_phases(chain_run, capsys):
    """A rerun finds the phases before the failed gate done (hashes verified) and decides the gate again."""
    from cai_bootstrap.stages.stage2 import main

    run = chain_run["run"]
    rc = main(["--config", str(chain_run["strict_config"]), str(chain_run["gate"]), "--run-dir", str(run)])
    out = capsys.readouterr().out
    assert rc == 1 and not (run / "dpo").exists()
    for name in ("input_model", "instructions", "pairs"):
        assert f"[stage2] {name}: already done" in out
    assert "[stage2] pairs_gate: pair suites" in out


@pytest.mark.spec("ST-01")
@pytest.mark.parametrize("override,rc", [(None, 2), ("an experiment", None)])
def test_chain_refuses_a_failed_stage1_gate_unless_overridden(tmp_path, capsys, override, rc):
    from cai_bootstrap.stages.stage2 import main

    s1 = tmp_path / "s1"
    adapter = s1 / "sft" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    atomic_write_json(s1 / "sft" / "training_manifest.json", {"dataset": {"run_dir": str(s1 / "merged")}})
    from cai_bootstrap.evaluation.final_gate import run_final_gate
    from spec_tests.integrity_support import make_eval_folder

    folder = make_eval_folder(s1 / "eval", {"arithmetic": [(False, True), (True, False)] * 6}, models={
        "base": {"model_name": "tiny"},
        "sft": {"model_name": "tiny", "adapter": {"path": str(adapter), "files": {"adapter_config.json": sha256_file(adapter / "adapter_config.json")}}}})
    decision, gate = run_final_gate(folder, out=s1 / "gates" / "final_eval.json")
    assert not decision.passed
    argv = [str(gate), "--config", str(CONFIGS / "stage2_cpu_smoke.yaml"), "--run-dir", str(tmp_path / "run"),
            "--until", "input_model"] + (["--override", override] if override else [])
    got = main(argv)
    err = capsys.readouterr().err
    if rc == 2:
        assert got == 2 and "REFUSED" in err and "says FAIL" in err and not (tmp_path / "run").exists()
        return
    assert got == 0
    rec = json.loads((tmp_path / "run" / "input_model.json").read_text())
    assert rec["override"] == {"reason": override, "decision": "fail"} and rec["stage1_data"] == str(s1 / "merged")


@pytest.mark.spec("ST-01")
def test_shipped_stage2_configs_load_and_bad_fields_are_named(tmp_path):
    from cai_bootstrap.stages.chain import ChainError
    from cai_bootstrap.stages.stage2 import load_stage2_config

    for path in sorted(CONFIGS.glob("stage2_*.yaml")):
        cfg = load_stage2_config(path)
        assert path.read_text().splitlines()[0].startswith("# "), path  # the launch command heads the file
        assert cfg.run_dir.name.startswith("stage2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage2:\n  instructions_target: 0\n  kk: 1\n")
    with pytest.raises(ChainError, match="instructions_target"):
        load_stage2_config(bad)
    for section, bad_value, message in (("dpo_overrides", {"betta": 0.1}, r"dpo_overrides: unknown fields \['betta'\]"),
                                        ("pairs_overrides", {"kk": 2}, r"pairs_overrides: unknown fields \['kk'\]"),
                                        ("instruction_decoding", {"max_tokens": 9}, r"instruction_decoding: unknown fields"),
                                        ("guarded_categories", ["Safety"], r"guarded_categories \['Safety'\] are not"),
                                        ("target_types", ["poetry"], r"target_types \['poetry'\] are not")):
        bad.write_text(yaml.safe_dump({"stage2": {section: bad_value}}))
        with pytest.raises(ChainError, match=message):
            load_stage2_config(bad)
    shutil.copy(CONFIGS / "stage2_gemma_gpu.yaml", tmp_path / "g.yaml")
    assert load_stage2_config(tmp_path / "g.yaml").dpo_overrides["beta"] == 0.1


@pytest.mark.spec("ST-01", "PO-03")
def test_the_chain_runs_to_its_final_gate_and_reports_three_ways(chain_run):
    run = chain_run["full"]
    assert chain_run["full_rc"] in (0, 1)  # GO or NO-GO: a random model decides either way, but it decides
    for phase in ("input_model", "instructions", "pairs", "pairs_gate", "dpo", "evaluate", "final_gate"):
        state = json.loads((run / "stage2" / f"{phase}.json").read_text())
        assert state["status"] == ("gate_failed" if phase == "final_gate" and chain_run["full_rc"] else "done"), phase
    pairs_gate = json.loads((run / "gates" / "pairs_gate.json").read_text())
    assert pairs_gate["decision"] == "pass" and pairs_gate["values"]["counts"]["pairs"] >= 1
    final = json.loads((run / "gates" / "final_eval.json").read_text())
    assert final["decision"] == ("pass" if chain_run["full_rc"] == 0 else "fail")
    assert {"lift", "mcnemar_p"} <= set(final["values"])
    summary = json.loads((run / "eval" / "eval_summary.json").read_text())
    assert set(summary["comparisons"]) == {"stage2_vs_stage1", "stage2_vs_base", "stage1_vs_base"}
    report = (run / "report" / "REPORT.md").read_text()
    for needle in ("stage2 vs stage1", "Preference pairs", "reward accuracy", "Model lineage"):
        assert needle.lower() in report.lower(), needle
    dpo = json.loads((run / "dpo" / "training_manifest.json").read_text())
    assert dpo["lineage"]["steps"][-1]["stage"] == 2


@pytest.mark.spec("ST-01")
def test_instruction_rounds_of_other_settings_are_set_aside_not_reused(tiny_lm, tmp_path):
    from cai_bootstrap.datagen.pipeline import RAW_INSTRUCTIONS, WORK
    from cai_bootstrap.io_utils import read_jsonl
    from cai_bootstrap.stages.stage2 import generate_stage2_instructions

    lm = _clean(tiny_lm)
    kw = dict(target=2, seed=0, out=tmp_path)
    generate_stage2_instructions(lm, decoding={"max_new_tokens": 32, "batch_size": 2}, **kw)
    first = read_jsonl(tmp_path / WORK / RAW_INSTRUCTIONS)
    generate_stage2_instructions(lm, decoding={"max_new_tokens": 32, "batch_size": 2}, **kw)  # same settings: resumed
    assert read_jsonl(tmp_path / WORK / RAW_INSTRUCTIONS) == first and not list(tmp_path.glob(f"{WORK}.replaced-*"))
    generate_stage2_instructions(lm, decoding={"max_new_tokens": 40, "batch_size": 2}, **kw)
    aside = list(tmp_path.glob(f"{WORK}.replaced-*"))
    assert len(aside) == 1 and read_jsonl(aside[0] / RAW_INSTRUCTIONS) == first
    assert json.loads((tmp_path / WORK / "state.json").read_text())["instructions"]["max_new_tokens"] == 40


@pytest.mark.spec("PV-07", "GT-02")
def test_the_preference_rounds_gate_recomputes_its_comparison_from_the_items(chain_run, tmp_path):
    """A three-way summary edited (p and lift of Stage 2 vs Stage 1) and re-pinned in its manifest is refused."""
    from cai_bootstrap.integrity import IntegrityError
    from cai_bootstrap.stages.stage2_gate import run_stage2_final_gate

    folder = tmp_path / "eval"
    shutil.copytree(chain_run["full"] / "eval", folder)
    summary = json.loads((folder / "eval_summary.json").read_text())
    summary["comparisons"][STAGE2_VS_STAGE1]["overall"].update(mcnemar_p=1e-9, lift=0.5)
    (folder / "eval_summary.json").write_text(json.dumps(summary))
    manifest = json.loads((folder / "eval_manifest.json").read_text())
    manifest["outputs"]["summary"]["sha256"] = sha256_file(folder / "eval_summary.json")
    (folder / "eval_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="disagrees with the per-item results"):
        run_stage2_final_gate(folder, out=tmp_path / "gate.json")
    assert not (tmp_path / "gate.json").exists()
