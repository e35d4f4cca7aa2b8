"""Turn a continued few-shot list into atomic instructions, with a reason for every dropped line.

The generation prompt ends with an open number (``5.``), so the model's text starts with
the rest of item 5 and usually goes on with ``6. ...``, ``7. ...``. Base models also
write headings ("Here are some more tasks:"), empty numbers, half sentences when the
token budget runs out, and prose after the list. Each non-empty line ends up either as
one instruction or as one reject with a stable reason (CL-06 applies here as well), so
nothing vanishes between generation and the critic.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from cai_bootstrap.prompts import evaluator_markers
from cai_bootstrap.screening import text_problems

# Stable drop reasons. Never rename one: QC counts and rejects files key on them.
REASON_EMPTY_LINE = "empty_line"
REASON_META = "meta_line"
REASON_NUMBER_ONLY = "number_only"
REASON_UNNUMBERED = "unnumbered_line"
REASON_TOO_SHORT = "too_short"
REASON_TOO_LONG = "too_long"
REASON_NO_VERB = "no_verb"
REASON_UNFINISHED = "unfinished"
REASON_TRUNCATED = "truncated_by_token_limit"
REASON_MARKER = "prompt_marker"
# The item holds a token base-model inputs may not contain (CG-03): emitted by the model
# or typed as text that encodes to one. It would abort the run at the critic's encode.
REASON_FORBIDDEN_TOKEN = "forbidden_token"
REASON_FORBIDDEN_TEXT = "forbidden_text"
REASONS = (
    REASON_EMPTY_LINE,
    REASON_META,
    REASON_NUMBER_ONLY,
    REASON_UNNUMBERED,
    REASON_TOO_SHORT,
    REASON_TOO_LONG,
    REASON_NO_VERB,
    REASON_UNFINISHED,
    REASON_TRUNCATED,
    REASON_MARKER,
    REASON_FORBIDDEN_TOKEN,
    REASON_FORBIDDEN_TEXT,
)

MIN_CHARS = 12
MIN_WORDS = 3
MAX_CHARS = 300

# "12. text", "12) text", "(12) text", "#12 text", "12 - text"; also bare "12." with nothing after.
_NUMBERED_RE = re.compile(r"^\s*(?:\(?(\d{1,3})[.)]|#(\d{1,3})[.):]?|(\d{1,3})\s+-)(?=\s|$)\s*(.*)$")
# Repeated numbering or bullets left at the start of the item text ("5. 5. Write", "- Write").
_LEADING_NOISE_RE = re.compile(r"^(?:(?:\(?\d{1,3}[.)]|[-*\u2022])\s+)+")
_META_RE = re.compile(
    r"^(?:here (?:are|is)\b|below (?:are|is)\b|the following\b|(?:some )?more (?:instructions|tasks|examples)\b"
    r"|(?:a )?list of (?:instructions|tasks|examples)\b|(?:instructions?|tasks?|examples?|answers?|questions?)\s*:?\s*$"
    r"|note\s*:|(?:sure|okay|ok)[,.!]|i hope\b|let me know\b)",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
_TERMINAL = tuple('.?!"\')]') + ("\u201d",)
_DANGLING_WORDS = frozenset(
    "a an the and or but to of with for in on at by from that which who whose as than into about like such".split()
)
# Words that make a line a task: imperative verbs and question words. A line with none of
# them and no question mark ("The capital of France is Paris.") is a statement or a
# fragment, not an instruction.
TASK_WORDS = frozenset(
    """
    add analyze answer arrange ask calculate change check choose classify combine compare complete compose compute
    condense convert correct count create define describe design determine draft edit estimate evaluate explain
    express extract fill find finish fix format generate give group guess identify imagine improve invent label
    list make match mention name note order outline paraphrase pick plan predict prepare provide put rank rate
    recommend reorder rephrase replace respond return reverse rewrite say select shorten simplify solve sort spell
    state suggest summarise summarize tell transform translate turn use verify write
    what which who whom whose when where why how
    """.split()
)


@dataclass(frozen=True)
class ParsedInstruction:
    text: str
    number: int | None
    line: int  # 1-based line of the continuation text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParseReject:
    text: str
    reason: str
    line: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParseResult:
    instructions: list[ParsedInstruction] = field(default_factory=list)
    rejects: list[ParseReject] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.instructions]

    def counts(self) -> dict:
        by_reason = Counter(r.reason for r in self.rejects)
        return {"parsed": len(self.instructions), "dropped": {reason: by_reason.get(reason, 0) for reason in REASONS}}


def fragment_reason(text: str) -> str | None:
    """Why a candidate instruction is not a usable instruction, or None if it is one."""
    words = _WORD_RE.findall(text)
    if len(text) < MIN_CHARS or len(words) < MIN_WORDS:
        return REASON_TOO_SHORT
    if len(text) > MAX_CHARS:
        return REASON_TOO_LONG
    if any(m in text for m in evaluator_markers()) or re.search(r"\b(?:Instruction|Response|Answer)\s*:", text):
        return REASON_MARKER
    if text_problems(text, kind="instruction"):
        return REASON_FORBIDDEN_TEXT  # markup as text or invisible characters: the data gate would refuse it
    last = text.rstrip()[-1]
    if last in ",;:-(/&" or words[-1].lower() in _DANGLING_WORDS and last not in _TERMINAL:
        return REASON_UNFINISHED
    if "?" not in text and not any(w.lower() in TASK_WORDS for w in words):
        return REASON_NO_VERB
    return None


def parse_instruction_list(
    text: str,
    *,
    continues_item: int | None = None,
    truncated: bool = False,
    forbidden_offsets: Sequence[int] = (),
    forbidden_tokens_in: Callable[[str], Sequence[str]] | None = None,
) -> ParseResult:
    """Split a list continuation into instructions.

    ``continues_item`` is the open number the prompt ended with: text before the first
    numbered line is that item. Without it, such text is an unnumbered line and dropped.
    ``truncated`` says the generation hit its token limit, so the last item is cut off.
    ``forbidden_offsets``: where in ``text`` the model emitted a forbidden token (erased
    by decoding); the item on that line is dropped. ``forbidden_tokens_in``: the loader's
    check of a text (``LoadedModel.forbidden_tokens_in``); an item that would encode to a
    forbidden token is dropped too. Both drop with ``forbidden_token``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if continues_item is not None and (isinstance(continues_item, bool) or not isinstance(continues_item, int) or continues_item < 1):
        raise ValueError(f"continues_item must be a positive integer or None, got {continues_item!r}")
    result = ParseResult()
    candidates: list[tuple[str, int | None, int]] = []
    seen_numbered = False
    flagged_lines = _lines_at(text, forbidden_offsets)
    for lineno, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            result.rejects.append(ParseReject(line, REASON_EMPTY_LINE, lineno))
            continue
        m = _NUMBERED_RE.match(line)
        if m:
            seen_numbered = True
            number = int(next(g for g in m.groups()[:3] if g is not None))
            body = m.group(4)
        elif not seen_numbered and not candidates and continues_item is not None:
            number, body = continues_item, line
        else:
            reason = REASON_META if _META_RE.match(stripped) else REASON_UNNUMBERED
            result.rejects.append(ParseReject(stripped, reason, lineno))
            continue
        body = _LEADING_NOISE_RE.sub("", body.strip()).strip()
        if not body or not _WORD_RE.search(body):
            result.rejects.append(ParseReject(stripped, REASON_NUMBER_ONLY, lineno))
            continue
        if _META_RE.match(body):
            result.rejects.append(ParseReject(body, REASON_META, lineno))
            continue
        candidates.append((body, number, lineno))
    last_index = len(candidates) - 1
    for i, (body, number, lineno) in enumerate(candidates):
        if lineno in flagged_lines or (forbidden_tokens_in is not None and forbidden_tokens_in(body)):
            reason: str | None = REASON_FORBIDDEN_TOKEN
        elif truncated and i == last_index and _ends_item(text, lineno):
            reason = REASON_TRUNCATED
        else:
            reason = fragment_reason(body)
        if reason:
            result.rejects.append(ParseReject(body, reason, lineno))
        else:
            result.instructions.append(ParsedInstruction(body, number, lineno))
    result.rejects.sort(key=lambda r: r.line)
    return result


def _lines_at(text: str, offsets: Sequence[int]) -> set[int]:
    """1-based line numbers holding the given character offsets (one at a line's end counts for that line)."""
    lines, start, out = text.split("\n"), 0, set()
    for lineno, line in enumerate(lines, start=1):
        end = start + len(line)
        out.update(lineno for off in offsets if start <= off <= end)
        start = end + 1
    return out


def _ends_item(text: str, lineno: int) -> bool:
    """True when the item on ``lineno`` is the last non-empty line, i.e. where a token limit cut."""
    lines = text.split("\n")
    return not any(l.strip() for l in lines[lineno:])


def reject_record(reject: ParseReject, **context: Any) -> dict:
    """One line of a rejects file for a dropped list line."""
    return {"stage": "parse_instructions", "reason": reject.reason, **context, "text": reject.text, "line": reject.line}


def parse_many(texts: Iterable[tuple[str, int | None, bool]]) -> list[ParseResult]:
    """Parse (continuation, continues_item, truncated) triples, one result each."""
    return [parse_instruction_list(t, continues_item=n, truncated=tr) for t, n, tr in texts]
