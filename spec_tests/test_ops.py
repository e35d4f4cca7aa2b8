"""OPS-01 and OPS-02 for data generation: typed run configuration that fails before any
model loads, one CLI subcommand per phase, and bad input that gets a clear error and
loses nothing (malformed lines, missing files, wrong schema, a missing model, an
unwritable or full disk)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai_bootstrap import io_utils
from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.config import ConfigError, load_config
from cai_bootstrap.datagen.merge import merge_shards
from cai_bootstrap.datagen.store import PhaseStore
from cai_bootstrap.io_utils import MalformedInputError, atomic_write_json, atomic_write_jsonl, read_jsonl
from spec_tests.datagen_support import flowing_lm, small_config
from spec_tests.scripted_lm import ScriptedLM

CONFIG_DIR = Path(__file__).resolve().parent.parent / "src" / "cai_bootstrap" / "configs"


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to resolve or load a model fails the test: errors must come first."""
    import cai_bootstrap.loader as loader
    import cai_bootstrap.model_sources as sources

    def forbidden(*a, **k):
        pytest.fail("a model was resolved or loaded before the bad input was reported")

    monkeypatch.setattr(loader, "load_base_model", forbidden)
    monkeypatch.setattr(sources, "resolve_model", forbidden)


def _cli(argv, capsys) -> tuple[int, str, str]:
    from cai_bootstrap.cli import main

    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert lines[0].startswith("cai-bootstrap ") and ": error: " in lines[0]
    return lines[0]


# -- OPS-01 ---------------------------------------------------------------------------------------

BAD_FIELDS = [
    ({"target": 0}, "target"),
    ({"target": "many"}, "target"),
    ({"seed": -1}, "seed"),
    ({"mode": "huge"}, "mode"),
    ({"shard": "2/2", "mode": "scale"}, "shard"),
    ({"shard": "0/2"}, "shard"),  # a pilot is not sharded
    ({"device": "gpu0"}, "device"),
    ({"dtype": "float17"}, "dtype"),
    ({"profile": "no-such-family"}, "profile"),
    ({"model": "  "}, "model"),
    ({"instructions.temperature": 0}, "instructions.temperature"),
    ({"instructions.oversample": 3}, "instructions.oversample"),
    ({"instructions.temprature": 0.7}, "instructions.temprature"),  # a typo is not ignored
    ({"responses.temperature": 0.9}, "responses.temperature"),
    ({"responses.max_new_tokens": 0}, "responses.max_new_tokens"),
    ({"critic.threshold": -1}, "critic.threshold"),
    ({"critic.batch_size": 0}, "critic.batch_size"),
    ({"qc.max_runaway_rate": 1.5}, "qc.max_runaway_rate"),
    ({"qc.min_pair_acceptance": "half"}, "qc.min_pair_acceptance"),
    ({"quality": {}}, "quality"),
]


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("overrides, field", BAD_FIELDS)
def test_bad_configuration_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, **overrides)
    assert field in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("overrides, field", BAD_FIELDS[:4] + BAD_FIELDS[10:13])
def test_bad_yaml_field_fails_before_any_model_loads(tmp_path, overrides, field, no_model_load):
    data: dict = {"out_dir": str(tmp_path / "run")}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"generate": data}))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(path)


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize(
    "text, match",
    [("generate: [1, 2]\n", "must be a mapping"), ("- a\n- b\n", "must be a mapping"), ("generate: {target: [\n", "not valid YAML"),
     ("train: {epochs: 2}\n", "train")],
)
def test_malformed_run_files_are_refused(tmp_path, text, match):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("argv, field", [(["--target", "0"], "target"), (["--shard", "1/2"], "shard"),
                                         (["--mode", "scale", "--shard", "5/2"], "shard"), (["--device", "tpu"], "device")])
def test_cli_reports_bad_configuration_in_one_line_and_exits_2(tmp_path, capsys, argv, field, no_model_load):
    rc, out, err = _cli(["generate", "--out", str(tmp_path / "run"), *argv], capsys)
    assert rc == 2
    assert field in _one_line_error(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.spec("OPS-01")
def test_cli_reports_a_bad_field_of_the_run_file(tmp_path, capsys, no_model_load):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"generate": {"out_dir": str(tmp_path / "run"), "responses": {"temperature": 0.9}}}))
    rc, _, err = _cli(["generate", "--config", str(path)], capsys)
    assert rc == 2 and "responses.temperature" in _one_line_error(err)


@pytest.mark.spec("OPS-01")
def test_command_line_flags_override_the_run_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"generate": {"target": 50, "seed": 3, "instructions": {"batch_size": 4}}}))
    cfg = load_config(path, target=20, **{"instructions.temperature": 0.8})
    assert (cfg.target, cfg.seed, cfg.instructions.batch_size, cfg.instructions.temperature) == (20, 3, 4, 0.8)


def _generation_configs() -> list[Path]:
    found = []
    for path in sorted(CONFIG_DIR.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "generate" in data:
            found.append(path)
    return found


@pytest.mark.spec("OPS-01")
def test_project_ships_generation_run_files():
    assert [p.name for p in _generation_configs()] == [
        "generate_cpu.yaml", "generate_gpu.yaml", "generate_pilot.yaml", "generate_scale.yaml"]


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("path", _generation_configs(), ids=lambda p: p.name)
def test_every_shipped_generation_config_loads(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# cai-bootstrap generate --config "), "the launch command belongs on the first line"
    shard = "0/4" if "--shard" in first else None
    cfg = load_config(path, shard=shard)
    assert cfg.qc.thresholds() is not None


@pytest.mark.spec("OPS-01")
def test_each_data_phase_has_a_subcommand():
    proc = subprocess.run([sys.executable, "-m", "cai_bootstrap.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("generate", "merge"):
        assert command in proc.stdout
    from cai_bootstrap.cli import build_parser

    parser = build_parser()
    for command in ("generate", "merge"):
        argv = [command] + (["run-a", "--out", "merged"] if command == "merge" else [])
        assert callable(parser.parse_args(argv).func)


# -- OPS-02: malformed lines, missing files, wrong schema ------------------------------------------


@pytest.mark.spec("OPS-02")
def test_malformed_jsonl_lines_are_reported_with_their_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b",\n\n{"id": "c"}\n[1, 2]\n')
    with pytest.raises(MalformedInputError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert "line 2" in msg and "line 5" in msg and "2 malformed" in msg and str(path) in msg
    with pytest.raises(MalformedInputError, match="line 2"):
        PhaseStore(path)
    assert path.read_text().count("\n") == 5  # reading never rewrites a file it cannot parse


@pytest.mark.spec("OPS-02")
def test_work_file_of_the_wrong_schema_is_refused_with_its_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"name": "b"}\n')
    with pytest.raises(MalformedInputError, match=r"line 2: record has no 'id'"):
        PhaseStore(path)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return flowing_lm(tmp_path_factory)


@pytest.mark.spec("OPS-02")
def test_run_over_a_corrupt_work_file_stops_and_keeps_the_file(flow, tmp_path):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir)
    work = tmp_path / "run" / P.WORK
    work.mkdir(parents=True)
    (work / P.SESSION_STATE).write_text(json.dumps({"config": cfg.model_dump(mode="json"), "started_at": "x"}))
    bad = work / P.RAW_INSTRUCTIONS
    bad.write_text('{"id": "prompt-0", "prompt_index": 0}\nnot json\n')
    before = bad.read_bytes()
    with pytest.raises(MalformedInputError, match=r"raw_instructions\.jsonl: 1 malformed JSONL line\(s\): line 2"):
        P.run_generation(cfg, lm=ScriptedLM(lm))
    assert bad.read_bytes() == before


@pytest.mark.spec("OPS-02")
def test_unreadable_run_state_is_refused_before_any_model_loads(tmp_path, no_model_load):
    work = tmp_path / "run" / P.WORK
    work.mkdir(parents=True)
    (work / P.SESSION_STATE).write_text("{half")
    with pytest.raises(ValueError, match="not a run state file"):
        P.run_generation(load_config(None, out_dir=str(tmp_path / "run")))


@pytest.mark.spec("OPS-02")
def test_missing_inputs_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge_shards([tmp_path / "no-shard"], tmp_path / "merged")
    rc, _, err = _cli(["merge", str(tmp_path / "no-shard"), "--out", str(tmp_path / "merged")], capsys)
    assert rc == 2 and "no-shard" in _one_line_error(err)


@pytest.mark.spec("OPS-02")
def test_shard_with_a_manifest_that_is_not_json_is_refused(tmp_path):
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / P.SESSION_MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        merge_shards([shard], tmp_path / "merged")


# -- OPS-02: a model path that does not exist, an output directory that cannot be written -----------


@pytest.mark.spec("OPS-02")
def test_model_path_that_does_not_exist(tmp_path, capsys, monkeypatch):
    import cai_bootstrap.loader as loader

    monkeypatch.setattr(loader, "load_base_model", lambda *a, **k: pytest.fail("loader reached with a missing path"))
    missing = tmp_path / "models" / "nope"
    cfg = load_config(None, model=str(missing), out_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        P.run_generation(cfg)
    assert str(missing) in str(e.value)
    # No run state is left behind, so the corrected command starts cleanly in the same directory.
    assert not (tmp_path / "run" / P.WORK / P.SESSION_STATE).exists()
    rc, _, err = _cli(["generate", "--model", str(missing), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and str(missing) in _one_line_error(err)


@pytest.mark.spec("OPS-02")
def test_unwritable_output_directory_fails_before_any_model_loads(tmp_path, capsys, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "run"  # root can write anywhere, but not below a regular file
    with pytest.raises(PermissionError, match="not writable"):
        P.run_generation(load_config(None, out_dir=str(out)))
    rc, _, err = _cli(["generate", "--out", str(out)], capsys)
    assert rc == 2 and "not writable" in _one_line_error(err)
    assert blocker.read_text() == "not a directory"


# -- OPS-02: a full disk ----------------------------------------------------------------------------


class _FullDisk:
    """Makes writes to temporary files under ``root`` fail like a full disk."""

    def __init__(self, monkeypatch, root: Path):
        real = os.fdopen
        self.failures = 0

        def fdopen(fd, *a, **k):
            f = real(fd, *a, **k)
            if str(root) in os.readlink(f"/proc/self/fd/{fd}"):
                outer = self

                class Full:
                    def __enter__(self):
                        return self

                    def __exit__(self, *exc):
                        f.close()
                        return False

                    def write(self, data):
                        outer.failures += 1
                        f.write(data[: len(data) // 2])
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                    def __getattr__(self, name):
                        return getattr(f, name)

                return Full()
            return f

        monkeypatch.setattr(io_utils.os, "fdopen", fdopen)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.spec("OPS-02")
@pytest.mark.parametrize("write", [lambda p: atomic_write_json(p, {"new": 1}), lambda p: atomic_write_jsonl(p, [{"new": 1}])])
def test_full_disk_keeps_the_previous_artifact_and_leaves_no_temp_file(tmp_path, monkeypatch, write):
    path = tmp_path / "artifact.json"
    path.write_text('{"old": true}\n')
    disk = _FullDisk(monkeypatch, tmp_path)
    with pytest.raises(OSError) as e:
        write(path)
    assert e.value.errno == errno.ENOSPC and disk.failures == 1
    assert path.read_text() == '{"old": true}\n'
    assert not _temp_files(tmp_path)


@pytest.mark.spec("OPS-02")
def test_atomic_write_renames_a_finished_temp_file_into_place(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def replace(src, dst):
        seen.append((Path(src), Path(dst), Path(src).read_text()))
        return real(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", replace)
    atomic_write_jsonl(tmp_path / "out.jsonl", [{"a": 1}])
    (src, dst, content), = seen
    assert src.parent == dst.parent == tmp_path and src.name.endswith(".tmp") and content == '{"a": 1}\n'


@pytest.mark.spec("OPS-02")
def test_full_disk_during_a_work_file_append_loses_no_finished_record(tmp_path, monkeypatch):
    import cai_bootstrap.datagen.store as store_mod

    path = tmp_path / "phase.jsonl"
    PhaseStore(path).append_batch([{"id": "a"}, {"id": "b"}])

    real_fdopen = os.fdopen

    def full_fdopen(fd, mode="r", *a, **k):  # the store appends through os.open(O_NOFOLLOW) + os.fdopen
        f = real_fdopen(fd, mode, *a, **k)
        if "a" in mode:
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                f.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    monkeypatch.setattr(store_mod.os, "fdopen", full_fdopen)
    with pytest.raises(OSError):
        PhaseStore(path).append_batch([{"id": "c", "text": "x" * 200}, {"id": "d"}])
    monkeypatch.undo()
    reopened = PhaseStore(path)
    assert [r["id"] for r in reopened.records()] == ["a", "b"]  # the torn half-batch is dropped, nothing else
    reopened.append_batch([{"id": "c"}, {"id": "d"}])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]


@pytest.mark.spec("OPS-02")
def test_full_disk_while_writing_a_run_keeps_its_artifacts_and_the_rerun_finishes(flow, tmp_path, monkeypatch):
    lm, model_dir, _ = flow
    cfg = small_config(tmp_path / "run", model_dir, target=2)
    out = tmp_path / "run"
    P.run_generation(cfg, lm=ScriptedLM(lm, style="clean"))
    before = {name: (out / name).read_bytes() for name in (P.DATASET, P.REJECTS, P.QC_SUMMARY, P.SESSION_MANIFEST)}
    with monkeypatch.context() as mp:
        disk = _FullDisk(mp, out)
        with pytest.raises(OSError):
            P.run_generation(cfg, lm=ScriptedLM(lm, style="clean"))
        assert disk.failures == 1
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not _temp_files(out)
    P.run_generation(cfg, lm=ScriptedLM(lm, style="clean"))
    assert (out / P.DATASET).read_bytes() == before[P.DATASET]


@pytest.mark.spec("OPS-02")
def test_cli_reports_a_full_disk_in_one_line_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def full(cfg, **_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(P, "run_generation", full)
    rc, _, err = _cli(["generate", "--out", str(tmp_path / "run")], capsys)
    line = _one_line_error(err)
    assert rc == 2 and os.strerror(errno.ENOSPC) in line and "rerun" in line
