"""PV-07: every consumer verifies what it consumes before any model loads, and never writes over it.

Each case runs the real CLI in-process. A model load anywhere in these commands would
fail the test (the loader is replaced by one that raises), so "before any model loads"
is checked, not assumed.
"""

from __future__ import annotations

import json
import os

import pytest

from cai_bootstrap.cli import main
from cai_bootstrap.evaluation import report as rp
from spec_tests.integrity_support import make_adapter_run, make_eval_folder
from spec_tests.test_gates_eval import summary


@pytest.fixture
def no_model_loads(monkeypatch):
    import cai_bootstrap.loader as L

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were verified")

    monkeypatch.setattr(L, "load_base_model", refuse)
    monkeypatch.setattr(L, "load_tokenizer", refuse)


def _err(capsys) -> str:
    return capsys.readouterr().err


# -- evaluation checks the adapter against its training manifest ---------------------------------------


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


ADAPTER_TAMPERING = [
    # (what is done to the adapter folder, text the error must contain)
    ("unchanged", None),
    ("weights edited", "adapter_model.safetensors: changed"),
    ("config edited", "adapter_config.json: changed"),
    ("file added", "extra.bin: not listed"),
    ("manifest removed", "no training_manifest.json"),
]


@pytest.mark.spec("PV-07")
@pytest.mark.parametrize("change, message", ADAPTER_TAMPERING, ids=[c for c, _ in ADAPTER_TAMPERING])
def test_evaluate_refuses_an_adapter_that_differs_from_its_training_manifest(tmp_path, capsys, no_model_loads,
                                                                              change, message):
    adapter = make_adapter_run(tmp_path / "sft")
    if change == "weights edited":
        _flip_last_byte(adapter / "adapter_model.safetensors")
    elif change == "config edited":
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "r": 64}))
    elif change == "file added":
        (adapter / "extra.bin").write_bytes(b"x")
    elif change == "manifest removed":
        (tmp_path / "sft" / "training_manifest.json").unlink()
    rc = main(["evaluate", "--model", str(tmp_path / "no-such-model"), "--adapter", str(adapter),
               "--out", str(tmp_path / "eval")])
    err = _err(capsys)
    assert rc == 2
    if message is None:  # verified: the run gets as far as the (missing) model
        assert "no-such-model" in err and "adapter" not in err
    else:
        assert message in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.spec("PV-07")
def test_evaluate_checks_the_adapter_loads_and_the_output_is_writable_before_the_model(tmp_path, capsys, no_model_loads):
    adapter = make_adapter_run(tmp_path / "sft")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = main(["evaluate", "--model", str(tmp_path / "no-such-model"), "--adapter", str(adapter),
               "--out", str(blocker / "eval")])
    err = _err(capsys)  # refused when the run lock is taken in the output folder, before anything else
    assert rc == 2 and "a-file/eval is not writable (Not a directory)" in err, err

    # A truncated adapter pinned by its manifest is still refused: it would fail after the base model ran.
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    from cai_bootstrap.provenance import TRAINING_MANIFEST, artifact_manifest, write_manifest

    root = tmp_path / "sft"
    write_manifest(root / "training_manifest.json",
                   artifact_manifest(TRAINING_MANIFEST, sorted(adapter.iterdir()), base_dir=root))
    rc = main(["evaluate", "--model", str(tmp_path / "no-such-model"), "--adapter", str(adapter),
               "--out", str(tmp_path / "eval")])
    assert rc == 2 and "adapter_model.safetensors" in _err(capsys)


# -- the final gate checks the summary against its manifest and its own thresholds -----------------------


# McNemar p = 1 on these outcomes: NO-GO as written by the evaluation.
NO_GO = {"arithmetic": [(False, True), (True, False)] * 6, "answer_then_stop": [(True, True)] * 4, "refusal": [(True, True)] * 4}


@pytest.fixture
def eval_dir(tmp_path):
    return make_eval_folder(tmp_path / "eval", NO_GO)


def _repin(folder, name):
    """What a hostile user does after editing an output: record its new hash in the manifest."""
    from cai_bootstrap.io_utils import sha256_file

    manifest = json.loads((folder / rp.MANIFEST_FILE).read_text())
    for entry in manifest["outputs"].values():
        if entry["path"] == name:
            entry["sha256"] = sha256_file(folder / name)
    (folder / rp.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.spec("PV-07", "GT-02")
def test_final_gate_refuses_a_summary_edited_after_the_evaluation(eval_dir, capsys):
    assert main(["gate", "final", "--eval", str(eval_dir)]) == 1
    (eval_dir / "gate_final.json").unlink()
    forged = json.loads((eval_dir / rp.SUMMARY_FILE).read_text())
    forged["overall"].update(mcnemar_p=1e-9, lift=0.5)  # would be GO
    (eval_dir / rp.SUMMARY_FILE).write_text(json.dumps(forged))
    assert main(["gate", "final", "--eval", str(eval_dir)]) == 2
    err = _err(capsys)
    assert "eval_summary.json: changed" in err
    assert not (eval_dir / "gate_final.json").exists()
    (eval_dir / rp.MANIFEST_FILE).unlink()
    assert main(["gate", "final", "--eval", str(eval_dir)]) == 2
    assert "eval_manifest.json does not exist" in _err(capsys)


@pytest.mark.spec("PV-07", "GT-02")
def test_final_gate_recomputes_from_the_items_so_a_re_pinned_summary_cannot_pass(eval_dir, capsys):
    forged = json.loads((eval_dir / rp.SUMMARY_FILE).read_text())
    forged["overall"].update(mcnemar_p=1e-9, lift=0.5)
    (eval_dir / rp.SUMMARY_FILE).write_text(json.dumps(forged))
    _repin(eval_dir, rp.SUMMARY_FILE)
    assert main(["gate", "final", "--eval", str(eval_dir)]) == 2
    err = _err(capsys)
    assert "disagrees with the per-item results" in err and "overall.mcnemar_p" in err
    assert not (eval_dir / "gate_final.json").exists()


@pytest.mark.spec("PV-07", "GT-02")
def test_final_gate_re_verifies_each_item_so_edited_success_flags_cannot_pass(eval_dir, capsys):
    rows = [json.loads(line) for line in (eval_dir / rp.ITEMS_FILE).read_text().splitlines()]
    for r in rows:
        if r["model"] == "sft":
            r["success"] = True
    (eval_dir / rp.ITEMS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    _repin(eval_dir, rp.ITEMS_FILE)
    assert main(["gate", "final", "--eval", str(eval_dir)]) == 2
    assert "its verifier now says False" in _err(capsys)


@pytest.mark.spec("PV-07", "GT-05")
def test_a_hand_edited_final_gate_does_not_open_the_next_stage(tmp_path, capsys):
    from cai_bootstrap.stages.registry import StageInputError, resolve_input_model

    folder = make_eval_folder(tmp_path / "eval", NO_GO)
    assert main(["gate", "final", "--eval", str(folder)]) == 1
    gate = folder / "gate_final.json"
    m = json.loads(gate.read_text())
    m.update(decision="pass", passed=True)
    gate.write_text(json.dumps(m))
    with pytest.raises(StageInputError, match="its pinned inputs decide 'fail'"):
        resolve_input_model(2, gate_manifest=gate)


THRESHOLDS = [
    (["--alpha", "0"], "--alpha"),
    (["--alpha", "1"], "--alpha"),
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "-0.01"], "--alpha"),
    (["--min-lift", "-0.1"], "--min-lift"),
]


@pytest.mark.spec("PV-07", "GT-02")
@pytest.mark.parametrize("flags, named", THRESHOLDS)
def test_final_gate_refuses_out_of_range_thresholds(eval_dir, capsys, flags, named):
    assert main(["gate", "final", "--eval", str(eval_dir), *flags]) == 2
    assert named in _err(capsys)
    assert not (eval_dir / "gate_final.json").exists()


@pytest.mark.spec("PV-07")
@pytest.mark.parametrize("target", [rp.SUMMARY_FILE, rp.MANIFEST_FILE])
def test_gate_never_writes_over_its_inputs(eval_dir, capsys, target):
    before = (eval_dir / target).read_bytes()
    assert main(["gate", "final", "--eval", str(eval_dir), "--out", str(eval_dir / target)]) == 2
    assert "one of this command's inputs" in _err(capsys)
    assert (eval_dir / target).read_bytes() == before


@pytest.mark.spec("PV-07")
def test_data_gate_never_writes_over_its_inputs(tmp_path, capsys):
    from spec_tests.sft_support import make_generation_run

    run = make_generation_run(tmp_path / "run")
    before = (run / "qc_summary.json").read_bytes()
    assert main(["gate", "pilot", str(run), "--out", str(run / "qc_summary.json")]) == 2
    assert "one of this command's inputs" in _err(capsys)
    assert (run / "qc_summary.json").read_bytes() == before


# -- validate RUN_DIR checks manifest hashes ----------------------------------------------------------------


RUN_DIR_CHANGES = [
    ("unchanged", 0, None),
    ("dataset deleted", 1, "dataset.jsonl: missing"),
    ("dataset edited", 1, "dataset.jsonl: changed"),
    ("summary edited", 1, "qc_summary.json: changed"),
]


@pytest.mark.spec("PV-07", "PV-06")
@pytest.mark.parametrize("change, rc, message", RUN_DIR_CHANGES, ids=[c for c, _, _ in RUN_DIR_CHANGES])
def test_validate_run_dir_checks_manifest_hashes(tmp_path, capsys, change, rc, message):
    from spec_tests.sft_support import make_generation_run

    run = make_generation_run(tmp_path / "run")
    if change == "dataset deleted":
        (run / "dataset.jsonl").unlink()
    elif change == "dataset edited":
        lines = (run / "dataset.jsonl").read_text().splitlines(keepends=True)
        (run / "dataset.jsonl").write_text("".join(lines[:-1]))  # still valid records, one fewer
    elif change == "summary edited":
        qc = json.loads((run / "qc_summary.json").read_text())
        (run / "qc_summary.json").write_text(json.dumps(qc, indent=1))  # same content, other bytes
    assert main(["validate", str(run)]) == rc
    out = capsys.readouterr().out
    if message:
        assert message in out and "manifest_hashes" in out


@pytest.mark.spec("PV-07")
def test_validate_checks_an_evaluation_folder_against_its_manifest(eval_dir, capsys):
    (eval_dir / rp.SUMMARY_FILE).write_text(json.dumps(summary(p=0.0001)))
    assert main(["validate", str(eval_dir)]) == 1
    assert "eval_summary.json: changed" in capsys.readouterr().out


# -- work files stay inside the run directory ------------------------------------------------------------


@pytest.mark.spec("PV-07")
@pytest.mark.parametrize("link", ["work folder", "work file"])
def test_generate_refuses_links_out_of_the_run_directory(tmp_path, capsys, no_model_loads, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "raw_instructions.jsonl").write_text("")
    run = tmp_path / "run"
    run.mkdir()
    if link == "work folder":
        os.symlink(outside, run / "work")
    else:
        (run / "work").mkdir()
        os.symlink(outside / "raw_instructions.jsonl", run / "work" / "raw_instructions.jsonl")
    rc = main(["generate", "--model", "tiny-random", "--mode", "pilot", "--target", "2", "--out", str(run), "--quiet"])
    assert rc == 2 and "symbolic link" in _err(capsys)
    assert sorted(p.name for p in outside.iterdir()) == ["raw_instructions.jsonl"]
    assert (outside / "raw_instructions.jsonl").read_text() == ""


@pytest.mark.spec("PV-07")
def test_work_file_appends_do_not_follow_a_link(tmp_path):
    from cai_bootstrap.datagen.store import PhaseStore

    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    link = tmp_path / "work.jsonl"
    os.symlink(target, link)
    with pytest.raises(OSError):
        PhaseStore(link).append_batch([{"id": "a"}])
    assert target.read_text() == ""


# -- stage-1 phase names --------------------------------------------------------------------------------


@pytest.mark.spec("PV-07", "GT-04")
def test_stage1_refuses_an_unknown_phase_name(tmp_path, capsys):
    from cai_bootstrap.stage1 import main as stage1_main

    run = tmp_path / "run"
    rc = stage1_main(["--until", "pilott", "--model", str(tmp_path / "no-such-model"), "--run-dir", str(run)])
    err = _err(capsys)
    assert rc == 2 and "'pilott' is not a phase" in err and "pilot_gate" in err
    assert not run.exists()


@pytest.mark.spec("PV-07", "OPS-06")
@pytest.mark.parametrize("sub", ["", "eval"])
def test_evaluate_refuses_an_output_inside_the_adapter_folder_and_leaves_it_untouched(sub, tmp_path, capsys):
    from cai_bootstrap.cli import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    out = adapter / sub if sub else adapter
    rc = main(["evaluate", "--model", "tiny-random", "--adapter", str(adapter), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "inside the adapter folder" in err, err
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json"]  # no lock file, no output folder


@pytest.mark.spec("PV-07", "GT-01")
def test_a_hand_edited_failing_pilot_gate_does_not_start_a_scale_run(tmp_path, capsys, no_model_loads):
    from spec_tests.sft_support import make_generation_run

    run = make_generation_run(tmp_path / "pilot", qc_passed=False)
    assert main(["gate", "pilot", str(run), "--min-items", "1"]) == 1
    gate = run / "pilot_gate.json"
    m = json.loads(gate.read_text())
    m.update(decision="pass", passed=True, reasons=[])
    gate.write_text(json.dumps(m))
    assert main(["generate", "--model", "tiny-random", "--mode", "scale", "--shard", "0/2", "--pilot-gate", str(gate),
                 "--out", str(tmp_path / "s0")]) == 2
    assert "its pinned inputs decide 'fail'" in _err(capsys)
    assert not (tmp_path / "s0").exists()


@pytest.fixture(scope="module")
def trained_on_seed0(tiny_model_dir, tmp_path_factory):
    """A real SFT run of the tiny model (seed 0)."""
    from cai_bootstrap.sft.config import config_from_dict
    from cai_bootstrap.sft.train import run_training
    from spec_tests.sft_support import make_generation_run, no_expectation_failures

    d = tmp_path_factory.mktemp("sft-seed0")
    cfg = config_from_dict({"model": str(tiny_model_dir), "dataset": str(make_generation_run(d / "data")),
                            "output_dir": str(d / "sft"), "smoke": True, "max_steps": 1, "epochs": 1,
                            "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64,
                            "run_sentinels": False})
    run_training(cfg, device_info={"cuda_available": False}, validator=no_expectation_failures)
    return d / "sft"


@pytest.mark.spec("PV-07")
def test_an_adapter_is_refused_on_other_base_weights(trained_on_seed0, tiny_model_dir, tmp_path, capsys, no_model_loads):
    from cai_bootstrap.preference.train_dpo import TrainingSetupError, check_sft_run
    from cai_bootstrap.testmodel import build_tiny_model

    other = build_tiny_model(tmp_path / "tiny-seed1", seed=1)  # same architecture and tokenizer, other weights
    assert main(["evaluate", "--model", str(other), "--adapter", str(trained_on_seed0 / "adapter"), "--limit", "2",
                 "--out", str(tmp_path / "eval")]) == 2
    assert "trained on other base weights" in _err(capsys)
    with pytest.raises(TrainingSetupError, match="trained on other base weights"):
        check_sft_run(trained_on_seed0, other)
    assert check_sft_run(trained_on_seed0, tiny_model_dir)["adapter_path"].endswith("adapter")
