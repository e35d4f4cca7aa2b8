"""CL-01..CL-06: response cleaning, runaway detection, token-limit flags and drop reasons."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cai_bootstrap.cleaning import (
    CUT_BLANK_LINE,
    CUT_NEW_QUESTION,
    CUT_PROMPT_LINE,
    DELIMITER,
    MAX_CHARS,
    REASON_DELIMITER_LEAK,
    REASON_EMPTY,
    REASON_MARKER_LEAK,
    REASON_RUNAWAY,
    REASONS,
    CleaningConfig,
    clean_generations,
    clean_response,
    hit_token_limit,
    is_runaway,
    reject_record,
    summarize,
)
from cai_bootstrap.evaluation.verifiers import answer_segment, verify
from cai_bootstrap.io_utils import atomic_write_jsonl, read_jsonl
from cai_bootstrap.new_prompt import first_new_prompt_line
from cai_bootstrap.prompts import evaluator_markers

# A good one-paragraph answer: 279 characters, five periods. The first attempt at this
# method called anything over 200 characters or with more than 3 periods a runaway.
GOOD_EXPLANATION = (
    "Photosynthesis is how green plants make their own food. Using energy from sunlight, the leaves turn "
    "water and carbon dioxide into glucose and oxygen. This happens inside chloroplasts, which hold the "
    "pigment chlorophyll. The plant uses glucose to grow. Oxygen goes out to the air."
)


# -- CL-01 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-01")
@pytest.mark.parametrize(
    "raw, expected",
    [
        (" Paris is the capital.###END###\nInstruction: next", "Paris is the capital."),
        ("Paris.###END######END###", "Paris."),
        ("Paris. ###END### more ###END###", "Paris."),
        ("###END### everything after", ""),
    ],
)
def test_delimiter_keeps_only_text_before_it(raw, expected):
    r = clean_response(raw)
    assert r.delimiter_found is True
    assert r.text == expected
    assert DELIMITER not in r.text


@pytest.mark.spec("CL-01")
def test_no_delimiter_is_recorded_as_missing():
    r = clean_response(" Paris is the capital.")
    assert r.delimiter_found is False and r.kept and r.text == "Paris is the capital."


# -- CL-02 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-02")
@pytest.mark.parametrize(
    "raw, expected, rule",
    [
        (" Blue.\n\nInstruction: Name a fruit.\nResponse: Apple.", "Blue.", CUT_BLANK_LINE),
        (" Blue.\n  \t\nMore text.", "Blue.", CUT_BLANK_LINE),
        (" Blue.\nInstruction: Name a fruit.", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\nInstructions for the next task follow", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\nQ: What else?", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\nA: Red.", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\nResponse: Red.", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\n   Response: Red.", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\nQuestion: What is red?", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\nQuestion 2: What is red?", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\nQ2. What is red?", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\nTask: name a fruit", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\nInput: apples", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\nNext question, please", "Blue.", CUT_NEW_QUESTION),
        (" Blue.\n### Instruction", "Blue.", CUT_PROMPT_LINE),
        (" Blue.\n### Notes", "Blue.", CUT_NEW_QUESTION),
    ],
)
def test_trim_at_first_new_prompt_sign(raw, expected, rule):
    r = clean_response(raw)
    assert (r.text, r.cutoff_rule, r.heuristic_cutoff, r.kept) == (expected, rule, True, True)


@pytest.mark.spec("CL-02")
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  1. Red\n2. Green\n3. Blue\n", "1. Red\n2. Green\n3. Blue"),  # single newlines are kept
        ("\n\nThe answer is 4.", "The answer is 4."),  # leading whitespace is not a blank-line cut
        (" It is 4. A: is a letter, Q: too.", "It is 4. A: is a letter, Q: too."),  # only at line starts
        (" Blue.\n\n   \n", "Blue."),  # nothing but whitespace removed: no heuristic cutoff
    ],
)
def test_text_without_a_cut_sign_is_only_stripped(raw, expected):
    r = clean_response(raw)
    assert r.text == expected and r.heuristic_cutoff is False and r.cutoff_rule is None


@pytest.mark.spec("CL-02")
def test_earliest_rule_wins_and_cutting_applies_after_the_delimiter_too():
    r = clean_response(" Blue.\nQ: x\n\nInstruction: y")
    assert (r.text, r.cutoff_rule) == ("Blue.", CUT_PROMPT_LINE)
    # Stricter than the catalogue: the pair critic sees only the first paragraph.
    r = clean_response(" Blue.\n\nA second paragraph.###END###")
    assert (r.text, r.delimiter_found, r.heuristic_cutoff) == ("Blue.", True, True)


@pytest.mark.spec("CL-02")
def test_a_response_that_starts_a_new_prompt_is_dropped_as_empty():
    r = clean_response(" Instruction: Write a poem.\nResponse: Roses.")
    assert (r.text, r.kept, r.reason) == ("", False, REASON_EMPTY)


# -- CL-03 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-03")
def test_regression_long_good_explanation_is_not_a_runaway():
    assert len(GOOD_EXPLANATION) == 279 and GOOD_EXPLANATION.count(".") == 5
    r = clean_response(" " + GOOD_EXPLANATION + "\n\nInstruction: Explain gravity.")
    assert r.kept and r.reason is None and r.text == GOOD_EXPLANATION
    assert not is_runaway(GOOD_EXPLANATION)


@pytest.mark.spec("CL-03")
@pytest.mark.parametrize(
    "text, runaway",
    [
        ("x" * MAX_CHARS, False),
        ("x" * (MAX_CHARS + 1), True),
        ("Sure. " * 30, False),  # many periods, 180 chars
        ("Fine.\nUser: more", True),
        ("Fine.\nAssistant: more", True),
        ("Fine.\nHuman: more", True),
        ("Fine.\n\nQuestion: more", True),
        ("Fine.\n\nQ: more", True),
        ("Fine.\n\nInstruction: more", True),
        ("A user: said hi", False),
    ],
)
def test_runaway_rule(text, runaway):
    assert is_runaway(text) is runaway


@pytest.mark.spec("CL-03")
@pytest.mark.parametrize("marker", ["\nUser:", "\nAssistant:", "\nHuman:"])
def test_dialogue_continuation_survives_cutting_and_is_dropped_as_runaway(marker):
    r = clean_response(f" Hello there.{marker} and then?")
    assert (r.kept, r.reason) == (False, REASON_RUNAWAY)
    assert r.text == f"Hello there.{marker} and then?"


@pytest.mark.spec("CL-03")
def test_overlong_single_paragraph_is_a_runaway_and_the_limit_is_configurable():
    long = "word " * 120
    assert clean_response(long).reason == REASON_RUNAWAY
    assert clean_response(long, config=CleaningConfig(max_chars=1000)).kept
    with pytest.raises(ValueError, match="max_chars"):
        CleaningConfig(max_chars=0)


# -- CL-04 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-04")
@pytest.mark.parametrize(
    "n, limit, margin, flagged",
    [(80, 80, 0, True), (79, 80, 0, False), (78, 80, 2, True), (77, 80, 2, False), (0, 80, 0, False), (81, 80, 0, True)],
)
def test_token_limit_flag(n, limit, margin, flagged):
    assert hit_token_limit(n, limit, margin) is flagged
    r = clean_response(" Blue.", n_tokens=n, max_new_tokens=limit, config=CleaningConfig(token_limit_margin=margin))
    assert r.hit_token_limit is flagged
    assert r.token_limit_margin == margin and r.n_tokens == n
    assert r.kept  # a flag, counted by QC; not a drop


@pytest.mark.spec("CL-04")
def test_token_limit_arguments_are_validated():
    with pytest.raises(ValueError, match="both n_tokens and max_new_tokens"):
        clean_response("x", n_tokens=3)
    with pytest.raises(ValueError, match="n_tokens must be a non-negative integer"):
        hit_token_limit(-1, 80)
    with pytest.raises(ValueError, match="token_limit_margin"):
        CleaningConfig(token_limit_margin=-1)
    assert CleaningConfig(token_limit_margin=3).to_dict()["token_limit_margin"] == 3


@pytest.mark.spec("CL-04")
def test_clean_generations_flags_each_example():
    gens = [SimpleNamespace(text=" Blue.", n_tokens=3), SimpleNamespace(text=" Red and", n_tokens=80)]
    results = clean_generations(gens, max_new_tokens=80)
    assert [r.hit_token_limit for r in results] == [False, True]


# -- CL-05 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-05")
@pytest.mark.parametrize(
    "raw, reason",
    [
        (" The answer is B.\nLabel: A", REASON_MARKER_LEAK),
        (" Good. Output exactly one letter on the next line", REASON_MARKER_LEAK),
        (" See INSTRUCTION: above", REASON_MARKER_LEAK),
        (" It is fine. RESPONSE: ok", REASON_MARKER_LEAK),
        (" Paris is the capital.###END", REASON_DELIMITER_LEAK),  # truncated delimiter
    ],
)
def test_marker_and_delimiter_leaks_are_dropped_with_reason(raw, reason):
    r = clean_response(raw)
    assert (r.kept, r.reason) == (False, reason)


@pytest.mark.spec("CL-05")
def test_markers_come_from_the_critic_prompts():
    assert set(evaluator_markers()) == {"INSTRUCTION:", "RESPONSE:", "Output exactly one letter", "Label:"}


# -- CL-06 -------------------------------------------------------------------------------


@pytest.mark.spec("CL-06")
def test_every_drop_has_a_stable_reason_counted_and_written(tmp_path):
    raws = [
        " Blue.",
        " Instruction: x",
        " Hello.\nUser: hi",
        " Bad.\nLabel: A",
        " Cut###END",
        " " + GOOD_EXPLANATION,
        "x" * 600,
    ]
    results = [clean_response(r) for r in raws]
    # Frozen values: QC counts and rejects files key on these strings.
    assert REASONS == ("empty", "delimiter_leak", "evaluator_marker_leak", "runaway", "special_token_emitted", "forbidden_text")
    assert all((r.reason is None) == r.kept for r in results)
    assert all(r.reason in REASONS for r in results if not r.kept)
    summary = summarize(results)
    assert summary["generated"] == 7 and summary["kept"] == 2
    assert summary["dropped"] == {"empty": 1, "delimiter_leak": 1, "evaluator_marker_leak": 1, "runaway": 2,
                                  "special_token_emitted": 0, "forbidden_text": 0}
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["generated"]
    assert summary["delimiter_missing"] == 7 and summary["runaway"] == 2

    rejects = [reject_record(r, raw, index=i) for i, (r, raw) in enumerate(zip(results, raws)) if not r.kept]
    path = atomic_write_jsonl(tmp_path / "rejects.jsonl", rejects)
    back = read_jsonl(path)
    assert [b["index"] for b in back] == [1, 2, 3, 4, 6]
    assert [b["reason"] for b in back] == ["empty", "runaway", "evaluator_marker_leak", "delimiter_leak", "runaway"]
    assert all(b["raw"] == raws[b["index"]] for b in back)
    with pytest.raises(ValueError, match="kept"):
        reject_record(results[0], raws[0])


@pytest.mark.spec("CL-06")
def test_bad_input_is_an_error_not_a_silent_drop():
    with pytest.raises(TypeError, match="must be a string"):
        clean_response(None)  # type: ignore[arg-type]
    fake = clean_response(" Blue.")
    bogus = type(fake)(**{**fake.to_dict(), "kept": False, "reason": "mystery"})
    with pytest.raises(ValueError, match="unknown drop reasons"):
        summarize([bogus])


# -- properties ----------------------------------------------------------------------------

_pieces = st.sampled_from(
    [DELIMITER, "###END", "\n", "\n\n", " ", "\t", "Instruction:", "Instruction: x", "Response:", "Q:", "A:",
     "Question:", "User:", "Assistant:", "Human:", "Label:", "INSTRUCTION:", "\nUser:", "\n\nQ:", "Task:", ".",
     "Blue", "the answer is 4", "###", "x" * 120]
)
_texts = st.one_of(st.text(max_size=300), st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=30).map("".join))


@pytest.mark.spec("CL-01", "CL-02", "CL-03", "CL-05")
@settings(max_examples=400, deadline=None)
@given(_texts)
@example("a\n\nb" + DELIMITER)
@example("\r\n\r\nx")
def test_cleaning_properties(raw):
    r = clean_response(raw)
    # never adds text
    assert r.text in raw
    # idempotent
    again = clean_response(r.text)
    assert again.text == r.text and again.kept == r.kept and again.reason == r.reason
    # the delimiter never survives
    assert DELIMITER not in r.text
    if r.kept:
        assert r.text and r.text == r.text.strip()
        assert first_new_prompt_line(r.text) is None
        assert not any(m in r.text for m in evaluator_markers())
        assert "###END" not in r.text and len(r.text) <= MAX_CHARS
    else:
        assert r.reason in REASONS


# -- CG-03 / CL-06: responses in which the model emitted a forbidden token ----------------------


@pytest.mark.spec("CL-06", "CG-03")
@pytest.mark.parametrize(
    "pieces, kept",
    [
        ([" Paris is the capital."], True),
        ([" Paris is the capital.", "<|im_end|>"], False),  # a chat turn end, erased by decoding
        ([" Paris", "<think>", " is the capital."], False),
        (["<|im_start|>", "assistant\n Paris."], False),
        ([" Paris is the capital.", "<|endoftext|>"], True),  # the EOS that ends the row is fine
    ],
)
def test_emitted_special_token_drops_the_response(tiny_lm, pieces, kept):
    ids = []
    for p in pieces:
        ids += [tiny_lm.tokenizer.convert_tokens_to_ids(p)] if p.startswith("<") and p.endswith(">") \
            else tiny_lm.encode_continuation(p)
    gen = tiny_lm._finish(ids, max_new_tokens=64)
    [r] = clean_generations([gen], max_new_tokens=64)
    assert r.kept is kept
    if not kept:
        assert r.reason == "special_token_emitted" and "special_token_emitted" in REASONS
        assert summarize([r])["dropped"]["special_token_emitted"] == 1
        assert reject_record(r, gen.text)["reason"] == "special_token_emitted"


# -- CL-02 / CL-03 / EV-04: cleaning and the verifiers end an answer at the same line ----------

# (raw response without blank lines, the answer, whether the tail is a dialogue)
NEW_PROMPT_TABLE = [
    (" Blue.\nInstruction: Name a fruit.", "Blue.", False),
    (" Blue.\ninstruction: name a fruit.", "Blue.", False),
    (" Blue.\nINSTRUCTION: NAME A FRUIT.", "Blue.", False),
    (" Blue.\n## Instruction: Name a fruit.", "Blue.", False),
    (" Blue.\n# Instruction\nName a fruit.", "Blue.", False),
    (" Blue.\n### Response\nRed.", "Blue.", False),
    (" Blue.\n## Question: What is red?", "Blue.", False),
    (" Blue.\nQuestion 2: What is red?", "Blue.", False),
    (" Blue.\nQ: And red?", "Blue.", False),
    (" Blue.\nresponse: Red.", "Blue.", False),
    (" Blue.\n  Input: apples", "Blue.", False),
    (" Blue.\nSystem: You are helpful.", "Blue.", True),
    (" Blue.\nsystem: you are helpful.", "Blue.", True),
    (" Blue.\nUser: and red?", "Blue.", True),
    (" Blue.\n## User: and red?", "Blue.", True),
    (" Blue.\nAssistant: Red.", "Blue.", True),
    (" Blue.\nHuman: more", "Blue.", True),
    (" Blue is calm. A user: said hi", "Blue is calm. A user: said hi", False),  # not at a line start
    (" Blue.\nThe response was slow.", "Blue.\nThe response was slow.", False),
]


@pytest.mark.spec("CL-02", "CL-03", "EV-04")
@pytest.mark.parametrize("raw, answer, dialogue", NEW_PROMPT_TABLE)
def test_cleaning_and_verifiers_agree_on_where_an_answer_ends(raw, answer, dialogue):
    r = clean_response(raw)
    assert answer_segment(raw) == answer  # the verifiers' answer segment
    stops = verify(raw, {"name": "answer_then_stop", "args": {"accepted": ["Blue"]}})
    assert stops.passed is (answer == raw.strip()), stops
    if dialogue:
        # the answer ends at the role line in both; cleaning drops the dialogue as a runaway
        assert (r.kept, r.reason) == (False, REASON_RUNAWAY)
        assert r.text.startswith(answer) and first_new_prompt_line(r.text).start == len(answer) + 1
    else:
        assert r.kept and r.text == answer
        assert r.heuristic_cutoff is (answer != raw.strip())


@pytest.mark.spec("CL-06", "CL-05")
@pytest.mark.parametrize("raw", ["Strike <s>this</s> out.", "Soft\xadhyphen here.", "Zero\u200bwidth.", "Sure <think>ok</think>."])
def test_an_answer_the_data_gate_would_refuse_is_dropped_with_its_reason(raw):
    """Generation drops what the training gate's screening refuses, so one such answer costs one row,
    not the whole run at its gate."""
    r = clean_response(raw)
    assert not r.kept and r.reason == "forbidden_text"
