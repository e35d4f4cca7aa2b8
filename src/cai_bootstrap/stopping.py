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
transformers' criterion (:func:`fast_path_applies`), and so is every stop string of a
tokenizer whose decoding is not the concatenation of its tokens' texts on a few probes
(:func:`token_texts` returns None), such as a decoder that strips a lone space token.
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


# Texts whose decoding must equal the concatenation of their tokens' texts for the fast path to
# hold; a decoder that strips or merges around spaces (some SentencePiece set-ups) fails them.
CONSISTENCY_PROBES = ("a\n\nb", "x \n y", " Hello\n\n1. World", "Q: A\nR: B\n\nQ:",
                      "word \n\n next", "\n \n", "end.\n\n\n")


def token_texts(tokenizer, n_ids: int | None = None) -> list[str] | None:
    """The text of every token id alone (special tokens as empty text, as decoding skips them),
    or None when this tokenizer's decoding is not the concatenation of those texts.

    ``n_ids`` is the model's vocabulary size: a model's embedding is often padded past the
    tokenizer's last id (Qwen's 151,936 rows for 151,665 tokens), and a model can sample such
    an id; it has no text, as decoding drops it.
    """
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
    texts += [""] * max(0, (n_ids or 0) - len(texts))
    for probe in CONSISTENCY_PROBES:
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        if "".join(texts[i] for i in ids) != tokenizer.decode(ids, skip_special_tokens=True):
            return None
    return texts


def completes(tail: str, piece: str, stop_strings: Sequence[str]) -> bool:
    """Whether ``piece`` (the newest token's text) completes a stop string that starts in ``tail`` or in it.

    A stop string lying wholly inside the tail (a shorter one among longer ones, or one in
    the prompt) does not count, as it does not for transformers' criterion.
    """
    window = tail + piece
    return bool(piece) and any(window.find(s, max(0, len(tail) - len(s) + 1)) != -1 for s in stop_strings)


def first_stop(ids: Sequence[int], texts: Sequence[str], stop_strings: Sequence[str], tail: str = "") -> int | None:
    """Number of tokens up to and including the one whose text completes a stop string; None if none does."""
    keep = max(len(s) for s in stop_strings) - 1
    for n, tok in enumerate(ids, start=1):
        if completes(tail, texts[tok], stop_strings):
            return n
        window = tail + texts[tok]
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
            hits.append(completes(self.tails[r], self.texts[tok], self.stops))
            window = self.tails[r] + self.texts[tok]
            self.tails[r] = window[-self.keep:] if self.keep else ""
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)
