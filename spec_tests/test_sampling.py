"""PR-02: sampling over the k kept tokens draws from exactly the distribution transformers' chain defines."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from cai_bootstrap.sampling import TopKTopPSampler, kept_distribution, sample_top_k_top_p


def reference_probs(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' own chain, as ``generate(do_sample=True)`` builds it, over the whole vocabulary."""
    s = scores.clone()
    ids = torch.zeros(s.shape[0], 1, dtype=torch.long)
    if temperature != 1.0:
        s = TemperatureLogitsWarper(temperature)(ids, s)
    s = TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1)(ids, s)
    if top_p < 1.0:
        s = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1)(ids, s)
    return s.softmax(dim=-1)


def fast_probs(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    ids, probs = kept_distribution(scores, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.zeros_like(scores).scatter_(-1, ids, probs)


def _scores(seed: int, batch: int, vocab: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("temperature, top_k, top_p, vocab, scale", [
    (0.4, 50, 0.9, 5000, 3.0),    # the response defaults
    (0.7, 50, 0.9, 5000, 3.0),    # the instruction defaults
    (1.0, 50, 0.9, 5000, 1.0),    # no temperature warper
    (0.4, 50, 1.0, 5000, 3.0),    # no top-p warper
    (0.5, 7, 0.5, 300, 2.0),      # a small k and a tight nucleus
    (0.4, 500, 0.9, 300, 2.0),    # k above the vocabulary
    (0.4, 50, 0.9, 5000, 12.0),   # peaked: top-p keeps one token
])
def test_kept_distribution_equals_the_transformers_chain(temperature, top_k, top_p, vocab, scale):
    scores = _scores(vocab + top_k, 16, vocab, scale)
    ref = reference_probs(scores, temperature, top_k, top_p)
    fast = fast_probs(scores, temperature, top_k, top_p)
    assert torch.equal(ref > 0, fast > 0), "the kept tokens differ"
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.spec("PR-02")
def test_ties_at_the_kth_place_are_kept_as_transformers_keeps_them():
    scores = torch.full((2, 100), -5.0)
    scores[:, :3] = torch.tensor([4.0, 3.0, 2.0])
    scores[0, 10:14] = 2.0  # four more tokens tied with the 3rd largest
    ref = reference_probs(scores, 0.4, 3, 1.0)
    fast = fast_probs(scores, 0.4, 3, 1.0)
    assert int((ref[0] > 0).sum()) == 7 and int((ref[1] > 0).sum()) == 3
    assert torch.equal(ref > 0, fast > 0)
    torch.testing.assert_close(fast, ref)


@pytest.mark.spec("PR-02")
def test_draws_follow_the_kept_distribution():
    """20,000 draws from one row: each token's frequency within 5 standard errors of its probability."""
    scores = _scores(3, 1, 2000, 2.0)
    probs = reference_probs(scores, 0.7, 50, 0.9)[0]
    torch.manual_seed(0)
    n = 20_000
    draws = sample_top_k_top_p(scores.expand(n, -1), temperature=0.7, top_k=50, top_p=0.9)
    freq = torch.bincount(draws, minlength=probs.numel()).double() / n
    assert set(draws.unique().tolist()) <= set(torch.nonzero(probs).flatten().tolist())
    se = (probs.double() * (1 - probs.double()) / n).sqrt().clamp_min(1e-4)
    assert float(((freq - probs.double()).abs() / se).max()) < 5


@pytest.mark.spec("PR-02")
def test_the_sampler_leaves_greedy_selection_one_choice():
    scores = _scores(5, 4, 1000, 2.0)
    torch.manual_seed(1)
    out = TopKTopPSampler(temperature=0.4, top_k=50, top_p=0.9)(torch.zeros(4, 1, dtype=torch.long), scores.clone())
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1, 1, 1]
    picked = out.argmax(dim=-1)
    allowed = reference_probs(scores, 0.4, 50, 0.9) > 0
    assert bool(allowed.gather(-1, picked[:, None]).all())


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("kwargs", [dict(temperature=0.4, top_k=0, top_p=0.9), dict(temperature=0.0, top_k=50, top_p=0.9),
                                    dict(temperature=0.4, top_k=50, top_p=0.0)])
def test_bad_sampler_settings_fail_when_built(kwargs):
    with pytest.raises(ValueError):
        TopKTopPSampler(**kwargs)


@pytest.mark.spec("PR-02")
def test_sampled_generation_is_reproducible_and_seed_dependent(tiny_lm):
    prompts = ["Instruction: Say hi.\nResponse:", "Instruction: Name a color.\nResponse:"]
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.5, top_p=0.9, top_k=50, progress=False)
    a = [g.token_ids for g in tiny_lm.generate(prompts, seed=3, **kw)]
    b = [g.token_ids for g in tiny_lm.generate(prompts, seed=3, **kw)]
    c = [g.token_ids for g in tiny_lm.generate(prompts, seed=4, **kw)]
    assert a == b
    assert a != c
