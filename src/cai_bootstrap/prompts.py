"""The canonical prompt builders: every prompt the base model sees is rendered here.

Prompt text lives only in ``data/prompts.yaml``; this module loads it once, checks its
shape and placeholders, and renders it with pure functions (PR-06). Copies of prompt
strings scattered across scripts drifted apart in the first attempt at this method,
so the rendered strings are pinned by golden tests and a static test forbids prompt
text anywhere else in the package.

Rendering never uses a chat template and never adds special tokens: the strings here
are plain completion-mode text for a base model.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

from cai_bootstrap.constitution import Constitution, Principle, load_constitution
from cai_bootstrap.dedup import normalize

PROMPTS_FILE = "prompts.yaml"
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
# Blank line = a line holding only whitespace; the end of the first paragraph.
_BLANK_LINE_RE = re.compile(r"\n[ \t\r\f\v]*\n")


class PromptDataError(ValueError):
    """prompts.yaml is malformed; the message names the key and the fix."""


# -- loading ---------------------------------------------------------------------------


def prompts_yaml_text() -> str:
    return resources.files("cai_bootstrap").joinpath("data", PROMPTS_FILE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def prompt_data() -> Mapping[str, Any]:
    """The validated prompt data; loaded once per process."""
    import yaml

    data = yaml.safe_load(prompts_yaml_text())
    _validate(data)
    return data


def _need(data: Mapping, dotted: str, typ: type | tuple[type, ...]) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise PromptDataError(f"{PROMPTS_FILE}: missing key {dotted!r}")
        cur = cur[part]
    if not isinstance(cur, typ):
        raise PromptDataError(f"{PROMPTS_FILE}: {dotted!r} must be {typ}, got {type(cur).__name__}")
    return cur


def _check_placeholders(dotted: str, template: str, allowed: set[str]) -> None:
    found = set(_PLACEHOLDER_RE.findall(template))
    if found != allowed:
        raise PromptDataError(
            f"{PROMPTS_FILE}: {dotted!r} must use exactly the placeholders {sorted(allowed)}, found {sorted(found)}"
        )
    leftover = _PLACEHOLDER_RE.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise PromptDataError(f"{PROMPTS_FILE}: {dotted!r} has a stray brace; templates hold only {{name}} placeholders")


def _validate(data: Any) -> None:
    if not isinstance(data, Mapping):
        raise PromptDataError(f"{PROMPTS_FILE}: expected a mapping at the top level")
    _check_placeholders("response.template", _need(data, "response.template", str), {"instruction"})
    _need(data, "instruction_generation.header", str)
    lo = _need(data, "instruction_generation.min_examples", int)
    hi = _need(data, "instruction_generation.max_examples", int)
    pool = _need(data, "instruction_generation.pool", list)
    if not 1 <= lo <= hi:
        raise PromptDataError(f"{PROMPTS_FILE}: need 1 <= min_examples <= max_examples, got {lo}, {hi}")
    types = set()
    for i, item in enumerate(pool):
        if not isinstance(item, Mapping) or set(item) != {"type", "text"} or not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise PromptDataError(f"{PROMPTS_FILE}: instruction_generation.pool[{i}] must be {{type: str, text: str}}")
        if "\n" in item["text"] or "{" in item["text"] or "}" in item["text"]:
            raise PromptDataError(f"{PROMPTS_FILE}: instruction_generation.pool[{i}] must be one line without braces")
        types.add(item["type"])
    if len(types) < hi:
        raise PromptDataError(f"{PROMPTS_FILE}: the pool needs at least {hi} instruction types to draw distinct ones, has {len(types)}")
    _check_placeholders("critic.ending", _need(data, "critic.ending", str), set())
    markers = _need(data, "critic.evaluator_markers", list)
    critic_text = ""
    for name, fields in (("instruction_critic", {"instruction", "ending"}), ("pair_critic", {"instruction", "response", "ending"})):
        _need(data, f"{name}.principles", list)
        _check_placeholders(f"{name}.rubric", _need(data, f"{name}.rubric", str), {"principles"})
        body = _need(data, f"{name}.body", str)
        _check_placeholders(f"{name}.body", body, fields)
        critic_text += data[name]["rubric"] + body.replace("{ending}", data["critic"]["ending"])
    # A marker that no critic prompt contains would guard against nothing.
    stale = [m for m in markers if not isinstance(m, str) or not m or m not in critic_text]
    if stale:
        raise PromptDataError(f"{PROMPTS_FILE}: critic.evaluator_markers {stale} occur in no critic prompt")
    _validate_demonstrations(_need(data, "demonstrations", list))
    _check_placeholders("critique.template", _need(data, "critique.template", str), {"exchange", "principle"})
    _check_placeholders(
        "revision.template", _need(data, "revision.template", str), {"exchange", "principle", "critique"}
    )


def _validate_demonstrations(pool: list) -> None:
    """Each demonstration is an answered PR-01 block; a blank line inside one would end it early."""
    ids, instructions = set(), set()
    for i, item in enumerate(pool):
        where = f"{PROMPTS_FILE}: demonstrations[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"id", "instruction", "response"} or not all(
            isinstance(v, str) and v.strip() for v in item.values()
        ):
            raise PromptDataError(f"{where} must be {{id: str, instruction: str, response: str}}, all non-empty")
        if "\n" in item["instruction"]:
            raise PromptDataError(f"{where} ({item['id']}): the instruction must be one line")
        if _BLANK_LINE_RE.search(item["response"]) or item["response"] != item["response"].strip():
            raise PromptDataError(f"{where} ({item['id']}): the response must have no blank line and no outer whitespace")
        if item["id"] in ids or normalize(item["instruction"]) in instructions:
            raise PromptDataError(f"{where}: duplicate id or instruction ({item['id']})")
        ids.add(item["id"])
        instructions.add(normalize(item["instruction"]))
    if len(pool) <= MAX_DEMONSTRATIONS:
        raise PromptDataError(
            f"{PROMPTS_FILE}: demonstrations needs more than {MAX_DEMONSTRATIONS} items, so a full draw can leave out "
            f"the item's own instruction; has {len(pool)}"
        )


def _fill(template: str, **fields: str) -> str:
    """Substitute {name} placeholders in one pass, so braces inside values stay literal."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in fields:
            raise KeyError(f"template placeholder {{{key}}} has no value")
        return fields[key]

    return _PLACEHOLDER_RE.sub(sub, template)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise ValueError(f"{name} is empty; an empty {name} cannot be rendered into a prompt")
    return value


# -- PR-01: the response frame ------------------------------------------------------------


def render_response_prompt(instruction: str) -> str:
    """The one frame for generation, training and evaluation, so the answer boundary never moves.

    The instruction's outer whitespace is not part of the frame and is removed.
    """
    return _fill(prompt_data()["response"]["template"], instruction=_text(instruction, "instruction"))


# -- PR-07: the demonstration frame (context distillation) --------------------------------------

# What the base model is shown when it answers for training data; records keep zero-shot.
RESPONSE_FRAMES = ("demonstrations", "zero_shot")
DEFAULT_N_DEMONSTRATIONS = 4
# A frame longer than this stops being a short prompt for a 270M model; the pool must exceed it.
MAX_DEMONSTRATIONS = 8
# Answered blocks are separated by one blank line, as the answers themselves never hold one.
_BLOCK_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Demonstration:
    id: str
    instruction: str
    response: str


@dataclass(frozen=True)
class DemonstrationPrompt:
    """A rendered demonstration frame and which demonstrations went into it, for provenance."""

    text: str
    demonstration_ids: tuple[str, ...]


def demonstration_pool() -> tuple[Demonstration, ...]:
    return tuple(Demonstration(d["id"], d["instruction"], d["response"]) for d in prompt_data()["demonstrations"])


def demonstration_stop_strings() -> tuple[str, ...]:
    """Where an answer in the frame ends: the blank line, or the next block's opening line.

    The opening is read from the PR-01 template (the text before ``{instruction}``), so the
    stop follows the frame if the frame ever changes.
    """
    head = prompt_data()["response"]["template"].split("{instruction}", 1)[0].strip()
    return (_BLOCK_SEPARATOR, "\n" + head)


def draw_demonstrations(seed: int, item_id: str, instruction: str, k: int = DEFAULT_N_DEMONSTRATIONS) -> tuple[Demonstration, ...]:
    """K demonstrations for one item, fixed by (seed, item id) whatever else is drawn in the run.

    A demonstration whose instruction is the item's own (after normalization) is never
    drawn: the frame would hand the model its answer.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_DEMONSTRATIONS:
        raise ValueError(f"the number of demonstrations must be an integer in [1, {MAX_DEMONSTRATIONS}], got {k!r}")
    own = normalize(_text(instruction, "instruction"))
    eligible = [d for d in demonstration_pool() if normalize(d.instruction) != own]
    # str seeds hash with SHA-512 (random.seed version 2): stable across processes and platforms.
    rng = random.Random(f"demonstrations|{seed}|{_text(item_id, 'item_id')}")
    return tuple(rng.sample(eligible, k))


def render_demonstration_prompt(instruction: str, demos: Sequence[Demonstration]) -> str:
    """Answered PR-01 blocks, then the item's PR-01 prompt: the frame a base model already follows in context."""
    if not demos:
        raise ValueError("a demonstration prompt needs at least one demonstration; use render_response_prompt for zero-shot")
    blocks = [render_response_prompt(d.instruction) + " " + _text(d.response, "response") for d in demos]
    return _BLOCK_SEPARATOR.join([*blocks, render_response_prompt(instruction)])


def build_demonstration_prompt(instruction: str, *, seed: int, item_id: str,
                               k: int = DEFAULT_N_DEMONSTRATIONS) -> DemonstrationPrompt:
    demos = draw_demonstrations(seed, item_id, instruction, k)
    return DemonstrationPrompt(render_demonstration_prompt(instruction, demos), tuple(d.id for d in demos))


def render_bare_response_frame() -> str:
    """The response frame without its instruction (``Response:``): the relevance judge's
    unconditional context (CR-06), so both of its scores read the same answer boundary."""
    template = prompt_data()["response"]["template"]
    return template.split("{instruction}", 1)[1].lstrip()


# -- PR-03: few-shot instruction generation ---------------------------------------------------


@dataclass(frozen=True)
class PoolItem:
    type: str
    text: str


@dataclass(frozen=True)
class InstructionGenerationPrompt:
    """A rendered generation prompt with what went into it, for provenance."""

    text: str
    examples: tuple[PoolItem, ...]
    seed: int
    next_number: int

    def provenance(self) -> dict:
        return {
            "seed": self.seed,
            "next_number": self.next_number,
            "example_types": [e.type for e in self.examples],
        }


def instruction_pool() -> tuple[PoolItem, ...]:
    return tuple(PoolItem(i["type"], i["text"]) for i in prompt_data()["instruction_generation"]["pool"])


def draw_fewshot_examples(seed: int, n_examples: int | None = None) -> list[PoolItem]:
    """Examples of distinct types push each prompt toward variety; the seed makes a run reproducible."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    cfg = prompt_data()["instruction_generation"]
    lo, hi = cfg["min_examples"], cfg["max_examples"]
    rng = random.Random(seed)
    if n_examples is None:
        n_examples = rng.randint(lo, hi)
    elif not lo <= n_examples <= hi:
        raise ValueError(f"n_examples must be between {lo} and {hi}, got {n_examples}")
    by_type: dict[str, list[PoolItem]] = {}
    for item in instruction_pool():
        by_type.setdefault(item.type, []).append(item)
    types = rng.sample(sorted(by_type), n_examples)
    return [rng.choice(by_type[t]) for t in types]


def render_instruction_generation_prompt(examples: Sequence[str | PoolItem]) -> str:
    """The open number at the end makes a base model continue the list rather than answer the examples."""
    texts = [_text(e.text if isinstance(e, PoolItem) else e, "example") for e in examples]
    if not texts:
        raise ValueError("an instruction generation prompt needs at least one example")
    lines = [f"{i}. {t}" for i, t in enumerate(texts, start=1)]
    header = prompt_data()["instruction_generation"]["header"]
    return header + "\n\n" + "\n".join(lines) + f"\n{len(texts) + 1}."


def build_instruction_generation_prompt(seed: int, n_examples: int | None = None) -> InstructionGenerationPrompt:
    examples = draw_fewshot_examples(seed, n_examples)
    return InstructionGenerationPrompt(
        text=render_instruction_generation_prompt(examples),
        examples=tuple(examples),
        seed=seed,
        next_number=len(examples) + 1,
    )


# -- PR-04 / PR-05: critic prompts ----------------------------------------------------------


def first_paragraph(text: str) -> str:
    """Text up to the first blank line, stripped: the part of a response the pair critic sees."""
    if not isinstance(text, str):
        raise TypeError(f"response must be a string, got {type(text).__name__}")
    return _BLANK_LINE_RE.split(text.strip(), maxsplit=1)[0].strip()


@dataclass(frozen=True)
class CriticTemplate:
    """A critic prompt split into the rubric prefix shared by all items and the per-item suffix.

    The split lets the critic run the prefix through the model once (CR-05). ``render``
    is the only way to get a full prompt, so the split never changes the text.
    """

    name: str
    prefix: str
    suffix_template: str
    fields: tuple[str, ...]
    principle_ids: tuple[str, ...]

    def render_suffix(self, **fields: str) -> str:
        unknown = sorted(set(fields) - set(self.fields))
        missing = [f for f in self.fields if f not in fields]
        if unknown or missing:
            raise ValueError(f"{self.name} needs fields {list(self.fields)}; missing {missing}, unknown {unknown}")
        values = {k: _text(v, k) for k, v in fields.items()}
        if "response" in values:
            values["response"] = first_paragraph(values["response"])
        return _fill(self.suffix_template, **values)

    def render(self, **fields: str) -> str:
        return self.prefix + self.render_suffix(**fields)

    def provenance(self) -> dict:
        return {"template": self.name, "principles": list(self.principle_ids)}


def _rubric(name: str, constitution: Constitution | None) -> tuple[str, tuple[str, ...]]:
    cfg = prompt_data()[name]
    constitution = constitution if constitution is not None else load_constitution()
    principles: list[Principle] = constitution.select(cfg["principles"])
    lines = "\n".join(f"- {p.text}" for p in principles)
    return _fill(cfg["rubric"], principles=lines), tuple(p.id for p in principles)


def _critic_template(name: str, fields: tuple[str, ...], constitution: Constitution | None) -> CriticTemplate:
    rubric, ids = _rubric(name, constitution)
    body = _fill(prompt_data()[name]["body"], ending=prompt_data()["critic"]["ending"], **{f: "{" + f + "}" for f in fields})
    first = body.index("{" + fields[0] + "}")
    return CriticTemplate(
        name=name,
        prefix=rubric + "\n\n" + body[:first],
        suffix_template=body[first:],
        fields=fields,
        principle_ids=ids,
    )


def instruction_critic_template(constitution: Constitution | None = None) -> CriticTemplate:
    return _critic_template("instruction_critic", ("instruction",), constitution)


def pair_critic_template(constitution: Constitution | None = None) -> CriticTemplate:
    return _critic_template("pair_critic", ("instruction", "response"), constitution)


def evaluator_markers() -> tuple[str, ...]:
    """Critic-format text that must never appear in a kept response (CL-05)."""
    return tuple(prompt_data()["critic"]["evaluator_markers"])


# -- Stage 6: constitutional critique and revision ---------------------------------------------


def _exchange(instruction: str, response: str) -> str:
    return render_response_prompt(instruction) + " " + _text(response, "response")


def render_critique_prompt(instruction: str, response: str, principle: Principle) -> str:
    return _fill(
        prompt_data()["critique"]["template"],
        exchange=_exchange(instruction, response),
        principle=_text(principle.text, "principle"),
    )


def render_revision_prompt(instruction: str, response: str, principle: Principle, critique: str) -> str:
    """The critique may be empty (cleaning can drop it); the revision request still stands."""
    if not isinstance(critique, str):
        raise TypeError(f"critique must be a string, got {type(critique).__name__}")
    return _fill(
        prompt_data()["revision"]["template"],
        exchange=_exchange(instruction, response),
        principle=_text(principle.text, "principle"),
        critique=critique.strip(),
    )


def prompt_lines() -> list[str]:
    """Every fixed line of prompt text, for the check that no other module copies prompt text."""
    data = prompt_data()
    chunks = [
        data["response"]["template"],
        data["instruction_generation"]["header"],
        data["critic"]["ending"],
        data["instruction_critic"]["rubric"],
        data["pair_critic"]["rubric"],
        data["critique"]["template"],
        data["revision"]["template"],
    ]
    out: list[str] = []
    for chunk in chunks:
        for line in chunk.split("\n"):
            fixed = [part.strip() for part in _PLACEHOLDER_RE.split(line)[::2] if part.strip()]
            out.extend(fixed)
    return out
