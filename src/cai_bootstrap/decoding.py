"""Decoding parameters for the two generation steps, validated where they are made.

Base models ramble at high temperature and repeat themselves at low temperature; the
ranges below are the ones the method was calibrated with (PR-02, DG-01). These models are
the generation config's ``instructions`` and ``responses`` sections (``datagen.config``
adds only batch sizes), so the one validation a run file goes through is this one, and a
bad value fails before any model loads. The pipeline passes ``generate_kwargs()`` to the
model and records ``as_provenance()`` in every record, so what is recorded is what ran.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

RESPONSE_TEMPERATURE_RANGE = (0.3, 0.5)
OVERSAMPLE_RANGE = (1.5, 2.0)
MAX_NEW_TOKENS_RANGE = (8, 1024)
# A response ends at its first blank line (PR-02 refinement): cleaning keeps only the first
# paragraph anyway, and a finished paragraph must not count as a token-limit hit (QC-02).
BLANK_LINE = "\n\n"
# transformers samples with top_k = 50 unless told otherwise, so every sampled run so far used it
# without recording it. It stays the default (runs remain comparable) and is now passed and
# recorded explicitly; 0 turns it off (pure nucleus sampling).
DEFAULT_TOP_K = 50


class _Decoding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    top_p: float = Field(0.9, gt=0, le=1.0)
    top_k: int = Field(DEFAULT_TOP_K, ge=0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)
    max_new_tokens: int = Field(ge=MAX_NEW_TOKENS_RANGE[0], le=MAX_NEW_TOKENS_RANGE[1])
    do_sample: bool = True

    @field_validator("do_sample")
    @classmethod
    def _sampling(cls, v: bool) -> bool:
        if v is not True:
            raise ValueError("do_sample must be True: temperature only acts when sampling, and greedy decoding "
                             "would silently not be the calibrated setting")
        return v

    def as_provenance(self) -> dict:
        return self.model_dump()


class ResponseDecoding(_Decoding):
    """PR-02: sampling a short answer to `Instruction: ...\\nResponse:`."""

    temperature: float = Field(0.4, ge=RESPONSE_TEMPERATURE_RANGE[0], le=RESPONSE_TEMPERATURE_RANGE[1])
    max_new_tokens: int = Field(80, ge=MAX_NEW_TOKENS_RANGE[0], le=MAX_NEW_TOKENS_RANGE[1])
    stop_at_blank_line: bool = True

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``LoadedModel.generate``."""
        return dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
                    top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                    stop_strings=(BLANK_LINE,) if self.stop_at_blank_line else ())


class InstructionDecoding(_Decoding):
    """DG-01: continuing the few-shot list, hotter than responses so the list stays varied."""

    temperature: float = Field(0.7, gt=0, le=2.0)
    max_new_tokens: int = Field(160, ge=MAX_NEW_TOKENS_RANGE[0], le=MAX_NEW_TOKENS_RANGE[1])
    oversample: float = Field(2.0, ge=OVERSAMPLE_RANGE[0], le=OVERSAMPLE_RANGE[1])

    def n_candidates(self, target: int) -> int:
        """How many instructions to generate so that `target` can survive the filters."""
        if isinstance(target, bool) or not isinstance(target, int) or target < 1:
            raise ValueError(f"target must be a positive integer, got {target!r}")
        return math.ceil(target * self.oversample)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``LoadedModel.generate``."""
        return dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
                    top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty)
