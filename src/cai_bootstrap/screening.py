"""Content a training record may not carry, found before any model loads (CG-03, SFT-01, PV-06).

The loader refuses its own tokenizer's special tokens, but only once the model is loaded, and a
dataset made elsewhere can carry other families' chat markup as plain text (``<|im_start|>`` in a
Gemma run is just characters to Gemma's tokenizer, yet it teaches chat markup), invisible
characters that change what a reader sees (bidi overrides, zero-width joiners), control bytes,
a second prompt inside an answer, or a single field of megabytes. The data gates and the
expectation suites refuse all of these by the rules below, with the record and field named.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from cai_bootstrap.new_prompt import NEW_PROMPT_LINE_RE

# Chat and role markers of the model families this project has met, and the generic <|name|> form.
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|begin_of_text|>",
                "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>", "<end_of_turn>", "<think>", "</think>",
                "<tool_call>", "</tool_call>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>")
CHAT_MARKER_PATTERN = "|".join(re.escape(m) for m in CHAT_MARKERS) + r"|<\|[A-Za-z_]+\|>"
# C0 controls but tab, line feed and carriage return; DEL; C1 controls.
CONTROL_PATTERN = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
BIDI_PATTERN = "[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]"
ZERO_WIDTH_PATTERN = "[\u200b-\u200d\u2060\ufeff\u00ad]"
# One pattern for the expectation suites (kept equal to these rules by a test).
FORBIDDEN_PATTERN = f"{CHAT_MARKER_PATTERN}|{CONTROL_PATTERN}|{BIDI_PATTERN}|{ZERO_WIDTH_PATTERN}"
# A line opening a new prompt (new_prompt.py): cleaning cuts a kept answer before the first one.
NEW_PROMPT_PATTERN = "(?im)" + NEW_PROMPT_LINE_RE.pattern
# The PR-01 frame's own lines: an instruction holding one would move the prompt/response boundary.
FRAME_LINE_PATTERN = r"(?im)^[ \t]*(?:Instruction|Response)[ \t]*:"

MAX_INSTRUCTION_CHARS = 2_000
MAX_RESPONSE_CHARS = 4_000

_RULES = (
    ("chat_marker", re.compile(CHAT_MARKER_PATTERN), "a chat/role marker"),
    ("control_character", re.compile(CONTROL_PATTERN), "a control character"),
    ("bidi_control", re.compile(BIDI_PATTERN), "a bidirectional-text control"),
    ("zero_width", re.compile(ZERO_WIDTH_PATTERN), "a zero-width character"),
)
_FRAME_LINE_RE = re.compile(FRAME_LINE_PATTERN)


def text_problems(text: str, *, kind: str) -> list[str]:
    """Why ``text`` (an ``instruction`` or a ``response``) cannot be training data; [] when it can."""
    limit = MAX_INSTRUCTION_CHARS if kind == "instruction" else MAX_RESPONSE_CHARS
    if len(text) > limit:
        return [f"{len(text):,} characters, over the {limit:,} an {kind} may have"]  # not scanned further
    problems = []
    for _, rule, what in _RULES:
        m = rule.search(text)
        if m:
            problems.append(f"{what} {m.group(0)!r} at character {m.start()}")
    if kind == "instruction":
        m = _FRAME_LINE_RE.search(text)
        if m:
            problems.append(f"a prompt-frame line {m.group(0).strip()!r} at character {m.start()}")
    else:
        m = NEW_PROMPT_LINE_RE.search(text)
        if m:
            problems.append(f"a new prompt inside the answer ({m.group(0).strip()!r} at character {m.start()})")
    return problems


def record_problems(records: Iterable[Mapping], fields: Mapping[str, str]) -> list[str]:
    """Every problem of every record, as ``record N: FIELD holds ...`` (``fields``: name -> instruction|response)."""
    out = []
    for i, r in enumerate(records, start=1):
        for name, kind in fields.items():
            value = r.get(name)
            if isinstance(value, str):
                out += [f"record {i}: {name} holds {p}" for p in text_problems(value, kind=kind)]
    return out
