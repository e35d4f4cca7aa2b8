"""Exact, normalized and near-duplicate detection (ROUGE-L F > 0.7, as self-instruct does).

Used twice with the same rules: to deduplicate generated instructions (DG-04) and to
prove no evaluation item leaked into training data (SFT-06). ROUGE-L is the longest
common subsequence over lowercase word tokens; implemented here (a few lines) because
the reference package pulls in NLTK, which downloads data at run time.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

NEAR_DUP_THRESHOLD = 0.7
# Letters and digits of any script: an ASCII-only pattern would reduce every non-Latin
# instruction to the empty string and call all of them duplicates of each other.
_WORD_RE = re.compile(r"[^\W_]+")


def normalize(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form of a text."""
    t = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()
    return " ".join(_WORD_RE.findall(t))


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(a: str | list[str], b: str | list[str]) -> float:
    """ROUGE-L F1 (beta = 1) between two texts."""
    ta = tokens(a) if isinstance(a, str) else a
    tb = tokens(b) if isinstance(b, str) else b
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(tb), lcs / len(ta)
    return 2 * p * r / (p + r)


@dataclass
class DuplicateIndex:
    """A growing pool; ``check`` says why a candidate duplicates the pool (or None)."""

    threshold: float = NEAR_DUP_THRESHOLD
    _exact: set = field(default_factory=set)
    _norm: dict = field(default_factory=dict)
    _toks: list = field(default_factory=list)

    def check(self, text: str) -> tuple[str, str, float] | None:
        """Return (reason, matched_text, score) with reason in exact/normalized/near_duplicate."""
        if text in self._exact:
            return ("exact_duplicate", text, 1.0)
        n = normalize(text)
        if n in self._norm:
            return ("normalized_duplicate", self._norm[n], 1.0)
        tt = n.split()
        bag = Counter(tt)
        for other_tokens, other_bag, other_text in self._toks:
            # ROUGE-L F = 2*LCS/(la+lb) and LCS <= the bags' overlap: skip pairs that cannot pass.
            overlap = sum((bag & other_bag).values())
            if 2 * overlap / max(1, len(tt) + len(other_tokens)) <= self.threshold:
                continue
            score = rouge_l(tt, other_tokens)
            if score > self.threshold:
                return ("near_duplicate", other_text, score)
        return None

    def add(self, text: str) -> None:
        self._exact.add(text)
        n = normalize(text)
        self._norm.setdefault(n, text)
        tt = n.split()
        self._toks.append((tt, Counter(tt), text))

    def add_if_new(self, text: str) -> tuple[str, str, float] | None:
        hit = self.check(text)
        if hit is None:
            self.add(text)
        return hit

    def __len__(self) -> int:
        return len(self._toks)
