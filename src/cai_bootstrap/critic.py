"""The single-token A/B critic: the only place that reads next-token scores (CR-01..CR-05, CG-07).

A critic prompt ends with ``Label:``; the base model's next-token distribution then says
how much it prefers ``A`` (good) over ``B`` (bad). Reading the two log-probabilities
instead of sampling a letter makes every decision deterministic, gives it a margin that
says how sure the model is, and cannot be fooled by whatever text a sampled completion
would ramble on with.

Scoring is exact under batching: rows are padded on the left with an attention mask and
explicit position ids, and with shared-prefix reuse the rubric runs through the model
once, its key/value cache is copied per batch, and each item's tokens follow it, padded
on their left (the pads then sit between rubric and item, masked out, and every real
token keeps the position it has when scored alone). Results agree with one-at-a-time
scoring to float rounding, which a test checks on a real model and on hand-built logits.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cai_bootstrap.prompts import CriticTemplate

DEFAULT_THRESHOLD = 1.0
DEFAULT_LABELS = ("A", "B")
# CR-06: a critic's margins are calibrated against its label bias when it filters data.
# The class itself stays uncalibrated unless asked, so CR-01..CR-05 decisions stay available.
CALIBRATE_FOR_FILTERING = True
# Every field of a content-free item (Calibrate Before Use, Zhao et al. 2021).
CONTENT_FREE = "N/A"
# Relevance (nats per response token) a pair needs to count as answering its instruction.
DEFAULT_RELEVANCE_THRESHOLD = 0.0
DEFAULT_BATCH_SIZE = 16
PADDING_SIDE = "left"
# Bytes of float32 logits normalised at once on CPU (about the size of a core's L2 cache).
_CPU_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CriticResult:
    """One decision (CR-04). ``is_good`` requires label A with a confident margin."""

    is_good: bool
    predicted_label: str
    logp_a: float
    logp_b: float
    margin: float
    confident: bool
    # CR-06: the content-free item's logp_A - logp_B, taken off before deciding (0.0 uncalibrated).
    # logp_a and logp_b stay the raw numbers, so the uncalibrated decision can be redone.
    calibration_offset: float = 0.0

    @property
    def difference(self) -> float:
        """Calibrated logp_A - logp_B: the signed score a probe's AUROC is computed from."""
        return self.logp_a - self.logp_b - self.calibration_offset

    def to_dict(self) -> dict:
        return {
            "is_good": self.is_good,
            "predicted_label": self.predicted_label,
            "logp_a": self.logp_a,
            "logp_b": self.logp_b,
            "margin": self.margin,
            "confident": self.confident,
            "calibration_offset": self.calibration_offset,
        }


def decide(logp_a: float, logp_b: float, *, threshold: float = DEFAULT_THRESHOLD, labels: tuple[str, str] = DEFAULT_LABELS,
           offset: float = 0.0) -> CriticResult:
    """CR-03: margin = |logp_A - logp_B - offset|; confident iff margin >= threshold; good iff A and confident.

    ``offset`` is the label bias measured on a content-free item (CR-06); 0.0 is the
    uncalibrated CR-03 rule. A tie predicts the bad label, in line with the rubric's
    "if uncertain, choose B".
    """
    if math.isnan(logp_a) or math.isnan(logp_b) or math.isnan(offset):
        raise ValueError(f"label log-probabilities and offset must be numbers, got {logp_a}, {logp_b}, {offset}")
    diff = logp_a - logp_b - offset
    margin = abs(diff)
    predicted = labels[0] if diff > 0 else labels[1]
    confident = margin >= threshold
    return CriticResult(
        is_good=predicted == labels[0] and confident,
        predicted_label=predicted,
        logp_a=float(logp_a),
        logp_b=float(logp_b),
        margin=float(margin),
        confident=confident,
        calibration_offset=float(offset),
    )


def _cache_keyword(model) -> str:
    """The forward keyword that takes a KV cache: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    import inspect

    try:
        params = inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out):
    """The KV cache a forward returned, under either name (see ``_cache_keyword``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def label_logprobs(last_logits, a_ids: Sequence[int], b_ids: Sequence[int]):
    """Log-probabilities of the two labels from next-token logits [batch, vocab].

    Each label's probability is the sum over its token variants (``A`` and `` A``), so
    the score does not depend on whether the model would put a space after ``Label:``.
    """
    import torch

    a_idx, b_idx = list(a_ids), list(b_ids)
    # On CPU a few vocabulary-sized rows at a time stay in cache where a whole batch would not;
    # on an accelerator one launch for the whole batch is cheaper.
    step = last_logits.shape[0] if last_logits.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // (4 * last_logits.shape[-1]))
    a_out, b_out = [], []
    for start in range(0, last_logits.shape[0], step):
        logp = torch.log_softmax(last_logits[start : start + step].float(), dim=-1)
        a_out.append(torch.logsumexp(logp[:, a_idx], dim=-1))
        b_out.append(torch.logsumexp(logp[:, b_idx], dim=-1))
    return torch.cat(a_out), torch.cat(b_out)


def label_token_ids(lm, label: str) -> list[int]:
    """CR-02: the single-token ids of ``label`` and `` label``; anything else is a construction error."""
    if not isinstance(label, str) or not label or label != label.strip():
        raise ValueError(f"a critic label must be a non-empty string without surrounding spaces, got {label!r}")
    ids: list[int] = []
    for variant in (label, " " + label):
        toks = list(lm.encode_continuation(variant))
        if len(toks) != 1:
            raise ValueError(
                f"critic label variant {variant!r} is {len(toks)} tokens {toks} for this tokenizer; "
                "a label must be a single token with and without a leading space (use a letter such as 'A'/'B')"
            )
        if toks[0] not in ids:
            ids.append(int(toks[0]))
    return ids


class Critic:
    """Scores items of one critic template with next-token A/B log-probabilities.

    ``prefix_reuse=True`` runs the template's rubric prefix through the model once and
    scores only the item tokens per row; ``False`` scores full left-padded prompts. Both
    give the same results; the first is several times faster for long rubrics.

    ``calibrate=True`` scores a content-free item (every field ``N/A``) once and takes its
    logp_A - logp_B off every item's before deciding (CR-06): a model that prefers A
    whatever it reads then no longer accepts everything.
    """

    def __init__(
        self,
        lm,
        template: CriticTemplate,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        labels: tuple[str, str] = DEFAULT_LABELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        prefix_reuse: bool = True,
        calibrate: bool = False,
    ) -> None:
        if not isinstance(template, CriticTemplate):
            raise TypeError("template must be a prompts.CriticTemplate (instruction_critic_template() or pair_critic_template())")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(labels) != 2 or labels[0] == labels[1]:
            raise ValueError(f"labels must be two different strings (good, bad), got {labels!r}")
        self.lm = lm
        self.template = template
        self.threshold = float(threshold)
        self.labels = (labels[0], labels[1])
        self.batch_size = batch_size
        self.prefix_reuse = bool(prefix_reuse)
        self.calibrate = bool(calibrate)
        self._offset: float | None = None
        self.a_ids = label_token_ids(lm, labels[0])
        self.b_ids = label_token_ids(lm, labels[1])
        shared = set(self.a_ids) & set(self.b_ids)
        if shared:
            raise ValueError(f"labels {labels!r} share token ids {sorted(shared)}; they could not be told apart")
        self._prefix_ids: list[int] | None = None
        self._prefix_cache = None
        self.last_run: dict[str, int] = {}

    # -- public API ------------------------------------------------------------------------

    def render(self, item: Any) -> str:
        """Full prompt for an item: a mapping of the template's fields, a tuple in field order, or a string."""
        fields = self.template.fields
        if isinstance(item, Mapping):
            return self.template.render(**item)
        if isinstance(item, str):
            if len(fields) != 1:
                raise ValueError(f"{self.template.name} needs fields {list(fields)}; give a mapping or tuple, not a string")
            return self.template.render(**{fields[0]: item})
        if isinstance(item, (tuple, list)) and len(item) == len(fields):
            return self.template.render(**dict(zip(fields, item)))
        raise TypeError(f"cannot render {type(item).__name__} for {self.template.name}; fields are {list(fields)}")

    def score(self, items: Sequence[Any]) -> list[CriticResult]:
        return self.score_prompts([self.render(i) for i in items])

    def score_prompts(self, prompts: Sequence[str]) -> list[CriticResult]:
        offset = self.calibration_offset() if self.calibrate else 0.0
        a, b = self.logprobs(prompts)
        return [decide(x, y, threshold=self.threshold, labels=self.labels, offset=offset) for x, y in zip(a, b)]

    def content_free_prompt(self) -> str:
        return self.template.render(**{f: CONTENT_FREE for f in self.template.fields})

    def calibration_offset(self) -> float:
        """logp_A - logp_B of the content-free item: the label bias, scored once on the same path as items."""
        if self._offset is None:
            a, b = self.logprobs([self.content_free_prompt()])
            self._offset = a[0] - b[0]
        return self._offset

    def logprobs(self, prompts: Sequence[str]) -> tuple[list[float], list[float]]:
        """Label log-probabilities per prompt, in input order."""
        import torch

        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p:
                raise ValueError(f"prompt {i} must be a non-empty string")
        n = len(prompts)
        out_a: list[float | None] = [None] * n
        out_b: list[float | None] = [None] * n
        suffixes: dict[int, list[int]] = {}
        plain: list[int] = []
        if self.prefix_reuse:
            prefix_ids = self._prefix()
            starts = [i for i, p in enumerate(prompts) if p.startswith(self.template.prefix)]
            encoded = dict(zip(starts, self.lm.encode_many([prompts[i] for i in starts])))
            for i in range(n):
                ids = encoded.get(i)
                # Only a token-exact split is reused; BPE merges across the boundary fall back.
                if ids is not None and len(ids) > len(prefix_ids) and ids[: len(prefix_ids)] == prefix_ids:
                    suffixes[i] = ids[len(prefix_ids) :]
                else:
                    plain.append(i)
        else:
            plain = list(range(n))
        with torch.inference_mode():
            if suffixes:
                self._score_suffixes(suffixes, out_a, out_b)
            if plain:
                self._score_plain(plain, prompts, out_a, out_b)
        self.last_run = {"n_items": n, "prefix_reused": len(suffixes), "plain": len(plain)}
        return [float(x) for x in out_a], [float(x) for x in out_b]  # type: ignore[arg-type]

    @property
    def provenance(self) -> dict:
        """What decided: labels and their token ids, threshold, and the batch configuration (CR-05)."""
        prov = {
            "scoring": "next_token_logprob",
            "labels": list(self.labels),
            "label_token_ids": {self.labels[0]: self.a_ids, self.labels[1]: self.b_ids},
            "threshold": self.threshold,
            "batch_size": self.batch_size,
            "padding_side": PADDING_SIDE,
            "position_ids": "from attention mask",
            "prefix_reuse": self.prefix_reuse,
            "calibrate": self.calibrate,
            **self.template.provenance(),
            "prefix_sha256": hashlib.sha256(self.template.prefix.encode("utf-8")).hexdigest(),
        }
        if self.prefix_reuse:
            # Counted without scoring if this process scored nothing (a finished run rerun), so
            # the rerun writes the same QC summary and a gate that pinned it stays valid.
            prov["prefix_tokens"] = len(self._prefix_ids if self._prefix_ids is not None else self.lm.encode(self.template.prefix))
        if self.calibrate:
            prov["content_free_item"] = CONTENT_FREE
            # Computed here if this process scored nothing (a resumed or finished run), so a rerun
            # records the same summary as the run that scored everything.
            prov["calibration_offset"] = self.calibration_offset()
        if self.last_run:
            prov["last_run"] = dict(self.last_run)
        return prov

    # -- scoring paths -----------------------------------------------------------------------

    def _device(self):
        return self.lm.device

    def _prefix(self) -> list[int]:
        if self._prefix_ids is None:
            import torch

            ids = self.lm.encode(self.template.prefix)
            self.lm.check_ids(ids)
            with torch.inference_mode():
                out = self.lm.model(
                    input_ids=torch.tensor([ids], dtype=torch.long, device=self._device()),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self._device()),
                    position_ids=torch.arange(len(ids), device=self._device()).unsqueeze(0),
                    use_cache=True,
                    logits_to_keep=1,
                )
            self._prefix_cache = _returned_cache(out)
            self._prefix_ids = ids
        return self._prefix_ids

    def _batches(self, order: list[int]) -> list[list[int]]:
        return [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]

    def _store(self, idx: Sequence[int], last_logits, out_a: list, out_b: list) -> None:
        a, b = label_logprobs(last_logits, self.a_ids, self.b_ids)
        for i, x, y in zip(idx, a.tolist(), b.tolist()):
            out_a[i] = x
            out_b[i] = y

    def _score_suffixes(self, suffixes: dict[int, list[int]], out_a: list, out_b: list) -> None:
        import torch

        prefix_ids = self._prefix()
        P = len(prefix_ids)
        dev = self._device()
        order = sorted(suffixes, key=lambda i: -len(suffixes[i]))
        for idx in self._batches(order):
            # prefix_ids + row is exactly the checked encoding of the full prompt (see logprobs).
            rows = [suffixes[i] for i in idx]
            B, S = len(rows), max(len(r) for r in rows)
            input_ids = torch.full((B, S), self.lm.pad_token_id, dtype=torch.long)
            suffix_mask = torch.zeros((B, S), dtype=torch.long)
            for j, r in enumerate(rows):
                input_ids[j, S - len(r) :] = torch.tensor(r, dtype=torch.long)
                suffix_mask[j, S - len(r) :] = 1
            attention_mask = torch.cat([torch.ones((B, P), dtype=torch.long), suffix_mask], dim=1)
            position_ids = P + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
            cache = copy.deepcopy(self._prefix_cache)
            if B > 1:
                cache.batch_repeat_interleave(B)
            out = self.lm.model(
                input_ids=input_ids.to(dev),
                attention_mask=attention_mask.to(dev),
                position_ids=position_ids.to(dev),
                use_cache=True,
                logits_to_keep=1,
                **{_cache_keyword(self.lm.model): cache},
            )
            self._store(idx, out.logits[:, -1, :], out_a, out_b)

    def _score_plain(self, plain: list[int], prompts: Sequence[str], out_a: list, out_b: list) -> None:
        dev = self._device()
        order = sorted(plain, key=lambda i: -len(prompts[i]))
        for idx in self._batches(order):
            input_ids, attention_mask = self.lm.encode_batch([prompts[i] for i in idx])
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = self.lm.model(
                input_ids=input_ids.to(dev),
                attention_mask=attention_mask.to(dev),
                position_ids=position_ids.to(dev),
                use_cache=False,
                logits_to_keep=1,
            )
            self._store(idx, out.logits[:, -1, :], out_a, out_b)


def instruction_critic(lm, *, constitution=None, **kwargs) -> Critic:
    """The instruction critic (PR-04) with principles from the constitution."""
    from cai_bootstrap.prompts import instruction_critic_template

    return Critic(lm, instruction_critic_template(constitution), **kwargs)


def pair_critic(lm, *, constitution=None, **kwargs) -> Critic:
    """The instruction-response pair critic (PR-05) with principles from the constitution."""
    from cai_bootstrap.prompts import pair_critic_template

    return Critic(lm, pair_critic_template(constitution), **kwargs)


# -- CR-06: the relevance judge ---------------------------------------------------------------


@dataclass(frozen=True)
class RelevanceResult:
    """One relevance decision: is_good iff ``score`` (conditional minus unconditional mean
    per-token log-probability of the response) reaches ``threshold``."""

    is_good: bool
    score: float
    logp_conditional: float
    logp_unconditional: float
    n_tokens: int
    threshold: float

    def to_dict(self) -> dict:
        return {
            "is_good": self.is_good,
            "score": self.score,
            "logp_conditional": self.logp_conditional,
            "logp_unconditional": self.logp_unconditional,
            "n_tokens": self.n_tokens,
            "threshold": self.threshold,
        }


def continuation_logprobs(lm, contexts: Sequence[str], continuations: Sequence[str], *,
                          batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation after its context.

    The context is encoded once (``encode``: BOS and the contamination checks) and the
    continuation's own tokens (``encode_continuation``) are appended, so the boundary is
    exactly where the caller put it whatever BPE would merge across it. Rows are left
    padded with an attention mask and position ids from the mask, as in ``Critic``, so a
    row scores the same in any batch; only the last positions' logits are kept.
    """
    import torch

    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; give one of each per item")
    for i, (c, t) in enumerate(zip(contexts, continuations)):
        if not isinstance(c, str) or not c or not isinstance(t, str) or not t:
            raise ValueError(f"item {i}: context and continuation must be non-empty strings")
    ctx_ids = lm.encode_many(list(contexts))
    cont_ids = [lm.encode_continuation(t) for t in continuations]
    rows = []
    for i, (c, t) in enumerate(zip(ctx_ids, cont_ids)):
        if not c or not t:
            raise ValueError(f"item {i}: context or continuation encodes to no tokens")
        lm.check_ids(c + t)
        rows.append((c + t, len(t)))
    out: list[tuple[float, int] | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    dev = lm.device
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            input_ids, attention_mask = lm.pad_left([rows[i][0] for i in idx])
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(rows[i][1] for i in idx)
            logits = lm.model(
                input_ids=input_ids.to(dev),
                attention_mask=attention_mask.to(dev),
                position_ids=position_ids.to(dev),
                use_cache=False,
                logits_to_keep=keep + 1,
            ).logits[:, -(keep + 1) : -1, :]
            targets = input_ids[:, -keep:].to(logits.device)
            for j, i in enumerate(idx):
                n = rows[i][1]
                # One row at a time: a float32 copy of [batch, tokens, vocab] would not fit on CPU.
                logp = torch.log_softmax(logits[j, keep - n :, :].float(), dim=-1)
                tok = logp.gather(-1, targets[j, keep - n :].unsqueeze(-1)).squeeze(-1)
                out[i] = (float(tok.sum()), n)
    return out  # type: ignore[return-value]


class RelevanceJudge:
    """The second pair judge (CR-06): how much more likely the response is after its
    instruction than after the bare response frame, per response token.

    A response that answers its instruction gains from reading it; one written for
    another instruction, or for none, does not. Unlike the A/B critic it asks the model
    nothing, so it has no label bias to calibrate.
    """

    def __init__(self, lm, *, threshold: float = DEFAULT_RELEVANCE_THRESHOLD, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise ValueError(f"relevance threshold must be a number, got {threshold!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.lm = lm
        self.threshold = float(threshold)
        self.batch_size = batch_size

    @staticmethod
    def _fields(item: Any) -> tuple[str, str]:
        if isinstance(item, Mapping):
            return item["instruction"], item["response"]
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1]
        raise TypeError(f"a relevance item is (instruction, response) or a mapping with both, got {type(item).__name__}")

    def score(self, items: Sequence[Any]) -> list[RelevanceResult]:
        from cai_bootstrap.prompts import render_bare_response_frame, render_response_prompt

        pairs = [self._fields(i) for i in items]
        if not pairs:
            return []
        bare = render_bare_response_frame()
        # The response follows the frame after one space, as in the SFT record's completion.
        conts = [" " + r.strip() for _, r in pairs]
        contexts = [render_response_prompt(ins) for ins, _ in pairs] + [bare] * len(pairs)
        scored = continuation_logprobs(self.lm, contexts, conts + conts, batch_size=self.batch_size)
        results = []
        for k in range(len(pairs)):
            (cs, n), (us, _) = scored[k], scored[len(pairs) + k]
            cond, uncond = cs / n, us / n
            rel = cond - uncond
            results.append(RelevanceResult(is_good=rel >= self.threshold, score=rel, logp_conditional=cond,
                                           logp_unconditional=uncond, n_tokens=n, threshold=self.threshold))
        return results

    @property
    def provenance(self) -> dict:
        from cai_bootstrap.prompts import render_bare_response_frame

        return {
            "scoring": "mean_token_logprob_conditional_minus_unconditional",
            "threshold": self.threshold,
            "batch_size": self.batch_size,
            "padding_side": PADDING_SIDE,
            "position_ids": "from attention mask",
            "unconditional_frame": render_bare_response_frame(),
        }


def relevance_judge(lm, **kwargs) -> RelevanceJudge:
    """The relevance pair judge (CR-06)."""
    return RelevanceJudge(lm, **kwargs)
