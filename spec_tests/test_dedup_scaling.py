"""DG-09: the indexed near-duplicate search makes the pairwise rule's decisions, reports the
same matches, and does a small share of its pairwise work; for generation dedup, the merge's
re-deduplication and the SFT-06 leakage check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cai_bootstrap import dedup
from cai_bootstrap.bench import synthetic_instructions
from cai_bootstrap.datagen.merge import cross_shard_dedup
from cai_bootstrap.datagen.pipeline import dedup_candidates
from cai_bootstrap.dedup import DuplicateIndex
from cai_bootstrap.sft.data_gate import find_leaks

# Few words, so that near duplicates, repeated tokens and exact-threshold scores really occur.
WORDS = ["a", "b", "c", "d", "e", "the", "sea", "poem"]
_text = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join),
    st.sampled_from(["", "!!", "A", "a.", "The sea", "a b c d e f g h i j", "a b c d e f g x y z"]),
)
# Pools past the first re-ordering of the index (64 items) come from the repeated-pattern strategy.
_pool = st.one_of(
    st.lists(_text, min_size=1, max_size=40),
    st.lists(_text, min_size=1, max_size=12).map(lambda xs: xs * 8),
)
_threshold = st.sampled_from([dedup.NEAR_DUP_THRESHOLD, 0.0, 0.5, 2 / 3, 0.75, 1.0])


@pytest.mark.spec("DG-09")
@settings(max_examples=120, deadline=None)
@given(_pool, _threshold)
def test_generation_dedup_matches_pairwise_reference(texts, threshold):
    cands = [{"id": f"c{i}", "instruction": t} for i, t in enumerate(texts)]
    fast = dedup_candidates(cands, DuplicateIndex(threshold))
    ref = dedup_candidates(cands, DuplicateIndex(threshold, pairwise=True))
    assert fast == ref


@pytest.mark.spec("DG-09")
@settings(max_examples=80, deadline=None)
@given(_pool, st.lists(_text, min_size=1, max_size=30))
def test_merge_dedup_matches_pairwise_reference(texts, evals):
    verdicts = [{"id": f"v{i}", "instruction": t} for i, t in enumerate(texts)]
    eval_items = [(f"e{j}", t) for j, t in enumerate(evals)]
    fast = cross_shard_dedup(verdicts, eval_items)
    ref = cross_shard_dedup(verdicts, eval_items, pairwise=True)
    assert fast == ref


@pytest.mark.spec("DG-09", "SFT-06")
@settings(max_examples=80, deadline=None)
@given(st.lists(_text, min_size=1, max_size=30), _pool, _threshold)
def test_leak_check_matches_pairwise_reference(train, evals, threshold):
    eval_items = [(f"e{j}", t) for j, t in enumerate(evals)]
    assert find_leaks(train, eval_items, threshold=threshold) == find_leaks(train, eval_items, threshold=threshold, pairwise=True)


def _check_both(pool, candidate):
    """The candidate's verdict from the index and from the pairwise reference, over the same pool."""
    got = []
    for pairwise in (False, True):
        index = DuplicateIndex(pairwise=pairwise)
        for text in pool:
            index.add(text)
        got.append(index.check(candidate))
    return got


@pytest.mark.spec("DG-09")
@pytest.mark.parametrize(
    "pool, candidate, expected",
    [
        # 10 tokens each, LCS 7: F = 0.7 exactly, not above the threshold
        (["a b c d e f g h i j"], "a b c d e f g x y z", None),
        # 4 tokens each, LCS 3: F = 0.75; the first passing pool item is reported, not the best
        (["p q r x", "p q r s t"], "p q r s", ("near_duplicate", "p q r x", 0.75)),
        (["sea sea sea poem"], "sea sea poem poem", ("near_duplicate", "sea sea sea poem", 0.75)),
        ([""], "", ("exact_duplicate", "", 1.0)),
        ([""], "!!", ("normalized_duplicate", "", 1.0)),
        (["poem"], "poem sea", None),
    ],
)
def test_boundary_cases_agree(pool, candidate, expected):
    got = _check_both(pool, candidate)
    assert got[0] == got[1]
    assert (got[0] if got[0] is None else (got[0][0], got[0][1], pytest.approx(got[0][2]))) == expected


def _edits(draw, words: list[str], vocab: list[str]) -> list[str]:
    out = list(words)
    for _ in range(draw(st.integers(0, 3))):
        op, at = draw(st.sampled_from("sdi")), draw(st.integers(0, max(0, len(out) - 1)))
        if op == "s" and out:
            out[at] = draw(st.sampled_from(vocab))
        elif op == "d" and out:
            del out[at]
        else:
            out.insert(at, draw(st.sampled_from(vocab)))
    return out


@st.composite
def _near_pools(draw):
    """Texts of 1 to 60 words with edits of each other, so that scores sit near the threshold,
    tokens repeat, and partners sit at both ends of the length window a text can match."""
    vocab = draw(st.sampled_from([WORDS, WORDS[:3], [f"w{i}" for i in range(40)]]))
    bases = draw(st.lists(st.lists(st.sampled_from(vocab), min_size=1, max_size=60), min_size=1, max_size=6))
    texts = []
    for _ in range(draw(st.integers(1, 150))):
        words = _edits(draw, draw(st.sampled_from(bases + [w.split() for w in texts[-5:]])), vocab)
        texts.append(" ".join(words))
    return texts


@pytest.mark.spec("DG-09")
@settings(max_examples=150, deadline=None)
@given(_near_pools(), _threshold)
def test_near_threshold_edits_match_pairwise_reference(texts, threshold):
    """The same decisions, the same best matches and the LCS run on exactly the same pairs."""
    fast, ref = DuplicateIndex(threshold), DuplicateIndex(threshold, pairwise=True)
    assert [fast.add_if_new(t) for t in texts] == [ref.add_if_new(t) for t in texts]
    assert [fast.find(t, best=True) for t in texts[-10:]] == [ref.find(t, best=True) for t in texts[-10:]]
    assert fast.work.lcs == ref.work.lcs


_WARM = [f"common words only, {i} {i} {i} {i}" for i in range(70)]  # past the first re-ordering


@pytest.mark.spec("DG-09")
@pytest.mark.parametrize(
    "pool, candidate, kind, score",
    [
        # a 6-word text inside a 10-word one: the shortest partner a 10-word text can match (F = 0.75)
        (["a b c d e f"], "a b c d e f g h i j", "near_duplicate", 0.75),
        (["a b c d e f g h i j"], "a b c d e f", "near_duplicate", 0.75),
        # 5 inside 10: F = 2/3, one word short of the window
        (["a b c d e"], "a b c d e f g h i j", None, None),
        # a 6-word text inside an 11-word one: the longest partner (F = 12/17)
        (["p q r s t u"], "p q r s t u v w x y z", "near_duplicate", 12 / 17),
        (["p q r s t u v w x y z"], "p q r s t u", "near_duplicate", 12 / 17),
        (["p q r s t u"], "p q r s t u v w x y z z", None, None),
        # repeated tokens: the k-th copy is its own element
        (["the the the the the sea"], "the the the the sea sea", "near_duplicate", 5 / 6),
        (["the the the sea sea sea"], "the the the the the the", None, None),
        # matches that share only the commonest words, after the order has been fixed from the pool
        (_WARM + ["common words only say"], "say only common words words", None, None),
        (_WARM + ["common words only say it"], "common words only say it again", "near_duplicate", 10 / 11),
        # one word, and a long text with one word changed
        (["poem"], "poem poem", None, None),
        ([" ".join(f"t{i}" for i in range(400))], " ".join(f"t{i}" for i in range(399)) + " x", "near_duplicate", 0.9975),
    ],
)
def test_length_window_edges_and_repeated_tokens_agree(pool, candidate, kind, score):
    got = _check_both(pool, candidate)
    assert got[0] == got[1]
    assert (None if got[0] is None else (got[0][0], pytest.approx(got[0][2]))) == (None if kind is None else (kind, pytest.approx(score)))


@pytest.mark.spec("DG-09")
@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True, "0.7"])
def test_threshold_outside_rouge_range_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        DuplicateIndex(threshold)


def _work(n: int, *, pairwise: bool = False) -> tuple[dedup.SearchWork, list]:
    index, decisions = DuplicateIndex(pairwise=pairwise), []
    for text in synthetic_instructions(n, seed=1):
        decisions.append(index.add_if_new(text))
    return index.work, decisions


@pytest.mark.spec("DG-09")
def test_index_does_a_small_share_of_the_pairwise_work(monkeypatch):
    """Counted, not timed: pool items compared and LCS computations on a diverse pool."""
    calls = {"lcs": 0}
    real = dedup.lcs_length

    def counting(a, b):
        calls["lcs"] += 1
        return real(a, b)

    monkeypatch.setattr(dedup, "lcs_length", counting)
    ref, ref_decisions = _work(600, pairwise=True)
    fast, fast_decisions = _work(600)
    assert fast_decisions == ref_decisions
    assert calls["lcs"] == ref.lcs + fast.lcs
    # The reference compares every candidate with the whole pool; the index a few per cent of that.
    assert ref.pairs > 600 * 400 / 2
    assert fast.pairs + fast.lcs < 0.02 * ref.pairs
    assert fast.postings < 0.25 * ref.pairs


@pytest.mark.spec("DG-09")
def test_lcs_and_pair_work_grow_sub_quadratically():
    small, _ = _work(1000)
    large, _ = _work(4000)
    # Four times the pool: sixteen times the pairs for the pairwise rule.
    assert large.lcs < 16 ** 0.75 * max(small.lcs, 1)
    # Pairs that reach a set intersection stay well under the pairwise count at both sizes.
    assert large.pairs < 0.01 * 4000 * 4000 / 2



@pytest.mark.spec("DG-09")
@pytest.mark.parametrize("n", [600, 2000])
def test_set_intersections_grow_with_the_near_duplicates(n):
    """Counted, not timed: pool items reach an exact overlap count only when their bounds
    leave them close to passing, so those counts stay within a few times the LCS runs."""
    fast, _ = _work(n)
    assert 0 < fast.lcs
    assert fast.pairs < 3 * fast.lcs
