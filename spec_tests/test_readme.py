"""OPS-01: every command the README and the shipped run files show exists as written, and the
README's phase sequence runs end to end on the tiny model through the public CLI."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from cai_bootstrap.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGS = REPO / "src" / "cai_bootstrap" / "configs"


def readme_commands(text: str) -> list[str]:
    """`cai-bootstrap ...` lines of the README's fenced code blocks, comments stripped."""
    cmds = []
    for block in re.findall(r"^```(?:bash|sh|shell)?\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "cai-bootstrap":
                cmds.append(words[1:])
    return cmds


def config_commands() -> list[list[str]]:
    cmds = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        for line in path.read_text().splitlines():
            if line.startswith("# cai-bootstrap "):
                cmds.append(shlex.split(line[2:])[1:])
    return cmds


def test_the_readme_names_the_phase_commands():
    names = {c[0] for c in readme_commands(README.read_text())}
    assert {"inspect-model", "generate", "gate", "merge", "validate", "train", "evaluate", "tiny-model"} <= names


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("argv", readme_commands(README.read_text()) + config_commands(), ids=lambda a: " ".join(a)[:70])
def test_every_documented_command_parses(argv, capsys):
    """Subcommands and flags exist and required arguments are given (argparse exits 2 otherwise)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`cai-bootstrap {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()} (exit {e.code})")
    assert callable(args.func)


@pytest.mark.spec("OPS-01")
def test_a_misspelt_flag_would_be_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gate", "pilot", "runs/x", "--pilot-gates", "y"])


@pytest.mark.spec("OPS-01", "GT-01")
def test_readme_phase_sequence_runs_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    """The README's commands with `tiny-random` for the model: each runs and leaves its artifact.

    The tiny random model cannot pass QC, so the pilot gate says no (exit 1) and names why;
    training then uses a run made the way the pipeline makes one, to reach evaluation.
    """
    from spec_tests.sft_support import make_generation_run

    monkeypatch.setenv("CAI_BOOTSTRAP_CACHE", str(tmp_path / "cache"))
    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0
    assert main(["inspect-model", "tiny-random"]) == 0
    prov = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert prov["model_source"]["kind"] == "builtin" and prov["template_disabled"] is True

    # Short generations keep this affordable; the pipeline's own tests cover full lengths.
    small = tmp_path / "small.yaml"
    small.write_text("generate:\n  instructions: {max_new_tokens: 24}\n  responses: {max_new_tokens: 8}\n")
    pilot = tmp_path / "pilot"
    rc = main(["generate", "--config", str(small), "--model", "tiny-random", "--mode", "pilot", "--target", "2",
               "--out", str(pilot), "--quiet"])
    assert rc in (0, 1) and (pilot / "qc_summary.json").is_file()
    assert main(["gate", "pilot", str(pilot)]) == 1
    gate = json.loads((pilot / "pilot_gate.json").read_text())
    assert gate["passed"] is False and any(c["name"] == "pilot_size" and not c["passed"] for c in gate["checks"])
    # The scale step refuses a failed pilot gate, as the README says.
    assert main(["generate", "--config", str(small), "--model", "tiny-random", "--mode", "scale", "--target", "2", "--shard", "0/2",
                 "--pilot-gate", str(pilot / "pilot_gate.json"), "--out", str(tmp_path / "s0"), "--quiet"]) == 2
    assert main(["validate", str(pilot)]) in (0, 1)

    data = make_generation_run(tmp_path / "merged")
    assert main(["validate", str(data)]) == 0
    sft = tmp_path / "sft"
    assert main(["train", "--dataset", str(data), "--model", "tiny-random", "--out", str(sft), "--smoke", "--max-steps", "2"]) == 0
    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny-random", "--adapter", str(sft / "adapter"), "--limit", "2",
                 "--max-new-tokens", "8", "--bootstrap-samples", "100", "--out", str(ev), "--quiet"]) == 0
    assert main(["gate", "final", "--eval", str(ev)]) in (0, 1)
    assert (ev / "gate_final.json").is_file()
