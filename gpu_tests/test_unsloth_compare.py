"""CPU checks of the hf-vs-unsloth comparison's own logic (the GPU run is unsloth_on_device.sh)."""

from __future__ import annotations

import pytest

from gpu_tests.unsloth_compare import compare_overrides, failure_record, summarise, synthetic_records

pytestmark = pytest.mark.cpu


def _ok(tokens, seconds, peak, losses):
    return {"status": "ok", "tokens": tokens, "train_seconds": seconds, "wall_seconds": seconds + 10, "global_step": len(losses),
            "peak_gpu_memory_gb": peak, "versions": {}, "loss_history": [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]}


def test_synthetic_records_are_deterministic_and_seeded():
    assert synthetic_records(50, 0) == synthetic_records(50, 0)
    assert synthetic_records(50, 0) != synthetic_records(50, 1)
    assert all(r["instruction"] and r["response"] for r in synthetic_records(50, 0))
    with pytest.raises(ValueError, match="--rows"):
        synthetic_records(0)


def test_summary_compares_unsloth_to_hf():
    s = summarise({"hf": _ok(1000, 10.0, 4.0, [2.0, 1.5]), "unsloth": _ok(3000, 10.0, 2.0, [2.0, 1.25])})
    assert s["backends"]["hf"]["tokens_per_second"] == 100.0
    assert s["backends"]["unsloth"]["final_loss"] == 1.25
    assert s["comparison"] == {"unsloth_over_hf_tokens_per_second": 3.0, "unsloth_over_hf_peak_memory": 0.5,
                               "final_loss_difference": -0.25}


def test_a_failed_unsloth_arm_keeps_the_hf_figures():
    try:
        import unsloth_package_that_is_not_there  # noqa: F401
    except ImportError as e:
        failed = failure_record(e)
    assert failed["status"] == "failed" and failed["package"] == "unsloth_package_that_is_not_there"
    assert "ModuleNotFoundError" in failed["error"]
    s = summarise({"hf": _ok(1000, 10.0, 4.0, [2.0]), "unsloth": failed})
    assert s["comparison"] is None
    assert s["backends"]["hf"]["tokens_per_second"] == 100.0
    assert s["backends"]["unsloth"]["package"] == "unsloth_package_that_is_not_there"


def test_the_two_arms_differ_only_in_backend_and_output(tmp_path):
    stage1 = {"quantization": "none", "epochs": 2, "per_device_batch_size": 16}
    a = compare_overrides("hf", 80, tmp_path, dry_run=False, stage1_overrides=stage1)
    b = compare_overrides("unsloth", 80, tmp_path, dry_run=False, stage1_overrides=stage1)
    assert {k for k in a if a[k] != b[k]} == {"backend", "output_dir"}
    assert a["quantization"] == "none" and a["per_device_batch_size"] == 16  # bf16 LoRA unless asked otherwise
    q = compare_overrides("unsloth", 80, tmp_path, dry_run=False, stage1_overrides=stage1, quantization="nf4")
    assert q["quantization"] == "nf4" and {k for k in q if q[k] != b[k]} == {"quantization"}
    with pytest.raises(ValueError, match="backend"):
        compare_overrides("vllm", 80, tmp_path, dry_run=False, stage1_overrides=stage1)


def test_a_failure_re_raised_by_the_project_names_the_package_it_came_from():
    """sft.train re-raises unsloth's errors as TrainingSetupError; the package is found through the cause."""
    import yaml

    def wrapped():
        try:
            yaml.safe_load("a: [")
        except yaml.YAMLError as e:
            raise RuntimeError("backend cannot wrap this model") from e

    with pytest.raises(RuntimeError) as info:
        wrapped()
    rec = failure_record(info.value)
    assert rec["package"] == "yaml" and rec["error"].startswith("RuntimeError: backend cannot wrap")
