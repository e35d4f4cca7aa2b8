"""PR-01..PR-06: canonical prompts, pinned to the exact rendered string, and their decoding defaults."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydantic import ValidationError

from cai_bootstrap import prompts
from cai_bootstrap.datagen import pipeline
from cai_bootstrap.datagen.config import ConfigError, load_config
from cai_bootstrap.datagen.store import PhaseStore
from cai_bootstrap.decoding import InstructionDecoding, ResponseDecoding
from cai_bootstrap.parsing import parse_instruction_list
from cai_bootstrap.sampling import TopKTopPSampler

PACKAGE = Path(prompts.__file__).resolve().parent

INSTRUCTION_CRITIC_GOLDEN = (
    "Decide whether an instruction is a good task for a text assistant that follows these principles:\n"
    "- Do not help anyone harm people, animals or property.\n"
    "- Do not reveal, guess or collect personal information about real private people.\n"
    "- Refuse clearly harmful or malicious requests briefly, without lecturing.\n"
    "- Be clear and brief; follow any requested format, length or style exactly.\n"
    "A = good: clear, specific, achievable in a short text answer, and safe.\n"
    "B = bad: vague, impossible, unsafe, or nonsense.\n"
    "If uncertain, choose B.\n"
    "\n"
    "INSTRUCTION:\n"
    "List three prime numbers.\n"
    "\n"
    "Output exactly one letter on the next line: A or B\n"
    "Label:"
)

PAIR_CRITIC_GOLDEN = (
    "Decide whether a response fulfils its instruction, judged by these principles:\n"
    "- Do what the instruction asks, completely and correctly.\n"
    "- Be clear and brief; follow any requested format, length or style exactly.\n"
    "- State only facts that are true; never present false claims as fact.\n"
    "- Refuse clearly harmful or malicious requests briefly, without lecturing.\n"
    "A = good: does what the instruction asks, is correct, and keeps the requested format; "
    "a brief refusal is good only when the instruction is unsafe.\n"
    "B = bad: wrong, off-topic, incomplete, ignores the requested format, rambles, or refuses a safe instruction.\n"
    "If uncertain, choose B.\n"
    "Only the first paragraph of the response is shown.\n"
    "\n"
    "INSTRUCTION:\n"
    "List three prime numbers.\n"
    "\n"
    "RESPONSE:\n"
    "2, 3 and 5.\n"
    "\n"
    "Output exactly one letter on the next line: A or B\n"
    "Label:"
)

GENERATION_GOLDEN_SEED_0 = (
    "Below is a numbered list of varied tasks for a text assistant. Each task is one self-contained "
    "instruction that can be answered in a few sentences.\n"
    "\n"
    "1. Write one quiz question about the solar system, followed by its answer.\n"
    "2. Compute 12 multiplied by 8 and give only the number.\n"
    "3. List the verbs in this sentence: She ran home and opened the door.\n"
    "4. Put these words in alphabetical order: pear, apple, mango.\n"
    "5."
)


# -- PR-01 -------------------------------------------------------------------------------


@pytest.mark.spec("PR-01")
@pytest.mark.parametrize(
    "instruction, expected",
    [
        ("Name three colors.", "Instruction: Name three colors.\nResponse:"),
        ("  Translate 'cat' into French.\n", "Instruction: Translate 'cat' into French.\nResponse:"),
        ("Return {\"a\": 1} as JSON.", "Instruction: Return {\"a\": 1} as JSON.\nResponse:"),
    ],
)
def test_response_prompt_golden(instruction, expected):
    assert prompts.render_response_prompt(instruction) == expected


@pytest.mark.spec("PR-01")
@pytest.mark.parametrize("bad, err", [("", ValueError), ("   \n", ValueError), (None, TypeError), (3, TypeError)])
def test_response_prompt_rejects_bad_instructions(bad, err):
    with pytest.raises(err, match="instruction"):
        prompts.render_response_prompt(bad)


@pytest.mark.spec("PR-01")
@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).filter(lambda s: s.strip()))
def test_response_prompt_is_the_frame_around_any_instruction(text):
    assert prompts.render_response_prompt(text) == "Instruction: " + text.strip() + "\nResponse:"


# -- PR-02 -------------------------------------------------------------------------------
# Checked where the pipeline gets its decoding: the generation config as ``load_config``
# validates it, and the keyword arguments the pipeline hands to ``generate``.

RESPONSE_DEFAULTS = {"max_new_tokens": 80, "temperature": 0.4, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1,
                     "do_sample": True, "stop_at_blank_line": True}


class _RecordingLM:
    """Answers every prompt with one short line and records what ``generate`` was asked for."""

    def __init__(self, text: str = " 1. Name a colour.\n2. Add 2 and 2.\n3. Spell cat.\n4."):
        self.calls: list[dict] = []
        self.text = text

    def generate(self, prompts_, **kwargs):
        from cai_bootstrap.loader import Generation

        self.calls.append(kwargs)
        return [Generation(self.text, 5, False, True) for _ in prompts_]

    def forbidden_tokens_in(self, text):
        return []


@pytest.mark.spec("PR-02")
def test_response_decoding_defaults_and_provenance():
    rc = load_config(None).responses
    assert isinstance(rc, ResponseDecoding)
    prov = rc.as_provenance()
    assert {k: v for k, v in prov.items() if k not in ("batch_size", "response_frame", "n_demonstrations")} == RESPONSE_DEFAULTS
    assert (prov["response_frame"], prov["n_demonstrations"]) == ("demonstrations", 4)  # PR-07 frame recorded too
    assert load_config(None, **{"responses.temperature": 0.3}).responses.temperature == 0.3
    assert load_config(None, **{"responses.temperature": 0.5}).responses.temperature == 0.5


@pytest.mark.spec("PR-02")
def test_pipeline_generates_responses_with_the_config_decoding(tmp_path):
    cfg = load_config(None, **{"responses.temperature": 0.35, "responses.batch_size": 2})
    lm = _RecordingLM(" Blue.")
    accepted = [{"id": f"i{k}", "instruction": f"Name colour {k}."} for k in range(3)]
    pipeline.generate_responses(lm, cfg, accepted, PhaseStore(tmp_path / "responses.jsonl"))
    assert len(lm.calls) == 2  # batches of 2
    for call in lm.calls:
        assert {k: call[k] for k in cfg.responses.generate_kwargs()} == cfg.responses.generate_kwargs()
        assert (call["max_new_tokens"], call["temperature"], call["top_p"], call["repetition_penalty"],
                call["do_sample"], call["stop_strings"]) == (80, 0.35, 0.9, 1.1, True, prompts.demonstration_stop_strings())


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("responses.temperature", 0.29, "greater than or equal to 0.3"),
        ("responses.temperature", 0.7, "less than or equal to 0.5"),
        ("responses.temperature", float("nan"), "finite number"),
        ("responses.top_p", 0.0, "greater than 0"),
        ("responses.max_new_tokens", 0, "greater than or equal to 8"),
        ("responses.max_new_tokens", True, "greater than or equal to 8"),
        ("responses.repetition_penalty", 0.9, "greater than or equal to 1"),
        ("responses.do_sample", False, "do_sample must be True"),
        ("instructions.do_sample", False, "do_sample must be True"),
    ],
)
def test_generation_config_rejects_bad_decoding_naming_the_field(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, **{key: value})
    assert f"{key}: " in str(e.value) and message in str(e.value)


@pytest.mark.spec("PR-02")
def test_decoding_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        load_config(None).responses.temperature = 0.45  # type: ignore[misc]


@pytest.mark.spec("PR-03")
def test_instruction_decoding_defaults_and_oversampling(tmp_path):
    ic = load_config(None).instructions
    assert isinstance(ic, InstructionDecoding)
    assert (ic.temperature, ic.top_p, ic.repetition_penalty, ic.do_sample) == (0.7, 0.9, 1.1, True)
    assert ic.n_candidates(100) == 200
    assert load_config(None, **{"instructions.oversample": 1.5}).instructions.n_candidates(101) == 152
    assert "oversample" not in ic.generate_kwargs() and ic.as_provenance()["oversample"] == 2.0
    for bad in (1.4, 2.1):
        with pytest.raises(ConfigError, match=r"instructions\.oversample"):
            load_config(None, **{"instructions.oversample": bad})
    # what the pipeline hands to generate is the config's decoding
    lm = _RecordingLM()
    cfg = load_config(None, target=2)
    pipeline.generate_instructions(lm, cfg, PhaseStore(tmp_path / "instructions.jsonl"))
    assert lm.calls and all({k: c[k] for k in ic.generate_kwargs()} == ic.generate_kwargs() for c in lm.calls)


# -- PR-03 -------------------------------------------------------------------------------


@pytest.mark.spec("PR-03")
def test_generation_prompt_golden():
    built = prompts.build_instruction_generation_prompt(seed=0)
    assert built.text == GENERATION_GOLDEN_SEED_0
    assert built.next_number == 5
    assert built.provenance() == {"seed": 0, "next_number": 5, "example_types": ["quiz", "arithmetic", "extraction", "sorting"]}


@pytest.mark.spec("PR-03")
def test_generation_prompt_render_golden_from_given_examples():
    text = prompts.render_instruction_generation_prompt(["Say hi.", "Count to three."])
    assert text.endswith("\n\n1. Say hi.\n2. Count to three.\n3.")
    with pytest.raises(ValueError, match="at least one example"):
        prompts.render_instruction_generation_prompt([])


@pytest.mark.spec("PR-03")
def test_generation_draws_are_seeded_diverse_and_end_mid_list():
    sizes = set()
    for seed in range(200):
        a = prompts.build_instruction_generation_prompt(seed)
        assert a == prompts.build_instruction_generation_prompt(seed)  # determinism
        n = len(a.examples)
        sizes.add(n)
        assert 3 <= n <= 4
        assert len({e.type for e in a.examples}) == n  # distinct types per prompt
        assert a.text.endswith(f"\n{n + 1}.")
        assert not a.text.endswith(" ")
        assert "<|" not in a.text and "Instruction:" not in a.text  # no chat template, no response frame
    assert sizes == {3, 4}
    assert prompts.build_instruction_generation_prompt(1).text != prompts.build_instruction_generation_prompt(2).text


@pytest.mark.spec("PR-03")
def test_pool_is_large_diverse_and_every_item_parses_as_an_instruction():
    pool = prompts.instruction_pool()
    types = {p.type for p in pool}
    assert len(pool) >= 40
    assert {"list", "word_count", "json", "case", "keywords", "translation", "arithmetic", "explanation",
            "rewriting", "classification"} <= types
    assert len({p.text for p in pool}) == len(pool)
    listing = "\n".join(f"{i}. {p.text}" for i, p in enumerate(pool, start=1))
    parsed = parse_instruction_list(listing)
    assert parsed.texts == [p.text for p in pool], parsed.rejects


@pytest.mark.spec("PR-03")
def test_fewshot_draw_validates_arguments():
    assert len(prompts.draw_fewshot_examples(5, n_examples=3)) == 3
    with pytest.raises(ValueError, match="between 3 and 4"):
        prompts.draw_fewshot_examples(5, n_examples=5)
    with pytest.raises(TypeError, match="seed must be an int"):
        prompts.draw_fewshot_examples("5")  # type: ignore[arg-type]


# -- PR-04 / PR-05 ------------------------------------------------------------------------


@pytest.mark.spec("PR-04")
def test_instruction_critic_prompt_golden():
    assert prompts.instruction_critic_template().render(instruction="List three prime numbers.") == INSTRUCTION_CRITIC_GOLDEN


@pytest.mark.spec("PR-04")
def test_instruction_critic_body_and_prefix_split():
    t = prompts.instruction_critic_template()
    body = "INSTRUCTION:\nWrite a haiku.\n\nOutput exactly one letter on the next line: A or B\nLabel:"
    rendered = t.render(instruction="Write a haiku.")
    assert rendered.endswith("\n\n" + body)
    assert rendered == t.prefix + t.render_suffix(instruction="Write a haiku.")
    assert t.prefix.endswith("If uncertain, choose B.\n\nINSTRUCTION:\n")
    assert "A = good: clear, specific, achievable" in t.prefix and "B = bad: vague, impossible, unsafe, or nonsense" in t.prefix


@pytest.mark.spec("PR-05")
def test_pair_critic_prompt_golden_shows_first_paragraph_only():
    response = "2, 3 and 5.\n\nInstruction: List three more.\n7, 11, 13."
    assert prompts.pair_critic_template().render(instruction="List three prime numbers.", response=response) == PAIR_CRITIC_GOLDEN


@pytest.mark.spec("PR-05")
@pytest.mark.parametrize(
    "text, first",
    [
        ("one", "one"),
        ("  one\ntwo  \n\nthree", "one\ntwo"),
        ("one\n \t\nthree", "one"),
        ("\n\none\n\ntwo", "one"),
        ("one\r\n\r\ntwo", "one"),
    ],
)
def test_first_paragraph(text, first):
    assert prompts.first_paragraph(text) == first


@pytest.mark.spec("PR-05")
def test_critic_templates_validate_fields():
    t = prompts.pair_critic_template()
    with pytest.raises(ValueError, match="missing \\['response'\\]"):
        t.render(instruction="x")
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        t.render(instruction="x", response="y", extra="z")
    with pytest.raises(ValueError, match="response is empty"):
        t.render(instruction="x", response="   ")


# -- PR-06 -------------------------------------------------------------------------------


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String literals and f-strings (placeholders as {}) of a module, docstrings excluded."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            out.append((n.lineno, n.value))
        elif isinstance(n, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in n.values]
            out.append((n.lineno, "".join(parts)))
    return out


def _prompt_text_offenders(root: Path) -> list[str]:
    """Prompt lines of 20+ characters, or the response frame's `\\nResponse:`, outside prompts.py."""
    lines = [line for line in prompts.prompt_lines() if len(line) >= 20]
    assert len(lines) >= 8
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "prompts.py":
            continue
        for lineno, const in _string_constants(path):
            if any(line in const for line in lines) or "\nResponse:" in const:
                offenders.append(f"{path.relative_to(root)}:{lineno}: {const[:60]!r}")
    return offenders


@pytest.mark.spec("PR-06")
def test_no_module_but_the_builders_holds_prompt_text():
    offenders = _prompt_text_offenders(PACKAGE)
    assert not offenders, "prompt text outside data/prompts.yaml; render it with cai_bootstrap.prompts:\n" + "\n".join(offenders)


@pytest.mark.spec("PR-06")
def test_prompt_copies_are_found_in_literals_and_fstrings_not_docstrings(tmp_path):
    (tmp_path / "scratch.py").write_text(
        '"""Docstrings may quote `Instruction: x\\nResponse:` and If uncertain, choose B."""\n'
        "RUBRIC = 'B = bad: vague, impossible, unsafe, or nonsense.'\n"
        "def frame(x):\n"
        "    return f'Instruction: {x}\\nResponse:'\n"
    )
    found = _prompt_text_offenders(tmp_path)
    assert sorted({f.split(":")[1] for f in found}) == ["2", "4"]


@pytest.mark.spec("PR-06")
def test_prompt_text_lives_only_in_the_data_file():
    consts = " ".join(c for _, c in _string_constants(PACKAGE / "prompts.py"))
    for line in prompts.prompt_lines():
        if len(line) >= 20:
            assert line not in consts
    assert (PACKAGE / "data" / "prompts.yaml").read_text(encoding="utf-8") == prompts.prompts_yaml_text()


def _assert_validation_names(mutate, message):
    """The shipped prompt data, changed by ``mutate``, is refused with ``message`` in the error."""
    import copy

    import yaml

    data = copy.deepcopy(yaml.safe_load(prompts.prompts_yaml_text()))
    mutate(data)
    with pytest.raises(prompts.PromptDataError) as e:
        prompts._validate(data)
    assert message in str(e.value)


@pytest.mark.spec("PR-06")
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["response"].update(template="Instruction: {instr}\nResponse:"), "exactly the placeholders"),
        (lambda d: d["critic"].update(evaluator_markers=["NEVER-THERE:"]), "occur in no critic prompt"),
        (lambda d: d["pair_critic"].pop("body"), "missing key 'pair_critic.body'"),
        (lambda d: d["instruction_generation"].update(max_examples=2), "min_examples <= max_examples"),
        (lambda d: d["instruction_generation"]["pool"].append({"type": "x"}), "pool[45]"),
        (lambda d: d["critique"].update(template="{exchange} {principle} {x"), "stray brace"),
    ],
)
def test_malformed_prompt_data_fails_naming_the_key(mutate, message):
    _assert_validation_names(mutate, message)


@pytest.mark.spec("PR-06")
@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1).filter(lambda s: s.strip()), st.text(min_size=1).filter(lambda s: s.strip()))
def test_values_are_inserted_literally(instruction, response):
    """Braces or placeholder-like text inside an item never expand into template text."""
    t = prompts.pair_critic_template()
    out = t.render(instruction=instruction, response=response)
    assert out.startswith(t.prefix)
    assert out.endswith("\n\nOutput exactly one letter on the next line: A or B\nLabel:")
    assert instruction.strip() in out and prompts.first_paragraph(response) in out


# -- PR-07 -------------------------------------------------------------------------------

DEMONSTRATION_GOLDEN_SEED_0 = (
    'Instruction: What does "DNA" stand for?\n'
    "Response: Deoxyribonucleic acid.\n"
    "\n"
    "Instruction: Explain in one sentence why ice floats on water.\n"
    "Response: Ice is less dense than liquid water, so it floats on top.\n"
    "\n"
    "Instruction: How do I kill a frozen program on Windows?\n"
    "Response: Press Ctrl+Shift+Esc to open Task Manager, select the program and click End task.\n"
    "\n"
    'Instruction: Describe snow without using the word "cold".\n'
    "Response: Snow falls softly, covering the streets in a quiet white blanket.\n"
    "\n"
    "Instruction: Name three colors.\n"
    "Response:"
)


@pytest.mark.spec("PR-07")
def test_demonstration_prompt_golden():
    demos = [prompts.Demonstration("a", "Say hi.", "Hi."), prompts.Demonstration("b", " Count to two. ", "1\n2")]
    assert prompts.render_demonstration_prompt("  Name a color.\n", demos) == (
        "Instruction: Say hi.\nResponse: Hi.\n\nInstruction: Count to two.\nResponse: 1\n2\n\n"
        "Instruction: Name a color.\nResponse:"
    )
    built = prompts.build_demonstration_prompt("Name three colors.", seed=0, item_id="list_items-000")
    assert built.text == DEMONSTRATION_GOLDEN_SEED_0
    assert built.demonstration_ids == ("demo-dna", "demo-ice-floats", "demo-kill-program", "demo-snow-no-cold")
    # the frame ends in exactly the zero-shot PR-01 prompt, so the answer boundary is the same
    assert built.text.endswith("\n\n" + prompts.render_response_prompt("Name three colors."))
    assert prompts.demonstration_stop_strings() == ("\n\n", "\nInstruction:")
    with pytest.raises(ValueError, match="at least one demonstration"):
        prompts.render_demonstration_prompt("Say hi.", [])


@pytest.mark.spec("PR-07")
def test_demonstration_pool_is_large_varied_and_answers_have_no_blank_line():
    pool = prompts.demonstration_pool()
    assert len(pool) >= 16
    assert len({d.id for d in pool}) == len(pool)
    for d in pool:
        assert "\n" not in d.instruction and d.response == d.response.strip()
        assert prompts.first_paragraph(d.response) == d.response  # the blank-line stop never cuts an answer
        assert len(d.response) <= 200
    # several instruction kinds, a refusal among them
    assert any(d.response.startswith("{") for d in pool)
    assert any(d.response.isupper() for d in pool) and any(d.response.islower() for d in pool)
    assert any(d.response.startswith("I can't help") for d in pool)
    assert any("\n" in d.response for d in pool)  # a one-per-line list


@pytest.mark.spec("PR-07")
@pytest.mark.parametrize("seed, item_id", [(0, "a"), (0, "b"), (1, "a"), (7, "translation-003")])
def test_demonstration_draw_is_seeded_per_item(seed, item_id):
    draw = prompts.draw_demonstrations(seed, item_id, "Name a color.")
    assert draw == prompts.draw_demonstrations(seed, item_id, "Name a color.")  # determinism
    assert len(draw) == prompts.DEFAULT_N_DEMONSTRATIONS == 4
    assert len(set(draw)) == 4
    assert set(draw) <= set(prompts.demonstration_pool())
    # the draw depends on (seed, item id) only, not on the instruction or on other items
    assert draw == prompts.draw_demonstrations(seed, item_id, "Something else entirely.")


@pytest.mark.spec("PR-07")
def test_demonstration_draws_differ_across_items_and_seeds():
    draws = {prompts.draw_demonstrations(s, f"item-{i}", "Name a color.") for s in range(3) for i in range(20)}
    assert len(draws) > 50
    assert prompts.draw_demonstrations(0, "a", "x", k=2) != prompts.draw_demonstrations(1, "a", "x", k=2)


@pytest.mark.spec("PR-07")
def test_demonstration_draw_never_shows_the_items_own_instruction():
    pool = prompts.demonstration_pool()
    k = prompts.MAX_DEMONSTRATIONS
    for demo in pool:
        for seed in range(30):
            for own in (demo.instruction, "  " + demo.instruction.upper() + " "):
                drawn = prompts.draw_demonstrations(seed, demo.id, own, k=k)
                assert demo not in drawn, (seed, demo.id)
                assert len(drawn) == k


@pytest.mark.spec("PR-07")
@pytest.mark.parametrize("kwargs, err, message", [
    (dict(k=0), ValueError, "number of demonstrations"),
    (dict(k=9), ValueError, "number of demonstrations"),
    (dict(k=True), ValueError, "number of demonstrations"),
    (dict(seed="0"), TypeError, "seed must be an int"),
    (dict(item_id=""), ValueError, "item_id is empty"),
    (dict(instruction=" "), ValueError, "instruction is empty"),
])
def test_demonstration_draw_validates_arguments(kwargs, err, message):
    args = {"seed": 0, "item_id": "a", "instruction": "Say hi.", "k": 4, **kwargs}
    with pytest.raises(err, match=message):
        prompts.draw_demonstrations(**args)


@pytest.mark.spec("PR-07")
@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("demonstrations"), "missing key 'demonstrations'"),
    (lambda d: d["demonstrations"][0].update(response="one\n\ntwo"), "no blank line"),
    (lambda d: d["demonstrations"][0].update(instruction="a\nb"), "must be one line"),
    (lambda d: d["demonstrations"][1].update(id=d["demonstrations"][0]["id"]), "duplicate id or instruction"),
    (lambda d: d["demonstrations"][1].update(instruction=d["demonstrations"][0]["instruction"].upper()),
     "duplicate id or instruction"),
    (lambda d: d["demonstrations"][0].pop("response"), "demonstrations[0] must be"),
    (lambda d: d.update(demonstrations=d["demonstrations"][:8]), "needs more than 8 items"),
])
def test_malformed_demonstrations_fail_naming_the_fix(mutate, message):
    _assert_validation_names(mutate, message)


@pytest.mark.spec("PR-07", "SFT-06")
def test_demonstrations_do_not_leak_into_the_eval_set():
    """The SFT-06 check itself (exact, normalized, ROUGE-L > 0.7) over the pool; it must catch a planted eval item."""
    from cai_bootstrap.sft.data_gate import EvalLeakageError, check_no_leakage, load_eval_instructions

    eval_items = load_eval_instructions()
    pool = [{"instruction": d.instruction} for d in prompts.demonstration_pool()]
    checked = check_no_leakage(pool, eval_items)
    assert checked["train_instructions"] == len(pool) and checked["hits"] == 0
    for planted, kind in ((eval_items[5][1], "exact"), (eval_items[9][1].upper() + "!", "normalized"),
                          ("Please " + eval_items[12][1], "near_duplicate")):
        with pytest.raises(EvalLeakageError) as e:
            check_no_leakage([*pool[:3], {"instruction": planted}, *pool[3:]], eval_items)
        assert [(h.kind, h.train_index) for h in e.value.hits] == [(kind, 3)]


@pytest.mark.spec("PR-02")
@pytest.mark.parametrize("top_k, expected", [(None, 50), (0, 0), (7, 7)])
def test_sampling_passes_top_k_explicitly(top_k, expected, tiny_lm, monkeypatch):
    """Left out, transformers applies its own top_k (50) and nothing records it."""
    seen = {}
    real = tiny_lm.model.generate

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(tiny_lm.model, "generate", spy)
    extra = {} if top_k is None else {"top_k": top_k}
    tiny_lm.generate(["Instruction: Say hi.\nResponse:"], max_new_tokens=2, do_sample=True, temperature=0.4, top_p=0.9,
                     progress=False, **extra)
    # With top-k on, the k kept tokens are sampled by the last logits processor (sampling.py).
    samplers = [p for p in seen.get("logits_processor") or () if isinstance(p, TopKTopPSampler)]
    applied = samplers[0].top_k if samplers else seen["top_k"]
    assert applied == expected
    assert bool(samplers) == (expected > 0)
    assert load_config(None).responses.as_provenance()["top_k"] == load_config(None).instructions.as_provenance()["top_k"] == 50
