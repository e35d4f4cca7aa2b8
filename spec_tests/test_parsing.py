"""Instruction-list parsing (DG-02's parse phase): every line becomes an instruction or a reasoned reject.

The clause it serves is CL-06 (every drop has a stable reason, nothing silently
vanishes) applied to generated instruction lists, and PR-03's mid-list ending.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cai_bootstrap import prompts
from cai_bootstrap.io_utils import atomic_write_jsonl, read_jsonl
from cai_bootstrap.parsing import (
    REASON_EMPTY_LINE,
    REASON_MARKER,
    REASON_META,
    REASON_NO_VERB,
    REASON_NUMBER_ONLY,
    REASON_TOO_LONG,
    REASON_TOO_SHORT,
    REASON_TRUNCATED,
    REASON_UNFINISHED,
    REASON_UNNUMBERED,
    REASONS,
    fragment_reason,
    parse_instruction_list,
    parse_many,
    reject_record,
)

CONTINUATION = (
    " Write a haiku about winter.\n"
    "6. Translate \"thank you\" into German.\n"
    "7) List two uses of copper.\n"
    "Here are some more tasks:\n"
    "8.\n"
    "\n"
    "9. 9. Explain what a volcano is in one sentence.\n"
    "10. The capital of France\n"
    "11. Write a story about\n"
    "12. Hi\n"
    "Thanks for reading!\n"
    "(13) Sort these letters: c, a, b.\n"
    "14. Instruction: Name a bird.\n"
    "15. Describe the color of the sky and"
)


@pytest.mark.spec("CL-06")
def test_continuation_table():
    r = parse_instruction_list(CONTINUATION, continues_item=5)
    assert [(i.number, i.text) for i in r.instructions] == [
        (5, "Write a haiku about winter."),
        (6, 'Translate "thank you" into German.'),
        (7, "List two uses of copper."),
        (9, "Explain what a volcano is in one sentence."),
        (13, "Sort these letters: c, a, b."),
    ]
    assert [(x.line, x.reason) for x in r.rejects] == [
        (4, REASON_META),
        (5, REASON_NUMBER_ONLY),
        (6, REASON_EMPTY_LINE),
        (8, REASON_NO_VERB),
        (9, REASON_UNFINISHED),
        (10, REASON_TOO_SHORT),
        (11, REASON_UNNUMBERED),
        (13, REASON_MARKER),
        (14, REASON_UNFINISHED),
    ]
    assert r.counts()["parsed"] == 5 and sum(r.counts()["dropped"].values()) == 9


@pytest.mark.spec("CL-06")
@pytest.mark.parametrize(
    "text, reason",
    [
        ("Hi there", REASON_TOO_SHORT),
        ("Do it now", REASON_TOO_SHORT),
        ("Name a red fruit", None),
        ("Go.", REASON_TOO_SHORT),
        ("The capital of France.", REASON_NO_VERB),
        ("The capital of France is Paris.", REASON_NO_VERB),
        ("Is the capital of France Paris?", None),
        ("The history of the Roman empire?", None),  # a question is a task
        ("In one sentence, explain gravity.", None),
        ("Write a poem about the", REASON_UNFINISHED),
        ("Translate the following into French:", REASON_UNFINISHED),
        ("List three colors,", REASON_UNFINISHED),
        ("Write a letter to the editor.", None),
        ("Write " + "very " * 70 + "long text.", REASON_TOO_LONG),
        ("Answer: Name a fruit.", REASON_MARKER),
        ("Name a fruit. Label: A", REASON_MARKER),
    ],
)
def test_fragment_rules(text, reason):
    assert fragment_reason(text) == reason


@pytest.mark.spec("CL-06")
@pytest.mark.parametrize(
    "line, expected",
    [
        ("1. Name a planet in our solar system.", "Name a planet in our solar system."),
        ("1) Name a planet in our solar system.", "Name a planet in our solar system."),
        ("(1) Name a planet in our solar system.", "Name a planet in our solar system."),
        ("#1 Name a planet in our solar system.", "Name a planet in our solar system."),
        ("1 - Name a planet in our solar system.", "Name a planet in our solar system."),
        ("  12.   - Name a planet in our solar system.  ", "Name a planet in our solar system."),
        ("3. 3. Name a planet in our solar system.", "Name a planet in our solar system."),
    ],
)
def test_numbering_noise_is_removed(line, expected):
    assert parse_instruction_list(line).texts == [expected]


@pytest.mark.spec("CL-06")
@pytest.mark.parametrize(
    "line, reason",
    [
        ("Here are some instructions:", REASON_META),
        ("Instructions:", REASON_META),
        ("Tasks", REASON_META),
        ("Below are more examples.", REASON_META),
        ("5. Here are some more tasks:", REASON_META),
        ("The following tasks are harder", REASON_META),
        ("Sure, I can do that", REASON_META),
        ("3.", REASON_NUMBER_ONLY),
        ("3. ...", REASON_NUMBER_ONLY),
        ("3. 42", REASON_NUMBER_ONLY),
        ("A line without a number that looks like a task.", REASON_UNNUMBERED),
        ("   ", REASON_EMPTY_LINE),
    ],
)
def test_meta_and_noise_lines(line, reason):
    r = parse_instruction_list(line)
    assert r.instructions == []
    assert [x.reason for x in r.rejects] == [reason]


@pytest.mark.spec("CL-06")
def test_first_segment_belongs_to_the_open_number_only_when_told():
    text = " Write a limerick about a frog.\n6. Name two oceans."
    assert parse_instruction_list(text, continues_item=5).texts == ["Write a limerick about a frog.", "Name two oceans."]
    r = parse_instruction_list(text)
    assert r.texts == ["Name two oceans."] and r.rejects[0].reason == REASON_UNNUMBERED


@pytest.mark.spec("CL-06")
def test_token_limit_truncation_drops_the_last_item_only():
    text = " Write a limerick about a frog.\n6. Name two oceans.\n7. Describe a sunset over the sea in vivid"
    r = parse_instruction_list(text, continues_item=5, truncated=True)
    assert r.texts == ["Write a limerick about a frog.", "Name two oceans."]
    assert [(x.line, x.reason) for x in r.rejects] == [(3, REASON_TRUNCATED)]
    # A trailing reject line means the last item was complete before the cut.
    r = parse_instruction_list("6. Name two oceans.\nHere are more:", truncated=True)
    assert r.texts == ["Name two oceans."]


@pytest.mark.spec("CL-06")
def test_rejects_are_written_with_reasons(tmp_path):
    results = parse_many([(CONTINUATION, 5, False), ("1. Name two oceans.\n", None, False)])
    rows = [reject_record(x, generation=g) for g, res in enumerate(results) for x in res.rejects]
    back = read_jsonl(atomic_write_jsonl(tmp_path / "rejects.jsonl", rows))
    assert len(back) == 10 and all(b["reason"] in REASONS and b["stage"] == "parse_instructions" for b in back)
    assert back[-1] == {"stage": "parse_instructions", "reason": REASON_EMPTY_LINE, "generation": 1, "text": "", "line": 2}


@pytest.mark.spec("CL-06")
def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="must be a string"):
        parse_instruction_list(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="continues_item"):
        parse_instruction_list("x", continues_item=0)


@pytest.mark.spec("CL-06")
def test_reason_strings_are_stable():
    assert REASONS == (
        "empty_line", "meta_line", "number_only", "unnumbered_line", "too_short", "too_long", "no_verb",
        "unfinished", "truncated_by_token_limit", "prompt_marker", "forbidden_token", "forbidden_text",
    )


# -- properties ------------------------------------------------------------------------------

_line_pieces = st.sampled_from(
    ["1.", "2)", "(3)", "#4", "5 -", "Here are some tasks:", "Instructions:", "Write a poem about rain.", "the",
     "List three colors", "and", "?", "Label:", "", " ", "Explain why ice floats.", "9. 9.", "-", "*"]
)
_lines = st.lists(st.one_of(_line_pieces, st.text(max_size=40)).map(lambda s: s.replace("\n", " ")), max_size=15)


@pytest.mark.spec("CL-06")
@settings(max_examples=300, deadline=None)
@given(_lines, st.one_of(st.none(), st.integers(1, 50)), st.booleans())
def test_every_line_is_accounted_for_exactly_once(lines, continues, truncated):
    text = "\n".join(lines)
    r = parse_instruction_list(text, continues_item=continues, truncated=truncated)
    covered = [i.line for i in r.instructions] + [x.line for x in r.rejects]
    assert sorted(covered) == list(range(1, len(text.split("\n")) + 1))
    for i in r.instructions:
        assert i.text in text and i.text == i.text.strip()
        assert fragment_reason(i.text) is None
        assert not i.text[:1].isdigit() or not i.text.split(" ", 1)[0].rstrip(".)").isdigit()
    assert all(x.reason in REASONS for x in r.rejects)
    assert parse_instruction_list(text, continues_item=continues, truncated=truncated) == r  # deterministic


@pytest.mark.spec("CL-06")
@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(prompts.instruction_pool()), min_size=1, max_size=8), st.integers(1, 20))
def test_numbered_valid_instructions_round_trip(items, start):
    """What the generation prompt shows is exactly what the parser recovers."""
    text = "\n".join(f"{start + k}. {p.text}" for k, p in enumerate(items))
    r = parse_instruction_list(text)
    assert r.texts == [p.text for p in items]
    assert [i.number for i in r.instructions] == list(range(start, start + len(items)))
    assert r.rejects == []


# -- CG-03 at parse time: items with forbidden tokens never reach the critic -------------------

_LIST = " Write a poem about the sea.\n6. List three uses of copper.\n7. Explain why ice floats on water."


@pytest.mark.spec("CL-06", "CG-03")
@pytest.mark.parametrize(
    "text, offsets, dropped_lines",
    [
        (_LIST, [], []),
        # typed as text: a literal chat marker in an item, as a base model may write it
        (" Write a poem about <|im_start|> the sea.\n6. List three uses of copper.", [], [1]),
        (" Write a poem about the sea.\n6. List three uses of copper <|im_end|>\n7. Explain why ice floats.", [], [2]),
        (" Write a poem about the sea.\n6. Think <think> and list three uses of copper.", [], [2]),
        # emitted and erased by decoding: the loader's offset says which item held it
        (_LIST, [len(" Write a poem about the sea.\n6. List")], [2]),
        (_LIST, [len(" Write a poem about the sea.")], [1]),  # right after an item's last character
        (_LIST, [0], [1]),
    ],
)
def test_items_with_forbidden_tokens_are_dropped_with_a_reason(tiny_lm, text, offsets, dropped_lines):
    r = parse_instruction_list(text, continues_item=5, forbidden_offsets=offsets,
                               forbidden_tokens_in=tiny_lm.forbidden_tokens_in)
    assert sorted(x.line for x in r.rejects if x.reason == "forbidden_token") == dropped_lines
    assert not set(dropped_lines) & {i.line for i in r.instructions}
    for ins in r.instructions:  # what is kept encodes cleanly: the critic cannot abort on it
        tiny_lm.encode(ins.text)
