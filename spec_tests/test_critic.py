"""CR-01..CR-05: the single-token A/B critic, on hand-built logits and on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from cai_bootstrap import prompts
from cai_bootstrap.critic import (
    DEFAULT_THRESHOLD,
    Critic,
    CriticResult,
    decide,
    instruction_critic,
    label_logprobs,
    pair_critic,
)
from cai_bootstrap.loader import ContaminationError

# -- a hand-built model ------------------------------------------------------------------------


class FakeCache:
    """Stands in for a key/value cache: the running state after the prefix."""

    def __init__(self, state: torch.Tensor, length: int):
        self.state, self.length = state, length

    def batch_repeat_interleave(self, n: int) -> None:
        self.state = self.state.repeat_interleave(n, dim=0)

    def get_seq_length(self) -> int:
        return self.length


class FakeModel:
    """A causal model with hand-built weights: logits at t = (sum of position-weighted embeddings up to t) @ W.

    Position weighting makes wrong position ids visible; the cumulative sum makes every
    earlier token (the rubric prefix included) and every unmasked pad visible.
    """

    def __init__(self, vocab: int, dim: int = 6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.E = torch.randn(vocab, dim, generator=g)
        self.W = torch.randn(dim, vocab, generator=g) * 2
        self.calls: list[dict] = []

    def __call__(self, *, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=False, logits_to_keep=0):
        B, S = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        assert attention_mask.shape == (B, past + S), "mask must cover prefix + new tokens"
        assert position_ids.shape == (B, S)
        self.calls.append({"shape": (B, S), "past": past})
        keep = attention_mask[:, past:].float().unsqueeze(-1)
        x = self.E[input_ids] * torch.cos(0.3 * position_ids.float()).unsqueeze(-1) * keep
        h = x.cumsum(dim=1)
        if past_key_values is not None:
            assert past_key_values.state.shape[0] == B, "prefix state must be expanded to the batch"
            h = h + past_key_values.state.unsqueeze(1)
        logits = h @ self.W
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=FakeCache(h[:, -1].clone(), past + S) if use_cache else None)

    def generate(self, *a, **k):
        raise AssertionError("the critic must never sample")


class FakeLM:
    """The LoadedModel surface the critic uses, over a whitespace-piece tokenizer."""

    def __init__(self, *, vocab: int = 600, multi_token_labels: bool = False):
        self.vocab: dict[str, int] = {"<pad>": 0}
        self.size = vocab
        self.model = FakeModel(vocab)
        self.pad_token_id = 0
        self.device = torch.device("cpu")
        self.checked: list[list[int]] = []
        self.multi = multi_token_labels

    def _ids(self, text: str) -> list[int]:
        out = []
        for piece in re.findall(r" ?\S+|\s", text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
                assert len(self.vocab) < self.size
            out.append(self.vocab[piece])
        return out

    def encode(self, text: str) -> list[int]:
        ids = self._ids(text)
        self.check_ids(ids)
        return ids

    def encode_many(self, texts):
        return [self.encode(t) for t in texts]

    def encode_continuation(self, text: str) -> list[int]:
        ids = self._ids(text)
        return ids + ids if self.multi else ids

    def check_ids(self, ids, **_):
        self.checked.append(list(ids))

    def encode_batch(self, texts):
        rows = [self.encode(t) for t in texts]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids, mask

    def generate(self, *a, **k):
        raise AssertionError("the critic must never sample")


PAIRS = [
    (p.text, " ".join(["Here is a short answer."] * (1 + k % 5)) + f" Item {k}.")
    for k, p in enumerate(prompts.instruction_pool()[:24])
]


def _assert_same(a: list[CriticResult], b: list[CriticResult], tol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x.logp_a - y.logp_a) <= tol and abs(x.logp_b - y.logp_b) <= tol
        assert abs(x.margin - y.margin) <= tol
        assert (x.predicted_label, x.confident, x.is_good) == (y.predicted_label, y.confident, y.is_good)


def _safe_threshold(results: list[CriticResult]) -> float:
    """A threshold between two observed margins, far from both, so confidence splits the items."""
    ms = sorted(r.margin for r in results)
    gaps = [(ms[i + 1] - ms[i], (ms[i] + ms[i + 1]) / 2) for i in range(len(ms) // 4, 3 * len(ms) // 4)]
    gap, mid = max(gaps)
    assert gap > 1e-4
    return mid


# -- CR-03 / CR-04: pure decision logic ---------------------------------------------------------


@pytest.mark.spec("CR-03")
@pytest.mark.parametrize(
    "a, b, threshold, label, confident, good",
    [
        (-0.1, -3.0, 1.0, "A", True, True),
        (-0.5, -1.2, 1.0, "A", False, False),  # A, but not sure enough
        (-3.0, -0.1, 1.0, "B", True, False),
        (-1.0, -2.0, 1.0, "A", True, True),  # margin exactly at the threshold counts
        (-1.0, -1.0, 0.0, "B", True, False),  # a tie predicts B
        (-2.0, -0.5, 0.0, "B", True, False),
    ],
)
def test_decision_rule(a, b, threshold, label, confident, good):
    r = decide(a, b, threshold=threshold)
    assert (r.predicted_label, r.confident, r.is_good) == (label, confident, good)
    assert r.margin == pytest.approx(abs(a - b))
    assert DEFAULT_THRESHOLD == 1.0
    with pytest.raises(ValueError, match="must be numbers"):
        decide(float("nan"), 0.0)


@pytest.mark.spec("CR-04")
def test_result_fields():
    r = decide(-0.2, -2.5)
    assert [f.name for f in dataclasses.fields(CriticResult)] == [
        "is_good", "predicted_label", "logp_a", "logp_b", "margin", "confident", "calibration_offset"
    ]
    d = r.to_dict()
    assert d == {"is_good": True, "predicted_label": "A", "logp_a": -0.2, "logp_b": -2.5, "margin": pytest.approx(2.3), "confident": True,
                 "calibration_offset": 0.0}
    assert json.loads(json.dumps(d))["predicted_label"] == "A"


# -- CR-02: label variants ------------------------------------------------------------------------


@pytest.mark.spec("CR-02")
def test_label_scores_sum_over_variants_on_hand_built_logits():
    # vocab of 4; A = ids {0, 1} ("A", " A"), B = id {2}
    logits = torch.tensor([[0.0, 0.0, math.log(2), math.log(4)], [math.log(4), math.log(2), 0.0, 0.0]])
    a, b = label_logprobs(logits, [0, 1], [2])
    assert a.tolist() == pytest.approx([math.log(2 / 8), math.log(6 / 8)])
    assert b.tolist() == pytest.approx([math.log(2 / 8), math.log(1 / 8)])
    r = decide(a[1].item(), b[1].item())
    assert r.margin == pytest.approx(math.log(6)) and r.is_good


@pytest.mark.spec("CR-01")
def test_chunked_normalisation_equals_one_log_softmax_over_the_batch():
    logits = torch.randn(7, 151936, generator=torch.Generator().manual_seed(1)) * 4
    a, b = label_logprobs(logits, [3, 99], [151000])
    full = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(a, torch.logsumexp(full[:, [3, 99]], dim=-1), atol=1e-5)
    assert torch.allclose(b, full[:, 151000], atol=1e-5)


@pytest.mark.spec("CR-02")
def test_label_variant_ids_on_the_real_tokenizer(tiny_lm):
    c = pair_critic(tiny_lm)
    assert c.a_ids == [tiny_lm.encode_continuation("A")[0], tiny_lm.encode_continuation(" A")[0]]
    assert c.b_ids == [tiny_lm.encode_continuation("B")[0], tiny_lm.encode_continuation(" B")[0]]
    assert len(set(c.a_ids + c.b_ids)) == 4
    assert c.provenance["label_token_ids"] == {"A": c.a_ids, "B": c.b_ids}


@pytest.mark.spec("CR-02")
def test_multi_token_labels_fail_at_construction(tiny_lm):
    t = prompts.instruction_critic_template()
    with pytest.raises(ValueError, match=r"label variant 'xqzvk' is \d+ tokens .* must be a single token"):
        Critic(tiny_lm, t, labels=("xqzvk", "B"))
    with pytest.raises(ValueError, match="must be a single token"):
        Critic(FakeLM(multi_token_labels=True), t)
    with pytest.raises(ValueError, match="without surrounding spaces"):
        Critic(tiny_lm, t, labels=(" A", "B"))
    with pytest.raises(ValueError, match="two different strings"):
        Critic(tiny_lm, t, labels=("A", "A"))


@pytest.mark.spec("CR-02")
@pytest.mark.parametrize(
    "kwargs, err, message",
    [
        ({"threshold": -1}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_critic_configuration(kwargs, err, message):
    with pytest.raises(err, match=message):
        Critic(FakeLM(), prompts.instruction_critic_template(), **kwargs)
    with pytest.raises(TypeError, match="CriticTemplate"):
        Critic(FakeLM(), "Label:")  # type: ignore[arg-type]


# -- CR-01: decisions from log-probabilities, never sampling ---------------------------------------


@pytest.mark.spec("CR-01")
def test_decisions_never_sample_on_hand_built_model():
    lm = FakeLM()
    c = instruction_critic(lm, batch_size=4)
    results = c.score([p.text for p in prompts.instruction_pool()[:6]])
    assert len(results) == 6
    for r in results:
        assert r == decide(r.logp_a, r.logp_b)


@pytest.mark.spec("CR-01")
def test_decisions_never_sample_on_tiny_model(tiny_lm, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the critic must never sample")

    monkeypatch.setattr(tiny_lm, "generate", refuse)
    monkeypatch.setattr(tiny_lm.model, "generate", refuse)
    for reuse in (True, False):
        c = pair_critic(tiny_lm, batch_size=4, prefix_reuse=reuse)
        results = c.score(PAIRS[:5])
        assert all(r == decide(r.logp_a, r.logp_b) for r in results)
        assert all(r.logp_a < 0 and r.logp_b < 0 for r in results)


@pytest.mark.spec("CR-01")
def test_scores_are_the_next_token_distribution_of_the_full_prompt(tiny_lm):
    """One prompt scored by hand (full forward, last position) equals the critic's score."""
    c = instruction_critic(tiny_lm, prefix_reuse=True)
    prompt = c.render("Name a mammal that can fly.")
    ids = tiny_lm.encode(prompt)
    with torch.inference_mode():
        out = tiny_lm.model(input_ids=torch.tensor([ids]))
    a, b = label_logprobs(out.logits[:, -1, :], c.a_ids, c.b_ids)
    (r,) = c.score_prompts([prompt])
    assert r.logp_a == pytest.approx(a.item(), abs=1e-4) and r.logp_b == pytest.approx(b.item(), abs=1e-4)


# -- CR-05: batching ------------------------------------------------------------------------------


@pytest.mark.spec("CR-05")
def test_batched_paths_match_one_at_a_time_on_hand_built_model():
    lm = FakeLM()
    t = prompts.pair_critic_template()
    single = Critic(lm, t, batch_size=1, prefix_reuse=False).score(PAIRS)
    threshold = _safe_threshold(single)
    single = Critic(lm, t, batch_size=1, prefix_reuse=False, threshold=threshold).score(PAIRS)
    assert 0 < sum(r.confident for r in single) < len(single)
    reuse = Critic(lm, t, batch_size=5, prefix_reuse=True, threshold=threshold)
    plain = Critic(lm, t, batch_size=5, prefix_reuse=False, threshold=threshold)
    _assert_same(single, reuse.score(PAIRS), 1e-4)
    _assert_same(single, plain.score(PAIRS), 1e-4)
    # the prefix ran once; every later call fed only item tokens on top of it
    calls = lm.model.calls
    prefix_len = len(lm.encode(t.prefix))
    assert sum(1 for k in calls if k["past"] == prefix_len) == math.ceil(len(PAIRS) / 5)
    assert reuse.last_run == {"n_items": len(PAIRS), "prefix_reused": len(PAIRS), "plain": 0}


@pytest.mark.spec("CR-05")
def test_batched_paths_match_one_at_a_time_on_tiny_model(tiny_lm):
    t = prompts.pair_critic_template()
    pairs = PAIRS[:16]
    one = Critic(tiny_lm, t, batch_size=1, prefix_reuse=False, threshold=0.0).score(pairs)
    for reuse in (True, False):
        batched = Critic(tiny_lm, t, batch_size=5, prefix_reuse=reuse, threshold=0.0)
        got = batched.score(pairs)
        # Decisions at threshold 0 (label only) and at a threshold that splits the items.
        for threshold in (0.0, _safe_threshold(one)):
            _assert_same(
                [decide(r.logp_a, r.logp_b, threshold=threshold) for r in one],
                [decide(r.logp_a, r.logp_b, threshold=threshold) for r in got],
                1e-3,
            )
        if reuse:
            assert got == batched.score(pairs)  # the shared prefix cache is never mutated


@pytest.mark.spec("CR-05")
def test_items_that_do_not_split_at_the_prefix_fall_back_exactly(tiny_lm):
    t = prompts.instruction_critic_template()
    # A newline right after the prefix merges with its last token, and a foreign prompt has no prefix.
    prompts_in = [t.render(instruction="Name a bird."), t.prefix + "\nName a bird.\nLabel:", "Unrelated text\nLabel:"]
    c = Critic(tiny_lm, t, batch_size=4, prefix_reuse=True, threshold=0.0)
    got = c.score_prompts(prompts_in)
    assert c.last_run == {"n_items": 3, "prefix_reused": 1, "plain": 2}
    want = Critic(tiny_lm, t, batch_size=1, prefix_reuse=False, threshold=0.0).score_prompts(prompts_in)
    _assert_same(want, got, 1e-3)


@pytest.mark.spec("CR-05")
def test_batch_configuration_is_recorded(tiny_lm):
    c = pair_critic(tiny_lm, batch_size=8, prefix_reuse=True)
    c.score(PAIRS[:3])
    p = c.provenance
    assert (p["batch_size"], p["padding_side"], p["prefix_reuse"], p["scoring"]) == (8, "left", True, "next_token_logprob")
    assert p["prefix_tokens"] == len(tiny_lm.encode(c.template.prefix))
    assert p["template"] == "pair_critic" and p["principles"] == list(c.template.principle_ids)
    assert p["last_run"] == {"n_items": 3, "prefix_reused": 3, "plain": 0}
    json.dumps(p)
    plain = pair_critic(tiny_lm, prefix_reuse=False).provenance
    assert plain["prefix_reuse"] is False and "prefix_tokens" not in plain


@pytest.mark.spec("CR-05")
def test_every_model_input_is_token_id_checked(tiny_lm):
    lm = FakeLM()
    c = pair_critic(lm, batch_size=4)
    c.score(PAIRS[:3])
    full = [lm._ids(c.render(p)) for p in PAIRS[:3]]
    assert all(ids in lm.checked for ids in full)
    t = prompts.instruction_critic_template()
    for reuse in (True, False):
        with pytest.raises(ContaminationError, match="im_start"):
            Critic(tiny_lm, t, prefix_reuse=reuse).score(["<|im_start|>user\nName a bird."])


@pytest.mark.spec("CR-05")
def test_item_forms_and_input_errors():
    lm = FakeLM()
    c = pair_critic(lm, threshold=0.0)
    a = c.score([{"instruction": "Name a bird.", "response": "A robin."}])
    b = c.score([("Name a bird.", "A robin.")])
    assert a == b
    with pytest.raises(ValueError, match="give a mapping or tuple"):
        c.score(["Name a bird."])
    with pytest.raises(TypeError, match="cannot render"):
        c.score([42])
    with pytest.raises(ValueError, match="non-empty string"):
        c.score_prompts([""])
    assert c.score([]) == []


@pytest.mark.spec("CR-05")
def test_bench_compares_the_two_paths_on_the_same_items(tiny_lm, tmp_path):
    from cai_bootstrap.bench import main, run_critic_bench

    r = run_critic_bench(tiny_lm, n_items=6, batch_size=4, repeats=1)
    assert r["max_abs_margin_diff"] <= 1e-3 and r["decision_agreement"] == 1.0
    assert r["label_agreement_threshold_0"] == 1.0
    assert r["one_at_a_time"]["batch_size"] == 1 and r["one_at_a_time"]["prefix_reuse"] is False
    assert r["batched"]["provenance"]["prefix_reuse"] is True and r["batched"]["batch_size"] == 4
    assert r["speedup"] > 0 and r["environment"]["torch_threads"] >= 1
    json.dumps(r)
    assert main(["--only", "critic", "--items", "0", "--out", str(tmp_path)]) == 2


# -- CR-06: calibration against label bias, and the relevance judge ---------------------------------


@pytest.mark.spec("CR-06")
@pytest.mark.parametrize("a, b, offset, label, margin, good", [
    (-1.0, -3.0, 0.0, "A", 2.0, True),    # uncalibrated CR-03 rule
    (-1.0, -3.0, 2.0, "B", 0.0, False),   # all of the preference is label bias: a tie, so B
    (-1.0, -3.0, 0.5, "A", 1.5, True),
    (-2.0, -1.0, -3.0, "A", 2.0, True),   # a model biased to B: a weak B becomes A
])
def test_calibrated_decision_takes_the_offset_off_first(a, b, offset, label, margin, good):
    r = decide(a, b, threshold=1.0, offset=offset)
    assert (r.predicted_label, r.margin, r.is_good, r.calibration_offset) == (label, pytest.approx(margin), good, offset)
    assert (r.logp_a, r.logp_b) == (a, b)  # the raw numbers stay recorded


class _BiasedModel:
    """FakeModel with a constant added to the A label's logits: a critic that prefers A whatever it reads."""

    def __init__(self, inner, ids, bias):
        self.inner, self.ids, self.bias = inner, ids, bias

    def __call__(self, **kw):
        out = self.inner(**kw)
        out.logits[..., self.ids] += self.bias
        return out


@pytest.mark.spec("CR-06")
def test_calibration_shifts_a_constant_label_bias_away():
    items = [p.text for p in prompts.instruction_pool()[:12]]
    lm = FakeLM()
    plain = instruction_critic(lm, threshold=0.0, calibrate=True, batch_size=5)
    plain_res = plain.score(items)
    biased = instruction_critic(lm, threshold=0.0, batch_size=5)
    lm.model = _BiasedModel(lm.model, biased.a_ids, 200.0)
    assert all(r.is_good for r in biased.score(items))  # label bias: everything accepted
    calibrated = instruction_critic(lm, threshold=0.0, calibrate=True, batch_size=5)
    res = calibrated.score(items)
    assert [r.difference for r in res] == pytest.approx([r.difference for r in plain_res], abs=1e-4)
    assert [r.is_good for r in res] == [r.is_good for r in plain_res]
    assert 0 < sum(r.is_good for r in res) < len(items)
    a, b = calibrated.logprobs([calibrated.content_free_prompt()])
    assert calibrated.provenance["calibration_offset"] == pytest.approx(a[0] - b[0]) and res[0].calibration_offset == pytest.approx(a[0] - b[0])
    assert "N/A" in calibrated.content_free_prompt()


@pytest.mark.spec("CR-06")
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_relevance_judge_batched_equals_one_at_a_time_on_tiny_model(tiny_lm, batch_size):
    from cai_bootstrap.critic import RelevanceJudge

    items = PAIRS[:7]  # responses of different lengths: rows are padded
    judge = RelevanceJudge(tiny_lm, batch_size=batch_size)
    batched = judge.score(items)
    alone = [RelevanceJudge(tiny_lm, batch_size=1).score([it])[0] for it in items]
    for x, y in zip(batched, alone):
        assert x.score == pytest.approx(y.score, abs=1e-4)
        assert x.logp_conditional == pytest.approx(y.logp_conditional, abs=1e-4)
        assert x.n_tokens == y.n_tokens and x.is_good == (x.score >= judge.threshold)


@pytest.mark.spec("CR-06")
def test_relevance_is_conditional_minus_unconditional_mean_token_logprob(tiny_lm):
    from cai_bootstrap.critic import RelevanceJudge, continuation_logprobs

    ins, resp = PAIRS[0]
    r = RelevanceJudge(tiny_lm).score([(ins, resp)])[0]
    # By hand, one forward pass over context + continuation tokens, no batching.
    ctx_ids = tiny_lm.encode(prompts.render_response_prompt(ins))
    cont_ids = tiny_lm.encode_continuation(" " + resp)
    with torch.inference_mode():
        logits = tiny_lm.model(input_ids=torch.tensor([ctx_ids + cont_ids])).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    by_hand = sum(float(lp[len(ctx_ids) - 1 + k, t]) for k, t in enumerate(cont_ids)) / len(cont_ids)
    assert r.logp_conditional == pytest.approx(by_hand, abs=1e-4) and r.n_tokens == len(cont_ids)
    (u, n), = continuation_logprobs(tiny_lm, [prompts.render_bare_response_frame()], [" " + resp])
    assert r.score == pytest.approx(by_hand - u / n, abs=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        continuation_logprobs(tiny_lm, ["Response:"], [""])
