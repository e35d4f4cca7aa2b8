"""The SFT run configuration: typed, range-checked, and rejected before any model loads (SFT-04, OPS-01).

The ranges come from QLoRA practice for instruction tuning at this data scale
(~15k examples): outside them a run is either too weak to learn the format or
over-trains on a small set. A typo or an out-of-range value should cost a second,
not a GPU hour, so every field is checked when the file is read, and the error
names the field.

``smoke: true`` is the one way past the size ranges (epochs, batch, accumulation,
max_length) and the only way to set ``max_steps``: plumbing runs on a laptop need
tiny values. The LoRA and optimizer settings are checked in every mode, and the
training manifest records the values actually used and which ones were out of range.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai_bootstrap.config_io import Seed, UserPath
from cai_bootstrap.dedup import NEAR_DUP_THRESHOLD

# SFT-04 ranges, inclusive.
LORA_R_RANGE = (16, 32)
LORA_ALPHA_RANGE = (16, 32)
# The default per-device batch is 1-2 (what fits a 32B model on one GPU); a larger one is allowed
# up to the effective batch, since batch x accumulation is what the optimizer sees. A small model
# on a large GPU needs it: at 2 x 8 a 270M model spends its step launching kernels (measured on an
# H200: 3.7 s per optimizer step at 2 x 8 with checkpointing, 0.31 s at 16 x 1 without).
DEFAULT_BATCH_RANGE = (1, 2)
EFFECTIVE_BATCH_RANGE = (8, 16)
BATCH_RANGE = (1, EFFECTIVE_BATCH_RANGE[1])
EPOCHS_RANGE = (2, 4)
MAX_LENGTH_RANGE = (1024, 2048)
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "paged_adamw_8bit")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


def _in(value: float, lo: float, hi: float) -> bool:
    return lo <= value <= hi


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: str | list[str] = "all-linear"

    @field_validator("r")
    @classmethod
    def _r(cls, v: int) -> int:
        if not _in(v, *LORA_R_RANGE):
            raise ValueError(f"LoRA rank must be between {LORA_R_RANGE[0]} and {LORA_R_RANGE[1]} (SFT-04), got {v}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: int) -> int:
        if not _in(v, *LORA_ALPHA_RANGE):
            raise ValueError(f"LoRA alpha must be between {LORA_ALPHA_RANGE[0]} and {LORA_ALPHA_RANGE[1]} (SFT-04), got {v}")
        return v

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 0.5:
            raise ValueError(f"LoRA dropout must be in [0, 0.5) (SFT-04 default 0.1), got {v}")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or not all(isinstance(m, str) and m for m in v)):
            raise ValueError("target_modules must be 'all-linear' or a non-empty list of module names")
        return v


class SFTRunConfig(BaseModel):
    """One training run. Paths are taken relative to the working directory."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    # what to train, on what, where to write
    model: str = Field(description="built-in name, model folder, .gguf file or org/name hub id")
    profile: str | None = None
    dataset: UserPath = Field(description="run directory of a finished data generation run")
    output_dir: UserPath
    eval_set: UserPath | None = Field(default=None, description="held-out set for the leakage check; default: the shipped set")

    # how
    backend: Literal["hf", "unsloth"] = "hf"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    quantization: Literal["nf4", "none"] = "nf4"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: int = 3
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw_torch"
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.03
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    max_length: int = 1024
    gradient_checkpointing: bool = True
    seed: Seed = 0

    # bookkeeping
    save_steps: int = 50
    save_total_limit: int | None = 3
    logging_steps: int = 10
    run_sentinels: bool = True
    near_duplicate_threshold: float = NEAR_DUP_THRESHOLD
    memory_headroom: float = 1.2

    # plumbing runs
    smoke: bool = False
    max_steps: int | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model must name a built-in model, a folder, a .gguf file or an org/name hub id")
        return v.strip()

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not 0 < v <= 1e-3:
            raise ValueError(f"learning_rate must be in (0, 1e-3] (SFT-04 default 2e-4), got {v}")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _wd(cls, v: float) -> float:
        if not 0 <= v <= 0.1:
            raise ValueError(f"weight_decay must be in [0, 0.1] (SFT-04 default 0.01), got {v}")
        return v

    @field_validator("optimizer")
    @classmethod
    def _optim(cls, v: str) -> str:
        if v not in ADAMW_OPTIMIZERS:
            raise ValueError(f"optimizer must be an AdamW variant (SFT-04): one of {', '.join(ADAMW_OPTIMIZERS)}; got {v!r}")
        return v

    @field_validator("warmup_ratio")
    @classmethod
    def _warmup(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {v}")
        return v

    @field_validator("epochs", "per_device_batch_size", "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("save_total_limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 (keep at least the last checkpoint, or resume is impossible) or null")
        return v

    @field_validator("near_duplicate_threshold")
    @classmethod
    def _near(cls, v: float) -> float:
        if not 0 < v <= NEAR_DUP_THRESHOLD:
            raise ValueError(f"must be in (0, {NEAR_DUP_THRESHOLD}]: a looser leakage check than ROUGE-L "
                             f"{NEAR_DUP_THRESHOLD} is not allowed (SFT-06), got {v}")
        return v

    @field_validator("memory_headroom")
    @classmethod
    def _headroom(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError(f"must be >= 1.0 (a multiplier on the memory estimate), got {v}")
        return v

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1 or null, got {v}")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "SFTRunConfig":
        if self.max_steps is not None and not self.smoke:
            raise ValueError(
                "field 'max_steps': cuts training short of the SFT-04 epoch range; only allowed with smoke: true (plumbing runs)"
            )
        if not self.run_sentinels and not self.smoke:
            raise ValueError("field 'run_sentinels': the contamination sentinels run at every base-model load (CG-05); "
                             "only smoke: true runs may skip them")
        if not self.smoke:
            problems = self.out_of_range()
            if problems:
                raise ValueError(
                    "\n".join(f"field {k!r}: {msg} (smoke: true relaxes this for plumbing runs)" for k, msg in problems.items())
                )
        return self

    # -- derived --------------------------------------------------------------------------------

    @property
    def effective_batch_size(self) -> int:
        """Per optimizer step on one device; multi-device runs multiply by the world size."""
        return self.per_device_batch_size * self.gradient_accumulation_steps

    def out_of_range(self) -> dict[str, str]:
        """The SFT-04 size ranges this config leaves (empty unless ``smoke``)."""
        out: dict[str, str] = {}
        if not _in(self.epochs, *EPOCHS_RANGE):
            out["epochs"] = f"must be between {EPOCHS_RANGE[0]} and {EPOCHS_RANGE[1]} (SFT-04), got {self.epochs}"
        if not _in(self.per_device_batch_size, *BATCH_RANGE):
            out["per_device_batch_size"] = f"must be between {BATCH_RANGE[0]} and {BATCH_RANGE[1]} (SFT-04), got {self.per_device_batch_size}"
        if not _in(self.effective_batch_size, *EFFECTIVE_BATCH_RANGE):
            out["gradient_accumulation_steps"] = (
                f"per_device_batch_size x gradient_accumulation_steps must be between {EFFECTIVE_BATCH_RANGE[0]} and "
                f"{EFFECTIVE_BATCH_RANGE[1]} (SFT-04), got {self.per_device_batch_size} x {self.gradient_accumulation_steps} = "
                f"{self.effective_batch_size}"
            )
        if not _in(self.max_length, *MAX_LENGTH_RANGE):
            out["max_length"] = f"must be between {MAX_LENGTH_RANGE[0]} and {MAX_LENGTH_RANGE[1]} (SFT-04), got {self.max_length}"
        return out

    def hyperparameters(self, world_size: int = 1) -> dict:
        """The PV-03 hyperparameter block, plus what else decides the result.

        ``world_size`` is the number of data-parallel processes (OPS-05): the batch the
        optimizer sees is this config's per-device batch on each of them.
        """
        return {
            "epochs": self.epochs,
            "lr": self.learning_rate,
            "batch": self.per_device_batch_size,
            "grad_accum": self.gradient_accumulation_steps,
            "world_size": world_size,
            "effective_batch": self.effective_batch_size * world_size,
            "seq_len": self.max_length,
            "lora": {"r": self.lora.r, "alpha": self.lora.alpha, "dropout": self.lora.dropout, "target_modules": self.lora.target_modules},
            "weight_decay": self.weight_decay,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "warmup_ratio": self.warmup_ratio,
            "gradient_checkpointing": self.gradient_checkpointing,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "smoke": self.smoke,
            "out_of_range": self.out_of_range(),
        }


def format_config_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # cross-field checks name their fields themselves
            lines.extend(msg.split("\n"))
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see configs/sft_default.yaml for every field)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"field {loc!r}: {msg}")
    return f"{source}: invalid SFT configuration:\n  " + "\n  ".join(lines)


def config_from_dict(data: Mapping[str, Any], *, source: str = "SFT config") -> SFTRunConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return SFTRunConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(format_config_errors(e, source)) from None


def read_run_file(path: str | os.PathLike, section: str, overrides: Mapping[str, Any] | None, template: str) -> dict:
    """A run file's ``section`` (or the whole file) with dotted ``overrides`` applied (None values skipped)."""
    from cai_bootstrap.config_io import apply_overrides, read_yaml_section

    p = Path(path)
    if not p.exists():  # a folder is named as such by read_yaml_section
        raise ConfigError(f"config file {p} does not exist; start from src/cai_bootstrap/configs/{template}")
    return apply_overrides(read_yaml_section(p, section, ConfigError), overrides, ConfigError, "override")


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> SFTRunConfig:
    """Read a YAML run file, apply ``overrides`` (dotted keys, None values skipped), validate."""
    return config_from_dict(read_run_file(path, "sft", overrides, "sft_default.yaml"), source=str(path))


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "sft_default.yaml"
