"""ST-02: the constitution is validated on load and its principles feed the critic rubrics and Stage 6."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai_bootstrap import prompts
from cai_bootstrap.cleaning import REASON_EMPTY
from cai_bootstrap.constitution import (
    CATEGORIES,
    Constitution,
    ConstitutionError,
    Principle,
    critique_and_revise,
    draw_principles,
    load_constitution,
    packaged_constitution_text,
    parse_constitution,
)

REPO = Path(__file__).resolve().parent.parent
EXPECTED_IDS = [
    "helpful_accurate",
    "avoid_harm",
    "respect_privacy",
    "acknowledge_uncertainty",
    "refuse_malicious",
    "clarity_conciseness",
    "avoid_bias",
    "constructive_dialogue",
    "prioritize_safety",
    "no_misinformation",
]


def _doc(*principles: dict) -> dict:
    return {"version": 1, "principles": list(principles)}


GOOD = {"id": "be_kind", "category": "harmlessness", "text": "Be kind."}


@pytest.mark.spec("ST-02")
def test_shipped_constitution_has_the_ten_principles_with_known_categories():
    c = load_constitution()
    assert c.ids == EXPECTED_IDS
    assert all(p.category in CATEGORIES and p.text for p in c.principles)
    assert {p.category for p in c.principles} == set(CATEGORIES)


@pytest.mark.spec("ST-02")
def test_root_file_is_the_packaged_file():
    """One source of truth: the user-facing root copy must not drift from the packaged one."""
    root = REPO / "constitution.yaml"
    assert root.read_text(encoding="utf-8") == packaged_constitution_text()
    assert load_constitution(root) == load_constitution()


@pytest.mark.spec("ST-02")
@pytest.mark.parametrize(
    "doc, message",
    [
        (_doc(GOOD, dict(GOOD)), "duplicate id 'be_kind'"),
        (_doc({**GOOD, "category": "politeness"}), "unknown category 'politeness'"),
        (_doc({**GOOD, "id": "Be Kind"}), "must be snake_case"),
        (_doc({**GOOD, "text": "  "}), "text must be a non-empty string"),
        (_doc({**GOOD, "text": "two\nlines"}), "text must be one line"),
        (_doc({"id": "x_y", "category": "honesty"}), "missing key(s) ['text']"),
        (_doc({**GOOD, "weight": 2}), "unknown key(s) ['weight']"),
        (_doc(), "'principles' must be a non-empty list"),
        ({"principles": [GOOD], "extra": 1}, "unknown top-level key(s) ['extra']"),
        ({"version": 0, "principles": [GOOD]}, "'version' must be a positive integer"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_invalid_constitutions_are_rejected_naming_the_problem(doc, message):
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(doc, source="test.yaml")
    assert message in str(e.value)
    assert "test.yaml" in str(e.value)


@pytest.mark.spec("ST-02")
def test_every_problem_is_reported_at_once():
    doc = _doc(GOOD, dict(GOOD), {**GOOD, "id": "other", "category": "vibes"})
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(doc)
    assert "duplicate id" in str(e.value) and "unknown category 'vibes'" in str(e.value)


@pytest.mark.spec("ST-02")
def test_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="constitution file not found"):
        load_constitution(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles: [unclosed\n")
    with pytest.raises(ConstitutionError, match="not valid YAML"):
        load_constitution(bad)


@pytest.mark.spec("ST-02")
def test_critic_rubrics_are_built_from_the_principles():
    c = load_constitution()
    for template, cfg_key in ((prompts.instruction_critic_template(), "instruction_critic"), (prompts.pair_critic_template(), "pair_critic")):
        ids = prompts.prompt_data()[cfg_key]["principles"]
        assert list(template.principle_ids) == ids
        for pid in ids:
            assert f"\n- {c.get(pid).text}\n" in template.prefix


@pytest.mark.spec("ST-02")
def test_a_custom_constitution_changes_the_rubric_and_unknown_ids_fail(tmp_path):
    c = load_constitution()
    edited = Constitution(
        tuple(Principle(p.id, p.category, "EDITED " + p.text) if p.id == "avoid_harm" else p for p in c.principles)
    )
    prefix = prompts.instruction_critic_template(edited).prefix
    assert "- EDITED Do not help anyone harm" in prefix
    partial = parse_constitution(_doc(GOOD), source="small.yaml")
    with pytest.raises(ConstitutionError, match="rubric cites unknown principle"):
        prompts.instruction_critic_template(partial)


@pytest.mark.spec("ST-02")
def test_principles_are_queryable_by_category_and_id():
    c = load_constitution()
    assert [p.id for p in c.by_category("honesty")] == ["acknowledge_uncertainty", "no_misinformation"]
    with pytest.raises(ConstitutionError, match="known: helpfulness"):
        c.by_category("style")
    with pytest.raises(ConstitutionError, match="no principle 'nope'"):
        c.get("nope")


@pytest.mark.spec("ST-02")
def test_stage6_critique_then_revision_uses_each_principle_in_turn():
    c = load_constitution()
    chosen = draw_principles(c, 2, seed=3)
    assert chosen == draw_principles(c, 2, seed=3)
    seen: list[str] = []

    def fake_generate(ps: list[str]) -> list[str]:
        (p,) = ps
        seen.append(p)
        if p.endswith("Critique:"):
            return [" It could be shorter.\n\nInstruction: next"]
        return [f" Revised answer {len(seen)}.\n\nmore text"]

    result = critique_and_revise("Name a color.", "Blue, which is a color that is blue.", fake_generate, chosen)
    assert len(seen) == 4
    for k, p in enumerate(chosen):
        critique_prompt, revision_prompt = seen[2 * k], seen[2 * k + 1]
        assert critique_prompt == prompts.render_critique_prompt("Name a color.", result.steps[k - 1].revision if k else "Blue, which is a color that is blue.", p)
        assert p.text in critique_prompt and p.text in revision_prompt
        assert "Critique: It could be shorter.\n\nRevision request:" in revision_prompt
    assert [s.principle_id for s in result.steps] == [p.id for p in chosen]
    assert result.final_response == "Revised answer 4."
    assert yaml.safe_load(yaml.safe_dump(result.to_dict()))["steps"][0]["accepted"] is True


@pytest.mark.spec("ST-02")
def test_stage6_keeps_the_previous_response_when_a_revision_is_dropped():
    c = load_constitution()
    result = critique_and_revise(
        "Name a color.", "Blue.", lambda ps: ["\n\n"] if ps[0].endswith("Revision:") else [" Fine."], [c.get("avoid_bias")]
    )
    assert result.final_response == "Blue."
    assert result.steps[0].accepted is False and result.steps[0].reason == REASON_EMPTY
    with pytest.raises(ValueError, match="at least one principle"):
        critique_and_revise("x y z", "Blue.", lambda ps: ["a"], [])
    with pytest.raises(TypeError, match="one string per prompt"):
        critique_and_revise("Name a color.", "Blue.", lambda ps: [], [c.get("avoid_bias")])
