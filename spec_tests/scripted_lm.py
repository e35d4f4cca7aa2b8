"""A loaded model whose sampling is scripted, for data-generation tests.

The tiny random model emits random tokens, so nothing it generates would ever parse
as an instruction list or an answer, and the pipeline downstream of generation would
go untested. ``ScriptedLM`` keeps the real model for everything except sampling
(tokenizer, encode paths, token-id checks, forward passes, provenance), so the real
critic still scores every item with real next-token log-probabilities, and replaces
``generate`` with text built from word lists by an RNG seeded with the prompt and the
seed. The text is plausible enough to parse, and messy enough (meta lines, fragments,
duplicates, continuations, delimiters, runaways, truncation at the token limit) that
parsing, deduplication and cleaning all have something to drop.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any, Sequence

from cai_bootstrap.loader import Generation

_OPEN_NUMBER_RE = re.compile(r"\n(\d+)\.$")
_RESPONSE_RE = re.compile(r"^Instruction: (.*)\nResponse:$", re.DOTALL)

# Multi-word topics keep instructions built from the same template apart under ROUGE-L,
# so only the duplicates made on purpose (and rare chance collisions) are duplicates.
TOPICS = (
    "the water cycle in tropical forests", "ancient roman road building", "how bees find flowers",
    "the history of paper money", "winter tires on icy roads", "a lighthouse keeper's daily routine",
    "volcanic islands in the pacific", "the rules of chess castling", "baking sourdough bread at home",
    "solar panels on apartment roofs", "migrating birds over the alps", "the first moon landing",
    "recycling old mobile phones", "a quiet mountain village in spring", "coral reefs and rising sea temperatures",
    "learning a second language as an adult", "the invention of the printing press", "night trains across europe",
    "composting kitchen scraps", "desert plants that store water", "the northern lights over norway",
    "public libraries in small towns", "electric bicycles for commuting", "how vaccines train the immune system",
    "the life cycle of a monarch butterfly", "street food markets in bangkok", "glaciers retreating in greenland",
    "a beginner's first marathon", "wind turbines off the coast", "medieval castle defenses",
    "saving money on weekly groceries", "octopus camouflage tricks", "the origin of the olympic games",
    "growing tomatoes on a balcony", "deep sea hydrothermal vents", "the physics of a rainbow",
    "jazz music in new orleans", "caring for an old wooden boat", "how a bill becomes a law",
    "thunderstorms on summer afternoons",
)
TEMPLATES = (
    "Write a haiku about {t}.",
    "List three facts about {t}.",
    "Explain {t} to a ten-year-old in two sentences.",
    "Give one surprising detail about {t}.",
    "Summarize what you know about {t} in under 30 words.",
    "Suggest a catchy title for an essay on {t}.",
    "Describe {t} in exactly ten words.",
    "Write one quiz question about {t}, followed by its answer.",
    "Name two common misconceptions about {t}.",
    "Compare {t} with something from everyday life.",
    "Write a short slogan that mentions {t}.",
    "What is the most important thing to know about {t}?",
)
META_LINES = ("Here are some more tasks:", "Note: each task should be short.", "Sure, here are a few more.")
FRAGMENTS = ("The capital city of a large country", "Blue and green and", "A quick note about the")
ANSWER_OPENERS = ("Sure.", "Here is one:", "In short,", "Yes.", "Certainly:")
ANSWER_BODIES = (
    "it depends mostly on the weather and the season.",
    "the main idea is that small steps add up over time.",
    "most people notice it first in the early morning.",
    "it was first described more than a century ago.",
    "the short answer is that it keeps things in balance.",
    "three points matter: cost, time and safety.",
)


def _seeded(prompt: str, seed: int) -> random.Random:
    # str seeds hash with SHA-512 (random.seed version 2): stable across processes.
    return random.Random(f"{seed}|{prompt}")


def instruction_continuation(rng: random.Random, open_number: int, *, messy: bool = True, canary: str | None = None) -> str:
    """The rest of item ``open_number`` and further items: mostly fresh instructions, plus planned mess.

    ``canary`` is put first in every list, so runs with different prompts share one instruction.
    """
    lines: list[str] = [canary] if canary else []
    made: list[str] = []
    number = open_number + len(lines)
    for k in range(len(lines), rng.randint(5, 7)):
        roll = rng.random() if messy else 1.0
        if made and roll < 0.10:
            body = rng.choice(made)  # exact duplicate
        elif made and roll < 0.18:
            body = rng.choice(made).upper().rstrip(".") + "!"  # normalized duplicate
        elif made and roll < 0.25:
            seen = rng.choice(made)
            body = "Please " + seen[0].lower() + seen[1:]  # near duplicate
        elif roll < 0.30:
            body = rng.choice(FRAGMENTS)
        else:
            body = rng.choice(TEMPLATES).format(t=rng.choice(TOPICS))
            made.append(body)
        if messy and k > 0 and rng.random() < 0.08:
            lines.append(rng.choice(META_LINES))
        if messy and k > 0 and rng.random() < 0.05:
            lines.append(f"{number}.")  # an empty number
            number += 1
        lines.append(body if k == 0 else f"{number}. {body}")
        number += 1
    return " " + "\n".join(lines) + "\n"


def response_continuation(rng: random.Random, instruction: str, *, messy: bool = True) -> str:
    """A short answer, often followed by what a base model writes after answering."""
    answer = f" {rng.choice(ANSWER_OPENERS)} {rng.choice(ANSWER_BODIES)}"
    roll = rng.random() if messy else 0.0
    if roll < 0.30:
        return answer
    if roll < 0.50:
        return answer + "\n\nInstruction: " + rng.choice(TEMPLATES).format(t=rng.choice(TOPICS)) + "\nResponse: ok"
    if roll < 0.65:
        return answer + "###END###\nInstruction: next one"
    if roll < 0.72:
        return answer + "\nQ: and what else?"
    if roll < 0.78:
        return answer + "\nUser: tell me more\nAssistant: sure"  # survives trimming: a runaway
    if roll < 0.82:
        return "\n\n" + answer  # nothing before the blank line: empty
    if roll < 0.85:
        return answer + " Label: A"  # critic-format text: dropped as a marker leak
    # Rambling on without a break until the token budget runs out.
    return answer + " " + " ".join(rng.choice(ANSWER_BODIES) for _ in range(12))


class ScriptedLM:
    """Delegates to a real ``LoadedModel``; only ``generate`` (and ``release``) differ.

    ``style="clean"`` writes only fresh instructions and plain answers (a run that can
    pass QC); ``"messy"`` adds what parsing and cleaning exist to drop. ``sleep`` slows
    every call (to kill a run mid-phase); ``fail_after_calls`` makes call N+1 raise.
    """

    def __init__(self, lm, *, style: str = "messy", canary: str | None = None, sleep: float = 0.0,
                 fail_after_calls: int | None = None) -> None:
        if style not in ("messy", "clean"):
            raise ValueError(f"style must be 'messy' or 'clean', got {style!r}")
        self._lm = lm
        self.messy = style == "messy"
        self.canary = canary
        self.sleep = sleep
        self.fail_after_calls = fail_after_calls
        self.calls: list[dict[str, Any]] = []
        self.provenance = {**lm.provenance, "generation_script": "spec_tests.scripted_lm (test double; real model for scoring)"}

    def __getattr__(self, name: str):
        return getattr(self._lm, name)

    def release(self) -> None:
        """The wrapped model is shared by other tests; it is never freed from here."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, do_sample: bool, temperature=None, top_p=None, top_k=None,
                 repetition_penalty: float = 1.0, seed: int = 0, batch_size: int = 8, progress=None,
                 desc: str = "generate", stop_strings=()) -> list[Generation]:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise RuntimeError(f"scripted failure at generate call {len(self.calls) + 1}")
        self.calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "do_sample": do_sample,
                           "temperature": temperature, "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty,
                           "seed": seed, "batch_size": batch_size, "stop_strings": tuple(stop_strings)})
        if self.sleep:
            time.sleep(self.sleep)
        return [self._one(p, seed, max_new_tokens) for p in prompts]

    def _one(self, prompt: str, seed: int, max_new_tokens: int) -> Generation:
        rng = _seeded(prompt, seed)
        m = _OPEN_NUMBER_RE.search(prompt)
        r = _RESPONSE_RE.match(prompt)
        if r:
            text = response_continuation(rng, r.group(1), messy=self.messy)
        elif m:
            text = instruction_continuation(rng, int(m.group(1)), messy=self.messy, canary=self.canary)
        else:
            text = " and then nothing in particular happened."
        ids = self._lm.encode_continuation(text)
        if len(ids) > max_new_tokens:
            ids = ids[:max_new_tokens]
            return Generation(self._lm.tokenizer.decode(ids), len(ids), True, False, ids)
        return Generation(text, len(ids), False, True, ids)
