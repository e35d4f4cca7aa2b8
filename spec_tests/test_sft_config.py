"""SFT-04 / OPS-01: typed SFT config with the QLoRA defaults, rejected before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai_bootstrap.sft.config import ConfigError, SFTRunConfig, config_from_dict, default_config_path, load_config
from cai_bootstrap.sft.train import QUANT_CPU_FALLBACK, TrainingSetupError, plan_run

BASE = {"model": "tiny-random", "dataset": "runs/x", "output_dir": "runs/y"}
GPU = {"cuda_available": True, "name": "fake", "free_gb": 70.0, "total_gb": 80.0, "bf16_supported": True}
CPU = {"cuda_available": False}


@pytest.mark.spec("SFT-04", "OPS-01")
def test_shipped_config_loads_with_sft04_defaults():
    path = default_config_path()
    first = path.read_text().splitlines()[0]
    assert first.startswith("# cai-bootstrap train --config src/cai_bootstrap/configs/sft_default.yaml")
    cfg = load_config(path)
    hp = cfg.hyperparameters()
    assert cfg.quantization == "nf4" and cfg.optimizer.startswith("adamw")
    assert hp["lora"] == {"r": 16, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}
    assert (hp["lr"], hp["weight_decay"], hp["batch"], hp["grad_accum"], hp["epochs"], hp["seq_len"]) == (2e-4, 0.01, 2, 8, 3, 1024)
    assert 8 <= hp["effective_batch"] <= 16 and hp["out_of_range"] == {} and hp["smoke"] is False


@pytest.mark.spec("SFT-04", "OPS-01")
def test_every_shipped_sft_yaml_validates():
    for p in sorted(default_config_path().parent.glob("sft*.yaml")):
        assert isinstance(load_config(p), SFTRunConfig), p


@pytest.mark.spec("SFT-04", "OPS-01")
@pytest.mark.parametrize(
    "override, field",
    [
        ({"lora": {"r": 8}}, "lora.r"),
        ({"lora": {"r": 64}}, "lora.r"),
        ({"lora": {"alpha": 8}}, "lora.alpha"),
        ({"lora": {"alpha": 64}}, "lora.alpha"),
        ({"lora": {"dropout": 0.7}}, "lora.dropout"),
        ({"epochs": 1}, "epochs"),
        ({"epochs": 5}, "epochs"),
        ({"per_device_batch_size": 32, "gradient_accumulation_steps": 1}, "per_device_batch_size"),
        ({"per_device_batch_size": 8, "gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
        ({"gradient_accumulation_steps": 16}, "gradient_accumulation_steps"),
        ({"max_length": 512}, "max_length"),
        ({"max_length": 4096}, "max_length"),
        ({"learning_rate": 0.01}, "learning_rate"),
        ({"weight_decay": 0.5}, "weight_decay"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"quantization": "int8"}, "quantization"),
        ({"backend": "deepspeed"}, "backend"),
        ({"near_duplicate_threshold": 0.9}, "near_duplicate_threshold"),
        ({"max_steps": 10}, "max_steps"),
        ({"run_sentinels": False}, "run_sentinels"),
        ({"lora_rank": 16}, "lora_rank"),
        ({"model": None}, "model"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        config_from_dict({**BASE, **override})
    assert f"field {field!r}" in str(e.value)


@pytest.mark.spec("SFT-04")
@pytest.mark.parametrize("per_device, accumulation", [(2, 8), (1, 8), (4, 4), (8, 2), (16, 1)])
def test_a_larger_micro_batch_is_allowed_at_the_same_effective_batch(per_device, accumulation):
    cfg = config_from_dict({**BASE, "per_device_batch_size": per_device, "gradient_accumulation_steps": accumulation})
    assert cfg.out_of_range() == {} and 8 <= cfg.effective_batch_size <= 16


@pytest.mark.spec("SFT-04")
def test_the_default_micro_batch_is_the_memory_saving_one():
    from cai_bootstrap.sft.config import DEFAULT_BATCH_RANGE, SFTRunConfig

    default = SFTRunConfig.model_fields["per_device_batch_size"].default
    assert DEFAULT_BATCH_RANGE[0] <= default <= DEFAULT_BATCH_RANGE[1]


@pytest.mark.spec("SFT-04")
def test_missing_required_fields_are_named():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": "tiny-random"})
    assert "field 'dataset': required field is missing" in str(e.value)
    assert "field 'output_dir': required field is missing" in str(e.value)


@pytest.mark.spec("SFT-04")
def test_smoke_relaxes_only_the_size_ranges_and_records_them():
    cfg = config_from_dict({**BASE, "smoke": True, "max_steps": 3, "epochs": 1, "max_length": 64,
                            "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "run_sentinels": False})
    hp = cfg.hyperparameters()
    assert hp["max_steps"] == 3 and hp["smoke"] is True
    assert set(hp["out_of_range"]) == {"epochs", "max_length", "gradient_accumulation_steps"}
    with pytest.raises(ConfigError, match="lora.r"):
        config_from_dict({**BASE, "smoke": True, "lora": {"r": 4}})


@pytest.mark.spec("SFT-04", "OPS-01")
def test_yaml_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny-random\ndataset: d\noutput_dir: o\nlora:\n  r: 16\n")
    cfg = load_config(p, {"lora.r": 32, "lora.alpha": 16, "epochs": None})
    assert (cfg.lora.r, cfg.lora.alpha, cfg.epochs) == (32, 16, 3)
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.spec("SFT-04")
def test_cpu_falls_back_to_plain_lora_fp32():
    plan = plan_run(config_from_dict(BASE), CPU)
    assert (plan.cuda, plan.load_quantization, plan.quantization, plan.dtype, plan.bf16) == (
        False, None, QUANT_CPU_FALLBACK, "float32", False)
    assert QUANT_CPU_FALLBACK == "none (cpu fallback)"
    assert plan_run(config_from_dict({**BASE, "quantization": "none"}), CPU).quantization == "none"


@pytest.mark.spec("SFT-04")
def test_cuda_plans_qlora_nf4_with_bf16(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a))
    plan = plan_run(config_from_dict(BASE), GPU)
    assert (plan.cuda, plan.load_quantization, plan.quantization, plan.dtype, plan.bf16, plan.gradient_checkpointing) == (
        True, "nf4", "nf4", "bfloat16", True, True)
    assert plan_run(config_from_dict({**BASE, "device": "cpu"}), GPU).quantization == QUANT_CPU_FALLBACK


@pytest.mark.spec("SFT-04", "OPS-01")
@pytest.mark.parametrize(
    "cfg, info, missing, match",
    [
        pytest.param({"backend": "unsloth"}, CPU, (), "needs a CUDA GPU", id="unsloth-on-cpu"),
        pytest.param({"backend": "unsloth"}, GPU, ("unsloth",), "unsloth is not installed", id="unsloth-missing"),
        pytest.param({}, GPU, ("bitsandbytes",), "needs bitsandbytes", id="nf4-without-bitsandbytes"),
    ],
)
def test_impossible_backends_fail_before_loading(monkeypatch, cfg, info, missing, match):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in missing else (object() if n == "bitsandbytes" else real(n, *a)))
    with pytest.raises(TrainingSetupError, match=match):
        plan_run(config_from_dict({**BASE, **cfg}), info)


@pytest.mark.spec("OPS-01", "SFT-04")
def test_cli_bad_config_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from cai_bootstrap.cli import main

    def boom(*a, **k):
        raise AssertionError("model loaded despite a bad config")

    monkeypatch.setattr("cai_bootstrap.loader.load_base_model", boom)
    rc = main(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "lora.alpha=64"])
    err = capsys.readouterr().err
    assert rc == 2 and "field 'lora.alpha'" in err and "between 16 and 32" in err
    rc = main(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--max-steps", "3"])
    assert rc == 2 and "field 'max_steps'" in capsys.readouterr().err
    rc = main(["train", "--set", "nonsense"])
    assert rc == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_config_paths_are_paths():
    cfg = config_from_dict(BASE)
    assert isinstance(cfg.dataset, Path) and isinstance(cfg.output_dir, Path) and cfg.eval_set is None


@pytest.mark.spec("OPS-01", "SFT-04")
def test_set_overrides_are_not_undone_by_unset_flags():
    """Found on the GPU run: `train --set quantization=none` still planned nf4, because the unset
    `--quantization` flag (None) overwrote the --set value."""
    from cai_bootstrap.cli import build_parser
    from cai_bootstrap.commands.train_cmds import _overrides

    args = build_parser().parse_args(["train", "--set", "quantization=none", "--set", "epochs=2"])
    assert _overrides(args) == {"quantization": "none", "epochs": 2}
    args = build_parser().parse_args(["train", "--set", "quantization=none", "--quantization", "nf4"])
    assert _overrides(args)["quantization"] == "nf4"  # an explicit flag still wins


@pytest.mark.spec("SFT-04")
@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_unsloth_gets_the_lora_settings_as_configured(monkeypatch, targets):
    """Unsloth takes 'all-linear' itself; a None in its place fails inside it on the GPU machine."""
    import sys
    import types

    from cai_bootstrap.sft.train import RunPlan, _unsloth_lora

    seen = {}

    class FastLanguageModel:
        @staticmethod
        def get_peft_model(model, **kw):
            seen.update(kw)
            if kw["target_modules"] is None:
                raise TypeError("'NoneType' object is not iterable")  # what unsloth 2026.10 does with None
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    cfg = config_from_dict({**BASE, "backend": "unsloth", "lora": {"target_modules": targets}})
    plan = RunPlan(cuda=True, device="cuda", backend="unsloth", load_quantization=None, quantization="none",
                   dtype="bfloat16", bf16=True, gradient_checkpointing=False)
    model = object()
    assert _unsloth_lora(model, cfg, plan) is model
    assert seen["target_modules"] == targets
    assert (seen["r"], seen["lora_alpha"], seen["lora_dropout"]) == (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    assert seen["use_gradient_checkpointing"] is False and seen["random_state"] == cfg.seed
