"""CG-01..CG-06: the clean loader catches real contamination, not just clean inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cai_bootstrap.loader import (
    ContaminationError,
    check_token_ids,
    delta_check,
    is_continuation_step,
    load_base_model,
    run_sentinel_suite,
)
from cai_bootstrap.profiles import EXEMPT, REQUIRED, ModelProfile, get_profile
from cai_bootstrap.sentinels import (
    SENTINELS,
    SentinelFailure,
    check_freezing_point,
    check_json_ab,
    check_pig_latin,
    check_seasons,
    check_three_primes,
    evaluate_sentinels,
)

IM_START, IM_END, ENDOFTEXT = 151644, 151645, 151643


def _raw_tokenizer(path):
    """A tokenizer loaded the naive way, as contaminated code would (tests only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _copy_model(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- CG-01
@pytest.mark.spec("CG-01")
def test_shipped_tokenizer_really_has_a_chat_template(tiny_model_dir):
    """Guards below are only meaningful because the real Qwen files carry a template."""
    cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in cfg["chat_template"]
    assert _raw_tokenizer(tiny_model_dir).chat_template


@pytest.mark.spec("CG-01", "CG-06")
def test_loader_removes_template_and_refuses_template_use(tiny_lm):
    assert tiny_lm.tokenizer.chat_template is None
    assert tiny_lm.provenance["template_disabled"] is True
    with pytest.raises(ContaminationError, match="apply_chat_template is disabled"):
        tiny_lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.spec("CG-01", "CG-03")
def test_prompt_built_with_chat_template_is_rejected(tiny_lm, tiny_model_dir):
    templated = _raw_tokenizer(tiny_model_dir).apply_chat_template(
        [{"role": "user", "content": "List three prime numbers"}], tokenize=False, add_generation_prompt=True
    )
    assert templated.startswith("<|im_start|>user")
    with pytest.raises(ContaminationError, match=r"'<\|im_start\|>' \(id 151644\) at position 0"):
        tiny_lm.encode(templated)
    with pytest.raises(ContaminationError):
        tiny_lm.generate([templated], max_new_tokens=2, do_sample=False)


# ---------------------------------------------------------------- CG-02
@pytest.mark.spec("CG-02")
def test_encode_adds_nothing_for_a_no_bos_family(tiny_lm):
    text = "Instruction: Name a color.\nResponse:"
    plain = tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_lm.encode(text) == plain
    assert tiny_lm.provenance["add_special_tokens"] is False
    assert tiny_lm.provenance["bos_prepended"] is False


@pytest.fixture(scope="module")
def bos_lm(tiny_model_dir):
    """The tiny model under a BOS-requiring profile (as Gemma/Llama), BOS = a real special token."""
    prof = ModelProfile("bos-family", True, "<|box_start|>", "<|endoftext|>", EXEMPT, "test profile")
    return load_base_model(tiny_model_dir, profile=prof, device="cpu")


@pytest.mark.spec("CG-02", "CG-06")
def test_bos_family_gets_exactly_one_explicit_bos(bos_lm):
    bos = bos_lm.bos_token_id
    assert bos == bos_lm.tokenizer.convert_tokens_to_ids("<|box_start|>")
    ids = bos_lm.encode("Water freezes at")
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[1:] == bos_lm.tokenizer("Water freezes at", add_special_tokens=False)["input_ids"]
    assert bos_lm.provenance["bos_prepended"] is True and bos_lm.provenance["bos_token_id"] == bos
    # A BOS the user typed into the text is a second BOS: rejected at its position.
    with pytest.raises(ContaminationError, match="at position 1"):
        bos_lm.encode("<|box_start|>Water freezes at")


@pytest.mark.spec("CG-02")
def test_continuations_never_get_a_bos(bos_lm):
    assert bos_lm.bos_token_id not in bos_lm.encode_continuation(" 32 degrees")


# ---------------------------------------------------------------- CG-03
@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "prefix,token,suffix",
    [
        ("Describe the seasons ", "<|im_start|>", "assistant"),
        ("Water freezes at", "<|im_end|>", ""),
        ("one", "<|endoftext|>", "two"),
    ],
)
def test_role_token_anywhere_is_rejected_with_name_and_position(tiny_lm, prefix, token, suffix):
    pos = len(tiny_lm.tokenizer(prefix, add_special_tokens=False)["input_ids"])
    with pytest.raises(ContaminationError) as e:
        tiny_lm.encode(prefix + token + suffix)
    assert repr(token) in str(e.value) and f"at position {pos}" in str(e.value)


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "ids,kwargs,ok",
    [
        ([1, 5, 6], dict(bos_id=1), True),  # single leading BOS
        ([5, 1, 6], dict(bos_id=1), False),  # BOS not leading
        ([1, 1, 6], dict(bos_id=1), False),  # double BOS
        ([1, 5, 6], dict(bos_id=None), False),  # BOS for a family without one
        ([5, 6, 2], dict(bos_id=None, eos_id=2), False),  # EOS in a prompt
        ([5, 6, 2], dict(bos_id=None, eos_id=2, allow_trailing_eos=True), True),  # training target end
        ([5, 2, 6], dict(bos_id=None, eos_id=2, allow_trailing_eos=True), False),  # EOS mid-sequence
        ([5, 9, 6], dict(bos_id=None), False),  # role token
    ],
)
def test_check_token_ids_table(ids, kwargs, ok):
    forbidden = {1: "<bos>", 2: "<eos>", 9: "<start_of_turn>"}
    if ok:
        check_token_ids(ids, forbidden, **kwargs)
    else:
        with pytest.raises(ContaminationError):
            check_token_ids(ids, forbidden, **kwargs)


@pytest.mark.spec("CG-03")
def test_forward_guard_blocks_direct_model_calls(tiny_lm):
    """Code that bypasses encode() still cannot feed role tokens to the model."""
    ids = torch.tensor([[16664, IM_START, 25]])
    with pytest.raises(ContaminationError, match="position 1"):
        tiny_lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    # Left padding is ignored through the mask; a clean padded batch passes.
    clean, mask = tiny_lm.encode_batch(["a b c d", "a"])
    assert mask[1, 0].item() == 0
    tiny_lm.model(input_ids=clean, attention_mask=mask)


class _Cache:
    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n


_IDS = torch.ones((2, 3), dtype=torch.long)


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "kwargs, continuation",
    [
        ({"attention_mask": torch.ones((2, 3))}, False),  # prefill: mask as long as the input
        ({"attention_mask": torch.ones((2, 10))}, True),  # decode step: mask covers cached tokens
        ({"attention_mask": torch.ones((2, 1, 3, 64))}, False),  # a 4-D mask as long as a static cache: no signal
        ({"attention_mask": torch.ones((2, 1, 1, 64)), "cache_position": torch.tensor([7])}, True),
        ({}, False),
        ({"cache_position": torch.arange(3)}, False),
        ({"cache_position": torch.tensor([7])}, True),
        ({"past_key_values": _Cache(0)}, False),  # an empty cache is still a prefill
        ({"past_key_values": _Cache(9)}, True),
        ({"cache": _Cache(9)}, True),  # transformers 5.24's keyword
        ({"some_future_name": _Cache(9)}, True),  # whatever the next rename is
    ],
)
def test_continuation_is_decided_from_tensors_not_keyword_names(kwargs, continuation):
    assert is_continuation_step(_IDS, kwargs) is continuation


@pytest.mark.spec("CG-03", "CG-04")
def test_real_cached_generate_checks_the_prefill_once_and_passes_decode_steps(tiny_lm):
    """Through the installed transformers' own generate() with a KV cache (the path 5.24 broke)."""
    seen = []
    handle = tiny_lm.model.register_forward_pre_hook(
        lambda m, a, k: seen.append(is_continuation_step(k["input_ids"], k)), with_kwargs=True
    )
    try:
        gens = tiny_lm.generate(["a b c d e", "hi"], max_new_tokens=6, do_sample=False, batch_size=2)
    finally:
        handle.remove()
    assert len(gens) == 2 and all(g.n_tokens >= 1 for g in gens)
    assert seen[0] is False, "the first pass is the prefill and must be checked"
    assert len(seen) >= 2 and all(seen[1:]), f"later passes continue the cache: {seen}"
    # The guard is still armed after a cached generate: a role token in a fresh prefill aborts.
    with pytest.raises(ContaminationError):
        tiny_lm.model(input_ids=torch.tensor([[16664, IM_START]]), attention_mask=torch.ones((1, 2), dtype=torch.long))


@pytest.mark.spec("CG-03")
def test_a_multi_token_pass_after_a_cached_prefix_is_checked(tiny_lm):
    """Only a one-token decoding step may skip the check: role tokens appended after a cached
    prefix, with a mask longer than the new tokens, must still abort."""
    from transformers import DynamicCache

    prefix = torch.tensor([[16664, 25, 11]])
    cache = DynamicCache()
    tiny_lm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), past_key_values=cache, use_cache=True)
    role = tiny_lm.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert role[0] == IM_START and len(role) > 1
    ids = torch.tensor([role])
    mask = torch.ones((1, prefix.shape[1] + ids.shape[1]), dtype=torch.long)
    with pytest.raises(ContaminationError):
        tiny_lm.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    # The same continuation of clean text passes, and so does a one-token decoding step.
    clean = torch.tensor([[16664, 25]])
    cache = DynamicCache()
    tiny_lm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), past_key_values=cache, use_cache=True)
    tiny_lm.model(input_ids=clean, attention_mask=torch.ones((1, 5), dtype=torch.long), past_key_values=cache, use_cache=True)
    tiny_lm.model(input_ids=torch.tensor([[IM_START]]), attention_mask=torch.ones((1, 6), dtype=torch.long),
                  past_key_values=cache, use_cache=True)


@pytest.mark.spec("CG-03")
def test_batch_with_one_bad_row_is_rejected(tiny_lm):
    with pytest.raises(ContaminationError):
        tiny_lm.encode_batch(["fine", "not <|im_end|> fine"])


# ---------------------------------------------------------------- CG-04
def _inject_post_processor(folder, token="<|im_start|>", token_id=IM_START):
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": token, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {token: {"id": token, "ids": [token_id], "tokens": [token]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tj))


@pytest.mark.spec("CG-04")
def test_tokenizer_that_injects_special_tokens_aborts_the_load(tiny_model_dir, tmp_path):
    bad = _copy_model(tiny_model_dir, tmp_path, "injecting-tokenizer")
    _inject_post_processor(bad)
    with pytest.raises(ContaminationError, match=r"delta check.*<\|im_start\|>"):
        load_base_model(bad, device="cpu")


@pytest.mark.spec("CG-04")
def test_recorded_bos_is_the_only_allowed_delta(tiny_lm):
    class BosAdding:
        """add_special_tokens=True prepends BOS id 7, as Gemma's tokenizer does."""

        def __init__(self, extra):
            self.extra = extra

        def __call__(self, text, add_special_tokens):
            ids = [ord(c) + 100 for c in text]
            return {"input_ids": (self.extra + ids) if add_special_tokens else ids}

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i - 100) for i in ids)

        def convert_ids_to_tokens(self, i):
            return f"<tok{i}>"

    prof = get_profile("gemma")
    assert delta_check(BosAdding([7]), prof, 7, ["Water freezes at"])["ok"]
    with pytest.raises(ContaminationError, match="beyond the recorded BOS"):
        delta_check(BosAdding([7, 8]), prof, 7, ["Water freezes at"])
    with pytest.raises(ContaminationError):
        delta_check(BosAdding([7]), get_profile("qwen"), None, ["Water freezes at"])


@pytest.mark.spec("CG-04")
def test_round_trip_change_aborts():
    class Lossy:
        def __call__(self, text, add_special_tokens):
            return {"input_ids": [1, 2]}

        def decode(self, ids, skip_special_tokens=False):
            return "something else"

        def convert_ids_to_tokens(self, i):
            return str(i)

    with pytest.raises(ContaminationError, match="round-trip"):
        delta_check(Lossy(), get_profile("qwen"), None, ["Water freezes at"])


@pytest.mark.spec("CG-04", "CG-06")
def test_delta_check_runs_on_every_sentinel_at_load(tiny_lm):
    checked = [c["text"] for c in tiny_lm.provenance["delta_check"]["checked"]]
    assert checked == [s.prompt for s in SENTINELS]


# ---------------------------------------------------------------- CG-05
CHECKER_TABLE = [
    (check_pig_latin, "ellohay orldway", True),
    (check_pig_latin, " world. Translate to French: bonjour", False),
    (check_three_primes, " 2, 3, 5", True),
    (check_three_primes, " 2, 3, 5, 7, 11", False),  # not three
    (check_three_primes, " 4, 6, 8", False),  # not prime
    (check_three_primes, " numbers that are greater than one", False),
    (check_json_ab, ' {"a": 1, "b": 2}', True),
    (check_json_ab, ' {"a": 1, "b": "2"}', False),
    (check_json_ab, ' {"a": 1, "b": 2, "c": 3}', False),
    (check_json_ab, " with keys a and b", False),
    (check_seasons, " Spring is mild, summer hot, autumn cool and winter cold.", True),
    (check_seasons, " of the year in a short essay.\n\nDescribe the seasons", False),
    (check_freezing_point, " 32 degrees Fahrenheit.", True),
    (check_freezing_point, " 0 °C at sea level", True),
    (check_freezing_point, " a low temperature", False),
]


@pytest.mark.spec("CG-05")
@pytest.mark.parametrize("checker,response,expected", CHECKER_TABLE)
def test_sentinel_checkers_are_strict(checker, response, expected):
    assert checker(response) is expected


FOLLOWING = {
    "pig_latin": " ellohay orldway",
    "three_primes": " 2, 3, 5",
    "json_ab": ' {"a": 1, "b": 2}',
    "seasons": " Spring, summer, autumn and winter.",
    "freezing_point": " 0 degrees Celsius",
}
BASE_LIKE = {
    "pig_latin": ". Translate to Pig Latin: good morning",
    "three_primes": " that add up to 100.\n2. List three",
    "json_ab": " and strings\nWrite a JSON with keys",
    "seasons": ". Describe the seasons. Describe",
    "freezing_point": " 32 degrees Fahrenheit",
}


@pytest.mark.spec("CG-05")
def test_instruction_following_model_is_caught_as_contaminated(tiny_lm, monkeypatch):
    """An instruct model (faked by its outputs) passing the sentinels aborts the load."""
    from cai_bootstrap.loader import Generation

    def fake_generate(prompts, **kw):
        by_prompt = {s.prompt: FOLLOWING[s.name] for s in SENTINELS}
        return [Generation(by_prompt[p], 5, False, True) for p in prompts]

    monkeypatch.setattr(tiny_lm, "generate", fake_generate)
    with pytest.raises(SentinelFailure, match="contamination"):
        run_sentinel_suite(tiny_lm)


@pytest.mark.spec("CG-05")
def test_profile_expectations_for_completion_sentinel():
    base = evaluate_sentinels(BASE_LIKE, get_profile("gemma"))
    assert base["ok"] and not base["contaminated"]
    garbage = dict(BASE_LIKE, freezing_point=" at at at at")
    broken = evaluate_sentinels(garbage, get_profile("gemma"))
    assert broken["broken"] == ["freezing_point"] and not broken["ok"]
    exempt = evaluate_sentinels(garbage, get_profile("tiny-random"))
    assert exempt["ok"] and exempt["completion_sentinel"] == EXEMPT
    fr = [r for r in exempt["results"] if r["name"] == "freezing_point"][0]
    assert fr["expected_pass"] is None
    assert get_profile("gemma").completion_sentinel == REQUIRED


@pytest.mark.spec("CG-05")
@pytest.mark.parametrize("quantization, hint", [(None, False), ("none", False), ("nf4", True)])
def test_a_broken_load_names_4_bit_weights_only_when_they_were_used(quantization, hint):
    from cai_bootstrap.sentinels import raise_on_failure

    broken = evaluate_sentinels(dict(BASE_LIKE, freezing_point=" at at at at"), get_profile("gemma"))
    with pytest.raises(SentinelFailure, match="broken load") as info:
        raise_on_failure(broken, quantization=quantization)
    assert ("quantization: none" in str(info.value)) is hint


@pytest.mark.spec("CG-05", "CG-06")
def test_sentinels_run_in_raw_mode_at_load_and_are_recorded(tiny_lm):
    s = tiny_lm.provenance["sentinels"]
    assert s["mode"] == "raw" and s["ok"]
    assert [r["prompt"] for r in s["results"]] == [x.prompt for x in SENTINELS]
    assert all("Instruction:" not in r["prompt"] for r in s["results"])
    assert s["completion_sentinel"] == "exempt" and "exempt" in tiny_lm.profile.note
    assert s["decoding"]["do_sample"] is False


# ---------------------------------------------------------------- CG-06
@pytest.mark.spec("CG-06")
def test_provenance_fields(tiny_lm, tiny_model_dir):
    p = tiny_lm.provenance
    for key in ("loader_version", "model_name", "weights", "dtype", "quantization", "template_disabled",
                "add_special_tokens", "bos_prepended", "sentinels", "profile"):
        assert key in p, key
    assert p["loader_version"] and p["loader_version"] != ""
    assert p["weights"]["mode"] == "sha256" and len(p["weights"]["combined"]) == 64
    assert p["dtype"] == "float32" and p["quantization"] == "none"
    assert p["model_path"] == str(tiny_model_dir.resolve())


@pytest.mark.spec("CG-06")
def test_weights_hash_changes_with_weights(tiny_model_dir, tmp_path):
    from cai_bootstrap.testmodel import build_tiny_model

    other = build_tiny_model(tmp_path / "seed1", seed=1)
    a = load_base_model(tiny_model_dir, device="cpu", run_sentinels=False).provenance["weights"]["combined"]
    b = load_base_model(other, device="cpu", run_sentinels=False).provenance["weights"]["combined"]
    assert a != b


@pytest.mark.spec("CG-06")
def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base_model(tmp_path / "nope" / "model", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_base_model(tmp_path / "empty", device="cpu")


@pytest.mark.spec("CG-02", "CG-03")
def test_qwen_eos_is_endoftext_not_the_chat_turn_end(tiny_lm):
    """The shipped Qwen tokenizer config names <|im_end|> (a chat role token) as EOS; a base
    model must stop on <|endoftext|> instead, or training would teach it a chat marker."""
    assert tiny_lm.tokenizer.eos_token == "<|im_end|>"
    assert tiny_lm.eos_token_id == ENDOFTEXT != IM_END
    assert IM_END in tiny_lm.forbidden_ids


@pytest.mark.spec("CG-02", "CG-03")
def test_encode_many_equals_encode_and_checks_every_text(tiny_lm, bos_lm):
    texts = ["Instruction: Name a color.\nResponse:", "Water freezes at", " leading space"]
    for lm in (tiny_lm, bos_lm):
        assert lm.encode_many(texts) == [lm.encode(t) for t in texts]
    with pytest.raises(ContaminationError, match="im_start"):
        tiny_lm.encode_many(["fine", "bad <|im_start|>"])


@pytest.mark.spec("CL-04", "PR-02")
def test_a_row_ended_by_a_stop_string_is_not_a_token_limit_hit(tiny_lm):
    """A finished first paragraph followed by padding is a complete answer, not a truncated one."""
    done = tiny_lm.encode_continuation(" Paris.\n\n")
    filler = tiny_lm.encode_continuation(" more words that came after the stop")
    g = tiny_lm._finish(done + filler, max_new_tokens=len(done + filler), stop_strings=("\n\n",))
    assert g.text == " Paris.\n\n" and g.n_tokens == len(done) and not g.hit_limit
    cut = tiny_lm._finish(filler, max_new_tokens=len(filler), stop_strings=("\n\n",))
    assert cut.hit_limit and cut.n_tokens == len(filler)  # no stop string: still a limit hit


@pytest.mark.spec("PR-02")
def test_generate_accepts_stop_strings(tiny_lm):
    out = tiny_lm.generate(["Instruction: Name a color.\nResponse:"], max_new_tokens=6, do_sample=False,
                           stop_strings=("\n\n",))
    assert len(out) == 1 and out[0].n_tokens <= 6


# ---------------------------------------------------------------- CG-03: derived forbidden list
TEMPLATE_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize("token", TEMPLATE_TOKENS)
def test_template_tokens_not_flagged_special_are_refused(tiny_lm, token):
    """Qwen3's template marks thinking and tools with added tokens the tokenizer does not call special."""
    special = {t.content: t.special for t in tiny_lm.tokenizer.added_tokens_decoder.values()}
    assert special[token] is False  # the case the old special-or-role-regex rule let through
    pos = len(tiny_lm.tokenizer("Describe the seasons ", add_special_tokens=False)["input_ids"])
    with pytest.raises(ContaminationError) as e:
        tiny_lm.encode("Describe the seasons " + token + " now")
    assert repr(token) in str(e.value) and f"at position {pos}" in str(e.value)


class _Added:
    def __init__(self, content, special):
        self.content, self.special = content, special


class _FakeTokenizer:
    def __init__(self, added, special_ids=()):
        self.added_tokens_decoder = {i: _Added(c, s) for i, (c, s) in added.items()}
        self.all_special_ids = list(special_ids)

    def convert_ids_to_tokens(self, i):
        return self.added_tokens_decoder[i].content


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "added, template, forbidden",
    [
        # special tokens always; non-special ones only when the template uses them
        ({1: ("<s>", True), 2: ("<think>", False), 3: ("<fim>", False)}, "{{ '<think>' }}", {1, 2}),
        ({1: ("<s>", True), 2: ("<think>", False)}, None, {1}),  # no template: nothing to derive from
        ({5: ("<|im_start|>", False)}, None, {5}),  # the role regex stays as a fallback
        ({7: ("[TOOL]", False), 8: ("[TOOLS]", False)}, "x [TOOLS] y", {8}),  # whole token text, not a prefix
        ({9: ("<r>", False)}, {"default": "a <r> b", "tool_use": "c"}, {9}),  # named templates
        ({9: ("<r>", False)}, [{"name": "default", "template": "a <r> b"}], {9}),
    ],
)
def test_forbidden_ids_are_derived_from_added_tokens_and_template(added, template, forbidden):
    from cai_bootstrap.loader import forbidden_token_ids

    tok = _FakeTokenizer(added, special_ids=[i for i, (_, s) in added.items() if s])
    assert set(forbidden_token_ids(tok, template)) == forbidden


@pytest.mark.spec("CG-03", "CG-06")
def test_forbidden_list_source_is_recorded(tiny_lm):
    src = tiny_lm.provenance["forbidden_tokens"]
    assert src["template_seen"] is True
    assert set(TEMPLATE_TOKENS) <= set(src["from_template"])
    assert src["n"] == len(tiny_lm.forbidden_ids) == tiny_lm.provenance["n_forbidden_special_tokens"]


# ---------------------------------------------------------------- CG-03: what the model emits
@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "pieces, stop, flagged",
    [
        ([" Paris."], False, []),
        ([" Paris.", "<|im_end|>", " more"], False, [("<|im_end|>", 1)]),
        ([" Sure", "<think>", " hmm"], False, [("<think>", 1)]),
        ([" Paris.", "<|endoftext|>"], True, []),  # the EOS that ends a row is not a finding
        (["<|im_start|>", "assistant"], False, [("<|im_start|>", 0)]),
    ],
)
def test_emitted_special_tokens_are_flagged_not_erased(tiny_lm, pieces, stop, flagged):
    ids, where = [], {}
    for p in pieces:
        if p.startswith("<") and p.endswith(">"):
            where.setdefault(p, len(ids))
            ids.append(tiny_lm.tokenizer.convert_tokens_to_ids(p))
        else:
            ids += tiny_lm.encode_continuation(p)
    g = tiny_lm._finish(ids, max_new_tokens=64)
    assert g.stopped_on_eos is stop
    assert [(s["token"], s["position"]) for s in g.special_tokens] == [(t, where[t]) for t, _ in flagged]
    for s in g.special_tokens:  # the offset says where in the decoded text the token was
        assert s["offset"] == len(tiny_lm.tokenizer.decode(ids[: s["position"]], skip_special_tokens=True))


@pytest.mark.spec("CG-03")
@pytest.mark.parametrize(
    "text, found",
    [
        ("Write a poem about rain.", []),
        ("Write <|im_start|> a poem.", ["<|im_start|>"]),
        ("Think first <think> then answer </think>", ["<think>", "</think>"]),
        ("plain <im_start> look-alike", []),
    ],
)
def test_forbidden_tokens_in_text(tiny_lm, text, found):
    assert tiny_lm.forbidden_tokens_in(text) == found
