"""OPS-03: GPU preflight over injected device facts: device, memory, bf16, writable output root."""

from __future__ import annotations

import pytest

from cai_bootstrap.sft.preflight import (
    CPU_FALLBACK,
    PreflightError,
    estimate_training_memory_gb,
    probe_device,
    run_preflight,
)

H100 = {"cuda_available": True, "device_count": 1, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "total_gb": 79.2, "free_gb": 78.5, "bf16_supported": True}
T4 = {"cuda_available": True, "device_count": 1, "name": "Tesla T4", "compute_capability": "7.5",
      "total_gb": 14.7, "free_gb": 14.5, "bf16_supported": False}
CPU = {"cuda_available": False, "device_count": 0}
QWEN32B = {"hidden_size": 5120, "num_hidden_layers": 64, "vocab_size": 152064, "intermediate_size": 27648,
           "tie_word_embeddings": False}


def _names(report):
    return {c["name"]: c["ok"] for c in report.checks}


@pytest.mark.spec("OPS-03")
@pytest.mark.parametrize(
    "info, kwargs, failed",
    [
        pytest.param(H100, {"required_gb": 30.0}, set(), id="h100-ok"),
        pytest.param({**H100, "free_gb": 10.0}, {"required_gb": 30.0}, {"memory"}, id="busy-gpu"),
        pytest.param(T4, {"required_gb": 5.0}, {"bf16"}, id="no-bf16"),
        pytest.param(T4, {"required_gb": 20.0}, {"bf16", "memory"}, id="all-failures-at-once"),
        pytest.param(T4, {"required_gb": 5.0, "need_bf16": False}, set(), id="bf16-not-needed"),
        pytest.param({**H100, "free_gb": None}, {"required_gb": 1.0}, {"memory"}, id="memory-unknown"),
        pytest.param(CPU, {}, set(), id="cpu-fallback"),
        pytest.param(CPU, {"require_cuda": True}, {"device"}, id="cuda-required"),
    ],
)
def test_preflight_checks(tmp_path, info, kwargs, failed):
    report = run_preflight(info, output_root=tmp_path / "out", **kwargs)
    assert {n for n, ok in _names(report).items() if not ok} == failed
    assert report.ok is (not failed)
    if failed:
        with pytest.raises(PreflightError) as e:
            report.raise_if_failed()
        for name in failed:
            assert f"{name}:" in str(e.value)
        assert str(e.value).count("Fix:") == len(failed)
    else:
        assert report.raise_if_failed() is report


@pytest.mark.spec("OPS-03")
def test_cpu_only_reports_cpu_fallback(tmp_path):
    report = run_preflight(CPU, output_root=tmp_path)
    assert report.mode == CPU_FALLBACK == "cpu fallback"
    assert "cpu fallback" in report.checks[0]["detail"]
    assert report.to_dict()["ok"] is True


@pytest.mark.spec("OPS-03")
def test_unwritable_output_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    report = run_preflight(H100, output_root=blocker / "out", required_gb=1.0)
    assert _names(report)["output_root"] is False
    with pytest.raises(PreflightError, match="output_root.*Fix: choose an output_dir"):
        report.raise_if_failed()


@pytest.mark.spec("OPS-03")
def test_disk_space_is_checked(tmp_path):
    report = run_preflight(H100, output_root=tmp_path, required_gb=1.0, min_free_disk_gb=1e9)
    assert _names(report)["disk"] is False


@pytest.mark.spec("OPS-03", "SFT-04")
def test_memory_estimate_orders_and_scale():
    nf4 = estimate_training_memory_gb(QWEN32B, quantization="nf4", seq_len=1024, batch=2, lora_r=16, gradient_checkpointing=True)
    bf16 = estimate_training_memory_gb(QWEN32B, quantization="bf16", seq_len=1024, batch=2, lora_r=16, gradient_checkpointing=True)
    longer = estimate_training_memory_gb(QWEN32B, quantization="nf4", seq_len=2048, batch=2, lora_r=16, gradient_checkpointing=True)
    # QLoRA of a 32B model fits an 80 GB card; bf16 LoRA of it does not.
    assert 18 < nf4["total_gb"] < 60 < bf16["total_gb"]
    assert longer["total_gb"] > nf4["total_gb"]
    assert 30e9 < nf4["n_parameters_approx"] < 36e9
    with pytest.raises(ValueError, match="hidden_size"):
        estimate_training_memory_gb({}, quantization="nf4", seq_len=1, batch=1, lora_r=16, gradient_checkpointing=True)


@pytest.mark.spec("OPS-03")
def test_estimate_from_a_local_model_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"text_config": {"hidden_size": 640, "num_hidden_layers": 18, "vocab_size": 262144}}')
    report = run_preflight({**H100, "free_gb": 0.01}, output_root=tmp_path, model_source=folder)
    assert report.estimate is not None and report.estimate["total_gb"] > 0.01
    assert _names(report)["memory"] is False and "estimated need" in report.problems[0]


@pytest.mark.spec("OPS-03")
def test_probe_device_on_this_machine():
    info = probe_device()
    assert isinstance(info["cuda_available"], bool)
    if not info["cuda_available"]:
        assert run_preflight(info, output_root="/tmp").mode == CPU_FALLBACK


@pytest.mark.spec("OPS-03")
def test_training_runs_preflight_before_loading(tmp_path, monkeypatch):
    """A GPU run with too little free memory stops in preflight; no weights are read."""
    from cai_bootstrap.sft.config import config_from_dict
    from cai_bootstrap.sft.train import run_training
    from spec_tests.sft_support import make_generation_run, no_expectation_failures

    def boom(*a, **k):
        raise AssertionError("model loaded despite a failed preflight")

    monkeypatch.setattr("cai_bootstrap.loader.load_base_model", boom)
    run = make_generation_run(tmp_path / "run")
    cfg = config_from_dict({"model": str(tmp_path / "model"), "dataset": str(run), "output_dir": str(tmp_path / "out"),
                            "quantization": "none"})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256}')
    with pytest.raises(PreflightError, match="memory"):
        run_training(cfg, device_info={**H100, "free_gb": 2.0}, validator=no_expectation_failures)
