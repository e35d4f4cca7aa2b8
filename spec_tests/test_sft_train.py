"""SFT-02..05, PV-03: the trainer trains on the verified labels, writes its outputs, and resumes exactly.

One uninterrupted CPU smoke run (through the CLI, sentinels and the real expectation
suite on) is the reference; a second run is interrupted after its first checkpoint and
resumed, and must end bit-for-bit where the reference ended.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from cai_bootstrap.io_utils import sha256_file
from cai_bootstrap.prompts import render_response_prompt
from cai_bootstrap.sft.config import config_from_dict
from cai_bootstrap.sft.masking import IGNORE_INDEX, MaskingError, encode_example, encode_records
from cai_bootstrap.sft.train import (
    GATE_MANIFEST_NAME,
    MANIFEST_NAME,
    QUANT_CPU_FALLBACK,
    RUN_CONFIG_NAME,
    SUCCESS_MARKER,
    TrainingSetupError,
    build_trainer,
    plan_run,
    run_training,
    verify_trainer_batches,
    wrap_lora,
)
from spec_tests.sft_support import make_generation_run, make_records, no_expectation_failures

SMOKE = {"smoke": True, "max_steps": 3, "epochs": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
         "max_length": 64, "save_steps": 2, "logging_steps": 1}
CPU = {"cuda_available": False}


class Interrupt(Exception):
    pass


class InterruptAfterCheckpoint(TrainerCallback):
    """Dies right after checkpoint ``step`` is on disk, like a preempted job."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupt(f"killed after checkpoint {self.step}")


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    return make_generation_run(tmp_path_factory.mktemp("sft-data") / "run")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, gen_run, tmp_path_factory):
    """The uninterrupted run, launched through the CLI from a YAML file as a user would."""
    from cai_bootstrap.cli import main

    d = tmp_path_factory.mktemp("sft-ref")
    cfg_file = d / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "dataset": str(gen_run), "output_dir": str(d / "out"), **SMOKE}))
    assert main(["train", "--config", str(cfg_file)]) == 0
    return d / "out"


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


def _cfg(model_dir, run_dir, out, **extra) -> object:
    return config_from_dict({"model": str(model_dir), "dataset": str(run_dir), "output_dir": str(out), **SMOKE,
                             "run_sentinels": False, **extra})


@pytest.mark.spec("SFT-04")
def test_cpu_smoke_run_trains_lora_with_finite_loss(reference):
    m = _manifest(reference)
    assert m["quantization"] == QUANT_CPU_FALLBACK and m["compute_dtype"] == "float32" and m["device"] == "cpu"
    assert m["preflight"]["mode"] == "cpu fallback"
    losses = [e["loss"] for e in m["loss_history"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    weights = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)  # only adapters are trained and saved
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(bool(t.abs().sum() > 0) for t in lora_b)  # PEFT initialises B to zero: training moved it
    cfg = json.loads((reference / "adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.1)
    assert m["loader_provenance"]["sentinels"]["ok"] is True  # CG-05 ran at the training load


@pytest.mark.spec("SFT-05", "PV-03", "PV-05", "PV-06")
def test_outputs_marker_and_training_manifest(reference, gen_run):
    from cai_bootstrap.provenance import git_info, verify_inputs
    from cai_bootstrap.validation import validate_file

    marker = json.loads((reference / SUCCESS_MARKER).read_text())
    assert Path(marker["adapter_path"]) == (reference / "adapter").resolve()
    assert (Path(marker["adapter_path"]) / "adapter_model.safetensors").is_file()
    assert marker["git_sha"] == git_info()["commit"] and marker["global_step"] == 3

    m = _manifest(reference)
    assert m["artifact_type"] == "training_manifest"
    assert m["dataset"] == {"path": str((gen_run / "dataset.jsonl").resolve()), "sha256": sha256_file(gen_run / "dataset.jsonl"),
                            "records": len(make_records()), "run_dir": str(gen_run.resolve())}
    assert m["qc_summary"]["path"] == str((gen_run / "qc_summary.json").resolve())
    hp = m["hyperparameters"]
    assert {k: hp[k] for k in ("epochs", "lr", "batch", "grad_accum", "seq_len")} == {
        "epochs": 1, "lr": 2e-4, "batch": 2, "grad_accum": 1, "seq_len": 64}
    assert hp["lora"] == {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}
    assert hp["smoke"] is True and hp["max_steps"] == 3 and set(hp["out_of_range"]) == {"epochs", "gradient_accumulation_steps", "max_length"}
    assert m["checkpoints"] == ["checkpoints/checkpoint-2", "checkpoints/checkpoint-3"]
    assert all((reference / c).is_dir() for c in m["checkpoints"])
    assert m["success_marker"] == SUCCESS_MARKER and m["eval_summary"] is None
    assert m["loader_provenance"]["template_disabled"] is True and m["loader_provenance"]["add_special_tokens"] is False
    assert m["leakage_check"]["hits"] == 0 and m["masking"]["boundary_merges"] == 0
    assert m["train_stats"]["batch_rows_verified"] == len(make_records())
    # Evaluation can verify the adapter it loads (PV-05), and the manifest passes its suite (PV-06).
    verified = verify_inputs(reference / MANIFEST_NAME)
    assert "adapter/adapter_model.safetensors" in verified
    report = validate_file(reference / MANIFEST_NAME)
    assert report.ok, report.format()
    gate = json.loads((reference / GATE_MANIFEST_NAME).read_text())
    assert gate["decision"] == "pass" and {i["name"] for i in gate["inputs"]} == {"session_manifest", "dataset", "qc_summary"}


@pytest.mark.spec("SFT-05")
def test_resume_after_interruption_ends_where_the_uninterrupted_run_ends(reference, tiny_model_dir, gen_run, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(tiny_model_dir, gen_run, out)
    with pytest.raises(Interrupt):
        run_training(cfg, callbacks=[InterruptAfterCheckpoint(2)], device_info=CPU, validator=no_expectation_failures)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / SUCCESS_MARKER).exists()

    result = run_training(cfg, device_info=CPU, validator=no_expectation_failures)
    assert result.global_step == 3 and result.manifest["resumed_from"] == "checkpoints/checkpoint-2"
    ref, got = load_file(reference / "adapter" / "adapter_model.safetensors"), load_file(out / "adapter" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
    ref_losses = [e["loss"] for e in _manifest(reference)["loss_history"]]
    assert [e["loss"] for e in result.manifest["loss_history"]] == pytest.approx(ref_losses, abs=1e-5)

    with pytest.raises(TrainingSetupError, match="already holds a finished run"):
        run_training(cfg, device_info=CPU, validator=no_expectation_failures)


@pytest.fixture(scope="module")
def interrupted(tiny_model_dir, gen_run, tmp_path_factory):
    """A run killed right after its first checkpoint (step 2 of 3)."""
    out = tmp_path_factory.mktemp("sft-interrupted") / "out"
    with pytest.raises(Interrupt):
        run_training(_cfg(tiny_model_dir, gen_run, out), callbacks=[InterruptAfterCheckpoint(2)], device_info=CPU,
                     validator=no_expectation_failures)
    return out


def _cut_short(ckpt: Path, name: str) -> None:
    """checkpoint-2's files as checkpoint-3's, with ``name`` cut in half, as a kill mid-save leaves them."""
    import shutil

    shutil.copytree(ckpt.parent / "checkpoint-2", ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "global_step": 3}))
    data = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(data[: len(data) // 2])


PARTIAL_CHECKPOINTS = [
    ("empty folder", lambda ckpt: ckpt.mkdir()),
    ("no trainer state", lambda ckpt: (_cut_short(ckpt, "optimizer.pt"), (ckpt / "trainer_state.json").unlink())),
    ("adapter weights cut short", lambda ckpt: _cut_short(ckpt, "adapter_model.safetensors")),
    ("optimizer cut short", lambda ckpt: _cut_short(ckpt, "optimizer.pt")),
    ("adapter header garbage", lambda ckpt: _garbage_header(_as_step_3(ckpt) / "adapter_model.safetensors")),
    ("no rng state", lambda ckpt: _drop_rng(_as_step_3(ckpt))),
]


def _as_step_3(ckpt: Path) -> Path:
    """checkpoint-2's files, whole, as checkpoint-3's."""
    import shutil

    shutil.copytree(ckpt.parent / "checkpoint-2", ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "global_step": 3}))
    return ckpt


def _garbage_header(path):
    """A header length of about 2**64: read blindly, it would ask for exabytes."""
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])


def _drop_rng(ckpt):
    for p in ckpt.glob("rng_state*.pth"):
        p.unlink()


@pytest.mark.spec("OPS-06")
def test_a_per_rank_rng_state_counts_as_complete(interrupted, tmp_path):
    """Under data parallelism the trainer writes rng_state_{rank}.pth; such a checkpoint must not be set aside."""
    import shutil

    from cai_bootstrap.sft.checkpoints import checkpoint_problem

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(interrupted / "checkpoints" / "checkpoint-2", ckpt)
    (ckpt / "rng_state.pth").rename(ckpt / "rng_state_0.pth")
    shutil.copy(ckpt / "rng_state_0.pth", ckpt / "rng_state_1.pth")
    assert checkpoint_problem(ckpt) is None


@pytest.mark.spec("OPS-06")
@pytest.mark.parametrize("damage", [p[1] for p in PARTIAL_CHECKPOINTS], ids=[p[0] for p in PARTIAL_CHECKPOINTS])
def test_a_checkpoint_cut_short_is_not_complete(damage, interrupted, tmp_path):
    import shutil

    from cai_bootstrap.sft.checkpoints import checkpoint_problem, scan_checkpoints

    root = tmp_path / "checkpoints"
    shutil.copytree(interrupted / "checkpoints", root)
    assert checkpoint_problem(root / "checkpoint-2") is None
    damage(root / "checkpoint-3")
    last, incomplete = scan_checkpoints(root)
    assert last == root / "checkpoint-2" and list(incomplete) == [root / "checkpoint-3"]


@pytest.mark.spec("SFT-05", "OPS-06")
@pytest.mark.parametrize("damage", [p[1] for p in PARTIAL_CHECKPOINTS[::2]], ids=[p[0] for p in PARTIAL_CHECKPOINTS[::2]])
def test_resume_skips_a_checkpoint_cut_short_by_a_crash(damage, interrupted, reference, tiny_model_dir, gen_run, tmp_path):
    """A kill while checkpoint-N was written left a partial folder, and every rerun failed on it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(interrupted, out)
    partial = out / "checkpoints" / "checkpoint-3"
    damage(partial)

    result = run_training(_cfg(tiny_model_dir, gen_run, out), device_info=CPU, validator=no_expectation_failures)
    from cai_bootstrap.sft.checkpoints import checkpoint_problem

    assert result.global_step == 3 and result.manifest["resumed_from"] == "checkpoints/checkpoint-2"
    assert checkpoint_problem(partial) is None  # written again, whole
    # the damaged one was set aside, not deleted
    assert [p.name for p in partial.parent.iterdir() if p.name.startswith(".checkpoint-3.incomplete-")]
    ref, got = load_file(reference / "adapter" / "adapter_model.safetensors"), load_file(out / "adapter" / "adapter_model.safetensors")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary adapter folder left


@pytest.mark.spec("SFT-05")
def test_refuses_to_resume_a_different_run(tiny_model_dir, gen_run, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model loaded although the output folder belongs to another run")

    monkeypatch.setattr("cai_bootstrap.loader.load_base_model", boom)
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_CONFIG_NAME).write_text(json.dumps({"fingerprint": {"dataset_sha256": "0" * 64}}))
    with pytest.raises(TrainingSetupError, match="different configuration or dataset.*dataset_sha256"):
        run_training(_cfg(tiny_model_dir, gen_run, out), device_info=CPU, validator=no_expectation_failures)


@pytest.mark.spec("SFT-02", "SFT-03")
def test_trainer_batches_carry_exactly_the_verified_labels(tiny_model_dir, tmp_path):
    """Capture the batches the trainer's own dataloader yields and check every label independently."""
    from cai_bootstrap.loader import load_base_model

    records = make_records()
    cfg = _cfg(tiny_model_dir, tmp_path, tmp_path / "out")
    plan = plan_run(cfg, CPU)
    lm = load_base_model(tiny_model_dir, device="cpu", run_sentinels=False)
    encoded = encode_records(lm, records, cfg.max_length)
    # Plus one example whose first response token merges with the prompt's ':' (Qwen's ':\n').
    merge = {"instruction": "Say hi", "response": "\nHello there"}
    encoded.examples.append(encode_example(lm, render_response_prompt(merge["instruction"]), merge["response"]))
    records.append(merge)
    trainer = build_trainer(wrap_lora(lm, cfg, plan), lm, encoded, cfg, plan, tmp_path / "ckpt")
    by_ids = {tuple(ex.input_ids): rec for ex, rec in zip(encoded.examples, records)}
    rows = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()):
            n = sum(mask)
            rec = by_ids[tuple(ids[:n])]
            prompt_ids = lm.encode(render_response_prompt(rec["instruction"]))
            merged = rec["response"].startswith("\n")
            k = len(prompt_ids) - merged  # with the merge, the prompt's last token is replaced by ':\n', a response token
            assert ids[:k] == prompt_ids[:k]
            assert labels[:k] == [IGNORE_INDEX] * k
            assert labels[k:n] == ids[k:n] and labels[n - 1] == ids[n - 1] == lm.eos_token_id
            assert ids[:n].count(lm.eos_token_id) == 1 and labels[n:] == [IGNORE_INDEX] * (len(ids) - n)
            if merged:
                assert lm.tokenizer.decode([ids[k]]) == ":\n"
            rows += 1
    assert rows == len(records)
    assert verify_trainer_batches(trainer, encoded.examples, lm.pad_token_id) == len(records)
    # A corrupted label in the dataset the trainer holds is caught by the batch check.
    trainer.train_dataset = trainer.train_dataset.map(lambda ex: {"labels": [ex["input_ids"][0]] + ex["labels"][1:]})
    with pytest.raises(MaskingError):
        verify_trainer_batches(trainer, encoded.examples, lm.pad_token_id)


@pytest.mark.spec("CG-07")
def test_sft_code_passes_the_static_conformance_check():
    from cai_bootstrap.static_checks import check_source, check_tree, package_root

    assert check_tree(package_root() / "sft") == []
    for name in ("commands/train_cmds.py", "bench_train.py"):
        path = package_root() / name
        assert check_source(path.read_text(encoding="utf-8"), str(path)) == []


@pytest.mark.spec("ST-03")
def test_lineage_names_base_weights_and_dataset_exactly_as_the_manifests_record_them(reference, gen_run, tiny_model_dir):
    from cai_bootstrap.gates import read_gate_manifest
    from cai_bootstrap.weights import weights_fingerprint
    from cai_bootstrap.stages.lineage import adapter_digest, build_lineage

    m = _manifest(reference)
    base, dataset, gate, model = m["lineage"]["steps"]
    assert base["weights"]["combined"] == m["loader_provenance"]["weights"]["combined"] == weights_fingerprint(tiny_model_dir)["combined"]
    session = json.loads((gen_run / "session_manifest.json").read_text())
    recorded = {e["path"]: e["sha256"] for e in session["generated_artifacts"]}
    assert dataset["sha256"] == m["dataset"]["sha256"] == recorded["dataset.jsonl"] == sha256_file(gen_run / "dataset.jsonl")
    assert (gate["gate"], gate["decision"], gate["inputs"]["dataset"]) == ("sft_data", "pass", dataset["sha256"])
    assert model["files"]["adapter/adapter_model.safetensors"] == sha256_file(reference / "adapter" / "adapter_model.safetensors")
    assert model["adapter_sha256"] == adapter_digest({e["path"]: e["sha256"] for e in m["files"]})
    # The block is a pure function of the manifests: rebuilt from them, it is the same.
    rebuilt = build_lineage({k: v for k, v in m.items() if k != "lineage"}, stage=1, method="sft",
                            gates=[(1, read_gate_manifest(reference / GATE_MANIFEST_NAME))])
    assert rebuilt == m["lineage"]
