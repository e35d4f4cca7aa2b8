"""Contamination sentinels: instructions a true base model must NOT follow in raw mode.

If a "base" model answers "List three prime numbers" with three primes, either the
weights are instruction-tuned or something (a chat template) is wrapping the prompt.
The completion sentinel is the opposite check: a healthy base model completes
"Water freezes at" with the right temperature; one that cannot is loaded wrongly
(for Gemma, a missing BOS produces exactly that). Checkers are strict on purpose:
a base model's rambling continuation must not count as following the instruction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from cai_bootstrap.profiles import EXEMPT, REQUIRED, ModelProfile


def _first_paragraph(text: str) -> str:
    return text.strip().split("\n\n", 1)[0]


def check_pig_latin(response: str) -> bool:
    t = response.lower()
    return "ellohay" in t and "orldway" in t


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def check_three_primes(response: str) -> bool:
    nums = [int(x) for x in re.findall(r"\b\d+\b", _first_paragraph(response))]
    return len(nums) == 3 and len(set(nums)) == 3 and all(_is_prime(n) for n in nums)


def check_json_ab(response: str) -> bool:
    m = re.search(r"\{[^{}]*\}", response)
    if not m:
        return False
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return False
    return (
        isinstance(obj, dict)
        and set(obj) == {"a", "b"}
        and all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values())
    )


def check_seasons(response: str) -> bool:
    t = _first_paragraph(response).lower()
    return all(s in t for s in ("spring", "summer", "winter")) and ("autumn" in t or "fall" in t)


_FREEZE_RE = re.compile(
    r"(\b0\s*(°|º|degrees?)?\s*(c\b|celsius|centigrade))|(\bzero\s+degrees?)|(\b32\s*(°|º|degrees?)?\s*(f\b|fahrenheit))",
    re.IGNORECASE,
)


def check_freezing_point(response: str) -> bool:
    return bool(_FREEZE_RE.search(response))


@dataclass(frozen=True)
class Sentinel:
    name: str
    prompt: str
    kind: str  # "instruction": must fail on a base model; "completion": should pass
    check: Callable[[str], bool]


SENTINELS: tuple[Sentinel, ...] = (
    Sentinel("pig_latin", "Translate to Pig Latin: hello world", "instruction", check_pig_latin),
    Sentinel("three_primes", "List three prime numbers", "instruction", check_three_primes),
    Sentinel("json_ab", "Write a JSON with keys a,b and integers", "instruction", check_json_ab),
    Sentinel("seasons", "Describe the seasons", "instruction", check_seasons),
    Sentinel("freezing_point", "Water freezes at", "completion", check_freezing_point),
)


class SentinelFailure(RuntimeError):
    """The sentinel suite found contamination or a broken load."""


def evaluate_sentinels(responses: dict[str, str], profile: ModelProfile) -> dict:
    """Judge sentinel responses against the profile's expectations; pure, so it is table-testable."""
    results = []
    contaminated, broken, warnings = [], [], []
    for s in SENTINELS:
        resp = responses[s.name]
        passed = bool(s.check(resp))
        if s.kind == "instruction":
            expected, ok = False, not passed
            if passed:
                contaminated.append(s.name)
        else:
            mode = profile.completion_sentinel
            expected = None if mode == EXEMPT else True
            ok = True if mode == EXEMPT else passed
            if not passed and mode == REQUIRED:
                broken.append(s.name)
            elif not passed and mode != EXEMPT:
                warnings.append(f"completion sentinel {s.name} failed (profile {profile.name}: {mode})")
        results.append(
            {"name": s.name, "kind": s.kind, "prompt": s.prompt, "response": resp, "passed_check": passed,
             "expected_pass": expected, "as_expected": ok}
        )
    return {
        "mode": "raw",
        "profile": profile.name,
        "completion_sentinel": profile.completion_sentinel,
        "results": results,
        "contaminated": contaminated,
        "broken": broken,
        "warnings": warnings,
        "ok": not contaminated and not broken,
    }


def raise_on_failure(summary: dict, *, quantization: str | None = None) -> None:
    if summary["contaminated"]:
        raise SentinelFailure(
            "contamination: a base model followed instruction sentinel(s) "
            f"{summary['contaminated']} in raw mode. The weights look instruction-tuned or a chat "
            "template is wrapping prompts; use a true base model."
        )
    if summary["broken"]:
        raise SentinelFailure(
            f"broken load: completion sentinel(s) {summary['broken']} failed for profile "
            f"{summary['profile']!r} (a missing BOS or wrong tokenizer produces this). "
            "Check the model profile (--profile) and the tokenizer files."
            + (f" The weights were loaded in {quantization}: 4 bits can break a small model "
               "(Gemma-3-270m in nf4 fails 'freezing_point'); load it with quantization: none."
               if quantization not in (None, "none") else "")
        )
