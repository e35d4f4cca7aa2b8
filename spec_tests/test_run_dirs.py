"""OPS-06: one writer per run directory, nothing destroyed that the project did not make,
model folders published whole.

The second writer is a real process holding the lock (as a running `generate` would);
each command that writes a run directory must refuse it with the holder's pid, and a
lock left by a process killed with SIGKILL must not block the next run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")

HOLDER = """
import sys, time
from cai_bootstrap.run_lock import run_lock
with run_lock(sys.argv[1], "generate"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds the run lock of a folder; yields (start(folder) -> process)."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        line = p.stdout.readline()
        assert line.strip() == "held", f"lock holder did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def no_model_load(monkeypatch):
    """A refusal must come before any model is resolved or loaded."""
    import cai_bootstrap.loader as loader
    import cai_bootstrap.model_sources as sources

    def forbidden(*a, **k):
        pytest.fail("a model was resolved or loaded although the run directory is in use")

    monkeypatch.setattr(loader, "load_base_model", forbidden)
    monkeypatch.setattr(sources, "resolve_model", forbidden)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    return lines[0]


# (command, argv builder(locked run dir, tmp_path) -> argv, directory the command writes)
WRITERS = [
    ("generate", lambda d, t: ["generate", "--out", str(d)]),
    ("generate below a locked run", lambda d, t: ["generate", "--out", str(d / "pilot")]),
    ("merge", lambda d, t: ["merge", str(t / "shard-0"), "--out", str(d)]),
    ("train", lambda d, t: ["train", "--dataset", str(t / "data"), "--model", "tiny-random", "--out", str(d)]),
    ("evaluate", lambda d, t: ["evaluate", "--model", "tiny-random", "--base-only", "--out", str(d)]),
    ("pairs", lambda d, t: ["pairs", "--model", "tiny-random", "--stage1-data", str(t / "data"),
                            "--instructions", str(t / "instructions.jsonl"), "--out", str(d)]),
    ("train-dpo", lambda d, t: ["train-dpo", "--pairs", str(t / "pairs"), "--sft-run", str(t / "sft"),
                                "--model", "tiny-random", "--out", str(d)]),
    # Gates read a folder another command may still be writing, and write their manifest into it.
    ("gate pilot", lambda d, t: ["gate", "pilot", str(d)]),
    ("gate scale", lambda d, t: ["gate", "scale", str(d), "--out", str(t / "scale_gate.json")]),
    ("gate final", lambda d, t: ["gate", "final", "--eval", str(d)]),
    ("gate gap", lambda d, t: ["gate", "gap", "--eval", str(d)]),
]


@pytest.mark.spec("OPS-06", "PV-07")
@pytest.mark.parametrize("where", ["stage1_data", "inside stage1_data", "instructions folder"])
def test_pairs_refuses_an_output_folder_that_overlaps_its_inputs(where, tmp_path, capsys, no_model_load):
    from cai_bootstrap.cli import main

    data = tmp_path / "stage1"
    data.mkdir()
    (data / "session_manifest.json").write_text("{}")
    instr = tmp_path / "in" / "instructions.jsonl"
    instr.parent.mkdir()
    instr.write_text('{"id": "a", "instruction": "Name a color."}\n')
    out = {"stage1_data": data, "inside stage1_data": data / "pairs", "instructions folder": instr.parent}[where]
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    rc = main(["pairs", "--model", "tiny-random", "--stage1-data", str(data), "--instructions", str(instr), "--out", str(out)])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "overlaps the run's input" in line, line
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


@pytest.mark.spec("OPS-06")
@pytest.mark.parametrize("name, argv", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_second_writer_is_refused_with_the_holder_named(name, argv, tmp_path, holder, capsys, no_model_load):
    from cai_bootstrap.cli import main

    run = tmp_path / "run"
    proc = holder(run)
    rc = main(argv(run, tmp_path))
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert f"run directory {run} is in use by pid {proc.pid}" in line and " since " in line, line
    assert proc.poll() is None  # the holder is untouched
    assert sorted(p.name for p in run.iterdir()) == [".cai_bootstrap.lock"]  # nothing written beside it


@pytest.mark.spec("OPS-06")
def test_stage1_chain_refuses_a_run_directory_in_use(tmp_path, holder, capsys, no_model_load):
    from cai_bootstrap import stage1

    run = tmp_path / "run"
    proc = holder(run)
    rc = stage1.main(["--run-dir", str(run)])
    assert rc == 2
    assert f"is in use by pid {proc.pid}" in _one_line_error(capsys.readouterr().err)
    assert not (run / stage1.STATE_DIR).exists()


@pytest.mark.spec("OPS-06")
def test_lock_of_a_killed_process_does_not_block_the_next_run(tmp_path, holder):
    from cai_bootstrap.run_lock import LOCK_NAME, run_lock

    run = tmp_path / "run"
    proc = holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = run / LOCK_NAME
    assert stale.is_file() and json.loads(stale.read_text())["pid"] == proc.pid  # left behind by the crash
    with run_lock(run, "generate"):
        assert json.loads(stale.read_text())["pid"] == os.getpid()
    assert not stale.exists()  # released and tidied


@pytest.mark.spec("OPS-06")
def test_nested_locks_in_one_process_pass(tmp_path):
    """The stage-1 chain holds its run directory and runs each phase's command below it."""
    from cai_bootstrap.run_lock import run_lock

    run = tmp_path / "run"
    with run_lock(run, "stage1"):
        with run_lock(run / "pilot", "generate"), run_lock(run, "stage1"):
            (run / "pilot" / "x").write_text("ok")
    assert sorted(p.name for p in run.rglob("*")) == ["pilot", "x"]


@pytest.mark.spec("OPS-06")
def test_a_refused_lock_leaves_no_empty_directory(tmp_path, holder):
    from cai_bootstrap.run_lock import RunDirectoryInUse, run_lock

    run = tmp_path / "run"
    holder(run)
    with pytest.raises(RunDirectoryInUse):
        with run_lock(run / "sub", "generate"):
            pass
    assert not (run / "sub").exists()


# -- nothing destroyed that the project did not make -----------------------------------------------


@pytest.mark.spec("OPS-06")
def test_tiny_model_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    from cai_bootstrap.cli import main

    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "thesis.txt").write_text("years of work")
    rc = main(["tiny-model", str(folder)])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and str(folder) in line and "remove it yourself" in line, line
    assert (folder / "notes" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.spec("OPS-06")
def test_tiny_model_is_published_whole_or_not_at_all(tmp_path, monkeypatch):
    """A failure while the folder is written leaves the previous model and no partial folder."""
    from cai_bootstrap import testmodel

    folder = testmodel.build_tiny_model(tmp_path / "tiny", seed=0)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(testmodel.shutil, "copy2", disk_full)
    with pytest.raises(OSError, match="No space"):
        testmodel.build_tiny_model(folder, seed=1)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    monkeypatch.undo()
    testmodel.build_tiny_model(folder, seed=1)  # its own folder may be rebuilt
    assert json.loads((folder / testmodel.MARKER_FILE).read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


@pytest.mark.spec("OPS-06")
def test_replacing_a_folder_never_leaves_its_name_empty(tmp_path, monkeypatch):
    """A crash right after the first step of the swap must still leave a whole folder under the real name."""
    from cai_bootstrap import safe_paths

    final, new = tmp_path / "adapter", tmp_path / ".adapter.partial"
    for folder, text in ((final, "old"), (new, "new")):
        folder.mkdir()
        (folder / "weights").write_text(text)
    if not _can_exchange(tmp_path):
        pytest.skip("this filesystem cannot swap two paths atomically; the two-rename fallback applies")
    real_replace = safe_paths.os.replace

    def crash_after_first(*a, **k):  # a process killed between two renames
        monkeypatch.setattr(safe_paths.os, "replace", _crashed)
        return real_replace(*a, **k)

    monkeypatch.setattr(safe_paths.os, "replace", crash_after_first)
    try:
        safe_paths.replace_dir(new, final)
    except _Crash:
        pass
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


class _Crash(BaseException):
    pass


def _crashed(*a, **k):
    raise _Crash()


def _can_exchange(tmp: Path) -> bool:
    from cai_bootstrap import safe_paths

    a, b = tmp / ".probe-a", tmp / ".probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return safe_paths.exchange_paths(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.spec("OPS-06")
def test_generate_refuses_a_folder_holding_outputs_it_did_not_write(tmp_path, capsys, no_model_load):
    from cai_bootstrap.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.jsonl").write_text('{"mine": true}\n')
    rc = main(["generate", "--out", str(out)])
    line = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and str(out) in line and "dataset.jsonl" in line and "another --out" in line, line
    assert (out / "dataset.jsonl").read_text() == '{"mine": true}\n'


@pytest.mark.spec("OPS-06", "PV-07")
@pytest.mark.parametrize("case", ["train into its dataset", "train into a folder inside the dataset",
                                  "train into a foreign folder", "generate into a foreign folder",
                                  "evaluate --force into a foreign folder", "evaluate into the eval set's folder"])
def test_an_output_folder_is_never_an_input_nor_someone_elses(case, tmp_path, capsys):
    from cai_bootstrap.cli import main
    from spec_tests.sft_support import make_generation_run

    data = make_generation_run(tmp_path / "good")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in (*data.iterdir(), foreign / "notes.txt") if p.is_file()}
    names = sorted(p.name for p in data.iterdir())
    argv = {
        "train into its dataset": ["train", "--dataset", str(data), "--model", "tiny-random", "--out", str(data), "--smoke",
                                   "--max-steps", "1"],
        "train into a folder inside the dataset": ["train", "--dataset", str(data), "--model", "tiny-random", "--out",
                                                   str(data / "sft"), "--smoke", "--max-steps", "1"],
        "train into a foreign folder": ["train", "--dataset", str(data), "--model", "tiny-random", "--out", str(foreign),
                                        "--smoke", "--max-steps", "1"],
        "generate into a foreign folder": ["generate", "--model", "tiny-random", "--target", "2", "--out", str(foreign)],
        "evaluate --force into a foreign folder": ["evaluate", "--model", "tiny-random", "--base-only", "--limit", "2",
                                                   "--out", str(foreign), "--force"],
        "evaluate into the eval set's folder": ["evaluate", "--model", "tiny-random", "--base-only", "--limit", "2",
                                                "--eval-set", str(data / "dataset.jsonl"), "--out", str(data)],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "overlaps" in err or "did not write" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in data.iterdir()) == names  # not even a lock file
