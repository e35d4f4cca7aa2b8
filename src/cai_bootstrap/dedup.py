"""Exact, normalized and near-duplicate detection (ROUGE-L F > 0.7, as self-instruct does).

Used three times with the same rules: to deduplicate generated instructions (DG-04), to
re-deduplicate across shards at merge (DG-05) and to prove no evaluation item leaked into
training data (SFT-06). ROUGE-L is the longest common subsequence over lowercase word
tokens; implemented here (a few lines) because the reference package pulls in NLTK,
which downloads data at run time.

DG-09: comparing a candidate with every kept instruction is quadratic (8,000 instructions
took a minute), so the index finds the pool items that *could* pass and runs the LCS only
on those, with the same decisions as the pairwise rule. The pruning is exact:
ROUGE-L F = 2 LCS / (|a| + |b|), and the LCS is at most the size of the two token
multisets' intersection, so a pair can pass only if that overlap is at least
``min_overlap(|a|, |b|)``. Two multisets sharing ``k`` elements share one among their first
``|a| - k + 1`` and ``|b| - k + 1`` elements under any fixed order (prefix filtering), so each
pool item is posted only under its rarest few tokens, and a candidate looks up only its
own rarest few: common words ("write", "the") stay out of the posting lists that are read.
The shorter text of a pair needs only its short prefix (the one for a partner as long as
itself), which cuts the reads again; widening both prefixes by a place or two means a pair
that can pass is seen more than once, so pool items sharing a single rare token drop out
in bulk. A per-item sketch of element counts in fixed bins bounds the overlap of the rest
from above, and only what it lets through reaches an exact set intersection: intersections
and LCS runs grow with the near duplicates, not with the pairs.
``DuplicateIndex(pairwise=True)`` is the plain loop over the pool, kept as the reference.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

NEAR_DUP_THRESHOLD = 0.7
# Letters and digits of any script: an ASCII-only pattern would reduce every non-Latin
# instruction to the empty string and call all of them duplicates of each other.
_WORD_RE = re.compile(r"[^\W_]+")
# The bounds are computed with a threshold lowered by this much, so that floating-point
# rounding can only make the index look at a pair more, never hide one the pairwise rule keeps.
_BOUND_SLACK = 1e-9
# The token order (rarest first) is fixed between re-orderings, which happen each time the
# pool doubles past this size, so re-posting costs O(n) in all.
_FIRST_REORDER = 64
# An element is a token's place (or id) shifted by this many bits plus its copy number, so
# elements are plain ints that sort by token, then copy.
_COPY_BITS = 32
# Elements are counted into this many bins by a fixed hash: the shared elements in a bin are at
# most the smaller of the two counts, so the sum of the smaller counts bounds the overlap.
_SKETCH_BINS = 64
# Pool counts are kept in a byte, capped here: the smaller count is still exact while the
# candidate's own count is at most the cap, and a candidate above it skips this bound.
_SKETCH_CAP = 255
# Prefixes are widened by this many places, so that a pair that can pass shows at least this
# many more shared elements within them: pairs sharing a single rare token are dropped unread.
_EXTRA_HITS = 1

KIND_EXACT = "exact_duplicate"
KIND_NORMALIZED = "normalized_duplicate"
KIND_NEAR = "near_duplicate"


def normalize(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form of a text."""
    if text.isascii():  # nothing to decompose: the common case, and the decomposition is the slow part
        return " ".join(_WORD_RE.findall(text.casefold()))
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


def overlap_may_pass(overlap: int, len_a: int, len_b: int, threshold: float) -> bool:
    """The pairwise rule's bound: ROUGE-L F <= 2 * overlap / (|a| + |b|), so at or below the threshold it cannot pass."""
    return 2 * overlap / max(1, len_a + len_b) > threshold


@lru_cache(maxsize=None)
def min_overlap(len_a: int, len_b: int, threshold: float) -> int:
    """Fewest shared tokens with which two texts of these lengths can pass ``overlap_may_pass``."""
    return max(1, math.floor((threshold - _BOUND_SLACK) * (len_a + len_b) / 2) + 1)


@lru_cache(maxsize=None)
def prefix_length(length: int, threshold: float) -> int:
    """How many of a text's rarest tokens must include one shared with any text it can match.

    The smallest overlap over every partner length that can pass at all (a partner
    shorter than its required overlap cannot); 0 when no partner can.
    """
    for other in range(1, length + 1):
        k = min_overlap(length, other, threshold)
        if k <= min(length, other):
            return length - k + 1
    return 0


@lru_cache(maxsize=None)
def short_prefix_length(length: int, threshold: float) -> int:
    """How many rarest tokens must include one shared with any text at least as long that it can match.

    Against a partner as long or longer the overlap needed is at least ``min_overlap(length, length)``,
    so this prefix is shorter than ``prefix_length``: of two texts, the shorter one's match lies in it.
    """
    return length - min_overlap(length, length, threshold) + 1 if length else 0


@lru_cache(maxsize=None)
def _prefixes(length: int, threshold: float) -> tuple[int, int]:
    """The short and whole prefix, each widened by ``_EXTRA_HITS`` places (capped at the length)."""
    if not prefix_length(length, threshold):
        return 0, 0
    return (min(length, short_prefix_length(length, threshold) + _EXTRA_HITS),
            min(length, prefix_length(length, threshold) + _EXTRA_HITS))


@lru_cache(maxsize=4096)
def _needed(length: int, threshold: float, max_len: int) -> np.ndarray:
    """Overlap a text of ``length`` needs with a partner of each length up to ``max_len``; unreachable where none suffices."""
    out = np.full(max_len + 1, length + max_len + 1, dtype=np.int64)
    for other in range(1, max_len + 1):
        k = min_overlap(length, other, threshold)
        if k <= min(length, other):
            out[other] = k
    return out


def _sketch(elements: frozenset[int]) -> np.ndarray:
    """Element counts per bin (see ``_SKETCH_BINS``); the bin of an element never changes."""
    return np.bincount([(e * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF) % 1_000_003 % _SKETCH_BINS for e in elements], minlength=_SKETCH_BINS)


@dataclass
class SearchWork:
    """What a search cost, counted so tests can check its growth without timing it."""

    postings: int = 0  # posting-list entries read
    pairs: int = 0  # pool items whose token overlap with a candidate was computed
    lcs: int = 0  # ROUGE-L (LCS) computations


@dataclass(frozen=True)
class Match:
    kind: str  # KIND_EXACT | KIND_NORMALIZED | KIND_NEAR
    position: int  # of the matched pool item, in insertion order
    score: float


class DuplicateIndex:
    """A growing pool; ``check`` says why a candidate duplicates the pool (or None).

    ``pairwise=True`` compares each candidate with every pool item: the reference the
    indexed search must agree with, and the baseline of the benchmark.
    """

    def __init__(self, threshold: float = NEAR_DUP_THRESHOLD, *, pairwise: bool = False) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a ROUGE-L F value in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.pairwise = pairwise
        self.work = SearchWork()
        self._texts: list[str] = []
        self._toks: list[list[str]] = []
        self._lens: list[int] = []
        self._max_len = 0
        self._bags: list[Counter] = []
        self._elements: list[frozenset[int]] = []
        self._ids: dict[str, int] = {}  # token -> stable id, for the exact overlap of two multisets
        self._exact: dict[str, int] = {}
        self._norm: dict[str, int] = {}
        self._df: Counter = Counter()  # pool items holding each token, live
        self._order: dict[str, int] = {}  # token -> place in the current rarest-first order
        self._next_unseen = -1  # tokens unseen at the last re-ordering come first, in order of arrival
        # element -> pool items holding it in their short prefix, and in the rest of their prefix:
        # flat (position, length, length - place in the prefix) triples, appended at C speed and
        # read as numpy views
        self._postings: dict[int, tuple[array, array]] = {}
        self._pending: tuple[str, list[int], frozenset[int], np.ndarray] | None = None
        self._sketches = np.zeros((0, _SKETCH_BINS), dtype=np.uint8)
        self._lens_np = np.zeros(0, dtype=np.int64)
        self._reorder_at = _FIRST_REORDER

    def __len__(self) -> int:
        return len(self._texts)

    def text(self, position: int) -> str:
        return self._texts[position]

    def check(self, text: str) -> tuple[str, str, float] | None:
        """Return (reason, matched_text, score) with reason in exact/normalized/near_duplicate.

        A near duplicate reports the first pool item (insertion order) above the threshold.
        """
        m = self.find(text)
        return None if m is None else self._report(text, m)

    def _report(self, text: str, m: Match) -> tuple[str, str, float]:
        return (m.kind, text if m.kind == KIND_EXACT else self._texts[m.position], m.score)

    def find(self, text: str, *, best: bool = False) -> Match | None:
        """The first exact, then normalized, then near-duplicate match.

        Near duplicates: the first pool item above the threshold, or with ``best`` the
        highest-scoring one (the earliest among equal scores).
        """
        return self._find(text, normalize(text), best)

    def _find(self, text: str, n: str, best: bool) -> Match | None:
        if text in self._exact:
            return Match(KIND_EXACT, self._exact[text], 1.0)
        if n in self._norm:
            return Match(KIND_NORMALIZED, self._norm[n], 1.0)
        tt = n.split()
        found: Match | None = None
        for pos in self._survivors(tt, Counter(tt)) if self.pairwise else self._indexed_survivors(tt, self._profile(n, Counter(tt))):
            self.work.lcs += 1
            score = rouge_l(tt, self._toks[pos])
            if score > self.threshold and (found is None or score > found.score):
                found = Match(KIND_NEAR, pos, score)
                if not best:
                    break
        return found

    def add(self, text: str) -> None:
        self._add(text, normalize(text))

    def _add(self, text: str, n: str) -> None:
        pos = len(self._texts)
        self._exact.setdefault(text, pos)
        self._norm.setdefault(n, pos)
        tt = n.split()
        bag = Counter(tt)
        self._texts.append(text)
        self._toks.append(tt)
        self._lens.append(len(tt))
        self._max_len = max(self._max_len, len(tt))
        self._bags.append(bag)
        if self.pairwise:
            return
        _, ordered, elements, sketch = self._profile(n, bag)
        self._elements.append(elements)
        if pos >= len(self._lens_np):
            self._sketches = np.resize(self._sketches, (2 * pos + 16, _SKETCH_BINS))
            self._lens_np = np.resize(self._lens_np, 2 * pos + 16)
        self._sketches[pos] = np.minimum(sketch, _SKETCH_CAP)
        self._lens_np[pos] = len(tt)
        self._df.update(bag.keys())
        if len(self._texts) >= self._reorder_at:
            self._reorder()
        else:
            self._post(pos, ordered)

    def add_if_new(self, text: str) -> tuple[str, str, float] | None:
        n = normalize(text)
        m = self._find(text, n, best=False)
        if m is None:
            self._add(text, n)
            return None
        return self._report(text, m)

    # -- the search ------------------------------------------------------------------------

    def _survivors(self, tt: list[str], bag: Counter) -> list[int]:
        """Every pool position, in insertion order, whose token overlap with ``tt`` passes the bound."""
        out = []
        for pos, (other_tokens, other_bag) in enumerate(zip(self._toks, self._bags)):
            self.work.pairs += 1
            overlap = sum((bag & other_bag).values())
            if overlap_may_pass(overlap, len(tt), len(other_tokens), self.threshold):
                out.append(pos)
        return out

    def _profile(self, n: str, bag: Counter) -> tuple[str, list[int], frozenset[int], np.ndarray]:
        """A text's elements in the current order, as stable ids, and their sketch; computed once
        for the search and reused when the same text is added next."""
        if self._pending is None or self._pending[0] is not n:
            elements = self._stable_elements(bag)
            self._pending = (n, self._ordered(bag), elements, _sketch(elements))
        return self._pending

    def _indexed_survivors(self, tt: list[str], profile: tuple[str, list[int], frozenset[int], np.ndarray]) -> list[int]:
        """The same positions as ``_survivors``, found through the posting lists of the candidate's prefix.

        Two multisets sharing ``m >= k`` elements share their ``r``-th common element (in the
        common order) at place ``i`` of one and ``j`` of the other with ``i <= |a| - k + r - 1``
        and ``j <= |b| - k + r - 1``; for the shorter text the first lies in its short prefix.
        So with prefixes widened by ``_EXTRA_HITS`` places, the candidate reads its short prefix
        against pool items' whole prefix and its whole prefix against their short prefix, keeps
        the entries at places the needed overlap allows, and a pool item that can pass shows
        ``min(k, _EXTRA_HITS + 1)`` of them. The bin sketch bounds the overlap of those left
        (see ``_SKETCH_BINS``); only the rest reach a set intersection.
        """
        lq, t = len(tt), self.threshold
        if not lq or not self._max_len:
            return []
        need = _needed(lq, t, self._max_len)
        short, whole = _prefixes(lq, t)
        _, ordered, mine, sketch = profile
        postings = self._postings
        chunks, room, sizes = [], [], []
        for i, e in enumerate(ordered[:whole]):
            parts = postings.get(e)
            if parts is not None:
                for posting in parts if i < short else parts[:1]:
                    if posting:
                        chunks.append(np.frombuffer(posting, dtype=np.int64))
                        room.append(lq - i)
                        sizes.append(len(posting) // 3)
        if not chunks:
            return []
        pos, lx, after = np.concatenate(chunks).reshape(-1, 3).T
        del chunks  # a view pins its array, which cannot grow while the view lives
        self.work.postings += len(pos)
        # the entry can be the first of the shared elements the pair needs only if there is
        # room for the others after it in both texts
        fits = np.minimum(np.repeat(np.array(room, dtype=np.int64), sizes), after) >= need[lx] - _EXTRA_HITS
        cand, hits = np.unique(pos[fits], return_counts=True)
        cand = cand[hits >= np.minimum(need[self._lens_np[cand]], _EXTRA_HITS + 1)]
        if sketch.max() <= _SKETCH_CAP:
            bound = np.minimum(self._sketches[cand], sketch.astype(np.uint8)).sum(axis=1, dtype=np.int64)
            cand = cand[bound >= need[self._lens_np[cand]]]
        elements, lens = self._elements, self._lens
        out = []
        for p in cand.tolist():
            self.work.pairs += 1
            if overlap_may_pass(len(mine & elements[p]), lq, lens[p], t):
                out.append(p)
        return out

    def _stable_elements(self, bag: Counter) -> frozenset[int]:
        """A token multiset as a set (the k-th copy of a token is its own element), so the
        multisets' intersection size is a C-level set intersection; ids never change."""
        ids = self._ids
        return frozenset((ids.setdefault(tok, len(ids)) << _COPY_BITS) + k for tok, c in bag.items() for k in range(1, c + 1))

    def _ordered(self, bag: Counter) -> list[int]:
        """The elements of a token multiset, rarest first in the current order (fixed between re-orderings)."""
        order, out = self._order, []
        for tok, c in bag.items():
            place = order.get(tok)
            if place is None:
                place = order[tok] = self._next_unseen
                self._next_unseen -= 1
            base = place << _COPY_BITS
            out.extend(range(base + 1, base + c + 1))
        out.sort()
        return out

    def _post(self, pos: int, ordered: list[int]) -> None:
        length, postings = self._lens[pos], self._postings
        short, whole = _prefixes(length, self.threshold)
        for at, element in enumerate(ordered[:whole]):
            parts = postings.get(element)
            if parts is None:
                parts = postings[element] = (array("q"), array("q"))
            parts[0 if at < short else 1].extend((pos, length, length - at))

    def _reorder(self) -> None:
        """Fix a new rarest-first order from today's frequencies and re-post the pool under it."""
        self._order = {tok: place for place, (_, tok) in enumerate(sorted((c, tok) for tok, c in self._df.items()))}
        self._next_unseen = -1
        self._postings = {}
        self._pending = None
        for pos, bag in enumerate(self._bags):
            self._post(pos, self._ordered(bag))
        self._reorder_at = 2 * len(self._texts)


# -- the order-free near-duplicate test (SFT-06) ---------------------------------------------------------

KIND_REORDERED = "reordered_duplicate"


def jaccard(a: str | list[str], b: str | list[str]) -> float:
    """Jaccard similarity of two texts' normalized word sets: word order plays no part."""
    sa = set(tokens(a) if isinstance(a, str) else a)
    sb = set(tokens(b) if isinstance(b, str) else b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def best_set_matches(texts: Sequence[str], references: Sequence[str], threshold: float = NEAR_DUP_THRESHOLD,
                     *, batch: int = 2048) -> list[tuple[int, int, float]]:
    """(text index, reference index, Jaccard) for each text whose word set matches a reference's at
    ``threshold`` or more (ROUGE-L follows word order, so "write X using 8 words" and "using 8 words,
    write X" slip past it); the best reference each, the earliest among equals.

    Word-count vectors over the references' vocabulary are multiplied in batches, so the cost grows
    with texts x references x vocabulary in BLAS rather than in Python.
    """
    ref_sets = [set(tokens(r)) for r in references]
    vocab = {w: k for k, w in enumerate(sorted(set().union(*ref_sets)))} if ref_sets else {}
    if not vocab:
        return []
    refs = np.zeros((len(ref_sets), len(vocab)), dtype=np.float32)
    for j, s in enumerate(ref_sets):
        refs[j, [vocab[w] for w in s]] = 1.0
    ref_sizes = refs.sum(axis=1)
    out: list[tuple[int, int, float]] = []
    for start in range(0, len(texts), batch):
        chunk = [set(tokens(t)) for t in texts[start:start + batch]]
        mat = np.zeros((len(chunk), len(vocab)), dtype=np.float32)
        sizes = np.zeros(len(chunk), dtype=np.float32)
        for i, s in enumerate(chunk):
            sizes[i] = len(s)
            known = [vocab[w] for w in s if w in vocab]
            if known:
                mat[i, known] = 1.0
        inter = (mat @ refs.T).astype(np.float64)  # exact: sums of ones
        union = sizes[:, None] + ref_sizes[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(union > 0, inter / union, 0.0)
        best = score.argmax(axis=1)
        for i, j in enumerate(best):
            if score[i, j] >= threshold - _BOUND_SLACK:
                out.append((start + i, int(j), float(score[i, j])))
    return out
