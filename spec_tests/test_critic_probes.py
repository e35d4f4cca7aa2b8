"""CR-06 / QC-09: the shipped probe set, AUROC, and which judges may filter data."""

from __future__ import annotations

import pytest

from cai_bootstrap.critic_probes import (
    BAD_INSTRUCTION_KINDS,
    BAD_PAIR_KINDS,
    DEFAULT_AUROC_BAR,
    MIN_ITEMS_PER_SIDE,
    ProbeItem,
    ProbeSetError,
    auroc,
    judge_policy,
    load_probe_set,
    mismatched_pairs,
    parse_probe_set,
)
from cai_bootstrap.prompts import demonstration_pool, instruction_pool
from cai_bootstrap.qc import QCThresholds
from cai_bootstrap.sft.data_gate import find_leaks, load_eval_instructions


@pytest.mark.spec("CR-06")
@pytest.mark.parametrize("good, bad, expected", [
    ([3.0, 2.0], [1.0, 2.0], 0.875),      # pairs: (3>1, 3>2, 2>1, 2=2 half) = 3.5 / 4
    ([1.0, 1.0], [1.0, 1.0], 0.5),        # a constant score: every pair a tie
    ([5.0, 6.0, 7.0], [1.0, 2.0], 1.0),
    ([1.0, 2.0], [5.0, 6.0, 7.0], 0.0),
    ([0.1, 0.4, 0.35, 0.8], [0.2, 0.3], 0.75),  # 0.4, 0.35 and 0.8 beat both, 0.1 neither: 6 / 8
])
def test_auroc_on_hand_examples(good, bad, expected):
    assert auroc(good, bad) == pytest.approx(expected)


def test_auroc_needs_both_sides():
    with pytest.raises(ValueError, match="both sides"):
        auroc([1.0], [])


@pytest.mark.spec("QC-09")
@pytest.mark.parametrize("aurocs, bar, filters", [
    ({"instruction": 0.68, "pair": 0.50, "relevance": 0.92}, DEFAULT_AUROC_BAR, {"instruction": False, "pair": False, "relevance": True}),
    ({"instruction": 0.75, "pair": 0.7499, "relevance": None}, DEFAULT_AUROC_BAR, {"instruction": True, "pair": False, "relevance": False}),
    ({"instruction": 0.68, "pair": 0.50}, 0.5, {"instruction": True, "pair": True}),
    ({"pair": 1.0}, 1.0, {"pair": True}),
])
def test_judge_policy_table(aurocs, bar, filters):
    assert judge_policy(aurocs, bar) == filters


def test_the_bar_is_defined_once_and_checked():
    assert QCThresholds().min_judge_auroc == DEFAULT_AUROC_BAR == 0.75
    for bad in (1.5, -0.1, True, "0.7"):
        with pytest.raises(ValueError, match="AUROC bar"):
            judge_policy({"pair": 0.9}, bad)


@pytest.mark.spec("CR-06")
def test_shipped_probe_set_has_both_sides_and_every_kind():
    p = load_probe_set()
    good_i = [it for it in p.instructions if it.good]
    bad_i = [it for it in p.instructions if not it.good]
    good_p = [it for it in p.pairs if it.good]
    bad_p = [it for it in p.pairs if not it.good]
    for side in (good_i, bad_i, good_p, bad_p):
        assert len(side) >= MIN_ITEMS_PER_SIDE
    assert {it.kind for it in bad_i} == set(BAD_INSTRUCTION_KINDS)
    assert {it.kind for it in bad_p} == set(BAD_PAIR_KINDS)
    assert len({it.kind for it in good_p}) >= 10  # many instruction kinds
    assert all(it.response for it in p.pairs) and all(it.response is None for it in p.instructions)
    assert p.describe()["sha256"] == load_probe_set().sha256 and len(p.sha256) == 64


@pytest.mark.spec("CR-06")
def test_probe_set_is_disjoint_from_the_eval_set_and_the_fewshot_pool():
    p = load_probe_set()
    texts = sorted({it.instruction for it in p.instructions + p.pairs})
    eval_items = load_eval_instructions()
    pool = [(f"pool-{k}", it.text) for k, it in enumerate(instruction_pool())]
    # Every pool the model is prompted with: the instruction examples and the answered demonstrations.
    demonstrations = [(f"demo-{k}", d.instruction) for k, d in enumerate(demonstration_pool())]
    assert [h.describe() for h in find_leaks(texts, eval_items)] == []
    assert [h.describe() for h in find_leaks(texts, pool)] == []
    assert [h.describe() for h in find_leaks(texts, demonstrations)] == []
    # The check itself sees a planted near-duplicate, so the empty result above means something.
    assert find_leaks([eval_items[0][1] + " Please."], eval_items)


@pytest.mark.spec("CR-06")
def test_mismatched_pairs_are_deterministic_and_move_every_response():
    correct = [ProbeItem("factual", True, f"Question {k}?", f"Answer {k}.") for k in range(7)]
    a, b = mismatched_pairs(correct), mismatched_pairs(correct)
    assert a == b and len(a) == 7
    assert all(m.instruction == c.instruction and m.response != c.response and not m.good for m, c in zip(a, correct))
    assert sorted(m.response for m in a) == sorted(c.response for c in correct)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("pairs"), "needs 'instructions' and 'pairs'"),
    (lambda d: d["instructions"]["bad"][0].update(kind="rude"), "is not one of"),
    (lambda d: d["pairs"]["correct"][0].pop("response"), "'response' must be a non-empty string"),
    (lambda d: d["instructions"]["good"].__delitem__(slice(1, None)), "at least 60"),
])
def test_malformed_probe_files_name_what_to_fix(mutate, message):
    import yaml
    from importlib import resources

    data = yaml.safe_load(resources.files("cai_bootstrap.data").joinpath("critic_probes.yaml").read_text())
    mutate(data)
    with pytest.raises(ProbeSetError, match=message):
        parse_probe_set(data)


@pytest.mark.spec("CR-06")
@pytest.mark.parametrize("good, bad, expected", [
    ([3.0, 2.0], [1.0, 0.5], 2.0),             # separable: the lowest good score keeps every good item
    ([0.2, 0.9, 1.4], [0.1, 0.3, 0.8], 0.9),   # J = 1 - 2/3 at 0.2, 2/3 - 0 at 0.9: 0.9 wins
    ([1.0, 1.0], [1.0, 1.0], 1.0),             # nothing separates: J = 0 everywhere, the lowest cut
    ([0.5, 2.0, 3.0], [-1.0, 1.0, 2.5], 0.5),  # J = 1/3 at 0.5 and at 2.0: the tie goes to the lower cut
])
def test_youden_threshold_on_hand_examples(good, bad, expected):
    from cai_bootstrap.critic_probes import youden_threshold

    assert youden_threshold(good, bad) == expected == min_cut_with_best_j(good, bad)


def min_cut_with_best_j(good, bad):
    """Reference: every candidate cut scored by brute force, the lowest of the best."""
    cuts = sorted(set(good) | set(bad))
    j = [sum(g >= t for g in good) / len(good) - sum(b >= t for b in bad) / len(bad) for t in cuts]
    return cuts[j.index(max(j))]


class _FakeRelevance:
    """Scores a pair by a table: what a relevance judge returns, without a model."""

    def __init__(self, table, threshold=0.0):
        self.table, self.threshold = table, threshold

    def score(self, pairs):
        from types import SimpleNamespace

        return [SimpleNamespace(score=self.table[p], is_good=self.table[p] >= self.threshold) for p in pairs]


def _probe_scores(probes):
    # good pairs score 1.0-2.0, bad ones -1.0-1.5: overlapping, so a cut of 0 accepts most bad ones
    table = {}
    for k, it in enumerate(probes.pairs):
        table[(it.instruction, it.response)] = (1.0 + (k % 10) / 10) if it.good else (-1.0 + (k % 26) / 10)
    return table


@pytest.mark.spec("CR-06")
def test_probe_chosen_relevance_threshold_is_set_recorded_and_used_for_acceptance():
    from cai_bootstrap.critic_probes import RELEVANCE_JUDGE, evaluate_probes, youden_threshold

    probes = load_probe_set()
    table = _probe_scores(probes)
    fixed = evaluate_probes(probes, relevance_judge=_FakeRelevance(table))["judges"][RELEVANCE_JUDGE]
    judge = _FakeRelevance(table)
    chosen = evaluate_probes(probes, relevance_judge=judge, relevance_threshold_from_probes=True)["judges"][RELEVANCE_JUDGE]
    good = [table[(i.instruction, i.response)] for i in probes.pairs if i.good]
    bad = [table[(i.instruction, i.response)] for i in probes.pairs if not i.good]
    assert fixed["threshold_rule"] == "fixed" and fixed["threshold"] == 0.0
    assert chosen["threshold_rule"] == "youden_j_on_probes"
    assert chosen["threshold"] == judge.threshold == youden_threshold(good, bad) > 0.0
    assert chosen["acceptance_bad"] == sum(b >= judge.threshold for b in bad) / len(bad) < fixed["acceptance_bad"]
    assert chosen["auroc"] == fixed["auroc"]  # the ranking does not depend on the cut


@pytest.mark.spec("CR-06")
def test_a_resumed_run_takes_the_probe_threshold_from_its_cache(tmp_path):
    from cai_bootstrap.critic_probes import RELEVANCE_JUDGE
    from cai_bootstrap.datagen.pipeline import probe_critics

    table = _probe_scores(load_probe_set())
    first = _FakeRelevance(table)
    path = tmp_path / "critic_probes.json"
    rec = probe_critics(None, None, first, path, bar=0.75, relevance_threshold="probes")
    assert path.is_file() and first.threshold > 0.0

    class NoScoring(_FakeRelevance):
        def score(self, pairs):
            raise AssertionError("a resumed run must not score the probes again")

    resumed = NoScoring(table)
    again = probe_critics(None, None, resumed, path, bar=0.75, relevance_threshold="probes")
    assert resumed.threshold == first.threshold == again["judges"][RELEVANCE_JUDGE]["threshold"]
    assert rec["judges"][RELEVANCE_JUDGE]["threshold"] == first.threshold
    # a fixed threshold in the config is not served from a cache chosen by the probes
    fixed = _FakeRelevance(table, threshold=0.25)
    out = probe_critics(None, None, fixed, path, bar=0.75, relevance_threshold=0.25)
    assert fixed.threshold == 0.25 and out["judges"][RELEVANCE_JUDGE]["threshold_rule"] == "fixed"
