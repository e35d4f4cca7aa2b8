"""Provenance: records and manifests say where they came from, and changed inputs are refused (PV-01, PV-02, PV-05)."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cai_bootstrap.critic import CriticResult

from cai_bootstrap import provenance as pv

LOAD_PROV = {"loader_version": "0123abcd", "model_name": "gemma-3-270m", "quantization": "none", "template_disabled": True}
GEN = {"seed": 3, "temperature": 0.4, "max_new_tokens": 80, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1}
CRIT = {"is_good": True, "predicted_label": "A", "logp_a": -0.2, "logp_b": -2.0, "margin": 1.8, "confident": True}
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
def fresh_git(monkeypatch):
    """Point git_info at another folder; the cache is cleared before and after."""

    def use(folder: Path):
        monkeypatch.setattr(pv, "_REPO_DIR", folder)
        pv._git_info_cached.cache_clear()

    yield use
    pv._git_info_cached.cache_clear()


# -- git and environment ----------------------------------------------------------------------------


@pytest.mark.spec("PV-02")
def test_git_info_outside_a_repository_is_unknown(tmp_path, fresh_git):
    fresh_git(tmp_path)
    assert pv.git_info() == {"commit": "unknown", "branch": "unknown", "dirty": None}


@pytest.mark.spec("PV-02")
def test_git_info_without_git_installed_is_unknown(tmp_path, fresh_git, monkeypatch):
    fresh_git(tmp_path)

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert pv.git_info()["commit"] == "unknown"


@pytest.mark.spec("PV-02")
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_info_reads_commit_branch_and_dirty(tmp_path, fresh_git):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "trunk")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    fresh_git(tmp_path)
    info = pv.git_info()
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and info["branch"] == "trunk" and info["dirty"] is False
    assert pv.code_version() == info["commit"]
    (tmp_path / "a.txt").write_text("2")
    fresh_git(tmp_path)
    assert pv.git_info()["dirty"] is True


@pytest.mark.spec("PV-02")
def test_environment_has_every_field():
    env = pv.environment()
    assert set(pv.ENVIRONMENT_FIELDS) <= set(env)
    assert env["python"] == platform.python_version() and env["hostname"]
    if env["cuda"] is None:
        assert env["gpu"] is None and env["gpu_memory_gb"] is None
    else:
        assert env["gpu"] and env["gpu_memory_gb"] > 0


# -- SFT records (PV-01) --------------------------------------------------------------------------------


@pytest.mark.spec("PV-01")
def test_record_metadata_has_every_field_from_the_loader_provenance():
    md = pv.record_metadata(script_name="cai_bootstrap.datagen", generation=GEN, load_provenance=LOAD_PROV)
    assert set(pv.RECORD_METADATA_FIELDS) <= set(md)
    assert set(pv.GENERATION_FIELDS) <= set(md["generation"])
    assert md["generation"]["top_p"] == 0.9, "every decoding setting is kept (PR-02)"
    assert md["model_name"] == "gemma-3-270m" and md["loader_version"] == "0123abcd" and md["template_disabled"] is True
    assert md["artifact_type"] == pv.SFT_RECORDS and ISO_RE.match(md["timestamp"])
    assert md["git_commit"] == pv.git_info()["commit"]
    explicit = pv.record_metadata(script_name="s", generation=GEN, load_provenance=LOAD_PROV, model_name="other", extra={"shard": 2})
    assert explicit["model_name"] == "other" and explicit["shard"] == 2


@pytest.mark.spec("PV-01")
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"generation": {k: v for k, v in GEN.items() if k != "seed"}}, "seed"),
        ({"generation": {k: v for k, v in GEN.items() if k != "temperature"}}, "temperature"),
        ({"load_provenance": {**LOAD_PROV, "model_name": None}}, "model_name"),
        ({"load_provenance": {k: v for k, v in LOAD_PROV.items() if k != "template_disabled"}}, "template_disabled"),
        ({"artifact_type": "sft"}, "unknown artifact_type"),
        ({"extra": {"timestamp": "x"}}, "may not override"),
    ],
)
def test_record_metadata_refuses_incomplete_input(kwargs, message):
    args = {"script_name": "s", "generation": GEN, "load_provenance": LOAD_PROV, **kwargs}
    with pytest.raises(ValueError, match=message):
        pv.record_metadata(**args)


_Verdict = CriticResult  # the critic's own result type, not a look-alike


@pytest.mark.spec("PV-01")
def test_sft_record_shape_and_critique_fields():
    md = pv.record_metadata(script_name="s", generation=GEN, load_provenance=LOAD_PROV)
    rec = pv.sft_record("Say hi.", "Hi.", instruction_critique=_Verdict(**CRIT), pair_critique=CRIT, metadata=md)
    assert list(rec) == ["instruction", "response", "instruction_critique", "pair_critique", "judges", "metadata"]
    # A critic result also records the label-bias offset it was calibrated with (CR-06).
    assert {k: v for k, v in rec["instruction_critique"].items() if k != "calibration_offset"} == CRIT
    assert rec["pair_critique"] == CRIT
    assert rec["judges"] == pv.DEFAULT_JUDGES  # both A/B critics filtered unless the run says otherwise (QC-09)
    with pytest.raises(ValueError, match="judges"):
        pv.sft_record("a", "b", instruction_critique=CRIT, pair_critique=CRIT, metadata=md, judges={"pair_filters": "yes"})
    with_pc = pv.sft_record("Say hi.", "Hi.", instruction_critique=CRIT, pair_critique=CRIT, metadata=md,
                            prompt="Instruction: Say hi.\nResponse:", completion=" Hi.")
    assert with_pc["prompt"].endswith("Response:") and with_pc["completion"] == " Hi."
    json.dumps(rec)  # records are plain JSON
    with pytest.raises(ValueError, match="margin"):
        pv.sft_record("a", "b", instruction_critique={k: v for k, v in CRIT.items() if k != "margin"}, pair_critique=CRIT, metadata=md)
    with pytest.raises(ValueError, match="record metadata"):
        pv.sft_record("a", "b", instruction_critique=CRIT, pair_critique=CRIT, metadata={"git_commit": "x"})


# -- session manifest (PV-02) ---------------------------------------------------------------------------------


@pytest.mark.spec("PV-02")
def test_session_manifest_fields(tmp_path):
    m = pv.new_session_manifest(planned_artifacts=["dataset.jsonl"], budgets={"target": 100}, notes="pilot", loader_version="v1")
    assert set(pv.SESSION_MANIFEST_FIELDS) <= set(m)
    assert set(pv.ENVIRONMENT_FIELDS) <= set(m["environment"])
    assert m["artifact_type"] == pv.SESSION_MANIFEST and ISO_RE.match(m["started_at"])
    assert m["notes"] == ["pilot"] and m["budgets"] == {"target": 100} and m["loader_version"] == "v1"
    assert m["git_commit"] == pv.git_info()["commit"] and m["git_branch"] == pv.git_info()["branch"]
    other = pv.new_session_manifest(planned_artifacts=[])
    assert other["session_id"] != m["session_id"]
    with pytest.raises(ValueError, match="may not override"):
        pv.new_session_manifest(planned_artifacts=[], extra={"session_id": "x"})


@pytest.mark.spec("PV-02", "PV-05")
def test_generated_artifacts_are_hashed_and_re_recorded(tmp_path):
    m = pv.new_session_manifest(planned_artifacts=["dataset.jsonl"])
    f = tmp_path / "dataset.jsonl"
    f.write_text('{"a": 1}\n')
    e1 = pv.add_generated_artifact(m, f, tmp_path)
    assert e1["path"] == "dataset.jsonl" and e1["bytes"] == f.stat().st_size and len(e1["sha256"]) == 64
    f.write_text('{"a": 2}\n')  # a resumed run rewrote it
    e2 = pv.add_generated_artifact(m, f, tmp_path, role="data")
    assert m["generated_artifacts"] == [e2] and e2["sha256"] != e1["sha256"] and e2["role"] == "data"
    with pytest.raises(FileNotFoundError):
        pv.add_generated_artifact(m, tmp_path / "absent.json", tmp_path)


# -- hashes of inputs (PV-05) -------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "dataset.jsonl").write_text('{"instruction": "x"}\n')
    (run / "qc_summary.json").write_text('{"thresholds_passed": true}\n')
    m = pv.artifact_manifest("sft_records", [run / "dataset.jsonl", run / "qc_summary.json"], base_dir=run,
                             inputs=[{"path": "raw.jsonl", "sha256": "0" * 64}])
    pv.write_manifest(run / "manifest.json", m)
    return run


@pytest.mark.spec("PV-05")
def test_artifact_manifest_pins_every_file(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    paths = [e["path"] for e in m["files"]]
    assert paths == ["dataset.jsonl", "qc_summary.json"], "files inside the run are recorded relative to it"
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) for e in m["files"])
    assert m["git_commit"] == pv.git_info()["commit"] and m["inputs"][0]["path"] == "raw.jsonl"


@pytest.mark.spec("PV-05")
def test_verify_inputs_accepts_unchanged_files_even_after_a_move(run_dir, tmp_path):
    ok = pv.verify_inputs(run_dir / "manifest.json", required=["dataset.jsonl"])
    assert ok["dataset.jsonl"] == (run_dir / "dataset.jsonl").resolve()
    moved = tmp_path / "elsewhere"
    shutil.move(str(run_dir), moved)
    assert "qc_summary.json" in pv.verify_inputs(moved / "manifest.json")


@pytest.mark.spec("PV-05")
def test_changed_input_is_refused_naming_file_and_both_hashes(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    pinned = m["files"][0]["sha256"]
    (run_dir / "dataset.jsonl").write_text('{"instruction": "tampered"}\n')
    now = pv.sha256_file(run_dir / "dataset.jsonl")
    with pytest.raises(pv.InputIntegrityError) as e:
        pv.verify_inputs(run_dir / "manifest.json")
    msg = str(e.value)
    assert "dataset.jsonl" in msg and pinned in msg and now in msg and "changed" in msg
    assert "qc_summary.json" not in msg, "only the changed file is named"


@pytest.mark.spec("PV-05")
def test_missing_input_and_unlisted_required_input_are_refused(run_dir):
    (run_dir / "qc_summary.json").unlink()
    with pytest.raises(pv.InputIntegrityError, match=r"qc_summary.json: missing .* manifest sha256 [0-9a-f]{64}"):
        pv.verify_inputs(run_dir / "manifest.json")
    (run_dir / "qc_summary.json").write_text('{"thresholds_passed": true}\n')
    with pytest.raises(pv.InputIntegrityError, match="rejects.jsonl: not listed"):
        pv.verify_inputs(run_dir / "manifest.json", required=["dataset.jsonl", "rejects.jsonl"])


@pytest.mark.spec("PV-05", "OPS-02")
def test_missing_or_malformed_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest .* does not exist"):
        pv.verify_inputs(tmp_path / "session_manifest.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pv.verify_inputs(tmp_path / "bad.json")
    (tmp_path / "entry.json").write_text(json.dumps({"files": [{"path": "x"}]}))
    with pytest.raises(ValueError, match="lacks path/sha256"):
        pv.verify_inputs(tmp_path / "entry.json")


@pytest.mark.spec("PV-02", "PV-05")
def test_session_manifest_generated_artifacts_are_verified(tmp_path):
    m = pv.new_session_manifest(planned_artifacts=["dataset.jsonl"])
    (tmp_path / "dataset.jsonl").write_text("{}\n")
    pv.add_generated_artifact(m, tmp_path / "dataset.jsonl", tmp_path)
    pv.write_manifest(tmp_path / "session_manifest.json", m)
    assert list(pv.verify_inputs(tmp_path / "session_manifest.json")) == ["dataset.jsonl"]
    (tmp_path / "dataset.jsonl").write_text("{} \n")
    with pytest.raises(pv.InputIntegrityError, match="dataset.jsonl: changed"):
        pv.verify_inputs(tmp_path / "session_manifest.json")


@pytest.mark.spec("PV-05", "PV-07")
@pytest.mark.parametrize("listed", ["../../../../etc/hostname", "/etc/hostname", "sub/../../outside.txt", "link/secret.txt"])
def test_a_manifest_path_outside_its_folder_is_refused_unread(tmp_path, listed):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "outside.txt").write_text("private")
    (run / "link").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "secret.txt").write_text("private")
    (run / "session_manifest.json").write_text(json.dumps({"generated_artifacts": [{"path": listed, "sha256": "0" * 64}]}))
    with pytest.raises(pv.InputIntegrityError, match="lies outside the manifest's folder") as e:
        pv.verify_inputs(run / "session_manifest.json")
    assert "file sha256" not in str(e.value)  # nothing outside was read
    with pytest.raises(ValueError, match="lies outside"):
        pv.artifact_manifest("sft_records", [tmp_path / "outside.txt"], base_dir=run)
