"""Where a base model's answer ends: the first line that opens a new prompt (CL-02, CL-03, EV-04).

Cleaning (training data) and the evaluation verifiers must agree on this, or a response
cut in one place is judged in another; they drifted apart once (cleaning missed
``System:``, ``## Instruction:`` and lowercase ``instruction:``; the verifiers missed
``### Response`` and ``# Instruction``). So the rule lives here alone.

A new-prompt line starts (after spaces and optional markdown ``#`` marks), in any case, with:

- a prompt word: ``Instruction``/``Instructions`` (colon optional), ``Response:``, ``Q:``, ``A:``,
  or, after ``#`` marks, ``Instruction``, ``Response`` or ``Answer`` without a colon (kind ``prompt_line``);
- a new question: ``Question N:``/``Question.``, ``QN:``/``QN.``, ``Problem N:``, ``Exercise N:``,
  ``Task N:``, ``Prompt:``, ``Query:``, ``Input:``, "next/another/new question", a
  ``# Question``-style header, or any ``###`` heading (kind ``new_question``);
- a role word with a colon: ``User:``, ``Assistant:``, ``Human:``, ``System:`` (kind ``role_line``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_LINE = "prompt_line"
NEW_QUESTION = "new_question"
ROLE_LINE = "role_line"
KINDS = (PROMPT_LINE, NEW_QUESTION, ROLE_LINE)

NEW_PROMPT_LINE_RE = re.compile(
    r"^[ \t]*(?:"
    r"(?:\#{1,6}[ \t]*)?(?P<role_line>(?:User|Assistant|Human|System)[ \t]*:)"
    r"|\#{1,6}[ \t]*(?P<h_prompt>(?:Instructions?|Response|Answer)\b)"
    r"|\#{1,6}[ \t]*(?P<h_question>(?:Question|Input|Prompt|Task|Query|Problem|Exercise)\b)"
    r"|(?P<prompt_line>Instructions?\b|Response[ \t]*:|Q[ \t]*:|A[ \t]*:)"
    r"|(?P<new_question>Question[ \t]*\d*[ \t]*[:.]|Q\d+[:.]|Problem[ \t]*\d*:|Exercise[ \t]*\d*:|Task[ \t]*\d*:"
    r"|Prompt[ \t]*:|Query[ \t]*:|Input[ \t]*:|Next[ \t]+question|Another[ \t]+question|New[ \t]+question|\#\#\#[ \t])"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
_KIND_OF_GROUP = {"role_line": ROLE_LINE, "h_prompt": PROMPT_LINE, "prompt_line": PROMPT_LINE,
                  "h_question": NEW_QUESTION, "new_question": NEW_QUESTION}


@dataclass(frozen=True)
class NewPromptLine:
    start: int  # where the line (with its leading spaces) starts in the text
    kind: str  # one of KINDS
    text: str  # the matched opening, e.g. "## Instruction"


def find_new_prompt_lines(text: str) -> list[NewPromptLine]:
    """Every new-prompt line of ``text``, in order."""
    out = []
    for m in NEW_PROMPT_LINE_RE.finditer(text):
        group = next(g for g, v in m.groupdict().items() if v is not None)
        out.append(NewPromptLine(m.start(), _KIND_OF_GROUP[group], m.group(0).strip()))
    return out


def first_new_prompt_line(text: str, kinds: tuple[str, ...] = KINDS) -> NewPromptLine | None:
    """The first new-prompt line of one of ``kinds``, or None: where the answer ends."""
    return next((line for line in find_new_prompt_lines(text) if line.kind in kinds), None)


def answer_end(text: str) -> int:
    """Index in ``text`` where the answer ends: the first new-prompt line, or the end."""
    line = first_new_prompt_line(text)
    return line.start if line else len(text)
