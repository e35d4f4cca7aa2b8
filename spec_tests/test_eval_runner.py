"""EV-02, EV-03, EV-06, EV-07, PV-04: paired, deterministic, one-model-at-a-time evaluation and its outputs."""

from __future__ import annotations

import json
import math

import pytest

from cai_bootstrap.evaluation import report as rp
from cai_bootstrap.evaluation import runner as rn
from cai_bootstrap.evaluation.evalset import load_eval_set
from cai_bootstrap.io_utils import read_jsonl, sha256_file
from cai_bootstrap.loader import Generation
from cai_bootstrap.prompts import render_response_prompt
from spec_tests.test_evalset import gold_response

RECORD_FIELDS = {"id", "type", "instruction", "prompt", "response", "success", "reason", "tokens_generated"}
PV04_OVERALL = {"n", "base_rate", "base_ci", "sft_rate", "sft_ci", "lift", "lift_ci_bootstrap", "mcnemar_stat",
                "mcnemar_p", "cohens_h", "discordant"}


class Residency:
    """Counts models alive at once across every FakeLM."""

    def __init__(self):
        self.live = 0
        self.max_live = 0
        self.events: list[str] = []


class FakeLM:
    """Stands in for LoadedModel: answers with a gold response for chosen items, else garbage."""

    def __init__(self, label: str, residency: Residency, good_ids: set[str], items: list[dict], fail_on_generate=False,
                 incontext_good: set[str] | None = None):
        self.label, self.res = label, residency
        self.answers = {render_response_prompt(it["instruction"]): (gold_response(it) if it["id"] in good_ids else "zzz")
                        for it in items}
        self.answers.update({it["instruction"]: "zzz" for it in items})
        # an in-context prompt is answered by what follows its last blank line: the item's zero-shot prompt
        ic_good = good_ids if incontext_good is None else incontext_good
        self.incontext_answers = {render_response_prompt(it["instruction"]): (gold_response(it) if it["id"] in ic_good
                                                                              else "zzz") for it in items}
        self.fail_on_generate = fail_on_generate
        self.eos_token_id, self.pad_token_id = 0, 0
        self.provenance = {"model_name": label}
        self.calls: list[dict] = []
        self.model = object()
        residency.live += 1
        residency.max_live = max(residency.max_live, residency.live)
        residency.events.append(f"load {label}")

    def generate(self, prompts, **kw):
        assert self.model is not None, "generate after release"
        self.calls.append(kw)
        if self.fail_on_generate:
            raise RuntimeError("boom")
        return [Generation(text=self._answer(p), n_tokens=3, hit_limit=False, stopped_on_eos=True) for p in prompts]

    def _answer(self, prompt: str) -> str:
        if prompt in self.answers:
            return self.answers[prompt]
        return self.incontext_answers[prompt.rsplit("\n\n", 1)[1]]

    def release(self):
        self.model = None
        self.res.live -= 1
        self.res.events.append(f"release {self.label}")


@pytest.fixture(scope="module")
def items():
    return load_eval_set(limit=130)  # 10 items of each of the 13 types


def _factories(items, res, base_good, sft_good, incontext_good=None, **kw):
    return [(rn.BASE, lambda: FakeLM("base", res, base_good, items, incontext_good=incontext_good, **kw)),
            (rn.SFT, lambda: FakeLM("sft", res, sft_good, items, **kw))]


THREE_ARMS = {rn.BASE: [rn.INCONTEXT]}


# -- EV-07 ---------------------------------------------------------------------------------------

@pytest.mark.spec("EV-07")
def test_never_two_models_resident(items):
    res = Residency()
    run = rn.evaluate_models(items, _factories(items, res, set(), set()), modes=["framed", "raw"])
    assert res.max_live == 1
    assert res.live == 0
    assert res.events == ["load base", "release base", "load sft", "release sft"]
    assert len(run.records) == 2 * 2 * len(items)


@pytest.mark.spec("EV-07")
def test_model_is_released_when_evaluation_fails(items):
    res = Residency()
    with pytest.raises(RuntimeError, match="boom"):
        rn.evaluate_models(items, _factories(items, res, set(), set(), fail_on_generate=True))
    assert res.live == 0 and res.events == ["load base", "release base"]


# -- EV-02 ---------------------------------------------------------------------------------------

@pytest.mark.spec("EV-02")
def test_same_items_same_prompts_for_both_models(items):
    res = Residency()
    run = rn.evaluate_models(items, _factories(items, res, set(), set()), modes=["framed", "raw"])
    for mode in ("framed", "raw"):
        base, sft = rp.paired_outcomes(run, mode)
        assert [r["id"] for r in base] == [it["id"] for it in items]
        assert [(r["id"], r["prompt"]) for r in base] == [(r["id"], r["prompt"]) for r in sft]
    framed = run.outcomes(rn.BASE, "framed")
    assert all(r["prompt"] == render_response_prompt(r["instruction"]) for r in framed)
    assert all(r["prompt"] == r["instruction"] for r in run.outcomes(rn.BASE, "raw"))
    assert rn.build_prompt("Say hi.", "framed") == "Instruction: Say hi.\nResponse:"


@pytest.mark.spec("EV-02")
def test_unpaired_records_are_refused(items):
    run = rn.evaluate_models(items, _factories(items, Residency(), set(), set()))
    run.records = [r for r in run.records if not (r["model"] == rn.SFT and r["id"] == items[0]["id"])]
    with pytest.raises(ValueError, match="not paired"):
        rp.paired_outcomes(run, "framed")
    with pytest.raises(ValueError, match="unknown prompt mode"):
        rn.build_prompt("x", "chat")


# -- EV-03 ---------------------------------------------------------------------------------------

@pytest.mark.spec("EV-03")
def test_greedy_decoding_is_what_generate_receives(items):
    lm = FakeLM("base", Residency(), set(), items)
    rn.run_items(lm, items[:3], model_label="base", mode="framed", decoding=rn.EvalDecoding())
    kw = lm.calls[0]
    assert kw["do_sample"] is False and kw["temperature"] is None and kw["top_p"] is None
    assert kw["max_new_tokens"] == 128 and kw["repetition_penalty"] == 1.0
    assert rn.EvalDecoding().as_provenance()["temperature"] == 0.0
    for bad in (dict(do_sample=True), dict(temperature=0.7), dict(max_new_tokens=0), dict(repetition_penalty=1.1)):
        with pytest.raises(ValueError):
            rn.EvalDecoding(**bad)
    lm.pad_token_id = None
    with pytest.raises(ValueError, match="pad"):
        rn.run_items(lm, items[:1], model_label="base", mode="framed", decoding=rn.EvalDecoding())


@pytest.mark.spec("EV-03", "EV-04")
def test_two_runs_on_the_tiny_model_are_identical(tiny_lm, items):
    sample = items[:8]
    dec = rn.EvalDecoding(max_new_tokens=4, batch_size=4)
    a = rn.run_items(tiny_lm, sample, model_label="base", mode="framed", decoding=dec, progress=False)
    b = rn.run_items(tiny_lm, sample, model_label="base", mode="framed", decoding=dec, progress=False)
    assert a == b
    for r in a:
        assert RECORD_FIELDS <= set(r)
        assert 0 < r["tokens_generated"] <= 4
        assert r["success"] is False or r["reason"] == "ok"


# -- EV-04 record ---------------------------------------------------------------------------------

@pytest.mark.spec("EV-04")
def test_every_item_is_recorded_with_its_verdict(items):
    run = rn.evaluate_models(items, _factories(items, Residency(), set(), {it["id"] for it in items}))
    for r in run.records:
        assert RECORD_FIELDS <= set(r)
    sft = run.outcomes(rn.SFT, "framed")
    assert all(r["success"] and r["reason"] == "ok" for r in sft)
    base = run.outcomes(rn.BASE, "framed")
    assert not any(r["success"] for r in base) and all(r["reason"] != "ok" for r in base)


# -- EV-06 / PV-04 outputs ------------------------------------------------------------------------

def _paired_outputs(tmp_path, items, base_good, sft_good, modes=("framed",), incontext_good=None, seed=0):
    run = rn.evaluate_models(items, _factories(items, Residency(), base_good, sft_good, incontext_good), modes=list(modes),
                             extra_modes=THREE_ARMS)
    eval_set = {"path": "x", "sha256": "y", "limit": len(items), "n_items_used": len(items)}
    return rp.write_outputs(tmp_path, run, rp.StatsConfig(bootstrap_samples=2000, seed=seed), eval_set=eval_set)


@pytest.mark.spec("EV-06", "PV-04")
def test_outputs_schema_and_go_verdict(tmp_path, items):
    base_good = {it["id"] for i, it in enumerate(items) if i % 3 == 0}
    sft_good = {it["id"] for it in items}
    out = _paired_outputs(tmp_path, items, base_good, sft_good)
    summary = json.loads((tmp_path / rp.SUMMARY_FILE).read_text())
    assert PV04_OVERALL <= set(summary["overall"])
    assert set(summary["overall"]["discordant"]) == {"n01", "n10"}
    assert len(summary["by_type"]) == 13
    for block in summary["by_type"].values():
        assert PV04_OVERALL | {"p_adjusted", "significant_after_bh", "category"} <= set(block)
    assert set(summary["bh"]) >= {"fdr", "n_tests", "n_significant_raw", "n_significant_adjusted"}
    assert summary["bh"]["fdr"] == 0.10 and summary["bh"]["n_tests"] == 13
    md = summary["metadata"]
    assert {"confidence_level", "bootstrap_samples", "seed", "decoding"} <= set(md)
    assert md["decoding"]["do_sample"] is False and md["decoding"]["temperature"] == 0.0
    assert md["prompt_format"] == "Instruction: {instruction}\nResponse:"
    o = summary["overall"]
    assert o["n"] == 130 and o["discordant"] == {"n01": 130 - len(base_good), "n10": 0}
    assert o["lift"] == pytest.approx(1 - len(base_good) / 130) and o["mcnemar_p"] < 1e-10

    text = (tmp_path / rp.TEXT_FILE).read_text()
    assert "VERDICT: GO" in text and out["decision"].passed
    report = (tmp_path / rp.REPORT_FILE).read_text()
    assert "| list_items | format | 10 |" in report and rp.CHART_FILE in report
    assert (tmp_path / rp.CHART_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_jsonl(tmp_path / rp.ITEMS_FILE)
    assert len(records) == 390 and all(RECORD_FIELDS <= set(r) for r in records)
    manifest = json.loads((tmp_path / rp.MANIFEST_FILE).read_text())
    for entry in manifest["outputs"].values():
        assert sha256_file(tmp_path / entry["path"]) == entry["sha256"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.spec("EV-06")
def test_no_go_when_nothing_improves(tmp_path, items):
    same = {it["id"] for i, it in enumerate(items) if i % 2 == 0}
    out = _paired_outputs(tmp_path, items, same, same)
    text = (tmp_path / rp.TEXT_FILE).read_text()
    assert "VERDICT: NO-GO" in text and not out["decision"].passed
    assert out["summary"]["overall"]["mcnemar_p"] == 1.0
    assert out["summary"]["overall"]["mcnemar_method"] == "no_discordant_pairs"


@pytest.mark.spec("EV-06", "EV-03")
def test_outputs_are_reproducible(tmp_path, items):
    base_good = {it["id"] for i, it in enumerate(items) if i % 4 == 0}
    a = _paired_outputs(tmp_path / "a", items, base_good, {it["id"] for it in items[:90]})
    b = _paired_outputs(tmp_path / "b", items, base_good, {it["id"] for it in items[:90]})
    for key in ("overall", "by_type", "bh"):
        assert a["summary"][key] == b["summary"][key]
    assert (tmp_path / "a" / rp.ITEMS_FILE).read_bytes() == (tmp_path / "b" / rp.ITEMS_FILE).read_bytes()
    assert a["rates"] == b["rates"]


# -- CLI on the tiny model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A LoRA adapter with non-zero weights for the tiny model's architecture."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cai_bootstrap.testmodel import tiny_config_kwargs

    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(**tiny_config_kwargs()))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    from cai_bootstrap.provenance import TRAINING_MANIFEST, artifact_manifest, write_manifest

    root = tmp_path_factory.mktemp("sft")
    out = root / "adapter"
    peft_model.save_pretrained(out)
    # Pinned as `train` pins it: evaluation refuses an adapter its training manifest does not vouch for (PV-07).
    write_manifest(root / "training_manifest.json",
                   artifact_manifest(TRAINING_MANIFEST, sorted(p for p in out.rglob("*") if p.is_file()), base_dir=root))
    return out


@pytest.mark.spec("EV-02", "EV-06", "EV-07", "PV-04")
def test_cli_evaluate_and_gates_on_the_tiny_model(tiny_model_dir, tiny_adapter, tmp_path, capsys):
    from cai_bootstrap.cli import main

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapter), "--mode", "both",
            "--limit", "3", "--max-new-tokens", "4", "--bootstrap-samples", "200", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "VERDICT: NO-GO" in printed  # 3 items can never reach p < 0.01
    for name in (rp.ITEMS_FILE, rp.RATES_FILE, rp.SUMMARY_FILE, rp.TEXT_FILE, rp.REPORT_FILE, rp.CHART_FILE, rp.MANIFEST_FILE):
        assert (out / name).is_file(), name
    summary = json.loads((out / rp.SUMMARY_FILE).read_text())
    assert PV04_OVERALL <= set(summary["overall"]) and {"overall", "by_type", "bh", "metadata"} <= set(summary)
    assert summary["overall"]["n"] == 3
    manifest = json.loads((out / rp.MANIFEST_FILE).read_text())
    assert list(manifest["models"]) == ["base", "sft"]
    assert "adapter_model.safetensors" in manifest["models"]["sft"]["adapter"]["files"]
    assert manifest["models"]["base"]["template_disabled"] is True
    records = read_jsonl(out / rp.ITEMS_FILE)
    assert len(records) == 2 * 2 * 3 + 3  # both models framed and raw, and the base model in context (EV-08)
    assert [r["prompt"] for r in records if r["model"] == "base" and r["mode"] != "incontext"] == [
        r["prompt"] for r in records if r["model"] == "sft"]
    assert [r["mode"] for r in records if r["model"] == "base"] == ["framed"] * 3 + ["raw"] * 3 + ["incontext"] * 3
    assert manifest["model_modes"] == {"base": ["framed", "raw", "incontext"], "sft": ["framed", "raw"]}
    assert set(summary["vs_incontext"]) == {"overall", "by_type", "bh"} and summary["vs_incontext"]["overall"]["n"] == 3
    assert list(summary["arms"]) == ["base_zero_shot", "base_incontext", "trained_zero_shot"]
    assert "base in-context" in printed and "trained vs base in-context" in printed

    assert main(["gate", "final", "--eval", str(out)]) == 1
    gate = json.loads((out / "gate_final.json").read_text())
    assert gate["gate"] == "final_eval" and gate["decision"] == "fail"
    assert gate["inputs"][0]["sha256"] == sha256_file(out / rp.SUMMARY_FILE)
    assert main(["gate", "gap", "--eval", str(out), "--max-base-rate", "1.0"]) == 0
    assert json.loads((out / "gate_gap.json").read_text())["decision"] == "pass"
    # an existing evaluation is not overwritten by accident
    assert main(argv) == 2


@pytest.mark.spec("EV-06")
@pytest.mark.parametrize("extra, message", [
    (["--base-only", "--adapter", "ADAPTER"], "either --adapter"),
    ([], "either --adapter"),
    (["--adapter", "/no/such/adapter"], "does not exist"),
    (["--base-only", "--limit", "0"], "--limit"),
    (["--adapter", "ADAPTER", "--mode", "raw"], "framed"),
    (["--base-only", "--eval-set", "/no/such.jsonl"], "no such file"),
])
def test_cli_rejects_bad_arguments_before_loading(tiny_adapter, tmp_path, capsys, extra, message):
    from cai_bootstrap.cli import main

    extra = [str(tiny_adapter) if a == "ADAPTER" else a for a in extra]
    rc = main(["evaluate", "--model", "/no/such/model", "--out", str(tmp_path / "o"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


# -- EV-08: three arms ------------------------------------------------------------------------------

@pytest.mark.spec("EV-08", "EV-07")
def test_three_arms_on_the_same_items_with_the_base_model_loaded_once(items):
    from cai_bootstrap.prompts import build_demonstration_prompt, demonstration_stop_strings

    sample = items[:26]
    res = Residency()
    made: list[FakeLM] = []

    def factory(label):
        def load():
            made.append(FakeLM(label, res, set(), sample))
            return made[-1]
        return load

    run = rn.evaluate_models(sample, [(rn.BASE, factory("base")), (rn.SFT, factory("sft"))], extra_modes=THREE_ARMS,
                             decoding=rn.EvalDecoding(seed=3))
    assert res.events == ["load base", "release base", "load sft", "release sft"] and res.max_live == 1
    assert run.modes_of(rn.BASE) == ["framed", "incontext"] and run.modes_of(rn.SFT) == ["framed"]
    ids = [it["id"] for it in sample]
    for label, mode in rp.ARMS.values():
        assert [r["id"] for r in run.outcomes(label, mode)] == ids
    framed = {r["id"]: r["prompt"] for r in run.outcomes(rn.SFT, "framed")}
    for r, it in zip(run.outcomes(rn.BASE, "incontext"), sample):
        assert r["prompt"] == build_demonstration_prompt(it["instruction"], seed=3, item_id=it["id"]).text
        assert r["prompt"].endswith("\n\n" + framed[r["id"]])
    # the in-context arm is cut where generation cuts the frame; the zero-shot arms are recorded raw
    base_calls, sft_calls = made[0].calls, made[1].calls
    assert [c.get("stop_strings") for c in base_calls] == [None, demonstration_stop_strings()]
    assert [c.get("stop_strings") for c in sft_calls] == [None]
    ic, sft = rp.incontext_outcomes(run)
    assert [r["id"] for r in ic] == [r["id"] for r in sft] == ids


@pytest.mark.spec("EV-08")
def test_a_paired_summary_without_the_in_context_arm_is_refused(items, tmp_path):
    run = rn.evaluate_models(items[:13], _factories(items[:13], Residency(), set(), set()))
    with pytest.raises(ValueError, match="three arms"):
        rp.build_summary(run, rp.StatsConfig(bootstrap_samples=100), eval_set={"n_items_used": 13})
    run = rn.evaluate_models(items[:13], _factories(items[:13], Residency(), set(), set()), extra_modes=THREE_ARMS)
    run.records = [r for r in run.records if not (r["mode"] == "incontext" and r["id"] == items[0]["id"])]
    with pytest.raises(ValueError, match="not paired"):
        rp.incontext_outcomes(run)
    with pytest.raises(ValueError, match="not evaluated"):
        rn.evaluate_models(items[:2], _factories(items[:2], Residency(), set(), set()), extra_modes={"other": ["incontext"]})
    with pytest.raises(ValueError, match="item_id"):
        rn.build_prompt("Say hi.", "incontext")


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [center - half, center + half]


@pytest.mark.spec("EV-08", "EV-05", "PV-04")
def test_vs_incontext_statistics_match_a_hand_example(tmp_path, items):
    sample = items[:20]
    ids = [it["id"] for it in sample]
    base_good = set(ids[:2])                                   # 2/20 zero-shot
    incontext_good = set(ids[:8])                              # 8/20 in context
    sft_good = set(ids[:6]) | set(ids[8:14])                   # 12/20: +6 over in-context, -2 (items 6, 7)
    out = _paired_outputs(tmp_path, sample, base_good, sft_good, incontext_good=incontext_good)
    summary = json.loads((tmp_path / rp.SUMMARY_FILE).read_text())

    ic = summary["vs_incontext"]["overall"]
    assert set(ic) == set(summary["overall"])  # the same statistics block
    assert (ic["n"], ic["base_successes"], ic["sft_successes"]) == (20, 8, 12)
    assert ic["discordant"] == {"n01": 6, "n10": 2}
    assert ic["mcnemar_method"] == "exact_binomial" and ic["mcnemar_stat"] == 2.0
    assert ic["mcnemar_p"] == pytest.approx(2 * (1 + 8 + 28) / 2**8)  # 2 * P(X <= 2), X ~ Bin(8, 1/2)
    assert ic["lift"] == pytest.approx(0.2)
    assert ic["cohens_h"] == pytest.approx(2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.4)))
    assert ic["base_ci"] == pytest.approx(_wilson(8, 20)) and ic["sft_ci"] == pytest.approx(_wilson(12, 20))
    assert set(summary["vs_incontext"]["by_type"]) == set(summary["by_type"])
    assert summary["vs_incontext"]["bh"]["n_tests"] == summary["bh"]["n_tests"]

    o = summary["overall"]  # GT-02's comparison is unchanged: trained vs base zero-shot
    assert o["discordant"] == {"n01": 10, "n10": 0} and o["mcnemar_p"] == pytest.approx(2 / 2**10)
    assert o["lift"] == pytest.approx(0.5)
    arms = summary["arms"]
    assert [(a["successes"], a["n"]) for a in arms.values()] == [(2, 20), (8, 20), (12, 20)]
    for a in arms.values():
        assert a["ci"] == pytest.approx(_wilson(a["successes"], a["n"]))
    # GT-02 reads only the zero-shot comparison: GO here although the lead over in-context is not significant
    assert out["decision"].passed and out["decision"].values["mcnemar_p"] == pytest.approx(o["mcnemar_p"])

    text = (tmp_path / rp.TEXT_FILE).read_text()
    assert "base in-context    success  40.0% " in text and "trained vs base in-context: lift +20.0 points" in text
    report = (tmp_path / rp.REPORT_FILE).read_text()
    assert "| base in-context | base | incontext | 20 | 40.0% |" in report
    assert "| trained vs base in-context | +20.0 |" in report
    from cai_bootstrap.validation import validate_file

    checked = validate_file(tmp_path / rp.SUMMARY_FILE)  # the written summary meets its suite, EV-08 fields included
    assert checked.ok, checked.format()
