"""SFT-02 / SFT-03: response-only labels, checked token-exactly, and exactly one trained EOS."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cai_bootstrap.loader import ContaminationError
from cai_bootstrap.prompts import render_response_prompt
from cai_bootstrap.sft.masking import (
    IGNORE_INDEX,
    MaskingError,
    TrainingExample,
    build_labels,
    completion_text,
    encode_example,
    encode_record,
    encode_records,
    mask_from_offsets,
    response_start,
    verify_collated,
    verify_example,
)

EOS = 99
M = IGNORE_INDEX

# (ids, offsets, prompt_chars, expected labels, expected straddle) on hand-written integers.
CASES = [
    pytest.param([1, 2, 3], [(0, 2), (2, 3), (3, 6)], 3, [M, M, 3, EOS], False, id="clean-boundary"),
    pytest.param([1, 2, 3], [(0, 2), (2, 4), (4, 6)], 3, [M, 2, 3, EOS], True, id="merge-straddles-boundary"),
    pytest.param([1, 2, 3, 4], [(0, 3), (3, 3), (3, 5), (5, 6)], 3, [M, M, 3, 4, EOS], False, id="zero-width-token-at-boundary"),
    pytest.param([7, 1, 2], [(0, 0), (0, 3), (3, 5)], 3, [M, M, 2, EOS], False, id="leading-bos-zero-width"),
    pytest.param([1, 2], [(0, 3), (3, 4)], 3, [M, 2, EOS], False, id="one-token-response"),
    pytest.param([1, 2, 3], [(0, 1), (1, 3), (3, 9)], 3, [M, M, 3, EOS], False, id="token-ends-exactly-at-prompt-end"),
]


@pytest.mark.spec("SFT-02", "SFT-03")
@pytest.mark.parametrize("ids, offsets, prompt_chars, labels, straddle", CASES)
def test_labels_from_offsets(ids, offsets, prompt_chars, labels, straddle):
    ex = mask_from_offsets(ids, offsets, prompt_chars, EOS)
    assert ex.labels == labels
    assert ex.input_ids == list(ids) + [EOS]
    assert ex.boundary_merge is straddle
    assert ex.input_ids.count(EOS) == 1 and ex.labels[-1] == EOS


@pytest.mark.spec("SFT-02", "SFT-03")
@pytest.mark.parametrize(
    "ids, offsets, prompt_chars, match",
    [
        pytest.param([1, 2], [(0, 2), (2, 3)], 3, "empty", id="no-response-characters"),
        pytest.param([1, 2], [(0, 4), (4, 6)], 3, "prompt must keep", id="first-token-straddles"),
        pytest.param([1, EOS, 3], [(0, 3), (3, 4), (4, 5)], 3, "appended exactly once", id="eos-inside-text"),
        pytest.param([1, 2], [(0, 3)], 3, "offsets", id="misaligned-offsets"),
    ],
)
def test_refuses_unlabelable_examples(ids, offsets, prompt_chars, match):
    with pytest.raises(MaskingError, match=match):
        mask_from_offsets(ids, offsets, prompt_chars, EOS)


@pytest.mark.spec("SFT-02", "SFT-03")
@pytest.mark.parametrize(
    "mutate, match",
    [
        pytest.param(lambda ids, lab: lab.__setitem__(0, ids[0]), "prompt positions", id="label-on-prompt"),
        pytest.param(lambda ids, lab: lab.__setitem__(2, 5), "response positions", id="wrong-response-label"),
        pytest.param(lambda ids, lab: lab.__setitem__(2, M), "response positions", id="masked-response-token"),
        pytest.param(lambda ids, lab: (ids.__setitem__(-1, 4), lab.__setitem__(-1, 4)), "end with EOS", id="missing-eos"),
        pytest.param(lambda ids, lab: (ids.__setitem__(2, EOS), lab.__setitem__(2, EOS)), "exactly one", id="second-eos"),
    ],
)
def test_verify_example_catches_corruption(mutate, match):
    ids, labels = build_labels([1, 2, 3, 4], 2, EOS)
    mutate(ids, labels)
    with pytest.raises(MaskingError, match=match):
        verify_example(TrainingExample(ids, labels, [1] * len(ids), 2), EOS)


@st.composite
def tokenized(draw):
    lengths = draw(st.lists(st.integers(min_value=1, max_value=4), min_size=2, max_size=12))
    offsets, pos = [], 0
    for n in lengths:
        offsets.append((pos, pos + n))
        pos += n
    prompt_chars = draw(st.integers(min_value=offsets[0][1], max_value=pos - 1))
    ids = draw(st.lists(st.integers(min_value=0, max_value=50), min_size=len(lengths), max_size=len(lengths)))
    return ids, offsets, prompt_chars


@pytest.mark.spec("SFT-02", "SFT-03")
@settings(max_examples=200, deadline=None)
@given(tokenized())
def test_label_rule_property(case):
    """A token is masked iff all its characters lie in the prompt; everything after is trained."""
    ids, offsets, prompt_chars = case
    ex = mask_from_offsets(ids, offsets, prompt_chars, EOS)
    for i, (s, e) in enumerate(offsets):
        assert (ex.labels[i] == M) == (e <= prompt_chars)
        if e > prompt_chars:
            assert ex.labels[i] == ids[i]
    assert ex.input_ids[-1] == ex.labels[-1] == EOS and ex.input_ids.count(EOS) == 1


# -- with the real Qwen tokenizer ------------------------------------------------------------------------


def _labelled_text(lm, ex):
    return lm.tokenizer.decode(ex.input_ids[ex.response_start : -1])


@pytest.mark.spec("SFT-02", "SFT-03")
def test_canonical_record_masks_exactly_the_prompt(tiny_lm):
    rec = {"instruction": "List three prime numbers.", "response": "2, 3 and 5."}
    prompt = render_response_prompt(rec["instruction"])
    assert prompt == "Instruction: List three prime numbers.\nResponse:"
    ex = encode_record(tiny_lm, rec)
    prompt_ids = tiny_lm.encode(prompt)
    # The canonical " " + response starts a new pre-token: the prompt's own tokens are a prefix.
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.response_start == len(prompt_ids) and not ex.boundary_merge
    assert ex.labels[: len(prompt_ids)] == [M] * len(prompt_ids)
    assert ex.labels[len(prompt_ids) :] == ex.input_ids[len(prompt_ids) :]
    assert _labelled_text(tiny_lm, ex) == " 2, 3 and 5."
    assert ex.input_ids[-1] == ex.labels[-1] == tiny_lm.eos_token_id == 151643
    assert ex.input_ids.count(tiny_lm.eos_token_id) == 1


@pytest.mark.spec("SFT-02")
@pytest.mark.parametrize(
    "completion, merged_token",
    [
        pytest.param("\nHello there", ":\n", id="colon-newline-merges"),
        pytest.param(":) fine", "::", id="colon-colon-merges"),
    ],
)
def test_bpe_merge_across_boundary(tiny_lm, completion, merged_token):
    """With the real Qwen tokenizer ':' + '\\n' (or ':') merge into one token spanning the boundary."""
    prompt = render_response_prompt("Say hi")
    prompt_ids = tiny_lm.encode(prompt)
    ex = encode_example(tiny_lm, prompt, completion)
    # The joint tokenization is not the prompt's tokens plus the completion's: a merge happened.
    assert ex.input_ids[: len(prompt_ids)] != prompt_ids
    assert ex.boundary_merge
    straddler = tiny_lm.tokenizer.decode([ex.input_ids[ex.response_start]])
    assert straddler == merged_token
    # Tokens wholly inside the prompt are masked; the straddling token is trained (it holds response text).
    assert ex.response_start == len(prompt_ids) - 1
    assert ex.labels[: ex.response_start] == [M] * ex.response_start
    assert ex.labels[ex.response_start :] == ex.input_ids[ex.response_start :]
    assert tiny_lm.tokenizer.decode(ex.input_ids[: ex.response_start]) + _labelled_text(tiny_lm, ex) == prompt + completion


class _BosEncoder:
    """The tiny model's tokenizer under a profile that needs BOS (as Gemma and Llama do)."""

    def __init__(self, lm, bos_id):
        self.tokenizer, self.eos_token_id, self.bos_token_id, self._lm = lm.tokenizer, lm.eos_token_id, bos_id, lm

    def encode(self, text):
        return [self.bos_token_id] + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_ids(self, ids, *, allow_trailing_eos=False):
        assert ids[0] == self.bos_token_id and ids.count(self.bos_token_id) == 1


@pytest.mark.spec("SFT-02", "SFT-03")
def test_bos_from_the_encode_path_is_masked_once(tiny_lm):
    enc = _BosEncoder(tiny_lm, bos_id=151646)
    ex = encode_record(enc, {"instruction": "Name a color.", "response": "Blue."})
    assert ex.input_ids[0] == 151646 and ex.input_ids.count(151646) == 1
    assert ex.labels[0] == M
    assert ex.input_ids[1 : ex.response_start] == list(tiny_lm.encode(render_response_prompt("Name a color.")))
    assert _labelled_text(tiny_lm, ex) == " Blue."


class _TrimmedOffsets:
    """The real tokenizer, but reporting offsets with whitespace trimmed (as some tokenizers do)."""

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, text, **kw):
        enc = dict(self._tok(text, **kw))
        trimmed = []
        for s, e in enc["offset_mapping"]:
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            trimmed.append((s, e))
        enc["offset_mapping"] = trimmed
        return enc

    def decode(self, *a, **k):
        return self._tok.decode(*a, **k)


class _TrimmingEncoder(_BosEncoder):
    def __init__(self, lm):
        self.tokenizer, self.eos_token_id, self.bos_token_id = _TrimmedOffsets(lm.tokenizer), lm.eos_token_id, None
        self._plain = lm

    def encode(self, text):
        return self._plain.encode(text)

    def check_ids(self, ids, *, allow_trailing_eos=False):
        self._plain.check_ids(ids, allow_trailing_eos=allow_trailing_eos)


@pytest.mark.spec("SFT-02")
def test_untrustworthy_offsets_are_refused(tiny_lm):
    """Trimmed offsets would put the merged ':\n' wholly inside the prompt; the decode cross-check refuses."""
    enc = _TrimmingEncoder(tiny_lm)
    prompt = render_response_prompt("Say hi")
    assert encode_example(enc, prompt, " Hello").labels == encode_example(tiny_lm, prompt, " Hello").labels
    with pytest.raises(MaskingError, match="offsets cannot be trusted"):
        encode_example(enc, prompt, "\nHello")


@pytest.mark.spec("SFT-03")
@pytest.mark.parametrize("response", ["Done.<|endoftext|>", "Sure <|im_start|>assistant"])
def test_special_tokens_in_text_are_refused(tiny_lm, response):
    """A literal EOS or role token in the data would be a second EOS or a chat marker: the loader's check aborts."""
    with pytest.raises(ContaminationError):
        encode_record(tiny_lm, {"instruction": "Finish.", "response": response})
    with pytest.raises(ContaminationError, match="record 2 "):  # the failing record is named
        encode_records(tiny_lm, [{"instruction": "Ok.", "response": "Ok."}, {"instruction": "Finish.", "response": response}], 64)


@pytest.mark.spec("SFT-03")
def test_empty_response_refused():
    with pytest.raises(MaskingError, match="non-empty"):
        completion_text("   ")


@pytest.mark.spec("SFT-03")
def test_too_long_examples_are_dropped_not_truncated(tiny_lm):
    recs = [{"instruction": "Say yes.", "response": "Yes."}, {"instruction": "Write a lot.", "response": "word " * 80}]
    enc = encode_records(tiny_lm, recs, max_length=32)
    assert len(enc.examples) == 1 and enc.dropped == {"too_long": [1]}
    assert all(ex.input_ids[-1] == tiny_lm.eos_token_id for ex in enc.examples)
    with pytest.raises(MaskingError, match="max_length"):
        encode_records(tiny_lm, recs[1:], max_length=32)


@pytest.mark.spec("SFT-02", "SFT-03")
def test_verify_collated_batches():
    a = mask_from_offsets([1, 2, 3], [(0, 2), (2, 3), (3, 6)], 3, EOS)
    b = mask_from_offsets([4, 5], [(0, 3), (3, 4)], 3, EOS)
    lookup = {tuple(a.input_ids): a, tuple(b.input_ids): b}
    pad = 0
    batch = {  # right-padded to the longest row, as the trainer's collator does
        "input_ids": [b.input_ids + [pad], a.input_ids],
        "labels": [b.labels + [M], a.labels],
        "attention_mask": [[1, 1, 1, 0], [1, 1, 1, 1]],
    }
    assert verify_collated({k: [list(r) for r in v] for k, v in batch.items()}, lookup, pad) == 2
    bad = {k: [list(r) for r in v] for k, v in batch.items()}
    bad["labels"][0][3] = 5  # a label on padding
    with pytest.raises(MaskingError, match="padding positions carry labels"):
        verify_collated(bad, lookup, pad)
    bad = {k: [list(r) for r in v] for k, v in batch.items()}
    bad["labels"][1][0] = 1
    with pytest.raises(MaskingError, match="labels differ"):
        verify_collated(bad, lookup, pad)
    bad = {k: [list(r) for r in v] for k, v in batch.items()}
    bad["input_ids"][1][1] = 42
    with pytest.raises(MaskingError, match="match no verified example"):
        verify_collated(bad, lookup, pad)


@pytest.mark.spec("SFT-02")
def test_response_start_straddle_flag():
    assert response_start([(0, 0), (0, 5), (5, 8)], 5) == (2, False)
    assert response_start([(0, 4), (4, 7)], 5) == (1, True)
