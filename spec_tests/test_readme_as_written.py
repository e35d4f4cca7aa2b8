"""OPS-01 / GT-04: the README's commands, run as written.

Every ``cai-bootstrap ...`` and ``nox -s ...`` line of the README's code blocks runs here as a
process, in order, from a fresh working directory laid out like a clone (its run files under
``src/cai_bootstrap/configs/``), with the paths exactly as the README prints them. The only
changes: the model is ``tiny-random``, and sizes shrink through documented options
(``--target``, ``--limit``, ``--max-steps``, ``--k``, ``--until``). A ``nox -s`` line runs the
command its session runs (read from the noxfile), without the install.

The tiny random model cannot pass the quality gates, and the gates must say so: the pilot gate
exits 1, the scale step refuses the failed pilot gate, training refuses data whose QC failed.
Where a later line needs what a passing model would have made, the test puts a stand-in made by
the project's own functions (a generation run, preference pairs) at the path the README reads,
and runs the same line again. The README's ``nox -s stage1`` runs the real chain with its
default relative run folder, from the start to its report.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
NOXFILE = REPO / "noxfile.py"
TINY = "tiny-random"
# Lines that name a user's own files: they show the form of a command, there is nothing to run.
PLACEHOLDERS = ("/path/to/", "path/to/", "my_stage1.yaml", "PATH...")


def readme_lines(text: str) -> list[list[str]]:
    """Words of every ``cai-bootstrap`` and ``nox`` line of the README's fenced code blocks, in order."""
    lines = []
    for block in re.findall(r"^```(?:bash|sh|shell)?\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("cai-bootstrap", "nox"):
                lines.append(words)
    return lines


def nox_session_modules() -> dict[str, str]:
    """session name -> the module its ``session.run("python", "-m", MODULE, *session.posargs)`` runs."""
    out = {}
    for node in ast.parse(NOXFILE.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "run"
                        and [getattr(a, "value", None) for a in call.args[:2]] == ["python", "-m"]):
                    out[node.name] = call.args[2].value
    return out


@dataclass
class Row:
    """How one README line runs: words added, the exit codes that are right for the tiny model, and a
    stand-in to put in place (then the line runs again and must exit 0) when it refuses with exit 2."""

    match: str
    extra: list[str] = field(default_factory=list)
    expect: tuple[int, ...] = (0,)
    before: Callable[[], None] | None = None
    stand_in: Callable[[], None] | None = None
    check: Callable[[subprocess.CompletedProcess], None] | None = None


def _stand_in_shards(tmp_path_factory) -> Callable[[], None]:
    """The four scale shards a model that passes the pilot gate would make, made by the generation
    pipeline on the tiny model through a scripted stand-in that writes instructions."""
    def make() -> None:
        from cai_bootstrap.datagen import pipeline as P
        from spec_tests.datagen_support import flowing_lm, small_config
        from spec_tests.scripted_lm import ScriptedLM

        lm, model_dir, mid = flowing_lm(tmp_path_factory)
        for i in range(4):
            P.run_generation(small_config(f"runs/s{i}", model_dir, mode="scale", shard=f"{i}/4", target=8,
                                          **{"critic.threshold": mid}), lm=ScriptedLM(lm))
    return make


def _aside(path: str) -> None:
    if Path(path).exists():
        os.rename(path, path + "-from-tiny-model")


def _stand_in_dataset() -> None:
    from spec_tests.sft_support import make_generation_run

    _aside("runs/merged")
    make_generation_run("runs/merged")


def _stand_in_pairs() -> None:
    from spec_tests.preference_support import make_pairs_run

    _aside("runs/stage2/pairs")
    make_pairs_run("runs/stage2/pairs")


def _instructions() -> None:
    Path("runs/stage2").mkdir(parents=True, exist_ok=True)
    Path("runs/stage2/instructions.jsonl").write_text(
        '{"id": "n0", "instruction": "Name a colour of the sky at night."}\n'
        '{"id": "n1", "instruction": "Write one word that means happy."}\n')


def _says(*needles: str) -> Callable[[subprocess.CompletedProcess], None]:
    def check(r: subprocess.CompletedProcess) -> None:
        for needle in needles:
            assert needle in r.stdout + r.stderr, (needle, r.stdout[-2000:], r.stderr[-2000:])
    return check


def _stage1_stopped_at_the_pilot_gate(r: subprocess.CompletedProcess) -> None:
    run = Path("runs/stage1")  # the default, relative run folder
    assert "STOPPED: gate pilot_gate stopped the chain" in r.stderr and "QC" in r.stderr, r.stderr[-3000:]
    for name in ("gap_check", "pilot_gate"):
        m = json.loads((run / "gates" / f"{name}.json").read_text())
        assert {"gate", "inputs", "thresholds", "values", "decision"} <= set(m)  # GT-05
    assert json.loads((run / "gates" / "gap_check.json").read_text())["decision"] == "pass"  # a random model is weak
    assert json.loads((run / "gates" / "pilot_gate.json").read_text())["decision"] == "fail"
    assert (run / "pilot" / "session_manifest.json").is_file() and not (run / "scale").exists()
    report = (run / "report" / "REPORT.md").read_text()  # a stopped chain still reports what it decided
    assert "pilot_gate" in report and "FAIL" in report and "gap_check" in report


def _rows(tmp_path_factory) -> list[Row]:
    eval_small = ["--limit", "4", "--max-new-tokens", "8", "--bootstrap-samples", "100", "--quiet"]
    return [
        Row("cai-bootstrap inspect-model", check=_says('"template_disabled": true')),
        Row("cai-bootstrap generate --config src/cai_bootstrap/configs/generate_pilot.yaml", ["--target", "8", "--quiet"],
            expect=(0, 1), check=lambda r: Path("runs/stage1/pilot/session_manifest.json").is_file()),
        Row("cai-bootstrap gate pilot", expect=(1,), check=_says("NO-GO", "QC")),
        Row("cai-bootstrap generate --config src/cai_bootstrap/configs/generate_scale.yaml", ["--quiet"], expect=(2,),
            check=_says("scale generation refused", "pilot_gate failed")),
        Row("cai-bootstrap merge", expect=(0, 1), before=_stand_in_shards(tmp_path_factory),
            check=lambda r: Path("runs/merged/session_manifest.json").is_file()),
        Row("cai-bootstrap gate scale", expect=(0, 1), check=lambda r: Path("runs/merged/scale_gate.json").is_file()),
        Row("cai-bootstrap validate runs/merged", expect=(0, 1), check=_says("[manifest_hashes] 0 row(s)")),
        Row("cai-bootstrap train", ["--smoke", "--max-steps", "2"], expect=(0, 2), stand_in=_stand_in_dataset),
        Row("cai-bootstrap evaluate", eval_small, check=lambda r: Path("runs/eval/eval_summary.json").is_file()),
        Row("cai-bootstrap gate final", expect=(0, 1), check=lambda r: Path("runs/eval/gate_final.json").is_file()),
        Row("cai-bootstrap tiny-model", check=lambda r: Path("models/tiny/config.json").is_file()),
        Row("cai-bootstrap pairs", ["--k", "2", "--set", "max_new_tokens=8", "--set", "batch_size=4"], expect=(0, 1),
            before=_instructions, check=lambda r: Path("runs/stage2/pairs/session_manifest.json").is_file()),
        Row("cai-bootstrap validate runs/stage2/pairs", expect=(0, 1)),
        Row("cai-bootstrap train-dpo", ["--smoke", "--max-steps", "1"], expect=(0, 2), stand_in=_stand_in_pairs,
            check=lambda r: Path("runs/stage2/dpo/adapter").is_dir()),
        Row("nox -s conformance"),  # this very suite: not run again from inside itself
        Row("nox -s stage1 --", ["--until", "preflight"]),
        Row("nox -s stage1", expect=(1,), check=_stage1_stopped_at_the_pilot_gate),
        Row("nox -s stage2", expect=(2,), check=_says("REFUSED", "final gate manifest")),
    ]


def _row_for(words: list[str], rows: list[Row]) -> Row:
    line = " ".join(words)
    hits = [r for r in rows if line == r.match or line.startswith(r.match + " ")]
    assert hits, f"README line `{line}` has no row in this test: add how it runs on the tiny model"
    return max(hits, key=lambda r: len(r.match))  # the most specific row


def _argv(words: list[str], row: Row, sessions: dict[str, str]) -> list[str] | None:
    words = [TINY if w == "gemma-3-270m" else w for w in words]
    if words[0] == "nox":
        session = words[2]
        posargs = words[4:] if words[3:4] == ["--"] else []
        if session == "conformance":
            return None
        assert session in sessions, f"the noxfile has no session `{session}` running a module"
        argv = [sys.executable, "-m", sessions[session], *posargs]
        if session == "stage1" and "--model" not in posargs:
            argv += ["--model", TINY]
        return argv + row.extra
    exe = shutil.which("cai-bootstrap")
    argv = ([exe] if exe else [sys.executable, "-m", "cai_bootstrap.cli"]) + words[1:]
    if words[1] in ("generate", "train", "pairs", "train-dpo") and "--model" not in words:
        argv += ["--model", TINY]  # these read their model from the config file the line names
    return argv + row.extra


@pytest.mark.spec("OPS-01", "GT-04", "GT-01")
def test_the_readme_runs_as_written_from_a_fresh_directory(tmp_path, tmp_path_factory, monkeypatch):
    # The chain and the one-command-per-phase walk-through are two ways through the same run
    # folders (runs/stage1/pilot, ...): each starts in a fresh clone of its own.
    clones = {}
    for kind in ("nox", "cai-bootstrap"):
        clones[kind] = tmp_path / kind / "cai-bootstrap"
        shutil.copytree(REPO / "src" / "cai_bootstrap" / "configs", clones[kind] / "src" / "cai_bootstrap" / "configs")
    env = {**os.environ, "CAI_BOOTSTRAP_CACHE": str(tmp_path / "cache")}
    sessions = nox_session_modules()
    rows = _rows(tmp_path_factory)
    ran = []
    for words in readme_lines(README.read_text()):
        line = " ".join(words)
        if any(p in line for p in PLACEHOLDERS):
            continue
        row = _row_for(words, rows)
        argv = _argv(words, row, sessions)
        if argv is None:
            continue
        cwd = clones[words[0]]
        monkeypatch.chdir(cwd)  # stand-ins and checks read the paths as the README prints them
        if row.before:
            row.before()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)
        assert r.returncode in row.expect, f"`{line}` exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"`{line}`:\n{r.stderr[-3000:]}"
        if r.returncode == 2 and row.stand_in:
            row.stand_in()
            r = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)
            assert r.returncode == 0, f"`{line}` after its stand-in exited {r.returncode}:\n{r.stderr[-3000:]}"
        if row.check:
            assert row.check(r) is not False, f"`{line}`: its output is missing"
        ran.append(line)
    assert "nox -s stage1" in ran and any(line.startswith("cai-bootstrap evaluate") for line in ran), ran

    # The README says a rerun resumes from the last completed phase: the same line, again.
    again = subprocess.run([sys.executable, "-m", sessions["stage1"], "--model", TINY], capture_output=True, text=True,
                           timeout=900, env=env, cwd=clones["nox"])
    assert again.returncode == 1
    for name in ("preflight", "load", "gap_check", "pilot"):
        assert f"[stage1] {name}: already done" in again.stdout, again.stdout[-3000:]
