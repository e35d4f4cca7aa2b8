"""Decoding parameters for the two generation steps, validated where they are made.

Base models ramble at high temperature and repeat themselves at low temperature; the
ranges below are the ones the method was calibrated with (PR-02, DG-01). Keeping them
in frozen, validated dataclasses means a bad value fails before any model loads, and
``as_provenance()`` puts the exact values used into every record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

RESPONSE_TEMPERATURE_RANGE = (0.3, 0.5)
OVERSAMPLE_RANGE = (1.5, 2.0)


def _check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}], got {value}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ResponseDecoding:
    """PR-02: sampling a short answer to `Instruction: ...\\nResponse:`."""

    max_new_tokens: int = 80
    temperature: float = 0.4
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    do_sample: bool = True

    def __post_init__(self) -> None:
        _check_positive_int("max_new_tokens", self.max_new_tokens)
        lo, hi = RESPONSE_TEMPERATURE_RANGE
        _check_number("temperature", self.temperature, lo, hi)
        _check_number("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_number("repetition_penalty", self.repetition_penalty, 1.0, 2.0)
        if self.do_sample is not True:
            raise ValueError("do_sample must be True for response generation; temperature only acts when sampling")

    def as_provenance(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for ``LoadedModel.generate``."""
        return asdict(self)


@dataclass(frozen=True)
class InstructionDecoding:
    """DG-01: continuing the few-shot list, hotter than responses so the list stays varied."""

    max_new_tokens: int = 160
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    do_sample: bool = True
    oversample: float = 2.0

    def __post_init__(self) -> None:
        _check_positive_int("max_new_tokens", self.max_new_tokens)
        _check_number("temperature", self.temperature, 0.0, 2.0, lo_open=True)
        _check_number("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_number("repetition_penalty", self.repetition_penalty, 1.0, 2.0)
        lo, hi = OVERSAMPLE_RANGE
        _check_number("oversample", self.oversample, lo, hi)
        if self.do_sample is not True:
            raise ValueError("do_sample must be True for instruction generation; greedy decoding repeats one list")

    def n_candidates(self, target: int) -> int:
        """How many instructions to generate so that `target` can survive the filters."""
        _check_positive_int("target", target)
        return math.ceil(target * self.oversample)

    def as_provenance(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict:
        d = asdict(self)
        d.pop("oversample")
        return d
