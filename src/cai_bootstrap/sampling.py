"""Temperature -> top-k -> top-p sampling over the k kept tokens instead of the whole vocabulary.

transformers samples by sorting and normalising the full vocabulary at every step (its
top-p warper sorts all of it, then ``multinomial`` draws from all of it), although top-k
has already set all but ``k`` scores to ``-inf``. With Gemma-3's 262,144-token vocabulary
that work cost more than the model's forward pass on a CPU: at batch 48, about 0.9 s for
the top-p sort, 0.5 s for the draw and 0.2 s for top-k per decoding step, against about
0.05 s for one ``topk`` call. The decoding parameters are unchanged; only where the work
is done changes.

The distribution is the one transformers' chain defines (``TemperatureLogitsWarper``,
``TopKLogitsWarper``, ``TopPLogitsWarper``, each with ``min_tokens_to_keep=1``): the same
division by the temperature, every score at least the k-th largest kept (ties at the k-th
place included, as transformers keeps them), the same ascending cumulative-probability
cut, renormalised over what is left. Only two things differ, neither specified by
transformers: floating-point rounding of sums over k instead of 262,144 terms, and which
of several exactly tied tokens the top-p cut drops. A run draws different tokens than
transformers' sampler would for the same seed, reproducibly for a fixed seed.

``TopKTopPSampler`` plugs this into ``generate`` as the last logits processor: it draws
the token itself and leaves that token the only finite score, so ``generate``'s greedy
selection (``argmax``) returns it. Everything else ``generate`` does (repetition penalty
before it, stopping criteria, padding of finished rows, the cache) stays transformers'.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

# Recorded with every generation that uses it (loader provenance), so a run says how it sampled.
SAMPLER_NAME = "top-k-first: temperature, top-k, top-p over the k kept tokens (cai_bootstrap.sampling)"


def kept_distribution(scores: torch.Tensor, *, temperature: float, top_k: int, top_p: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and probabilities that temperature, top-k and top-p leave, per row, in ascending order.

    Returns ``(ids, probs)`` of shape ``(batch, m)`` with ``m >= min(top_k, vocab)``; ids of
    tokens that were cut carry probability 0.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 for the top-k-first sampler, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = scores / temperature if temperature != 1.0 else scores
    k = min(top_k, s.shape[-1])
    vals, ids = s.topk(k, dim=-1)
    kth = vals[..., -1:]
    # transformers removes only scores below the k-th largest: a tie at the k-th place keeps every tied token.
    n_kept = int((s >= kth).sum(dim=-1).max())
    if n_kept > k:
        vals, ids = s.topk(n_kept, dim=-1)
        vals = vals.masked_fill(vals < kth, float("-inf"))
    vals, ids = vals.flip(-1), ids.flip(-1)  # ascending, as the top-p warper sorts
    if top_p < 1.0:
        cumulative = vals.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False  # min_tokens_to_keep = 1
        vals = vals.masked_fill(remove, float("-inf"))
    return ids, vals.softmax(dim=-1)


def sample_top_k_top_p(scores: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row, drawn from :func:`kept_distribution`."""
    ids, probs = kept_distribution(scores, temperature=temperature, top_k=top_k, top_p=top_p)
    pick = torch.multinomial(probs, num_samples=1, generator=generator)
    return ids.gather(-1, pick).squeeze(-1)


class TopKTopPSampler(LogitsProcessor):
    """The last logits processor of a greedy ``generate`` call that makes it sample (see the module docstring)."""

    def __init__(self, *, temperature: float, top_k: int, top_p: float) -> None:
        kept_distribution(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p)  # validate now
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        tokens = sample_top_k_top_p(scores, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tokens.unsqueeze(-1), 0.0)
        return out
