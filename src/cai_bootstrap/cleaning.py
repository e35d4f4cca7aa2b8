"""Response cleaning and runaway detection (CL-01..CL-06).

A base model does not know where its answer ends: after answering it happily writes the
next "Instruction:", a dialogue, or a second unrelated paragraph. Cleaning cuts the
answer at the first sign of that and drops what cannot be saved, always with a stable
reason string so the loss is counted and inspectable (CL-06).

Runaway detection is deliberately narrow. The first attempt at this method called any
answer over 200 characters or with more than 3 periods a runaway, which flagged about
half of the good answers; a runaway here is only leftover new-prompt text or an answer
over 500 characters (CL-03).

Every function is pure: the cleaned text is always a substring of the input, cleaning
its own output changes nothing, and a kept text never contains the delimiter, a
new-prompt pattern or critic-format text (checked by property tests).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from cai_bootstrap.new_prompt import NEW_PROMPT_LINE_RE, NEW_QUESTION, PROMPT_LINE, first_new_prompt_line
from cai_bootstrap.prompts import evaluator_markers
from cai_bootstrap.screening import text_problems

DELIMITER = "###END###"
# A truncated delimiter (the token limit hit in the middle of it) is still a leak.
PARTIAL_DELIMITER = "###END"
MAX_CHARS = 500

# Stable drop reasons (CL-06). Never rename one: QC counts and rejects files key on them.
REASON_EMPTY = "empty"
REASON_DELIMITER_LEAK = "delimiter_leak"
REASON_MARKER_LEAK = "evaluator_marker_leak"
REASON_RUNAWAY = "runaway"
# The model emitted a token base-model text may not hold (CG-03): decoding erased it, the
# loader flagged it. Such a response came from a model writing chat markup; it is dropped.
REASON_SPECIAL_TOKEN = "special_token_emitted"
# A kept answer the training data gate would refuse (screening.py): markup as text, invisible characters.
REASON_FORBIDDEN_TEXT = "forbidden_text"
REASONS = (REASON_EMPTY, REASON_DELIMITER_LEAK, REASON_MARKER_LEAK, REASON_RUNAWAY, REASON_SPECIAL_TOKEN,
           REASON_FORBIDDEN_TEXT)

# CL-02 cut rules: a blank line, or a new-prompt line of the kinds below (the rule shared
# with the verifiers, in new_prompt.py); the earliest wins. Role lines (User:, System: ...)
# are not cut: the answer ended there too, but a dialogue means a runaway (CL-03).
CUT_BLANK_LINE = "blank_line"
CUT_PROMPT_LINE = PROMPT_LINE
CUT_NEW_QUESTION = NEW_QUESTION
_BLANK_LINE_RE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class CleaningConfig:
    """Thresholds of the cleaning step; recorded with the results they produced."""

    max_chars: int = MAX_CHARS
    # A generation counts as hitting the token limit when it used at least
    # max_new_tokens - token_limit_margin tokens (CL-04).
    token_limit_margin: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {self.max_chars!r}")
        if (
            isinstance(self.token_limit_margin, bool)
            or not isinstance(self.token_limit_margin, int)
            or self.token_limit_margin < 0
        ):
            raise ValueError(f"token_limit_margin must be a non-negative integer, got {self.token_limit_margin!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "delimiter": DELIMITER, "new_prompt_line_re": NEW_PROMPT_LINE_RE.pattern}


@dataclass(frozen=True)
class CleanResult:
    text: str
    kept: bool
    reason: str | None  # None iff kept; otherwise one of REASONS
    delimiter_found: bool
    heuristic_cutoff: bool  # a CL-02 rule removed non-blank text
    cutoff_rule: str | None
    hit_token_limit: bool
    n_tokens: int | None
    token_limit_margin: int

    def to_dict(self) -> dict:
        return asdict(self)


def trim(text: str) -> tuple[str, str | None, bool]:
    """CL-02: cut at the earliest blank line or new-prompt line; return (text, rule, removed_content)."""
    text = text.lstrip()
    best: tuple[int, str] | None = None
    blank = _BLANK_LINE_RE.search(text)
    if blank:
        best = (blank.start(), CUT_BLANK_LINE)
    line = first_new_prompt_line(text, (PROMPT_LINE, NEW_QUESTION))
    if line and (best is None or line.start < best[0]):
        best = (line.start, line.kind)
    if best is None:
        return text.strip(), None, False
    pos, rule = best
    return text[:pos].strip(), rule, bool(text[pos:].strip())


def is_runaway(text: str, *, max_chars: int = MAX_CHARS) -> bool:
    """CL-03: a new-prompt line left in the text (a role line: a dialogue) or too long.
    Length over 200 or many periods is fine."""
    return len(text) > max_chars or first_new_prompt_line(text) is not None


def hit_token_limit(n_tokens: int, max_new_tokens: int, margin: int = 0) -> bool:
    """CL-04: the generation used (nearly) all of its token budget, so it may be cut mid-answer."""
    for name, v in (("n_tokens", n_tokens), ("max_new_tokens", max_new_tokens), ("margin", margin)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    return n_tokens >= max_new_tokens - margin


def leaked_markers(text: str) -> list[str]:
    """Critic-format text (CL-05) found in a response."""
    return [m for m in evaluator_markers() if m in text]


def clean_response(
    raw: str,
    *,
    n_tokens: int | None = None,
    max_new_tokens: int | None = None,
    config: CleaningConfig = CleaningConfig(),
    special_tokens: Sequence[Any] = (),
) -> CleanResult:
    """Clean one raw completion and decide whether it is kept.

    ``special_tokens``: forbidden tokens found in the generation (``Generation.special_tokens``,
    plus any its text encodes to); any at all drops the response as ``special_token_emitted``.

    The delimiter cut (CL-01) is followed by the CL-02 cuts as well, stricter than the
    catalogue: the pair critic judges only the first paragraph, so text kept past it would
    be trained on without ever being judged.
    """
    if not isinstance(raw, str):
        raise TypeError(f"raw response must be a string, got {type(raw).__name__}")
    if (n_tokens is None) != (max_new_tokens is None):
        raise ValueError("give both n_tokens and max_new_tokens to check the token limit, or neither")
    delimiter_found = DELIMITER in raw
    text = raw.split(DELIMITER, 1)[0] if delimiter_found else raw
    text, rule, removed = trim(text)
    limit = hit_token_limit(n_tokens, max_new_tokens, config.token_limit_margin) if n_tokens is not None else False

    if special_tokens:
        reason: str | None = REASON_SPECIAL_TOKEN
    elif not text:
        reason = REASON_EMPTY
    elif PARTIAL_DELIMITER in text:
        reason = REASON_DELIMITER_LEAK
    elif leaked_markers(text):
        reason = REASON_MARKER_LEAK
    elif is_runaway(text, max_chars=config.max_chars):
        reason = REASON_RUNAWAY
    elif text_problems(text, kind="response"):
        reason = REASON_FORBIDDEN_TEXT
    else:
        reason = None
    return CleanResult(
        text=text,
        kept=reason is None,
        reason=reason,
        delimiter_found=delimiter_found,
        heuristic_cutoff=removed,
        cutoff_rule=rule if removed else None,
        hit_token_limit=limit,
        n_tokens=n_tokens,
        token_limit_margin=config.token_limit_margin,
    )


def clean_generations(generations: Sequence[Any], *, max_new_tokens: int, config: CleaningConfig = CleaningConfig()) -> list[CleanResult]:
    """Clean loader ``Generation`` objects (anything with ``.text`` and ``.n_tokens``)."""
    return [clean_response(g.text, n_tokens=g.n_tokens, max_new_tokens=max_new_tokens, config=config,
                           special_tokens=getattr(g, "special_tokens", ())) for g in generations]


def summarize(results: Iterable[CleanResult]) -> dict:
    """Counts for QC (QC-07 names) and a count per drop reason; every result is in exactly one bucket."""
    results = list(results)
    dropped = Counter(r.reason for r in results if not r.kept)
    unknown = set(dropped) - set(REASONS)
    if unknown:
        raise ValueError(f"results carry unknown drop reasons {sorted(unknown)}")
    return {
        "generated": len(results),
        "kept": sum(r.kept for r in results),
        "delimiter_found": sum(r.delimiter_found for r in results),
        "delimiter_missing": sum(not r.delimiter_found for r in results),
        "heuristic_cutoff": sum(r.heuristic_cutoff for r in results),
        "hit_token_limit": sum(r.hit_token_limit for r in results),
        "runaway": dropped.get(REASON_RUNAWAY, 0),
        "dropped": {reason: dropped.get(reason, 0) for reason in REASONS},
    }


def reject_record(result: CleanResult, raw: str, **context: Any) -> dict:
    """One line of a rejects file: why, what was produced, and whatever identifies the item."""
    if result.kept:
        raise ValueError("reject_record is for dropped results; this one was kept")
    return {"stage": "clean_response", "reason": result.reason, **context, "raw": raw, "cleaned": result.text, "flags": {
        "delimiter_found": result.delimiter_found,
        "heuristic_cutoff": result.heuristic_cutoff,
        "hit_token_limit": result.hit_token_limit,
    }}
