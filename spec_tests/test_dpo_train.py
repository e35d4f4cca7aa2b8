"""PO-03: DPO on preference pairs, on top of the Stage-1 model, behind the SFT data gate.

One tiny Stage-1 SFT run is the reference model; a 3-step CPU DPO run through the CLI
must move the adapter, log finite losses and leave a manifest that names the pairs, the
reference and the objective. Labels are checked token by token on the batches of the
trainer's own dataloader, as SFT-02/03 check them for SFT.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cai_bootstrap.preference.config import BETA_RANGE, DPO_LOSS_TYPES, config_from_dict
from cai_bootstrap.preference.train_dpo import (
    GATE_MANIFEST_NAME,
    build_trainer,
    check_before_load,
    encode_pairs,
    labels_from_completion_mask,
    load_stage1_policy,
    pair_examples,
    run_dpo,
    verify_preference_batch,
)
from cai_bootstrap.sft.config import ConfigError
from cai_bootstrap.sft.masking import IGNORE_INDEX, MaskingError, mask_from_offsets
from cai_bootstrap.sft.train import MANIFEST_NAME, SUCCESS_MARKER, TrainingSetupError, plan_run

from spec_tests.preference_support import make_pairs, make_pairs_run
from spec_tests.sft_support import make_generation_run

CPU = {"cuda_available": False}
SMOKE = {"smoke": True, "max_steps": 3, "epochs": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
         "max_length": 128, "save_steps": 50, "logging_steps": 1, "learning_rate": 1e-4}


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """A finished Stage-1 SFT run of the tiny model: the reference of every DPO run here."""
    from cai_bootstrap.sft.config import config_from_dict as sft_config
    from cai_bootstrap.sft.train import run_training

    d = tmp_path_factory.mktemp("stage1")
    cfg = sft_config({"model": str(tiny_model_dir), "dataset": str(make_generation_run(d / "data")), "output_dir": str(d / "sft"),
                      "smoke": True, "max_steps": 1, "epochs": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                      "max_length": 64, "logging_steps": 1, "run_sentinels": False})
    from spec_tests.sft_support import no_expectation_failures

    run_training(cfg, device_info=CPU, validator=no_expectation_failures)
    return d / "sft"


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    return make_pairs_run(tmp_path_factory.mktemp("pairs") / "run")


def _cfg(model_dir, sft, pairs, out, **extra):
    return config_from_dict({"model": str(model_dir), "sft_run": str(sft), "pairs": str(pairs), "output_dir": str(out),
                             **SMOKE, "run_sentinels": False, **extra})


@pytest.fixture(scope="module")
def dpo_out(tiny_model_dir, sft_run, pairs_run, tmp_path_factory):
    """The smoke run, launched through the CLI from a YAML file, with the real expectation suite."""
    from cai_bootstrap.cli import main

    d = tmp_path_factory.mktemp("dpo")
    f = d / "dpo.yaml"
    f.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "sft_run": str(sft_run), "pairs": str(pairs_run),
                                 "output_dir": str(d / "out"), **SMOKE}))
    assert main(["train-dpo", "--config", str(f)]) == 0
    return d / "out"


# -- config ---------------------------------------------------------------------------------------------

CONFIG_CASES = [
    # (fields, error fragment or None)
    ({"beta": 0.1}, None),
    ({"beta": 0.3}, None),
    ({"beta": 0.05}, "beta must be between 0.1 and 0.3"),
    ({"beta": 0.5}, "beta must be between 0.1 and 0.3"),
    ({"loss_type": "ipo"}, None),
    ({"loss_type": "kto"}, "not a pairwise DPO loss"),
    ({"method": "orpo"}, None),
    ({"method": "simpo", "simpo_gamma": 1.0}, None),
    ({"method": "orpo", "loss_type": "ipo"}, "only method: dpo takes a loss_type"),
    ({"method": "kto"}, "method"),
    ({"max_steps": 3, "smoke": False}, "only allowed with smoke"),
    ({"learning_rate": 1e-3}, "learning_rate must be in"),
]


@pytest.mark.spec("PO-03")
@pytest.mark.parametrize("fields, error", CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_config_validates_beta_and_objective(fields, error):
    base = {"model": "tiny-random", "sft_run": "s", "pairs": "p", "output_dir": "o", "run_sentinels": True}
    if error is None:
        cfg = config_from_dict({**base, **fields})
        assert BETA_RANGE[0] <= cfg.beta <= BETA_RANGE[1] and cfg.uses_reference == (cfg.method == "dpo")
    else:
        with pytest.raises(ConfigError, match=error):
            config_from_dict({**base, **fields})


@pytest.mark.spec("PO-03")
def test_shipped_dpo_yaml_validates_and_names_its_command():
    from cai_bootstrap.preference.config import default_config_path, load_config

    p = default_config_path()
    assert p.read_text().splitlines()[0].startswith("# cai-bootstrap train-dpo --config src/cai_bootstrap/configs/dpo_default.yaml")
    cfg = load_config(p)
    assert (cfg.method, cfg.loss_type, cfg.beta) == ("dpo", "sigmoid", 0.1) and "sigmoid" in DPO_LOSS_TYPES


# -- the gate, before any model loads ------------------------------------------------------------------------


def _no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded although the run must be refused first")

    monkeypatch.setattr("cai_bootstrap.loader.load_base_model", boom)


@pytest.mark.spec("PO-03", "SFT-01", "SFT-06", "ST-03")
def test_gate_refuses_changed_pairs_leaks_and_an_unfinished_stage1_before_loading(tiny_model_dir, sft_run, tmp_path, monkeypatch):
    from cai_bootstrap.sft.data_gate import DataGateError, EvalLeakageError

    _no_load(monkeypatch)
    run = make_pairs_run(tmp_path / "pairs")
    with open(run / "pairs.jsonl", "a") as f:
        f.write(json.dumps(make_pairs()[0]) + "\n")
    with pytest.raises(DataGateError, match=r"\[hashes\]"):
        run_dpo(_cfg(tiny_model_dir, sft_run, run, tmp_path / "o1"), device_info=CPU)
    assert json.loads((tmp_path / "o1" / GATE_MANIFEST_NAME).read_text())["decision"] == "fail"

    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"id": "e1", "instruction": "Tell me the opposite of cold."}) + "\n")
    with pytest.raises(EvalLeakageError, match="opposite of cold"):
        run_dpo(_cfg(tiny_model_dir, sft_run, make_pairs_run(tmp_path / "p2"), tmp_path / "o2", eval_set=str(eval_set)), device_info=CPU)

    with pytest.raises(TrainingSetupError, match="not a finished Stage-1 SFT run"):
        (tmp_path / "not-a-run").mkdir()
        run_dpo(_cfg(tiny_model_dir, tmp_path / "not-a-run", make_pairs_run(tmp_path / "p3"), tmp_path / "o3"), device_info=CPU)

    # ST-03: the Stage-1 gate named for the lineage must be readable before anything loads.
    with pytest.raises(TrainingSetupError, match="stage1_gate: no gate manifest at"):
        run_dpo(_cfg(tiny_model_dir, sft_run, make_pairs_run(tmp_path / "p4"), tmp_path / "o4",
                     stage1_gate=str(tmp_path / "missing.json")), device_info=CPU)


@pytest.mark.spec("PO-03", "PV-06")
def test_gate_refuses_a_pair_whose_prompt_is_not_pr01(tiny_model_dir, sft_run, tmp_path, monkeypatch):
    """The suite checks the frame; only the record check sees a prompt rendered for another instruction."""
    from cai_bootstrap.preference.run_dir import write_pairs_run
    from cai_bootstrap.preference.qc import PairQCThresholds, compute_pair_qc
    from cai_bootstrap.sft.data_gate import DataGateError

    _no_load(monkeypatch)
    pairs = make_pairs()
    pairs[0] = {**pairs[0], "prompt": pairs[2]["prompt"]}
    run = tmp_path / "pairs"
    summary = compute_pair_qc(pairs, n_instructions=4, drop_reasons={}, thresholds=PairQCThresholds())
    import cai_bootstrap.preference.run_dir as rd

    monkeypatch.setattr(rd, "check_pair_records", lambda recs: [])  # a writer that does not check
    write_pairs_run(run, pairs, [], summary, config={}, load_provenance={})
    with pytest.raises(DataGateError, match=r"\[records\].*not the zero-shot PR-01 prompt"):
        check_before_load(_cfg(tiny_model_dir, sft_run, run, tmp_path / "o"), device_info=CPU)


# -- labels ----------------------------------------------------------------------------------------------------


@pytest.mark.spec("PO-03", "SFT-02", "SFT-03")
def test_pair_masks_on_hand_written_ids():
    eos = 9
    chosen = mask_from_offsets([1, 2, 3, 4], [(0, 0), (0, 3), (3, 6), (6, 8)], 6, eos)
    rejected = mask_from_offsets([1, 2, 3, 5, 6], [(0, 0), (0, 3), (3, 6), (6, 8), (8, 9)], 6, eos)
    ex = pair_examples(chosen, rejected)
    assert (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids) == ([1, 2, 3], [4, 9], [5, 6, 9])
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4, 9, 0], [1, 2, 3, 5, 6, 9]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
             "completion_mask": torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])}
    assert labels_from_completion_mask(batch).tolist() == [[-100, -100, -100, 4, 9, -100], [-100, -100, -100, 5, 6, 9]]
    assert verify_preference_batch(batch, [ex], pad_id=0) == 2
    bad = dict(batch, completion_mask=torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]))  # a prompt token trained
    with pytest.raises(MaskingError, match="labels differ"):
        verify_preference_batch(bad, [ex], pad_id=0)
    no_eos = dict(batch, completion_mask=torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]]))  # EOS not trained
    with pytest.raises(MaskingError, match="labels differ"):
        verify_preference_batch(no_eos, [ex], pad_id=0)
    swapped = {k: v.flip(0) for k, v in batch.items()}  # rejected row first: every row's labels still right
    with pytest.raises(MaskingError, match="not the chosen and rejected sides of one pair"):
        verify_preference_batch(swapped, [ex], pad_id=0)
    other = mask_from_offsets([1, 7, 3, 4], [(0, 0), (0, 3), (3, 6), (6, 8)], 6, eos)
    with pytest.raises(MaskingError, match="tokenize the prompt differently"):
        pair_examples(chosen, other)


@pytest.mark.spec("PO-03", "SFT-02", "SFT-03")
def test_dpo_trainer_batches_mask_prompt_and_train_response_and_eos(tiny_model_dir, sft_run, pairs_run, tmp_path):
    """Every row the trainer's own dataloader yields, checked against an independent tokenization."""
    from cai_bootstrap.sft.train import CHECKPOINT_DIR

    pre = check_before_load(_cfg(tiny_model_dir, sft_run, pairs_run, tmp_path / "o"), device_info=CPU)
    cfg = _cfg(tiny_model_dir, sft_run, pairs_run, tmp_path / "o")
    plan = plan_run(cfg, CPU)
    lm = load_stage1_policy(str(tiny_model_dir), cfg, plan, pre["sft"]["adapter_path"])
    records = pre["gate"].records
    encoded = encode_pairs(lm, records, cfg.max_length)
    trainer = build_trainer("dpo", lm.model, lm, encoded, cfg, plan, tmp_path / CHECKPOINT_DIR)
    # The reference is a frozen copy of the Stage-1 adapter, next to the trainable policy copy.
    stage1 = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and not any(p.requires_grad for p in ref.values())
    assert len(ref) == len(stage1)
    for k, t in stage1.items():  # saved "...lora_A.weight" is the adapter's "...lora_A.ref.weight"
        torch.testing.assert_close(ref[k.removesuffix(".weight") + ".ref.weight"].detach().cpu(), t, rtol=0, atol=0)
    expected = {}
    chosen_full, rejected_full = {}, {}
    for rec in records:
        prompt_ids = lm.encode(rec["prompt"])
        for side in ("chosen", "rejected"):
            full = lm.encode(rec["prompt"] + " " + rec[side]) + [lm.eos_token_id]
            (chosen_full if side == "chosen" else rejected_full)[rec["id"]] = full
            assert full[: len(prompt_ids)] == prompt_ids
            expected[tuple(full)] = len(prompt_ids)
    rows = 0
    for batch in trainer.get_train_dataloader():
        labels = labels_from_completion_mask(batch)
        n_pairs = batch["input_ids"].shape[0] // 2
        for r, (ids, lab, mask) in enumerate(zip(batch["input_ids"].tolist(), labels.tolist(), batch["attention_mask"].tolist())):
            n = sum(mask)
            k = expected[tuple(ids[:n])]  # every row is one side of a known pair
            assert lab[:k] == [IGNORE_INDEX] * k, "prompt tokens must be masked"
            assert lab[k:n] == ids[k:n] and lab[n - 1] == lm.eos_token_id, "response tokens and the EOS are trained"
            assert ids[:n].count(lm.eos_token_id) == 1 and lab[n:] == [IGNORE_INDEX] * (len(ids) - n)
            rows += 1
        for i in range(n_pairs):  # chosen rows, then the rejected rows of the same pairs, in order
            c = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            r = batch["input_ids"][i + n_pairs][batch["attention_mask"][i + n_pairs].bool()].tolist()
            assert any(c == chosen_full[rec["id"]] and r == rejected_full[rec["id"]] for rec in records)
    assert rows == 2 * len(records)
    lm.release()


# -- the smoke run ---------------------------------------------------------------------------------------------------


@pytest.mark.spec("PO-03")
def test_dpo_smoke_run_moves_the_adapter_with_finite_loss(dpo_out, sft_run):
    m = json.loads((dpo_out / MANIFEST_NAME).read_text())
    losses = [e["loss"] for e in m["loss_history"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    before = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    after = load_file(dpo_out / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys(), "the policy continues the Stage-1 adapter; the reference copy is not saved"
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all("lora_" in k for k in after)
    assert not (dpo_out / "adapter" / "ref").exists()


@pytest.mark.spec("PO-03", "PV-03", "PV-05", "PV-06")
def test_dpo_manifest_names_pairs_reference_and_objective(dpo_out, sft_run, pairs_run):
    from cai_bootstrap.io_utils import sha256_file
    from cai_bootstrap.provenance import verify_inputs
    from cai_bootstrap.validation import validate_file

    m = json.loads((dpo_out / MANIFEST_NAME).read_text())
    assert m["dataset"]["sha256"] == sha256_file(pairs_run / "pairs.jsonl") and m["dataset"]["kind"] == "preference_pairs"
    hp = m["hyperparameters"]
    assert (hp["method"], hp["loss_type"], hp["beta"], hp["max_steps"]) == ("dpo", "sigmoid", 0.1, 3)
    ref = m["reference_model"]
    assert ref["kind"] == "stage1_sft" and ref["adapter"]["run_dir"] == str(sft_run.resolve())
    assert ref["adapter"]["files"]["adapter/adapter_model.safetensors"] == sha256_file(sft_run / "adapter" / "adapter_model.safetensors")
    assert m["leakage_check"]["hits"] == 0 and m["train_stats"]["batch_rows_verified"] == 2 * len(make_pairs())
    assert m["masking"]["pairs"] == len(make_pairs()) and m["reward_history"]
    assert (dpo_out / SUCCESS_MARKER).is_file()
    assert "adapter/adapter_model.safetensors" in verify_inputs(dpo_out / MANIFEST_NAME)
    report = validate_file(dpo_out / MANIFEST_NAME)
    assert report.ok, report.format()
    assert json.loads((dpo_out / GATE_MANIFEST_NAME).read_text())["decision"] == "pass"


@pytest.mark.spec("ST-03")
def test_dpo_lineage_continues_the_stage1_lineage(dpo_out, sft_run, pairs_run):
    from cai_bootstrap.io_utils import sha256_file

    m = json.loads((dpo_out / MANIFEST_NAME).read_text())
    parent = json.loads((sft_run / MANIFEST_NAME).read_text())["lineage"]
    steps = m["lineage"]["steps"]
    assert steps[: len(parent["steps"])] == parent["steps"] and m["lineage"]["stages"] == [1, 2]
    pairs, gate, model = steps[len(parent["steps"]):]
    assert (pairs["role"], pairs["sha256"]) == ("preference_pairs", sha256_file(pairs_run / "pairs.jsonl"))
    assert (gate["gate"], gate["decision"]) == ("dpo_data", "pass")
    assert model["method"] == "dpo" and model["files"]["adapter/adapter_model.safetensors"] == sha256_file(
        dpo_out / "adapter" / "adapter_model.safetensors")


@pytest.mark.spec("PO-03", "ST-01")
def test_stage2_model_loads_the_dpo_adapter_in_place_of_stage1s(dpo_out, sft_run, tiny_model_dir):
    """The policy continued the Stage-1 adapter, so the Stage-2 model is base + the DPO adapter alone."""
    from cai_bootstrap.evaluation.runner import load_trained_model
    from cai_bootstrap.preference.train_dpo import load_dpo_model

    s1 = load_trained_model(tiny_model_dir, sft_run / "adapter", device="cpu", run_sentinels=False)
    s2 = load_dpo_model(tiny_model_dir, dpo_out, device="cpu", run_sentinels=False)
    try:
        assert list(s2.model.peft_config) == ["default"]  # one adapter: continued, not stacked on Stage 1's
        ids = torch.tensor([s1.tokenizer("Instruction: Name a colour.\nResponse:")["input_ids"]])
        with torch.no_grad():
            a, b = s1.model(input_ids=ids).logits, s2.model(input_ids=ids).logits
        assert a.shape == b.shape and not torch.allclose(a, b), "the DPO steps must change the model's outputs"
    finally:
        s1.release()
        s2.release()
