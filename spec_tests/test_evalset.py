"""EV-01: the held-out eval set is shipped data, generated reproducibly, one verifier per item, disjoint from training inputs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cai_bootstrap.evaluation import evalset as es
from cai_bootstrap.evaluation.verifiers import VOCABULARIES, verify


@pytest.fixture(scope="module")
def items():
    return es.load_eval_set()


@pytest.mark.spec("EV-01")
def test_regeneration_reproduces_the_shipped_file_byte_for_byte(tmp_path):
    out = tmp_path / "regen.jsonl"
    assert es.main(["--out", str(out), "--seed", str(es.DEFAULT_SEED)]) == 0
    assert out.read_bytes() == es.DEFAULT_EVAL_SET.read_bytes(), (
        "the shipped eval set differs from what the generator makes; regenerate it with "
        "`python -m cai_bootstrap.evaluation.evalset --seed 0` and review the diff"
    )


@pytest.mark.spec("EV-01")
def test_generation_is_seeded():
    assert es.generate_eval_set(seed=0) == es.generate_eval_set(seed=0)
    assert es.generate_eval_set(seed=1) != es.generate_eval_set(seed=0)


@pytest.mark.spec("EV-01")
def test_shape_ids_and_instructions(items):
    assert len(items) >= 300
    types = Counter(it["type"] for it in items)
    assert len(types) >= 10 and min(types.values()) >= 25
    assert {it["category"] for it in items} == {"format", "content", "safety"}
    assert len({it["id"] for it in items}) == len(items)
    assert len({it["instruction"] for it in items}) == len(items)
    assert len({es.normalize_instruction(it["instruction"]) for it in items}) == len(items)
    for it in items:
        assert list(it) == list(es.ITEM_KEYS)
        assert set(it["verifier"]) == {"name", "args"}


@pytest.mark.spec("EV-01")
def test_every_prefix_is_balanced(items):
    n_types = len({it["type"] for it in items})
    assert len({it["type"] for it in items[:n_types]}) == n_types


def gold_response(item: dict) -> str:
    """A correct answer built from the item's own verifier args."""
    name, a = item["verifier"]["name"], item["verifier"]["args"]
    term = (a.get("topic_terms") or ["topic"])[0]
    if name == "list_items":
        kind, n = a["kind"], a["n"]
        if kind in VOCABULARIES:
            xs = list(VOCABULARIES[kind])[:n]
        elif kind == "prime":
            xs = [2, 3, 5, 7, 11, 13, 17, 19][:n]
        elif kind == "even":
            xs = list(range(2, 2 * n + 1, 2))
        elif kind == "odd":
            xs = list(range(1, 2 * n, 2))
        else:
            xs = [f"thing {i}" for i in range(n)]
        return "\n".join(f"{i + 1}. {x}" for i, x in enumerate(xs))
    if name == "word_count":
        return " ".join([term] + ["word"] * (a["n"] - 1)) + "."
    if name == "sentence_count":
        return " ".join(f"The {term} is here." for _ in range(a["n"]))
    if name == "json_object":
        val = {"string": "x", "integer": 3, "number": 2.5, "boolean": True, "array": [], "object": {}, "null": None}
        return json.dumps({k: val[t] for k, t in a["keys"].items()})
    if name == "all_lowercase":
        return f"the {term} is lovely today."
    if name == "all_uppercase":
        return f"THE {term.upper()} IS LOVELY TODAY."
    if name == "include_keywords":
        return f"The {a['keywords'][0]} and the {a['keywords'][1]} near the {term}."
    if name == "exclude_keywords":
        return " ".join(f"This {term} is truly a lovely thing to see." for _ in range(a.get("n_sentences") or 1))
    if name == "translation":
        return a["accepted"][0]
    if name == "arithmetic":
        return str(a["answer"])
    if name == "answer_then_stop":
        return a["accepted"][0] + "."
    if name == "refusal":
        return "I'm sorry, but I can't help with that."
    if name == "helpful_answer":
        return "You could use " + " and ".join(a["any_of"][: a.get("min_terms", 1)]) + " for this."
    raise AssertionError(f"no gold response for {name}")


@pytest.mark.spec("EV-01", "EV-04")
def test_every_item_is_satisfiable_and_fails_non_answers(items):
    """Each verifier spec accepts a correct answer and rejects no answer, garbage, and a bare new prompt."""
    for it in items:
        gold = verify(gold_response(it), it["verifier"])
        assert gold.passed, (it["id"], gold_response(it), gold)
        for bad in ("", "::::::::", "\nInstruction: " + it["instruction"] + "\nResponse:"):
            assert not verify(bad, it["verifier"]).passed, (it["id"], bad)


@pytest.mark.spec("EV-01")
def test_safety_items_are_two_sided(items):
    """Refusal items need a refusal; benign-but-edgy items must not be refused (a model refusing all fails half)."""
    refusal = next(it for it in items if it["type"] == "refusal")
    benign = next(it for it in items if it["type"] == "benign_request")
    blanket = "I'm sorry, but I can't help with that."
    assert verify(blanket, refusal["verifier"]).passed
    assert not verify(blanket, benign["verifier"]).passed
    # compliance terms are things only a complying answer says, never words of the request itself
    for it in items:
        if it["type"] == "refusal":
            for term in it["verifier"]["args"]["compliance_terms"]:
                assert term.lower() not in it["instruction"].lower(), (it["id"], term)
        if it["type"] == "benign_request":
            assert not any(t in it["instruction"].lower() for t in it["verifier"]["args"]["any_of"] if len(t) > 3), it["id"]


# -- held out: disjoint from training inputs ---------------------------------------------------

@pytest.mark.spec("EV-01")
def test_training_data_is_checked_against_this_set(items):
    """The SFT-06 leak check reads the shipped set and catches exact, normalized and near copies of items."""
    from cai_bootstrap.sft.data_gate import EvalLeakageError, check_no_leakage, load_eval_instructions

    eval_items = load_eval_instructions()
    assert eval_items == [(it["id"], it["instruction"]) for it in items]
    it = items[5]
    words = it["instruction"].rstrip(".").split()
    near = " ".join(words[:-1] + ["please", words[-1]])
    for leaked in (it["instruction"], "  " + it["instruction"].upper() + "!!", near):
        with pytest.raises(EvalLeakageError) as e:
            check_no_leakage([{"instruction": "Summarize a novel you like."}, {"instruction": leaked}], eval_items)
        assert it["id"] in str(e.value)
    assert check_no_leakage([{"instruction": "Summarize a novel you like."}], eval_items)["hits"] == 0


@pytest.mark.spec("EV-01")
def test_disjoint_from_the_fewshot_pool(items):
    """The instruction-generation pool shapes every generated training instruction."""
    from cai_bootstrap.prompts import instruction_pool
    from cai_bootstrap.sft.data_gate import find_leaks

    pool = [p.text for p in instruction_pool()]
    assert pool
    hits = find_leaks(pool, [(it["id"], it["instruction"]) for it in items])
    assert not hits, [(h.eval_id, h.kind, h.train_text) for h in hits]


# -- loading fails loudly ------------------------------------------------------------------------

@pytest.mark.spec("EV-01")
def test_bad_eval_files_fail_with_the_item_named(tmp_path, items):
    good = items[:3]
    cases = {
        "unknown_verifier": [*good[:2], {**good[2], "verifier": {"name": "vibes", "args": {}}}],
        "duplicate_id": [*good[:2], {**good[2], "id": good[0]["id"]}],
        "duplicate_instruction": [*good[:2], {**good[2], "instruction": good[0]["instruction"] + " "}],
        "bad_category": [*good[:2], {**good[2], "category": "misc"}],
        "missing_key": [*good[:2], {k: v for k, v in good[2].items() if k != "verifier"}],
    }
    for name, rows in cases.items():
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(es.EvalSetError) as e:
            es.load_eval_set(p)
        assert str(p) in str(e.value), name
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        es.load_eval_set(broken)
    with pytest.raises(FileNotFoundError):
        es.load_eval_set(tmp_path / "missing.jsonl")
    assert es.load_eval_set(limit=4) == items[:4]
