"""Stop strings checked on each row's newest token's text instead of re-matching the sequence.

transformers' ``StopStringCriteria`` handles any stop string with any tokenizer, at a cost
measured at 2.8x the generation time of the same run without it (Gemma-3-270m on a GPU,
where the model's step is short). The stop strings this project uses are plain ASCII
without spaces (a blank line, ``\\nInstruction:``), and for those a row's text is the
concatenation of its tokens' texts: ASCII bytes are never part of a multi-byte character
split over byte tokens, and no space-prefix rule touches them. So a row has met a stop
string exactly when the text of its last few characters plus its newest token's text
contains it, which is one dictionary lookup and one substring test per row and step.

Stop strings outside that class (non-ASCII, or holding a space) are left to
transformers' criterion; :func:`fast_path_applies` decides.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import StoppingCriteria

# Recorded in every load provenance (loader.py), so a run says how its rows were stopped.
STOP_MATCHER_NAME = "token-text for ASCII stop strings without spaces, else transformers' StopStringCriteria (cai_bootstrap.stopping)"


def fast_path_applies(stop_strings: Sequence[str]) -> bool:
    """Whether every stop string is one this module matches exactly (non-empty ASCII without spaces)."""
    return bool(stop_strings) and all(s and s.isascii() and " " not in s for s in stop_strings)


def token_texts(tokenizer) -> list[str]:
    """The text of every token id alone, special tokens as empty text (as decoding skips them)."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)


def first_stop(ids: Sequence[int], texts: Sequence[str], stop_strings: Sequence[str], tail: str = "") -> int | None:
    """Number of tokens up to and including the one whose text completes a stop string; None if none does."""
    keep = max(len(s) for s in stop_strings) - 1
    for n, tok in enumerate(ids, start=1):
        window = tail + texts[tok]
        if any(s in window for s in stop_strings):
            return n
        tail = window[-keep:] if keep else ""
    return None


class TokenTextStop(StoppingCriteria):
    """Stops a row once its text (from the prompt's last characters on) contains a stop string."""

    def __init__(self, stop_strings: Sequence[str], texts: Sequence[str], prompt_tails: Sequence[str]) -> None:
        if not fast_path_applies(stop_strings):
            raise ValueError(f"stop strings {list(stop_strings)!r} need transformers' StopStringCriteria")
        self.stops = tuple(stop_strings)
        self.keep = max(len(s) for s in self.stops) - 1
        self.texts = texts
        self.tails = [t[-self.keep:] if self.keep else "" for t in prompt_tails]

    @classmethod
    def for_prompts(cls, stop_strings: Sequence[str], texts: Sequence[str], prompt_ids: Sequence[Sequence[int]]) -> "TokenTextStop":
        """Seeded with each prompt's last characters, as transformers matches across the prompt's end too."""
        return cls(stop_strings, texts, ["".join(texts[i] for i in row[-16:]) for row in prompt_ids])

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        hits = []
        for r, tok in enumerate(input_ids[:, -1].tolist()):
            window = self.tails[r] + self.texts[tok]
            hits.append(any(s in window for s in self.stops))
            self.tails[r] = window[-self.keep:] if self.keep else ""
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)
