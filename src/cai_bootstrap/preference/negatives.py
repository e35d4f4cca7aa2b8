"""Hard negatives made on purpose from a chosen answer (PO-02), one pure rule per type.

Sampled negatives teach what the model already confuses; hard negatives teach the
failures Stage 2 is meant to remove, each isolated: the same correct content refused,
falsified, replaced, reformatted, padded or cut short. Every rule is deterministic in
``(chosen, seed)`` and returns None where it does not apply (a wrong fact needs a number
to change), so the runner records a reason instead of inventing a bad pair.

Registry: :data:`NEGATIVE_RULES` maps each type of
:data:`~cai_bootstrap.preference.schema.HARD_NEGATIVE_TYPES` to its rule; an unknown name
fails with the known ones.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "I am not able to answer that.",
    "Sorry, I cannot assist with this.",
)
PADDING = (
    "It is worth noting that this is a question many people ask.",
    "There are many ways to look at this, and each has its merits.",
    "In summary, as mentioned above, the answer is as stated.",
    "Of course, context matters, and details may vary from case to case.",
)
_NUMBER_RE = re.compile(r"\b\d+\b")
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_WORD_RE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
MIN_WORDS_TO_CUT = 6

# (chosen, seed, pool of other chosen answers) -> rejected text or None when the rule does not apply
Rule = Callable[[str, int, Sequence[str]], "str | None"]


def unwarranted_refusal(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    return random.Random(seed).choice(REFUSALS)


def wrong_fact(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    """Change the first number (digits or a number word) to a nearby wrong one."""
    m = _NUMBER_RE.search(chosen)
    if m:
        n = int(m.group())
        wrong = n + random.Random(seed).choice((1, 2, 3)) if n < 10**9 else n - 1
        return chosen[: m.start()] + str(wrong) + chosen[m.end():]
    m = _WORD_RE.search(chosen)
    if m:
        i = _NUMBER_WORDS.index(m.group().lower())
        wrong = _NUMBER_WORDS[(i + 1 + random.Random(seed).randrange(2)) % len(_NUMBER_WORDS)]
        wrong = wrong.capitalize() if m.group()[0].isupper() else wrong
        return chosen[: m.start()] + wrong + chosen[m.end():]
    return None


def off_topic(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    """A fluent answer to some other instruction."""
    others = sorted({p.strip() for p in pool if p.strip() and p.strip() != chosen.strip()})
    return random.Random(seed).choice(others) if others else None


def format_violation(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    """Prose becomes a shouted bullet list; a list becomes one run-on line."""
    lines = [ln.strip() for ln in chosen.splitlines() if ln.strip()]
    if len(lines) > 1:
        return " ".join(re.sub(r"^([-*\u2022]|\d+[.)])\s*", "", ln) for ln in lines)
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|,\s+", chosen.strip()) if p.strip()]
    out = "\n".join(f"- {p.upper()}" for p in parts)
    return out if out.strip() != chosen.strip() else None


def over_verbose(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    """The same answer buried in filler: at least three times as long."""
    rng = random.Random(seed)
    pads = list(PADDING)
    rng.shuffle(pads)
    out = " ".join([pads[0], chosen.strip(), *pads[1:]])
    while len(out) < 3 * len(chosen.strip()):
        out += " " + rng.choice(PADDING)
    return out


def under_explained(chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    """The first third of the answer's words, ended as if complete."""
    words = chosen.split()
    if len(words) < MIN_WORDS_TO_CUT:
        return None
    return " ".join(words[: max(2, len(words) // 3)]).rstrip(",;:") + "."


NEGATIVE_RULES: dict[str, Rule] = {
    "unwarranted_refusal": unwarranted_refusal,
    "wrong_fact": wrong_fact,
    "off_topic": off_topic,
    "format_violation": format_violation,
    "over_verbose": over_verbose,
    "under_explained": under_explained,
}


def make_negative(kind: str, chosen: str, seed: int, pool: Sequence[str] = ()) -> str | None:
    if kind not in NEGATIVE_RULES:
        raise ValueError(f"unknown hard-negative type {kind!r}; known: {', '.join(NEGATIVE_RULES)}")
    out = NEGATIVE_RULES[kind](chosen, seed, pool)
    return out if out and out.strip() and out.strip() != chosen.strip() else None
