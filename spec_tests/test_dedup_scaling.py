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
    got = []
    for pairwise in (False, True):
        index = DuplicateIndex(pairwise=pairwise)
        for text in pool:
            index.add(text)
        got.append(index.check(candidate))
    assert got[0] == got[1]
    assert (got[0] if got[0] is None else (got[0][0], got[0][1], pytest.approx(got[0][2]))) == expected


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
