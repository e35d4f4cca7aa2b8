"""Typed run configuration for data generation: bad values fail before any model loads (OPS-01)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai_bootstrap import critic
from cai_bootstrap.critic import CALIBRATE_FOR_FILTERING

RELEVANCE_THRESHOLD_FROM_PROBES = "probes"
from cai_bootstrap.config_io import DEVICE_RE, Seed, UserPath, apply_overrides, format_validation_errors, read_yaml_section
from cai_bootstrap.decode_backends import DEFAULT_DECODE_BACKEND, GENERATION_DECODE_BACKENDS
from cai_bootstrap.decoding import InstructionDecoding, ResponseDecoding
from cai_bootstrap.gates import DEFAULT_PILOT_TARGET
from cai_bootstrap.model_sources import GEMMA_NAME
from cai_bootstrap.prompts import DEFAULT_N_DEMONSTRATIONS, MAX_DEMONSTRATIONS, RESPONSE_FRAMES, demonstration_stop_strings
from cai_bootstrap.qc import QCThresholds

_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


class ConfigError(ValueError):
    """A run configuration is invalid; the message names each bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Defaults and ranges come from their one home (decoding.py, critic.py, qc.py, gates.py); these models only
# add the run-file layer (batch sizes, field-named errors).
_Q = QCThresholds


class InstructionGen(InstructionDecoding):
    """DG-01 decoding (validated by ``InstructionDecoding``) plus how many prompts go to the model at once."""

    batch_size: int = Field(8, ge=1, le=512)


class ResponseGen(ResponseDecoding):
    """PR-02 decoding (validated by ``ResponseDecoding``) plus how many prompts go to the model at once."""

    batch_size: int = Field(16, ge=1, le=512)
    # PR-07: the base model answers after K answered examples (what it already does in
    # context); training records keep only the zero-shot prompt.
    response_frame: Literal[RESPONSE_FRAMES] = "demonstrations"  # type: ignore[valid-type]
    n_demonstrations: int = Field(DEFAULT_N_DEMONSTRATIONS, ge=1, le=MAX_DEMONSTRATIONS)

    @model_validator(mode="after")
    def _frame_needs_stops(self):
        """Without the blank-line stop the model would go on to write the frame's next example."""
        if self.response_frame == "demonstrations" and not self.stop_at_blank_line:
            raise ValueError("response_frame 'demonstrations' ends each answer at the blank line; "
                             "set stop_at_blank_line true or use response_frame 'zero_shot'")
        return self

    def generate_kwargs(self) -> dict:
        """The frame decides the stops: after demonstrations, also the next ``Instruction:``."""
        kwargs = super().generate_kwargs()
        if self.response_frame == "demonstrations":
            kwargs["stop_strings"] = demonstration_stop_strings()
        return kwargs


class CriticCfg(_Strict):
    threshold: float = Field(critic.DEFAULT_THRESHOLD, ge=0)
    batch_size: int = Field(critic.DEFAULT_BATCH_SIZE, ge=1, le=512)
    prefix_reuse: bool = True
    # CR-06: A/B margins are taken relative to a content-free item's (label bias) before deciding.
    calibrate: bool = CALIBRATE_FOR_FILTERING
    # A number, or "probes": the Youden-optimal cut on the critic probe set (CR-06), chosen per run.
    relevance_threshold: float | Literal["probes"] = Field(RELEVANCE_THRESHOLD_FROM_PROBES, allow_inf_nan=False)


class QCCfg(_Strict):
    max_runaway_rate: float = Field(_Q.max_runaway_rate, ge=0, le=1)
    max_token_limit_rate: float = Field(_Q.max_token_limit_rate, ge=0, le=1)
    max_delimiter_leaks: int = Field(_Q.max_delimiter_leaks, ge=0)
    max_median_tokens: float = Field(_Q.max_median_tokens, gt=0)
    min_instruction_acceptance: float = Field(_Q.min_instruction_acceptance, ge=0, le=1)
    min_pair_acceptance: float = Field(_Q.min_pair_acceptance, ge=0, le=1)
    require_sentinels: bool = _Q.require_sentinels
    min_judge_auroc: float = Field(_Q.min_judge_auroc, ge=0, le=1)
    constant_margin_tolerance: float = Field(_Q.constant_margin_tolerance, ge=0)

    def thresholds(self) -> QCThresholds:
        return QCThresholds(**self.model_dump())


class GenerateConfig(_Strict):
    """One data-generation run (a pilot, or one shard of a scale run)."""

    model: str = GEMMA_NAME
    profile: str | None = None
    out_dir: UserPath = Field(Path("runs/stage1/pilot"), validate_default=True)  # scale runs default to runs/stage1/shard-I-of-N
    mode: Literal["pilot", "scale"] = "pilot"
    target: int = Field(DEFAULT_PILOT_TARGET, ge=1, le=1_000_000)
    seed: Seed = 0
    shard: str = "0/1"
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    # How generate() runs its decoding loop (decode_backends.py): the backends whose rows a rerun reproduces.
    decode_backend: Literal[GENERATION_DECODE_BACKENDS] = DEFAULT_DECODE_BACKEND
    quiet: bool = False
    # Scale runs need a passed pilot gate manifest (GT-01); pilots ignore it.
    pilot_gate: UserPath | None = None
    instructions: InstructionGen = InstructionGen()
    responses: ResponseGen = ResponseGen()
    critic: CriticCfg = CriticCfg()
    qc: QCCfg = QCCfg()

    @model_validator(mode="before")
    @classmethod
    def _default_out_dir(cls, data):
        """Each shard gets its own default directory, so two shards can never share one by omission."""
        if isinstance(data, dict) and data.get("out_dir") is None and data.get("mode") == "scale":
            m = _SHARD_RE.match(str(data.get("shard", "0/1")))
            if m:
                data = {**data, "out_dir": f"runs/stage1/shard-{m.group(1)}-of-{m.group(2)}"}
        return data

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        m = _SHARD_RE.match(v)
        if not m or not (0 <= int(m.group(1)) < int(m.group(2))):
            raise ValueError("shard must be 'i/N' with 0 <= i < N, e.g. '0/4'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not DEVICE_RE.match(v):
            raise ValueError("device must be 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None) -> str | None:
        from cai_bootstrap.profiles import PROFILES

        if v is not None and v not in PROFILES:
            raise ValueError(f"unknown model profile; known: {', '.join(sorted(PROFILES))}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model must name a built-in model, a folder, a .gguf file or an org/name hub id")
        return v

    @model_validator(mode="after")
    def _pilot_size(self):
        if self.mode == "pilot" and self.shard != "0/1":
            raise ValueError("a pilot is not sharded: use mode 'scale' with --shard")
        return self

    @property
    def shard_index(self) -> int:
        return int(self.shard.split("/")[0])

    @property
    def n_shards(self) -> int:
        return int(self.shard.split("/")[1])

    def shard_target(self) -> int:
        """This shard's share of the target; shares differ by at most one."""
        base, extra = divmod(self.target, self.n_shards)
        return base + (1 if self.shard_index < extra else 0)


def load_config(path: str | Path | None = None, **overrides) -> GenerateConfig:
    """Read YAML (if given), apply non-None overrides (dotted keys allowed), validate."""
    data: dict = read_yaml_section(path, "generate", ConfigError) if path is not None else {}
    apply_overrides(data, overrides, ConfigError, "generation config")
    try:
        return GenerateConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid generation config{' ' + str(path) if path else ''}: {format_validation_errors(e)}") from None
