"""The constitution: validated principles that critic rubrics and Stage-6 revision are built from.

A rubric that cites a principle nobody wrote down, or two principles sharing an id, makes
the critic's decisions impossible to trace back to the contract. So the file is checked
completely on load (ST-02) and every consumer receives the same frozen object.

The packaged ``data/constitution.yaml`` is the single source of truth; the file at the
repository root is the user-facing copy and a test keeps the two byte-identical.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

CATEGORIES = ("helpfulness", "harmlessness", "honesty")
PRINCIPLE_KEYS = ("id", "category", "text")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PACKAGE_FILE = "constitution.yaml"


class ConstitutionError(ValueError):
    """The constitution is malformed; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class Principle:
    id: str
    category: str
    text: str

    def to_dict(self) -> dict:
        return {"id": self.id, "category": self.category, "text": self.text}


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    version: int = 1
    source: str = field(default="<memory>", compare=False)
    _by_id: dict[str, Principle] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.principles})

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.principles]

    def get(self, principle_id: str) -> Principle:
        try:
            return self._by_id[principle_id]
        except KeyError:
            raise ConstitutionError(
                f"{self.source}: no principle {principle_id!r}; known: {', '.join(self.ids)}"
            ) from None

    def select(self, principle_ids: Sequence[str]) -> list[Principle]:
        missing = [pid for pid in principle_ids if pid not in self._by_id]
        if missing:
            raise ConstitutionError(
                f"{self.source}: rubric cites unknown principle(s) {missing}; known: {', '.join(self.ids)}"
            )
        return [self._by_id[pid] for pid in principle_ids]

    def by_category(self, category: str) -> list[Principle]:
        if category not in CATEGORIES:
            raise ConstitutionError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
        return [p for p in self.principles if p.category == category]

    def to_dict(self) -> dict:
        return {"version": self.version, "principles": [p.to_dict() for p in self.principles]}


def parse_constitution(data: Any, *, source: str = "<memory>") -> Constitution:
    """Validate a parsed YAML document, reporting every problem at once."""
    if not isinstance(data, Mapping):
        raise ConstitutionError(f"{source}: expected a mapping with a 'principles' list, got {type(data).__name__}")
    unknown_top = sorted(set(data) - {"version", "principles"})
    problems: list[str] = []
    if unknown_top:
        problems.append(f"unknown top-level key(s) {unknown_top}; allowed: version, principles")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(f"'version' must be a positive integer, got {version!r}")
    raw = data.get("principles")
    if not isinstance(raw, list) or not raw:
        raise ConstitutionError(f"{source}: 'principles' must be a non-empty list")
    principles: list[Principle] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"principles[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected a mapping with keys {list(PRINCIPLE_KEYS)}")
            continue
        extra = sorted(set(entry) - set(PRINCIPLE_KEYS))
        missing = [k for k in PRINCIPLE_KEYS if k not in entry]
        if extra:
            problems.append(f"{where}: unknown key(s) {extra}; allowed: {list(PRINCIPLE_KEYS)}")
        if missing:
            problems.append(f"{where}: missing key(s) {missing}")
            continue
        pid, cat, text = entry["id"], entry["category"], entry["text"]
        if not isinstance(pid, str) or not _ID_RE.match(pid):
            problems.append(f"{where}: id {pid!r} must be snake_case (a-z, 0-9, _), starting with a letter")
        elif pid in seen:
            problems.append(f"{where}: duplicate id {pid!r} (first at principles[{seen[pid]}])")
        else:
            seen[pid] = i
        if cat not in CATEGORIES:
            problems.append(f"{where} ({pid}): unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where} ({pid}): text must be a non-empty string")
        elif "\n" in text.strip():
            problems.append(f"{where} ({pid}): text must be one line, since rubrics list one principle per line")
        if not problems:
            principles.append(Principle(pid, cat, text.strip()))
    if problems:
        raise ConstitutionError(f"{source}: invalid constitution:\n  - " + "\n  - ".join(problems))
    return Constitution(tuple(principles), version=version, source=source)


def packaged_constitution_text() -> str:
    return resources.files("cai_bootstrap").joinpath("data", PACKAGE_FILE).read_text(encoding="utf-8")


def load_constitution(path: str | os.PathLike | None = None) -> Constitution:
    """Load and validate a constitution; without a path, the packaged one (cached)."""
    if path is None:
        return _packaged()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: constitution file not found")
    return _parse_text(p.read_text(encoding="utf-8"), str(p))


@lru_cache(maxsize=1)
def _packaged() -> Constitution:
    return _parse_text(packaged_constitution_text(), f"cai_bootstrap/data/{PACKAGE_FILE}")


def _parse_text(text: str, source: str) -> Constitution:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConstitutionError(f"{source}: not valid YAML: {e}") from e
    return parse_constitution(data, source=source)


# -- Stage 6: critique -> revision with the principles ---------------------------------


@dataclass(frozen=True)
class RevisionStep:
    principle_id: str
    critique: str
    revision: str
    accepted: bool
    reason: str | None

    def to_dict(self) -> dict:
        return {
            "principle_id": self.principle_id,
            "critique": self.critique,
            "revision": self.revision,
            "accepted": self.accepted,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RevisionResult:
    instruction: str
    initial_response: str
    final_response: str
    steps: tuple[RevisionStep, ...]

    def to_dict(self) -> dict:
        return {
            "instruction": self.instruction,
            "initial_response": self.initial_response,
            "final_response": self.final_response,
            "steps": [s.to_dict() for s in self.steps],
        }


def draw_principles(constitution: Constitution, n: int, seed: int) -> list[Principle]:
    """Principles for one revision chain, drawn without replacement and reproducible by seed."""
    import random

    if not 1 <= n <= len(constitution.principles):
        raise ValueError(f"n must be between 1 and {len(constitution.principles)}, got {n}")
    return random.Random(seed).sample(list(constitution.principles), n)


def critique_and_revise(
    instruction: str,
    response: str,
    generate: Callable[[list[str]], list[str]],
    principles: Sequence[Principle],
    *,
    clean: Callable[[str], Any] | None = None,
) -> RevisionResult:
    """Run the constitutional chain: for each principle, critique the current response, then revise it.

    ``generate`` maps prompts to raw completions (in practice ``lm.generate`` with the
    response decoding). A revision is kept only if cleaning keeps it, so one bad
    completion cannot erase a good answer; the rejected text and its reason stay in the
    trace.
    """
    from cai_bootstrap import prompts

    if clean is None:
        from cai_bootstrap.cleaning import clean_response as clean
    if not principles:
        raise ValueError("critique_and_revise needs at least one principle")
    current = response
    steps: list[RevisionStep] = []
    for p in principles:
        critique_prompt = prompts.render_critique_prompt(instruction, current, p)
        (critique_raw,) = _one(generate, critique_prompt)
        critique = clean(critique_raw)
        revision_prompt = prompts.render_revision_prompt(instruction, current, p, critique.text)
        (revision_raw,) = _one(generate, revision_prompt)
        revised = clean(revision_raw)
        if revised.kept:
            current = revised.text
        steps.append(RevisionStep(p.id, critique.text, revised.text, bool(revised.kept), revised.reason))
    return RevisionResult(instruction, response, current, tuple(steps))


def _one(generate: Callable[[list[str]], list[str]], prompt: str) -> list[str]:
    out = list(generate([prompt]))
    if len(out) != 1 or not isinstance(out[0], str):
        raise TypeError(f"generate must return one string per prompt, got {out!r}")
    return out
