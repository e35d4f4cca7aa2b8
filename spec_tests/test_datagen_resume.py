"""DG-06: a run killed at any point resumes without redoing, duplicating or losing anything.

The reference is an uninterrupted run; every interrupted run (an exception at a chosen
call, or a real SIGKILL of a separate process) is resumed with the same settings in its
own directory and must end with the same dataset, the same rejects and work files
that name every id once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cai_bootstrap import prompts
from cai_bootstrap.critic import Critic
from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.store import PhaseStore
from cai_bootstrap.io_utils import read_jsonl
from spec_tests.datagen_support import canonical, flowing_lm, small_config, small_settings, without_timestamps
from spec_tests.scripted_lm import ScriptedLM

REPO = Path(__file__).resolve().parent.parent


class _CriticCounter:
    """Counts critic batches per template, and can fail on the n-th batch of one template."""

    def __init__(self, fail_on: tuple[str, int] | None = None):
        self.counts: Counter = Counter()
        self.fail_on = fail_on

    def install(self, mp):
        original = Critic.score

        def score(critic, items):
            name = critic.template.name
            if self.fail_on and self.fail_on == (name, self.counts[name] + 1):
                raise RuntimeError(f"scripted failure in {name} batch {self.counts[name] + 1}")
            self.counts[name] += 1
            return original(critic, items)

        mp.setattr(Critic, "score", score)


def _run(flow, out, *, fail_after_calls=None, critic_fail_on=None, **overrides):
    lm, model_dir, mid = flow
    cfg = small_config(out, model_dir, **{"critic.threshold": mid, **overrides})
    scripted = ScriptedLM(lm, fail_after_calls=fail_after_calls)
    counter = _CriticCounter(critic_fail_on)
    with pytest.MonkeyPatch.context() as mp:
        counter.install(mp)
        try:
            summary = P.run_generation(cfg, lm=scripted)
        except RuntimeError as e:
            assert "scripted failure" in str(e)
            summary = None
    return {"out": out, "cfg": cfg, "summary": summary, "calls": scripted.calls, "critic": counter.counts}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return flowing_lm(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(flow, tmp_path_factory):
    return _run(flow, tmp_path_factory.mktemp("reference") / "run")


def _done_prompts(out: Path) -> set[str]:
    """Prompts whose results a work file holds."""
    work = out / P.WORK
    done = set()
    if (work / P.RAW_INSTRUCTIONS).exists():
        done |= {prompts.build_instruction_generation_prompt(r["seed"]).text for r in read_jsonl(work / P.RAW_INSTRUCTIONS)}
    if (work / P.RESPONSES).exists():
        done |= {r["prompt"] for r in read_jsonl(work / P.RESPONSES)}
    return done


def _assert_same_result(run_dir: Path, reference_dir: Path) -> None:
    assert canonical(read_jsonl(run_dir / P.DATASET)) == canonical(read_jsonl(reference_dir / P.DATASET))
    assert canonical(read_jsonl(run_dir / P.REJECTS)) == canonical(read_jsonl(reference_dir / P.REJECTS))
    strip = lambda s: {k: v for k, v in s.items() if k != "critics"}  # noqa: E731 - critic call bookkeeping differs
    summary = lambda d: strip(json.loads((d / P.QC_SUMMARY).read_text()))  # noqa: E731
    assert summary(run_dir) == summary(reference_dir)
    for name in (P.RAW_INSTRUCTIONS, P.INSTRUCTION_VERDICTS, P.RESPONSES, P.PAIR_VERDICTS):
        lines = (run_dir / P.WORK / name).read_text().splitlines()
        ids = [json.loads(line)["id"] for line in lines]  # every line is whole JSON
        assert len(ids) == len(set(ids)), f"{name} names an id twice"
        ref = {r["id"]: without_timestamps(r) for r in read_jsonl(reference_dir / P.WORK / name)}
        assert {r["id"]: without_timestamps(r) for r in map(json.loads, lines)} == ref, name


def _crash_points(reference) -> dict[str, dict]:
    n_instr = sum(1 for c in reference["calls"] if not c["prompts"][0].startswith("Instruction: "))
    assert n_instr >= 2 and len(reference["calls"]) - n_instr >= 2, "the test config must make several batches per phase"
    assert reference["critic"]["pair_critic"] >= 2
    return {
        "instructions": {"fail_after_calls": 1},
        "responses": {"fail_after_calls": n_instr + 1},
        "pair_critic": {"critic_fail_on": ("pair_critic", 2)},
    }


@pytest.mark.spec("DG-06")
@pytest.mark.parametrize("phase", ["instructions", "responses", "pair_critic"])
def test_resume_after_a_crash_in_any_phase_equals_the_uninterrupted_run(flow, reference, tmp_path, phase):
    out = tmp_path / "run"
    crashed = _run(flow, out, **_crash_points(reference)[phase])
    assert crashed["summary"] is None and not (out / P.DATASET).exists()
    done = _done_prompts(out)
    resumed = _run(flow, out)
    _assert_same_result(out, reference["out"])
    # Nothing finished is redone: the calls of both halves add up to one uninterrupted run.
    assert len(crashed["calls"]) + len(resumed["calls"]) == len(reference["calls"])
    assert not any(set(c["prompts"]) <= done for c in resumed["calls"])
    assert crashed["critic"] + resumed["critic"] == reference["critic"]


@pytest.mark.spec("DG-06")
def test_sigkill_mid_phase_then_resume(flow, reference, tmp_path):
    """A real process, killed with SIGKILL while its response phase is half written."""
    import torch

    lm, model_dir, mid = flow
    out = tmp_path / "killed"
    settings = small_settings(out, model_dir, **{"critic.threshold": mid})
    responses = out / P.WORK / P.RESPONSES
    proc = subprocess.Popen(
        [sys.executable, "-m", "spec_tests.datagen_worker", str(model_dir), json.dumps(settings), "1.0", str(torch.get_num_threads())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])},
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if responses.exists() and responses.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the worker ended before it could be killed:\n{proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / P.DATASET).exists()
    at_kill = {p.name: [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")]
               for p in (out / P.WORK).glob("*.jsonl")}
    n_ref_responses = len(read_jsonl(reference["out"] / P.WORK / P.RESPONSES))
    assert 0 < len(at_kill[P.RESPONSES]) < n_ref_responses, "the kill did not land inside the response phase"
    done = _done_prompts(out)

    resumed = _run(flow, out)
    _assert_same_result(out, reference["out"])
    for name, records in at_kill.items():  # nothing written before the kill was lost or rewritten
        final = {r["id"]: r for r in read_jsonl(out / P.WORK / name)}
        assert all(final.get(r["id"]) == r for r in records), name
    assert not any(set(c["prompts"]) <= done for c in resumed["calls"])
    assert resumed["critic"]["instruction_critic"] == 0  # that phase had finished before the kill


@pytest.mark.spec("DG-06")
def test_torn_last_line_is_dropped_and_its_item_redone(flow, reference, tmp_path):
    out = tmp_path / "run"
    _run(flow, out, critic_fail_on=("pair_critic", 2))
    work_file = out / P.WORK / P.RESPONSES
    data = work_file.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    work_file.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # a write cut mid-record
    _run(flow, out)
    _assert_same_result(out, reference["out"])
    assert work_file.read_bytes().endswith(b"\n")


@pytest.mark.spec("DG-06")
def test_store_repairs_a_torn_tail_and_keeps_appending_whole_lines(tmp_path):
    path = tmp_path / "phase.jsonl"
    store = PhaseStore(path)
    assert store.append_batch([{"id": "a", "v": 1}, {"id": "b", "v": 2}]) == 2
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "c", "v"')
    reopened = PhaseStore(path)
    assert [r["id"] for r in reopened.records()] == ["a", "b"]
    assert reopened.append_batch([{"id": "b", "v": 99}, {"id": "c", "v": 3}]) == 1  # a finished id is never rewritten
    assert read_jsonl(path) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 3}]


@pytest.mark.spec("DG-06")
def test_rerunning_a_finished_run_redoes_nothing_and_rewrites_identical_files(flow, reference):
    out = reference["out"]
    # The QC summary too: a passed pilot gate pins its hash, so a rerun must not invalidate it.
    before = {name: (out / name).read_bytes() for name in (P.DATASET, P.REJECTS, P.QC_SUMMARY)}
    again = _run(flow, out)
    assert again["calls"] == [] and sum(again["critic"].values()) == 0
    assert {name: (out / name).read_bytes() for name in before} == before


@pytest.mark.spec("DG-06")
def test_resume_with_other_settings_is_refused(flow, reference):
    lm, model_dir, mid = flow
    cfg = small_config(reference["out"], model_dir, **{"critic.threshold": mid, "target": 7})
    with pytest.raises(ValueError, match=r"different configuration \(changed: \['target'\]\)"):
        P.run_generation(cfg, lm=ScriptedLM(lm))
    quiet_changed = small_config(reference["out"], model_dir, **{"critic.threshold": mid, "quiet": False})
    P.run_generation(quiet_changed, lm=ScriptedLM(lm))  # display settings do not change results


@pytest.mark.spec("DG-06")
def test_a_copied_run_directory_resumes_where_it_now_lies(flow, reference, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(reference["out"], moved)
    again = _run(flow, moved)
    assert again["calls"] == [] and sum(again["critic"].values()) == 0
    assert canonical(read_jsonl(moved / P.DATASET)) == canonical(read_jsonl(reference["out"] / P.DATASET))


@pytest.mark.spec("DG-06")
def test_half_written_last_instruction_round_is_completed_not_cut_short(flow, reference, tmp_path):
    """A kill between the two lines of one append leaves part of a round; the run must
    finish that round, as the uninterrupted run did, even if the part already holds enough."""
    out = tmp_path / "run"
    (out / P.WORK).mkdir(parents=True)
    shutil.copy(reference["out"] / P.WORK / P.SESSION_STATE, out / P.WORK / P.SESSION_STATE)
    state = json.loads((out / P.WORK / P.SESSION_STATE).read_text())
    state["config"]["out_dir"] = str(out)
    (out / P.WORK / P.SESSION_STATE).write_text(json.dumps(state))
    lines = (reference["out"] / P.WORK / P.RAW_INSTRUCTIONS).read_text().splitlines(keepends=True)
    (out / P.WORK / P.RAW_INSTRUCTIONS).write_text("".join(lines[:-1]))
    resumed = _run(flow, out)
    assert len(resumed["calls"]) == len(reference["calls"]) - (len(lines) - 1) // 2
    _assert_same_result(out, reference["out"])


@pytest.mark.spec("DG-06", "OPS-02")
def test_a_failure_at_the_manifest_step_keeps_every_row_and_the_rerun_generates_nothing(flow, reference, tmp_path,
                                                                                         monkeypatch):
    """The last step of a run records its files in the manifest. A failure there (as a relative run
    folder once caused, after all the generation was done) must lose nothing: the rerun reuses every
    finished row and makes the same dataset."""
    monkeypatch.chdir(tmp_path)
    original = P.add_generated_artifact

    def broken(*args, **kwargs):
        raise FileNotFoundError("scripted failure while recording the manifest")

    monkeypatch.setattr(P, "add_generated_artifact", broken)
    lm, model_dir, mid = flow
    cfg = small_config("runs/pilot", model_dir, **{"critic.threshold": mid})
    first = ScriptedLM(lm)
    with pytest.raises(FileNotFoundError, match="scripted failure"):
        P.run_generation(cfg, lm=first)
    assert first.calls, "the failure came after the generation"
    monkeypatch.setattr(P, "add_generated_artifact", original)
    again = _run(flow, "runs/pilot")
    assert again["calls"] == [] and sum(again["critic"].values()) == 0
    assert canonical(read_jsonl(tmp_path / "runs/pilot" / P.DATASET)) == canonical(read_jsonl(reference["out"] / P.DATASET))
