"""The DPO run configuration (PO-03): typed, range-checked, refused before any model loads.

``beta`` is kept in 0.1-0.3: below it the policy drifts far from the Stage-1 model on a
few thousand pairs (and forgets the format SFT taught); above it the preference signal
barely moves the policy. ``method`` picks the objective: ``dpo`` (trl's DPOTrainer, with
any of its pairwise ``loss_type`` values, ``sigmoid`` being the original DPO), ``orpo``
(trl's ORPOTrainer: odds ratio plus SFT loss, no reference model) or ``simpo`` (trl's
CPOTrainer with ``loss_type: simpo``: length-normalised, reference-free, target margin
``simpo_gamma``). The reference-free methods ignore the reference model and say so in
the manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai_bootstrap.config_io import Seed, UserPath

from cai_bootstrap.dedup import NEAR_DUP_THRESHOLD
from cai_bootstrap.sft.config import ADAMW_OPTIMIZERS, ConfigError, format_config_errors, read_run_file

BETA_RANGE = (0.1, 0.3)
DEFAULT_BETA = 0.1
METHODS = ("dpo", "orpo", "simpo")
# trl 1.16 DPOTrainer's pairwise losses on (chosen, rejected); the unpaired and SFT-only ones are left out.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
                  "apo_down", "discopop", "sigmoid_norm")


class DPORunConfig(BaseModel):
    """One preference-optimization run on top of a finished Stage-1 SFT run."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the Stage-1 base model: built-in name, folder, .gguf file or hub id")
    profile: str | None = None
    sft_run: UserPath = Field(description="output_dir of the finished Stage-1 SFT run (adapter/ and training_manifest.json)")
    pairs: UserPath = Field(description="run directory of a finished pairs run")
    output_dir: UserPath
    eval_set: UserPath | None = None
    # Stage 1's final gate manifest (GT-02) that let Stage 2 start; recorded in the lineage (ST-03).
    stage1_gate: UserPath | None = None

    backend: Literal["hf"] = "hf"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    quantization: Literal["nf4", "none"] = "nf4"
    gradient_checkpointing: bool = True

    method: Literal["dpo", "orpo", "simpo"] = "dpo"
    loss_type: str = "sigmoid"
    beta: float = DEFAULT_BETA
    simpo_gamma: float = 0.5

    epochs: int = 1
    learning_rate: float = 5e-6
    optimizer: str = "adamw_torch"
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.1
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    max_length: int = 1024
    seed: Seed = 0

    save_steps: int = 50
    logging_steps: int = 10
    run_sentinels: bool = True
    near_duplicate_threshold: float = NEAR_DUP_THRESHOLD

    smoke: bool = False
    max_steps: int | None = None

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        if not BETA_RANGE[0] <= v <= BETA_RANGE[1]:
            raise ValueError(f"beta must be between {BETA_RANGE[0]} and {BETA_RANGE[1]} (PO-03), got {v}")
        return v

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not 0 < v <= 1e-4:
            raise ValueError(f"learning_rate must be in (0, 1e-4] (preference tuning moves a trained model gently), got {v}")
        return v

    @field_validator("optimizer")
    @classmethod
    def _optim(cls, v: str) -> str:
        if v not in ADAMW_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(ADAMW_OPTIMIZERS)}; got {v!r}")
        return v

    @field_validator("epochs", "per_device_batch_size", "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("near_duplicate_threshold")
    @classmethod
    def _near(cls, v: float) -> float:
        if not 0 < v <= NEAR_DUP_THRESHOLD:
            raise ValueError(f"must be in (0, {NEAR_DUP_THRESHOLD}]: a looser leakage check is not allowed (SFT-06), got {v}")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "DPORunConfig":
        if self.method == "dpo" and self.loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"field 'loss_type': {self.loss_type!r} is not a pairwise DPO loss of trl; one of "
                             f"{', '.join(DPO_LOSS_TYPES)} (or method: orpo / simpo)")
        if self.method != "dpo" and self.loss_type != "sigmoid":
            raise ValueError(f"field 'loss_type': only method: dpo takes a loss_type; method {self.method!r} has its own loss")
        if self.max_steps is not None and not self.smoke:
            raise ValueError("field 'max_steps': only allowed with smoke: true (plumbing runs)")
        if not self.run_sentinels and not self.smoke:
            raise ValueError("field 'run_sentinels': the contamination sentinels run at every load (CG-05); only smoke runs may skip them")
        return self

    @property
    def uses_reference(self) -> bool:
        return self.method == "dpo"

    def hyperparameters(self) -> dict:
        return {
            "method": self.method,
            "loss_type": self.loss_type if self.method == "dpo" else self.method,
            "beta": self.beta,
            "simpo_gamma": self.simpo_gamma if self.method == "simpo" else None,
            "epochs": self.epochs,
            "lr": self.learning_rate,
            "batch": self.per_device_batch_size,
            "grad_accum": self.gradient_accumulation_steps,
            "effective_batch": self.per_device_batch_size * self.gradient_accumulation_steps,
            "seq_len": self.max_length,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "warmup_ratio": self.warmup_ratio,
            "gradient_checkpointing": self.gradient_checkpointing,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "smoke": self.smoke,
        }


def config_from_dict(data: Mapping[str, Any], *, source: str = "DPO config") -> DPORunConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return DPORunConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(format_config_errors(e, source).replace("SFT configuration", "DPO configuration")
                          .replace("configs/sft_default.yaml", "configs/dpo_default.yaml")) from None


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> DPORunConfig:
    """Read a YAML run file (its ``dpo`` section or the whole file), apply dotted overrides, validate."""
    return config_from_dict(read_run_file(path, "dpo", overrides, "dpo_default.yaml"), source=str(path))


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "dpo_default.yaml"
