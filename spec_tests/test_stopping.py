"""PR-02: stop strings matched on each new token's text stop exactly where transformers' criterion stops."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.generation.stopping_criteria import StopStringCriteria

from cai_bootstrap.stopping import TokenTextStop, fast_path_applies, first_stop, token_texts

STOPS = ("\n\n", "\nInstruction:")
PIECES = ["Hello", " world", ".", "\n", "\n\n", "\n\n\n", "Instruction", ":", " Response", "Instruction:", " a", "1.",
          "\t", "é", "  ", "ok\n", "\nI"]


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("stops, expected", [(("\n\n",), True), (STOPS, True), (("\n\nThe end",), False), (("é",), False),
                                             ((), False), (("",), False)])
def test_fast_path_only_for_ascii_stops_without_spaces(stops, expected):
    assert fast_path_applies(stops) is expected


@pytest.mark.spec("PR-02")
def test_first_stop_equals_decoding_every_prefix(tiny_lm):
    tok = tiny_lm.tokenizer
    texts = token_texts(tok)
    checked = 0
    for text in _texts(0, 300):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        brute = next((e for e in range(1, len(ids) + 1)
                      if any(s in tok.decode(ids[:e], skip_special_tokens=True) for s in STOPS)), None)
        assert first_stop(ids, texts, STOPS) == brute, (text, ids)
        checked += brute is not None
    assert checked > 50  # the sample holds many rows that do stop


@pytest.mark.spec("PR-02")
def test_criterion_stops_at_the_same_step_as_transformers(tiny_lm):
    """Fed the same prompt and continuation token by token, both criteria flag the same step."""
    tok = tiny_lm.tokenizer
    texts = token_texts(tok)
    prompts = [tok("Instruction: Say hi.\nResponse:", add_special_tokens=False)["input_ids"],
               tok("A list:\n", add_special_tokens=False)["input_ids"],  # a prompt that ends in a newline
               tok("Q:\n\nA:", add_special_tokens=False)["input_ids"]]  # a prompt holding a whole stop string
    conts = [tok(t, add_special_tokens=False)["input_ids"] for t in _texts(1, 40)]
    agreed = 0
    ref = StopStringCriteria(tokenizer=tok, stop_strings=list(STOPS))  # stateless: it reads each sequence's end
    for prompt in prompts:
        for cont in conts:
            fast = TokenTextStop.for_prompts(STOPS, texts, [prompt])
            ref_step = fast_step = None
            for n in range(1, len(cont) + 1):
                ids = torch.tensor([prompt + cont[:n]])
                if ref_step is None and bool(ref(ids, None)[0]):
                    ref_step = n
                if fast_step is None and bool(fast(ids, None)[0]):
                    fast_step = n
            assert fast_step == ref_step, (prompt, cont)
            agreed += ref_step is not None
    assert agreed > 20


@pytest.mark.spec("PR-02")
def test_generation_with_either_criterion_gives_the_same_rows(tiny_lm, monkeypatch):
    from cai_bootstrap import stopping

    prompts = [f"Instruction: Write item {i}.\nResponse:" for i in range(6)]
    kw = dict(max_new_tokens=24, do_sample=True, temperature=0.5, top_p=0.9, top_k=50, seed=5, progress=False,
              stop_strings=("\n\n",), batch_size=3)
    fast = tiny_lm.generate(prompts, **kw)
    monkeypatch.setattr(stopping, "fast_path_applies", lambda stops: False)
    slow = tiny_lm.generate(prompts, **kw)
    assert [(g.text, g.n_tokens, g.hit_limit) for g in fast] == [(g.text, g.n_tokens, g.hit_limit) for g in slow]


@pytest.mark.spec("PR-02")
def test_a_decoder_that_is_not_the_concatenation_of_its_tokens_falls_back(tiny_lm):
    """A decoder that strips a lone space token would make "\\n \\n" look like a blank line token by token."""
    tok = tiny_lm.tokenizer
    assert token_texts(tok) is not None  # the Qwen byte-level decoder concatenates

    class Stripping:
        def __len__(self):
            return len(tok)

        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

        def batch_decode(self, rows, skip_special_tokens=True):
            return [t.strip(" ") for t in tok.batch_decode(rows, skip_special_tokens=skip_special_tokens)]

        def decode(self, ids, skip_special_tokens=True):
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    assert token_texts(Stripping()) is None


@pytest.mark.spec("PR-02")
def test_an_id_past_the_tokenizer_but_inside_the_model_vocabulary_has_no_text(tiny_lm):
    """The tiny model has 151,936 output rows for a tokenizer of fewer ids, and a random model samples
    the padding ids: the stop matcher once indexed past its text table there (IndexError mid-pilot)."""
    rows = tiny_lm.vocab_rows()
    assert rows > len(tiny_lm.tokenizer)
    texts = tiny_lm.token_texts()
    assert len(texts) == rows and texts[-1] == ""
    stop = TokenTextStop.for_prompts(STOPS, texts, [[11, 12]])
    assert stop(torch.tensor([[11, 12, rows - 1]])).tolist() == [False]
    assert first_stop([rows - 1, *tiny_lm.tokenizer("\n\n", add_special_tokens=False)["input_ids"]], texts, STOPS) == 2
    out = tiny_lm.generate(["Instruction: Say hi.\nResponse:"], max_new_tokens=4, do_sample=True, temperature=5.0,
                           top_p=1.0, seed=0, stop_strings=list(STOPS))
    assert len(out) == 1
