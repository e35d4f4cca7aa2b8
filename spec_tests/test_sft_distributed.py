"""OPS-05 (training): `cai-bootstrap train` is data-parallel under `accelerate launch`.

The proof is a real two-process run on CPU (gloo) on the tiny model: both processes
train, one writes, the adapter loads. The rest are the pure pieces: the process layout
read from the launcher's environment, the effective batch, the resume fingerprint.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai_bootstrap.sft.config import config_from_dict
from cai_bootstrap.sft.distributed import DistributedSetupError, ProcessLayout, process_layout
from cai_bootstrap.sft.train import (
    ADAPTER_DIR,
    GATE_MANIFEST_NAME,
    MANIFEST_NAME,
    RUN_CONFIG_NAME,
    SUCCESS_MARKER,
    TrainingSetupError,
    _check_resumable,
    _fingerprint,
    plan_run,
)
from spec_tests.sft_support import make_generation_run

ROOT = Path(__file__).resolve().parents[1]
# Two processes x 2 rows x 1 accumulation: 4 rows per optimizer step; two steps, a checkpoint at the second.
DDP_SMOKE = {"smoke": True, "max_steps": 2, "epochs": 1, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
             "max_length": 64, "save_steps": 2, "logging_steps": 1, "run_sentinels": False}


@pytest.mark.spec("OPS-05")
@pytest.mark.parametrize("env, expected", [
    ({}, ProcessLayout(0, 0, 1)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, ProcessLayout(1, 1, 2)),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, ProcessLayout(3, 1, 4)),  # second machine of two
    ({"WORLD_SIZE": "2", "RANK": "2"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
])
def test_process_layout_comes_from_the_launchers_environment(env, expected):
    if isinstance(expected, ProcessLayout):
        layout = process_layout(env)
        assert layout == expected and layout.is_main == (expected.rank == 0)
    else:
        with pytest.raises(DistributedSetupError, match=expected):
            process_layout(env)


@pytest.mark.spec("OPS-05", "SFT-04")
@pytest.mark.parametrize("world, effective", [(1, 16), (2, 32), (8, 128)])
def test_one_config_for_any_process_count_and_the_manifest_batch_counts_them(world, effective, tmp_path):
    cfg = config_from_dict({"model": "m", "dataset": str(tmp_path), "output_dir": str(tmp_path / "o"),
                            "per_device_batch_size": 2, "gradient_accumulation_steps": 8})
    assert cfg.out_of_range() == {}  # the SFT-04 range is one device's share: valid on 1 or N processes
    assert ProcessLayout(0, 0, world).batch(2, 8) == {"world_size": world, "per_device_batch_size": 2,
                                                      "gradient_accumulation_steps": 8, "effective_batch_size": effective}
    hp = cfg.hyperparameters(world)
    assert (hp["world_size"], hp["effective_batch"]) == (world, effective)


@pytest.mark.spec("OPS-05", "SFT-05")
def test_resuming_on_another_process_count_is_refused(tmp_path):
    cfg = config_from_dict({"model": "m", "dataset": str(tmp_path), "output_dir": str(tmp_path / "o"), **DDP_SMOKE})
    plan = plan_run(cfg, {"cuda_available": False})
    out = tmp_path / "o"
    out.mkdir()
    one = _fingerprint(cfg, "0" * 64, "m", plan, 1)
    (out / RUN_CONFIG_NAME).write_text(json.dumps({"fingerprint": one}))
    assert _check_resumable(out, one) is None
    with pytest.raises(TrainingSetupError, match="differs in: hyperparameters"):
        _check_resumable(out, _fingerprint(cfg, "0" * 64, "m", plan, 2))


@pytest.mark.spec("OPS-05", "SFT-01")
@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_refused_dataset_is_reported_and_recorded_by_the_main_process_only(rank, tmp_path, monkeypatch, capsys):
    from cai_bootstrap.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    bad = make_generation_run(tmp_path / "bad", qc_passed=False)
    out = tmp_path / "out"
    rc = main(["train", "--dataset", str(bad), "--out", str(out), "--model", "tiny-random", "--smoke", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    if rank == "0":
        assert "data gate" in err and (out / GATE_MANIFEST_NAME).is_file()
    else:
        assert err == "" and not (out / GATE_MANIFEST_NAME).exists()


@pytest.mark.spec("OPS-05")
def test_two_process_data_parallel_run_on_cpu(tiny_model_dir, tmp_path):
    """`accelerate launch` with two gloo processes: both train, one writes, the adapter loads."""
    from peft import PeftModel

    from cai_bootstrap.loader import load_base_model

    data = make_generation_run(tmp_path / "data")
    out = tmp_path / "out"
    cfg_file = tmp_path / "sft.yaml"
    cfg_file.write_text(yaml.safe_dump({"sft": {"model": str(tiny_model_dir), "dataset": str(data),
                                                "output_dir": str(out), **DDP_SMOKE}}))
    # `--cpu` alone makes accelerate start one process (several need mpirun); its `--multi_gpu`
    # path is torchrun, which on a machine without CUDA starts gloo processes, as the trainer's
    # use_cpu asks.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "cai_bootstrap.cli", "train", "--config", str(cfg_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-8000:]

    m = json.loads((out / MANIFEST_NAME).read_text())
    d = m["distributed"]
    assert (d["world_size"], d["distributed_type"], d["backend"]) == (2, "MULTI_CPU", "gloo")
    assert d["effective_batch_size"] == 2 * 1 * 2 == m["hyperparameters"]["effective_batch"]
    losses = [e["loss"] for e in m["loss_history"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert json.loads((out / SUCCESS_MARKER).read_text())["global_step"] == 2
    # One writer: one report on stdout, one adapter, one manifest, nothing half-published.
    assert r.stdout.count('"training_manifest"') == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ADAPTER_DIR, "checkpoints", GATE_MANIFEST_NAME, MANIFEST_NAME, RUN_CONFIG_NAME, SUCCESS_MARKER])
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["checkpoint-2"]

    lm = load_base_model(tiny_model_dir, device="cpu", run_sentinels=False)
    model = PeftModel.from_pretrained(lm.model, out / ADAPTER_DIR)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool(p.abs().sum() > 0) for p in lora_b)  # trained: PEFT starts B at zero
