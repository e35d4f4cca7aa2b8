"""DG-01..DG-04, DG-07, DG-08: the Stage-1 data-generation pipeline on the tiny model.

Sampling is scripted (``scripted_lm``) so the text parses; every critic decision is the
real critic on a real tiny model. Assertions are about structure and invariants (what
each phase receives, what every drop is counted as, which files exist), not about how
many items a random model happens to accept.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cai_bootstrap import cleaning, prompts
from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.config import ConfigError, GenerateConfig, load_config
from cai_bootstrap.datagen.store import PhaseStore
from cai_bootstrap.dedup import DuplicateIndex, normalize, rouge_l
from cai_bootstrap.io_utils import read_jsonl, sha256_file
from cai_bootstrap.provenance import CRITIQUE_FIELDS, GENERATION_FIELDS, RECORD_METADATA_FIELDS, SFT_RECORDS
from spec_tests.datagen_support import flowing_lm, small_config
from spec_tests.probe_support import probe_results
from spec_tests.scripted_lm import ScriptedLM


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return flowing_lm(tmp_path_factory)


@pytest.fixture(scope="module")
def messy_run(flow, tmp_path_factory):
    """One messy run with a critic threshold inside the margins: items are dropped at every phase."""
    lm, model_dir, mid = flow
    out = tmp_path_factory.mktemp("messy") / "run"
    cfg = small_config(out, model_dir, **{"critic.threshold": mid})
    scripted = ScriptedLM(lm)
    summary = P.run_generation(cfg, lm=scripted)
    return {"out": out, "cfg": cfg, "summary": summary, "calls": scripted.calls}


def _calls(calls, kind: str):
    """Generate calls of one phase: instruction prompts end with an open list number."""
    is_instr = lambda c: bool(re.search(r"\n\d+\.$", c["prompts"][0]))  # noqa: E731
    return [c for c in calls if is_instr(c) == (kind == "instructions")]


# -- DG-01 --------------------------------------------------------------------------------------


@pytest.mark.spec("DG-01")
def test_instruction_sampling_defaults_are_the_method_values():
    ic = GenerateConfig().instructions
    assert (ic.temperature, ic.top_p, ic.repetition_penalty) == (0.7, 0.9, 1.1)
    assert 1.5 <= ic.oversample <= 2.0


@pytest.mark.spec("DG-01")
@pytest.mark.parametrize("oversample, ok", [(1.49, False), (1.5, True), (1.75, True), (2.0, True), (2.01, False)])
def test_oversample_factor_is_confined_to_1_5_to_2(oversample, ok):
    if ok:
        assert load_config(None, **{"instructions.oversample": oversample}).instructions.oversample == oversample
    else:
        with pytest.raises(ConfigError, match=r"instructions\.oversample"):
            load_config(None, **{"instructions.oversample": oversample})


@pytest.mark.spec("DG-01")
def test_run_samples_instructions_with_dg01_settings_and_judges_the_oversampled_count(messy_run):
    cfg, calls = messy_run["cfg"], messy_run["calls"]
    instr = _calls(calls, "instructions")
    assert instr, "no instruction-generation call was made"
    for c in instr:
        assert (c["do_sample"], c["temperature"], c["top_p"], c["repetition_penalty"]) == (True, 0.7, 0.9, 1.1)
        assert c["max_new_tokens"] == cfg.instructions.max_new_tokens
    for c in _calls(calls, "responses"):
        assert (c["do_sample"], c["temperature"], c["top_p"], c["repetition_penalty"]) == (True, 0.4, 0.9, 1.1)
        assert c["max_new_tokens"] == cfg.responses.max_new_tokens
    need = math.ceil(cfg.target * cfg.instructions.oversample)
    assert messy_run["summary"]["acceptance"]["instructions_judged"] == need


@pytest.mark.spec("DG-01", "DG-02")
@pytest.mark.parametrize("oversample", [1.5, 2.0])
def test_instruction_phase_alone_yields_target_times_oversample(flow, tmp_path, oversample):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir, target=5, **{"instructions.oversample": oversample})
    kept, rejects = P.generate_instructions(ScriptedLM(lm), cfg, PhaseStore(tmp_path / "raw.jsonl"))
    assert len(kept) == math.ceil(5 * oversample)
    assert len({c["id"] for c in kept}) == len(kept)
    assert all(r["stage"] in ("parse", "dedup") and r["reason"] for r in rejects)


# -- DG-02 --------------------------------------------------------------------------------------


@pytest.mark.spec("DG-02")
def test_run_calls_the_phases_in_the_specified_order(flow, tmp_path, monkeypatch):
    lm, model_dir, _ = flow
    seen: list[str] = []

    def spy(name, fn, label=None):
        def wrapped(*a, **k):
            tag = label(*a, **k) if label else name
            if not seen or seen[-1] != tag:
                seen.append(tag)
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(P, "generate_instructions", spy("instructions", P.generate_instructions))
    monkeypatch.setattr(P, "parse_raw", spy("parse", P.parse_raw))
    monkeypatch.setattr(P, "dedup_candidates", spy("dedup", P.dedup_candidates))
    monkeypatch.setattr(P, "probe_critics", spy("critic_probes", P.probe_critics))
    monkeypatch.setattr(P, "judge", spy("judge", P.judge, label=lambda critic, *a, **k: getattr(critic, "template", None)
                                        and critic.template.name or "relevance_judge"))
    monkeypatch.setattr(P, "generate_responses", spy("responses", P.generate_responses))
    monkeypatch.setattr(P.cleaning, "clean_response", spy("clean", cleaning.clean_response))
    monkeypatch.setattr(P, "compute_qc_summary", spy("qc", P.compute_qc_summary))
    monkeypatch.setattr(P, "write_artifacts", spy("artifacts", P.write_artifacts))
    P.run_generation(small_config(tmp_path / "run", model_dir, target=2), lm=ScriptedLM(lm, style="clean"))
    first = [t for i, t in enumerate(seen) if t not in seen[:i]]
    assert first == ["instructions", "parse", "dedup", "critic_probes", "instruction_critic", "responses", "clean", "pair_critic",
                     "relevance_judge", "qc", "artifacts"]


@pytest.mark.spec("DG-02")
def test_parse_and_dedup_phases_work_on_plain_records():
    raw = [
        {"prompt_index": 1, "next_number": 4, "hit_limit": False,
         "text": " Write a haiku about rivers.\n5. Here are some more tasks:\n6. write a HAIKU about rivers!\n7. List three facts about ancient roman road building."},
        {"prompt_index": 0, "next_number": 5, "hit_limit": True, "text": " Explain tides to a child in one sentence.\n6. Describe the"},
    ]
    candidates, parse_rejects = P.parse_raw(raw)
    assert [c["id"] for c in candidates] == ["p0-l1", "p1-l1", "p1-l3", "p1-l4"]  # sorted by prompt index
    assert {(r["reason"], r["prompt_index"]) for r in parse_rejects} == {("truncated_by_token_limit", 0), ("meta_line", 1)}
    kept, dedup_rejects = P.dedup_candidates(candidates)
    assert [c["id"] for c in kept] == ["p0-l1", "p1-l1", "p1-l4"]
    assert [(r["id"], r["reason"]) for r in dedup_rejects] == [("p1-l3", "normalized_duplicate")]
    # A caller's pool carries over between calls, even while it is still empty.
    pool = DuplicateIndex()
    first, _ = P.dedup_candidates(candidates[:1], pool)
    again, rej = P.dedup_candidates(candidates[:1], pool)
    assert len(first) == 1 and again == [] and rej[0]["reason"] == "exact_duplicate"


class _StubCritic:
    """Stands in for a critic: judges by a rule, so ``judge`` is testable without a model."""

    def __init__(self):
        self.batches = []

    def score(self, items):
        from cai_bootstrap.critic import decide

        self.batches.append(list(items))
        return [decide(-0.1 if "good" in i["instruction"] else -3.0, -2.0, threshold=1.0) for i in items]


@pytest.mark.spec("DG-02")
def test_judge_phase_works_alone_and_skips_finished_batches(tmp_path):
    items = [{"id": f"i{k}", "instruction": ("good " if k % 2 else "bad ") + str(k)} for k in range(5)]
    store = PhaseStore(tmp_path / "verdicts.jsonl")
    critic = _StubCritic()
    P.judge(critic, items, lambda c: {"instruction": c["instruction"]}, store, 2, "critic", True)
    assert [len(b) for b in critic.batches] == [2, 2, 1]
    assert [store.get(f"i{k}")["critique"]["is_good"] for k in range(5)] == [False, True, False, True, False]
    again = _StubCritic()
    P.judge(again, items, lambda c: {"instruction": c["instruction"]}, PhaseStore(tmp_path / "verdicts.jsonl"), 2, "critic", True)
    assert again.batches == []


@pytest.mark.spec("DG-02")
def test_response_phase_works_alone(flow, tmp_path):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir)
    accepted = [{"id": f"p{k}-l1", "instruction": f"Write a haiku about topic number {k}."} for k in range(3)]
    store = PhaseStore(tmp_path / "responses.jsonl")
    P.generate_responses(ScriptedLM(lm), cfg, accepted, store)
    rows = [store.get(c["id"]) for c in accepted]
    assert all(r["prompt"] == prompts.render_response_prompt(r["instruction"]) for r in rows)
    assert all(isinstance(r["raw"], str) and r["n_tokens"] <= cfg.responses.max_new_tokens for r in rows)


def _verdict(good: bool, confident: bool = True) -> dict:
    return {"is_good": good, "predicted_label": "A" if good or not confident else "B", "logp_a": -0.5, "logp_b": -2.0,
            "margin": 1.5 if confident else 0.2, "confident": confident}


@pytest.mark.spec("DG-02")
def test_finalize_phase_is_pure_and_accounts_for_every_item():
    rows = P.RunRows(
        instruction_verdicts=[{"id": "a", "instruction": "Do a.", "critique": _verdict(True)},
                              {"id": "b", "instruction": "Do b.", "critique": _verdict(False)},
                              {"id": "c", "instruction": "Do c.", "critique": _verdict(True)},
                              {"id": "d", "instruction": "Do d.", "critique": _verdict(True)}],
        responses=[{"id": "a", "instruction": "Do a.", "raw": " Done a.\n\nInstruction: more", "n_tokens": 9, "seed": 1},
                   {"id": "c", "instruction": "Do c.", "raw": "\n\n", "n_tokens": 2, "seed": 1},
                   {"id": "d", "instruction": "Do d.", "raw": " Done d.", "n_tokens": 3, "seed": 1}],
        pair_verdicts=[{"id": "a", "critique": _verdict(True), "clean_tokens": 3},
                       {"id": "d", "critique": _verdict(False, confident=False), "clean_tokens": 3}],
        pre_rejects=[{"stage": "parse", "reason": "meta_line", "text": "Here are more:"}],
    )
    kwargs = dict(config_max_new_tokens=40, metadata_for=lambda r: {f: "x" for f in RECORD_METADATA_FIELDS},
                  count_tokens=len, sentinels_ok=True, thresholds=load_config(None).qc.thresholds(),
                  critic_probes=probe_results({"instruction": 0.9, "pair": 0.9, "relevance": 0.5}))
    dataset, rejects, summary = P.finalize(rows, **kwargs)
    assert [r["instruction"] for r in dataset] == ["Do a."] and dataset[0]["response"] == "Done a."
    assert sorted((r["stage"], r["reason"]) for r in rejects) == [
        ("clean_response", "empty"), ("instruction_critic", "critic_bad"), ("pair_critic", "critic_low_confidence"),
        ("parse", "meta_line")]
    assert summary["counts"]["generated"] == 3 and summary["counts"]["kept"] == 1
    assert P.finalize(rows, **kwargs)[1:] == (rejects, summary)


def _rel(good: bool) -> dict:
    return {"is_good": good, "score": 0.5 if good else -0.5, "logp_conditional": -2.0, "logp_unconditional": -2.5,
            "n_tokens": 3, "threshold": 0.0}


@pytest.mark.spec("QC-09")
@pytest.mark.parametrize("aurocs, kept, reject_stages", [
    # Every judge informative: each drops what it rejects.
    ({"instruction": 0.9, "pair": 0.9, "relevance": 0.9}, ["a"], ["instruction_critic", "pair_critic", "relevance_judge"]),
    # Label-biased A/B critics: their B verdicts are recorded, not obeyed; relevance still filters.
    ({"instruction": 0.5, "pair": 0.5, "relevance": 0.9}, ["a", "b", "d"], ["relevance_judge"]),
    # Relevance uninformative: only the A/B critics filter.
    ({"instruction": 0.9, "pair": 0.9, "relevance": 0.6}, ["a", "e"], ["instruction_critic", "pair_critic"]),
    # No judge informative: nothing is dropped by a judge, and QC-09 fails the run.
    ({"instruction": 0.5, "pair": 0.5, "relevance": 0.5}, ["a", "b", "d", "e"], []),
])
def test_only_judges_that_clear_the_probe_bar_drop_items(aurocs, kept, reject_stages):
    ids = "abde"
    # As in a run: only instructions the (filtering) instruction critic accepted get a response.
    answered = [i for i in ids if i != "b" or aurocs["instruction"] < 0.75]
    rows = P.RunRows(
        instruction_verdicts=[{"id": i, "instruction": f"Do {i}.", "critique": _verdict(i != "b")} for i in ids],
        responses=[{"id": i, "instruction": f"Do {i}.", "raw": f" Done {i}.", "n_tokens": 3, "seed": 1} for i in answered],
        pair_verdicts=[{"id": i, "critique": _verdict(i != "d"), "clean_tokens": 3} for i in answered],
        pre_rejects=[],
        relevance_verdicts=[{"id": i, "relevance": _rel(i != "e")} for i in answered],
    )
    dataset, rejects, summary = P.finalize(
        rows, config_max_new_tokens=40, metadata_for=lambda r: {f: "x" for f in RECORD_METADATA_FIELDS}, count_tokens=len,
        sentinels_ok=True, thresholds=load_config(None).qc.thresholds(), critic_probes=probe_results(aurocs))
    assert [r["instruction"] for r in dataset] == [f"Do {i}." for i in kept]
    assert sorted(r["stage"] for r in rejects) == reject_stages
    assert {n: j["filters"] for n, j in summary["critic_probes"]["judges"].items()} == {n: a >= 0.75 for n, a in aurocs.items()}
    no_pair_judge = not (aurocs["pair"] >= 0.75 or aurocs["relevance"] >= 0.75)
    assert any(r.startswith("QC-09 no pair judge") for r in summary["failed_reasons"]) is no_pair_judge


@pytest.mark.spec("DG-02", "DG-03")
def test_every_item_ends_in_the_dataset_or_the_rejects_with_a_reason(messy_run):
    out, summary = messy_run["out"], messy_run["summary"]
    dataset, rejects = read_jsonl(out / P.DATASET), read_jsonl(out / P.REJECTS)
    work = out / P.WORK
    verdicts = read_jsonl(work / P.INSTRUCTION_VERDICTS)
    responses = read_jsonl(work / P.RESPONSES)
    pairs = read_jsonl(work / P.PAIR_VERDICTS)
    by_stage = lambda s: [r for r in rejects if r["stage"] == s]  # noqa: E731
    good = [v for v in verdicts if v["critique"]["is_good"]]
    assert len(verdicts) == len(good) + len(by_stage("instruction_critic"))
    assert {r["id"] for r in responses} == {v["id"] for v in good}
    assert len(responses) == len(by_stage("clean_response")) + len(pairs)
    assert len(pairs) == len(dataset) + len(by_stage("pair_critic"))
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rejects)
    assert summary["counts"]["rejects"] == len(rejects) == sum(summary["drop_reasons"].values())
    # The run exercised drops at parse, dedup and the critic, not only the happy path.
    stages = {r["stage"] for r in rejects}
    assert {"parse", "dedup", "instruction_critic"} <= stages


# -- DG-03 --------------------------------------------------------------------------------------


@pytest.mark.spec("DG-03")
def test_run_writes_its_artifacts_into_its_own_directory(messy_run):
    out = messy_run["out"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # nothing beside the run directory
    for name in (P.DATASET, P.REJECTS, P.QC_SUMMARY, P.SESSION_MANIFEST):
        assert (out / name).is_file(), name
    manifest = json.loads((out / P.SESSION_MANIFEST).read_text())
    listed = {e["path"]: e["sha256"] for e in manifest["generated_artifacts"]}
    for name in (P.DATASET, P.REJECTS, P.QC_SUMMARY):
        assert listed[name] == sha256_file(out / name)
    assert json.loads((out / P.QC_SUMMARY).read_text())["failed_reasons"] == messy_run["summary"]["failed_reasons"]
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


# -- DG-04 --------------------------------------------------------------------------------------


@pytest.mark.spec("DG-04")
@pytest.mark.parametrize(
    "pool, candidate, expected",
    [
        (["Write a poem about the sea."], "Write a poem about the sea.", "exact_duplicate"),
        (["Write a poem about the sea."], "  write a POEM about the sea!!", "normalized_duplicate"),
        (["Describe a café in Paris."], "Describe a cafe in paris", "normalized_duplicate"),
        # 4 tokens each, LCS 3: ROUGE-L F = 0.75 > 0.7
        (["list three red fruits"], "list three green fruits", "near_duplicate"),
        # 10 tokens each, LCS 7: F = 0.7 exactly, which is not above the threshold
        (["a b c d e f g h i j"], "a b c d e f g x y z", None),
        (["Write a poem about the sea."], "Translate good morning into Spanish.", None),
        (["写一首关于大海的诗"], "把早上好翻译成西班牙语", None),
    ],
)
def test_duplicate_rules(pool, candidate, expected):
    index = DuplicateIndex()
    for text in pool:
        index.add(text)
    hit = index.check(candidate)
    assert (hit[0] if hit else None) == expected


@pytest.mark.spec("DG-04")
@pytest.mark.parametrize("a, b, f", [("a b c d", "a b c e", 0.75), ("a b", "c d", 0.0), ("a b c", "a b c", 1.0),
                                     ("a x b y c", "a b c", 2 * 3 / 8)])
def test_rouge_l_is_lcs_f1(a, b, f):
    assert rouge_l(a, b) == pytest.approx(f)


@pytest.mark.spec("DG-04")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=7).map(" ".join), min_size=1, max_size=8))
def test_duplicate_index_agrees_with_brute_force(texts):
    index, kept = DuplicateIndex(), []
    for t in texts:
        expect_dup = any(normalize(t) == normalize(k) or rouge_l(t, k) > 0.7 for k in kept)
        hit = index.add_if_new(t)
        assert (hit is not None) == expect_dup
        if hit is None:
            kept.append(t)


@pytest.mark.spec("DG-04")
def test_judged_instructions_of_a_run_hold_no_duplicates(messy_run):
    verdicts = read_jsonl(messy_run["out"] / P.WORK / P.INSTRUCTION_VERDICTS)
    texts = [v["instruction"] for v in verdicts]
    assert len({normalize(t) for t in texts}) == len(texts)
    for a, b in itertools.combinations(texts, 2):
        assert rouge_l(a, b) <= 0.7, (a, b)
    reasons = {r["reason"] for r in read_jsonl(messy_run["out"] / P.REJECTS) if r["stage"] == "dedup"}
    assert reasons & {"exact_duplicate", "normalized_duplicate", "near_duplicate"}


# -- DG-07 --------------------------------------------------------------------------------------

LONG_PHASES = ("instructions", "instruction critic", "responses", "pair critic")
# tqdm's closing line: "desc: 100%|...| n/n [elapsed<remaining, rate]"
_BAR_RE = r"{desc}: .*\[\d+:\d+<\d+:\d+, *[\d.?]+ *(?:s/)?\w+(?:/s)?\]"


@pytest.mark.spec("DG-07")
def test_long_phases_show_progress_with_rate_and_eta(flow, tmp_path, capsys):
    lm, model_dir, _ = flow
    P.run_generation(small_config(tmp_path / "loud", model_dir, target=2, quiet=False), lm=ScriptedLM(lm, style="clean"))
    err = capsys.readouterr().err
    for desc in LONG_PHASES:
        assert re.search(_BAR_RE.format(desc=desc), err), f"no progress bar with rate and ETA for {desc!r}:\n{err}"


@pytest.mark.spec("DG-07")
def test_quiet_mode_prints_no_progress(flow, tmp_path, capsys):
    lm, model_dir, _ = flow
    P.run_generation(small_config(tmp_path / "quiet", model_dir, target=2, quiet=True), lm=ScriptedLM(lm, style="clean"))
    captured = capsys.readouterr()
    for desc in LONG_PHASES:
        assert f"{desc}:" not in captured.err + captured.out


@pytest.mark.spec("DG-07")
def test_cli_quiet_flag_reaches_the_config():
    from cai_bootstrap.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["generate", "--quiet"]).quiet is True
    assert parser.parse_args(["generate"]).quiet is None  # the YAML decides when the flag is absent


# -- DG-08 --------------------------------------------------------------------------------------


@pytest.mark.spec("DG-08")
def test_every_record_carries_pv01_provenance(messy_run, flow):
    lm, _, _ = flow
    cfg = messy_run["cfg"]
    records = read_jsonl(messy_run["out"] / P.DATASET)
    assert records, "the run kept no record; the test config no longer lets items through"
    for rec in records:
        assert set(rec) >= {"instruction", "response", "prompt", "completion", "instruction_critique", "pair_critique", "metadata"}
        for crit in (rec["instruction_critique"], rec["pair_critique"]):
            assert set(CRITIQUE_FIELDS) <= set(crit) and crit["is_good"] is True
        md = rec["metadata"]
        assert set(RECORD_METADATA_FIELDS) <= set(md)
        assert set(GENERATION_FIELDS) <= set(md["generation"])
        assert md["artifact_type"] == SFT_RECORDS and md["script_name"] == P.SCRIPT_NAME
        assert md["template_disabled"] is True
        assert md["model_name"] == lm.provenance["model_name"] and md["loader_version"] == lm.provenance["loader_version"]
        assert md["quantization"] == lm.provenance["quantization"]
        gen = md["generation"]
        assert (gen["seed"], gen["temperature"], gen["max_new_tokens"], gen["do_sample"]) == (
            cfg.seed, cfg.responses.temperature, cfg.responses.max_new_tokens, True)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", md["timestamp"])
        assert rec["prompt"] == prompts.render_response_prompt(rec["instruction"])
        assert rec["completion"] == " " + rec["response"]
        assert cleaning.PARTIAL_DELIMITER not in rec["response"]


# -- CG-03 in the pipeline: forbidden tokens drop items, they do not abort the run ----------------


class _MarkupLM(ScriptedLM):
    """Writes a literal chat marker into one instruction of every list and emits a chat
    turn end into some responses (as a base model trained on chat data does)."""

    MARKUP = " Write a poem about <|im_start|>assistant and the sea.\n"

    def _one(self, prompt, seed, max_new_tokens):
        g = super()._one(prompt, seed, max_new_tokens)
        if not prompt.endswith("Response:"):
            g.text = self.MARKUP + g.text.lstrip()  # typed as text: it encodes to the role token
        elif seed % 2 == 0:
            g.special_tokens = [{"token": "<|im_end|>", "position": g.n_tokens, "offset": len(g.text)}]
        return g


@pytest.mark.spec("CG-03", "CL-06", "DG-02")
def test_a_run_with_chat_markup_drops_those_items_with_reasons(flow, tmp_path):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir, **{"critic.threshold": 0.0})
    scripted = _MarkupLM(lm, style="clean")
    summary = P.run_generation(cfg, lm=scripted)  # before: ContaminationError at the instruction critic
    rejects = read_jsonl(tmp_path / "run" / P.REJECTS)
    forbidden = [r for r in rejects if r["reason"] == "forbidden_token"]
    assert forbidden and all("<|im_start|>" in r["text"] and r["stage"] == "parse" for r in forbidden)
    assert summary["drop_reasons"].get("parse:forbidden_token") == len(forbidden)
    emitted = [r for r in rejects if r["reason"] == "special_token_emitted"]
    responses = read_jsonl(tmp_path / "run" / P.WORK / P.RESPONSES)
    flagged = [r for r in responses if r["special_tokens"]]
    assert flagged and {r["id"] for r in emitted} == {r["id"] for r in flagged}
    assert all(r["stage"] == "clean_response" and r["special_tokens"][0]["token"] == "<|im_end|>" for r in emitted)
    assert summary["drop_reasons"].get("clean_response:special_token_emitted") == len(emitted)
    kept = read_jsonl(tmp_path / "run" / P.DATASET)
    assert not {r["metadata"]["record_id"] for r in kept} & {r["id"] for r in emitted}
    assert all("<|im_start|>" not in r["instruction"] for r in kept)


# -- PR-07 --------------------------------------------------------------------------------------


@pytest.mark.spec("PR-07")
def test_run_answers_in_the_demonstration_frame_and_records_the_zero_shot_prompt(messy_run):
    cfg = messy_run["cfg"]
    assert (cfg.responses.response_frame, cfg.responses.n_demonstrations) == ("demonstrations", 4)
    calls = _calls(messy_run["calls"], "responses")
    assert calls and all(c["stop_strings"] == ("\n\n", "\nInstruction:") for c in calls)
    shown = [p for c in calls for p in c["prompts"]]
    rows = read_jsonl(messy_run["out"] / P.WORK / P.RESPONSES)
    assert len(rows) == len(shown)
    for r in rows:
        frame = prompts.build_demonstration_prompt(r["instruction"], seed=cfg.seed, item_id=r["id"], k=4)
        assert frame.text in shown
        assert r["prompt"] == prompts.render_response_prompt(r["instruction"])
        assert (r["response_frame"], r["demonstration_ids"]) == ("demonstrations", list(frame.demonstration_ids))
    rows_by_id = {r["id"]: r for r in rows}
    records = read_jsonl(messy_run["out"] / P.DATASET)
    assert records
    for rec in records:
        md = rec["metadata"]
        assert rec["prompt"] == prompts.render_response_prompt(rec["instruction"])  # training sees zero-shot only
        assert rec["prompt"].count("Instruction:") == 1
        assert md["response_frame"] == "demonstrations" and md["generation"]["n_demonstrations"] == 4
        assert md["demonstration_ids"] == rows_by_id[md["record_id"]]["demonstration_ids"]
        assert len(md["demonstration_ids"]) == 4


@pytest.mark.spec("PR-07")
@pytest.mark.parametrize("frame", ["demonstrations", "zero_shot"])
def test_response_phase_shows_the_configured_frame(flow, tmp_path, frame):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir, **{"responses.response_frame": frame, "responses.batch_size": 3})
    accepted = [{"id": f"p{k}-l1", "instruction": f"Write a haiku about topic number {k}."} for k in range(7)]
    accepted.append({"id": "p9-l1", "instruction": prompts.demonstration_pool()[0].instruction})
    scripted = ScriptedLM(lm)
    store = PhaseStore(tmp_path / "responses.jsonl")
    P.generate_responses(scripted, cfg, accepted, store)
    shown = [p for c in scripted.calls for p in c["prompts"]]
    rows = [store.get(c["id"]) for c in accepted]
    assert all(r["prompt"] == prompts.render_response_prompt(r["instruction"]) for r in rows)
    assert all(r["response_frame"] == frame for r in rows)
    if frame == "zero_shot":
        assert sorted(shown) == sorted(r["prompt"] for r in rows)
        assert all(r["demonstration_ids"] == [] for r in rows)
        assert all(c["stop_strings"] == ("\n\n",) for c in scripted.calls)
    else:
        assert all(len(r["demonstration_ids"]) == 4 for r in rows)
        assert prompts.demonstration_pool()[0].id not in rows[-1]["demonstration_ids"]  # never its own instruction
        frames = [prompts.build_demonstration_prompt(r["instruction"], seed=cfg.seed, item_id=r["id"]) for r in rows]
        assert sorted(shown) == sorted(f.text for f in frames)
        assert [r["demonstration_ids"] for r in rows] == [list(f.demonstration_ids) for f in frames]
        assert all(f.text.count("\nResponse:") == 5 and f.text.endswith("\n\n" + r["prompt"]) for f, r in zip(frames, rows))
        assert [len(p) for p in shown] == sorted(len(p) for p in shown)  # batches formed by frame length
        assert all(c["stop_strings"] == prompts.demonstration_stop_strings() for c in scripted.calls)
    # a rerun over the finished store generates nothing (resume)
    again = ScriptedLM(lm)
    P.generate_responses(again, cfg, accepted, PhaseStore(tmp_path / "responses.jsonl"))
    assert again.calls == []


@pytest.mark.spec("PR-07")
def test_shipped_configs_choose_the_frame_and_the_flag_reaches_the_config():
    from importlib import resources

    from cai_bootstrap import stage1
    from cai_bootstrap.cli import build_parser

    configs = resources.files("cai_bootstrap").joinpath("configs")
    for name in ("generate_pilot.yaml", "generate_scale.yaml"):
        assert load_config(str(configs / name)).responses.response_frame == "demonstrations"
    frames = {name: stage1.load_stage1_config(str(configs / name)).response_frame
              for name in ("stage1_cpu_demo.yaml", "stage1_qwen2.5_32b.yaml")}
    assert frames == {"stage1_cpu_demo.yaml": "demonstrations", "stage1_qwen2.5_32b.yaml": "zero_shot"}
    chain = stage1.Chain(stage1.load_stage1_config(str(configs / "stage1_qwen2.5_32b.yaml")), cli=lambda argv: 0)
    argv = [str(a) for a in stage1._generate_args(chain)]
    assert argv[argv.index("--response-frame") + 1] == "zero_shot"
    assert GenerateConfig().responses.response_frame == "demonstrations"
    args = build_parser().parse_args(["generate", "--response-frame", "zero_shot"])
    assert args.response_frame == "zero_shot"
    with pytest.raises(ConfigError, match="stop_at_blank_line"):
        load_config(None, **{"responses.stop_at_blank_line": False})
