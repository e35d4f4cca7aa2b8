"""The pairs run configuration (PO-01/02): k, decoding, the gap, the negative types, the QC thresholds."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai_bootstrap.config_io import Seed, UserPath
from cai_bootstrap.preference.pairs import DEFAULT_K, DEFAULT_RELEVANCE_WEIGHT
from cai_bootstrap.preference.qc import DEFAULT_MIN_MARGIN_GAP, PairQCThresholds
from cai_bootstrap.preference.schema import HARD_NEGATIVE_TYPES


class PairsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str
    profile: str | None = None
    sft_run: UserPath | None = Field(default=None, description="sample with the Stage-1 model (base + its adapter); null: the base model")
    stage1_data: UserPath = Field(description="the Stage-1 generation run: its instructions are not reused")
    instructions: UserPath = Field(description="JSONL of candidate instructions (id, instruction)")
    out_dir: UserPath
    eval_set: UserPath | None = None
    device: str | None = None

    k: int = DEFAULT_K
    temperature: float = Field(0.8, gt=0, le=5, allow_inf_nan=False)
    top_p: float = Field(0.95, gt=0, le=1, allow_inf_nan=False)
    max_new_tokens: int = Field(160, ge=1, le=8192)
    seed: Seed = 0
    batch_size: int = Field(8, ge=1, le=1024)
    critic_threshold: float = Field(0.0, allow_inf_nan=False)
    relevance_weight: float = Field(DEFAULT_RELEVANCE_WEIGHT, allow_inf_nan=False)
    min_margin_gap: float = Field(DEFAULT_MIN_MARGIN_GAP, allow_inf_nan=False)
    negative_types: list[str] = Field(default_factory=lambda: list(HARD_NEGATIVE_TYPES))
    qc: PairQCThresholds = Field(default_factory=PairQCThresholds)

    @field_validator("k")
    @classmethod
    def _k(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"k must be >= 2 (Best-of-N needs someone to lose), got {v}")
        return v

    @field_validator("min_margin_gap")
    @classmethod
    def _gap(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"min_margin_gap must be > 0, got {v}")
        return v

    @field_validator("negative_types")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in HARD_NEGATIVE_TYPES]
        if unknown:
            raise ValueError(f"unknown hard-negative types {unknown}; known: {', '.join(HARD_NEGATIVE_TYPES)}")
        return v


def load_pairs_config(path, overrides=None) -> PairsConfig:
    """A YAML run file (its ``pairs`` section or the whole file) with dotted overrides, validated in one place."""
    from pydantic import ValidationError

    from cai_bootstrap.config_io import apply_overrides
    from cai_bootstrap.sft.config import ConfigError, format_config_errors, read_run_file

    if path:
        data = read_run_file(path, "pairs", overrides, "pairs_default.yaml")
    else:
        data = apply_overrides({}, overrides, ConfigError, "override")
    try:
        return PairsConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_config_errors(e, str(path or "pairs flags")).replace("SFT configuration", "pairs configuration")) from None
