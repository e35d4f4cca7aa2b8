"""One home per default: the CLI, the Stage-1 chain and the shipped run files take each
threshold and size from the module that owns it, so changing one is one edit.

Three kinds of check: the values agree (table); the CLI follows its home when the home
changes (so it reads the constant rather than restating the number); and no restated
literal is left in the CLI's ``add_argument`` defaults or in the Stage-1 config fields
that stand for a home's default (AST scan).
"""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

import pytest

import cai_bootstrap
from cai_bootstrap import cleaning, critic, dedup, gates, stage1
from cai_bootstrap.cli import build_parser
from cai_bootstrap.datagen import config as gencfg
from cai_bootstrap.evaluation import runner
from cai_bootstrap.evaluation import statistics as st
from cai_bootstrap.sft import config as sftcfg

PKG = Path(cai_bootstrap.__file__).parent
CONFIGS = PKG / "configs"


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _cli_default(path: tuple[str, ...], dest: str):
    return _subparser(*path).get_default(dest)


# (subcommand path, argparse dest, the home's value, clause)
CLI_DEFAULTS = [
    (("evaluate",), "max_new_tokens", runner.EvalDecoding().max_new_tokens, "EV-03"),
    (("evaluate",), "batch_size", runner.EvalDecoding().batch_size, "EV-03"),
    (("evaluate",), "seed", runner.EvalDecoding().seed, "EV-03"),
    (("evaluate",), "bootstrap_samples", st.DEFAULT_BOOTSTRAP_SAMPLES, "EV-05"),
    (("evaluate",), "confidence", st.DEFAULT_CONFIDENCE, "EV-05"),
    (("evaluate",), "fdr", st.DEFAULT_FDR, "EV-05"),
    (("gate", "final"), "alpha", gates.FinalGateThresholds().alpha, "GT-02"),
    (("gate", "final"), "min_lift", gates.FinalGateThresholds().min_lift, "GT-02"),
    (("gate", "gap"), "max_base_rate", gates.GapGateThresholds().max_base_rate, "GT-03"),
]


@pytest.mark.spec("GT-02", "GT-03", "EV-03", "EV-05")
@pytest.mark.parametrize("path, dest, home, clause", CLI_DEFAULTS, ids=[f"{' '.join(p)}:{d}" for p, d, _, _ in CLI_DEFAULTS])
def test_cli_defaults_equal_their_home(path, dest, home, clause):
    assert _cli_default(path, dest) == home, f"{' '.join(path)} --{dest.replace('_', '-')} ({clause})"


# (home object, attribute, subcommand path, argparse dest): patching the home must move the CLI default.
CLI_FOLLOWS = [
    (runner, "DEFAULT_MAX_NEW_TOKENS", ("evaluate",), "max_new_tokens"),
    (runner, "DEFAULT_BATCH_SIZE", ("evaluate",), "batch_size"),
    (st, "DEFAULT_BOOTSTRAP_SAMPLES", ("evaluate",), "bootstrap_samples"),
    (st, "DEFAULT_CONFIDENCE", ("evaluate",), "confidence"),
    (st, "DEFAULT_FDR", ("evaluate",), "fdr"),
    (gates, "DEFAULT_ALPHA", ("gate", "final"), "alpha"),
    (gates, "DEFAULT_MIN_LIFT", ("gate", "final"), "min_lift"),
    (gates, "DEFAULT_MAX_BASE_RATE", ("gate", "gap"), "max_base_rate"),
]


@pytest.mark.spec("GT-02", "GT-03", "EV-03", "EV-05")
@pytest.mark.parametrize("module, name, path, dest", CLI_FOLLOWS, ids=[n for _, n, _, _ in CLI_FOLLOWS])
def test_cli_default_follows_its_home(monkeypatch, module, name, path, dest):
    assert getattr(module, name) == _cli_default(path, dest)
    monkeypatch.setattr(module, name, 0.123)
    assert _cli_default(path, dest) == 0.123, f"the CLI restates {module.__name__}.{name} instead of reading it"


# (Stage-1 config field, the home's value, clause)
STAGE1_DEFAULTS = [
    ("eval_max_new_tokens", runner.DEFAULT_MAX_NEW_TOKENS, "EV-03"),
    ("eval_batch_size", runner.DEFAULT_BATCH_SIZE, "EV-03"),
    ("gap_max_base_rate", gates.DEFAULT_MAX_BASE_RATE, "GT-03"),
    ("final_alpha", gates.DEFAULT_ALPHA, "GT-02"),
    ("pilot_target", gates.DEFAULT_PILOT_TARGET, "GT-01"),
    ("pilot_min_items", gates.PILOT_MIN_ITEMS, "GT-01"),
    ("pilot_max_items", gates.PILOT_MAX_ITEMS, "GT-01"),
]


@pytest.mark.spec("GT-01", "GT-02", "GT-03")
@pytest.mark.parametrize("field, home, clause", STAGE1_DEFAULTS, ids=[f for f, _, _ in STAGE1_DEFAULTS])
def test_stage1_config_defaults_equal_their_home(field, home, clause):
    assert getattr(stage1.Stage1Config(), field) == home, f"Stage1Config.{field} ({clause})"


# Elsewhere in the package: (value in use, the home's value, what)
OTHER_DEFAULTS = [
    (gencfg.GenerateConfig().target, gates.DEFAULT_PILOT_TARGET, "generation target (GT-01)"),
    (gates.DataGateThresholds().min_items, gates.PILOT_MIN_ITEMS, "data gate min items (GT-01)"),
    (gates.DataGateThresholds().max_items, gates.PILOT_MAX_ITEMS, "data gate max items (GT-01)"),
    (gencfg.CriticCfg().threshold, critic.DEFAULT_THRESHOLD, "critic threshold (CR-03)"),
    (gencfg.CriticCfg().batch_size, critic.DEFAULT_BATCH_SIZE, "critic batch size"),
    (sftcfg.SFTRunConfig.model_fields["near_duplicate_threshold"].default, dedup.NEAR_DUP_THRESHOLD,
     "SFT leakage threshold (SFT-06)"),
    (inspect.signature(gates.decide_final).parameters["thresholds"].default, gates.FinalGateThresholds(), "decide_final"),
]


@pytest.mark.spec("GT-01", "CR-03", "SFT-06")
@pytest.mark.parametrize("value, home, what", OTHER_DEFAULTS, ids=[w for _, _, w in OTHER_DEFAULTS])
def test_package_defaults_equal_their_home(value, home, what):
    assert value == home, what


# -- no restated literals ---------------------------------------------------------------------------


def _literal_number(node: ast.AST | None) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _cli_literal_defaults() -> list[str]:
    found = []
    for path in sorted((PKG / "commands").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                for kw in node.keywords:
                    if kw.arg == "default" and _literal_number(kw.value):
                        found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


@pytest.mark.spec("GT-02", "GT-03", "EV-03")
def test_cli_restates_no_numeric_default():
    assert _cli_literal_defaults() == []


@pytest.mark.spec("GT-01", "GT-02", "GT-03")
def test_stage1_config_restates_no_home_default():
    tree = ast.parse(Path(stage1.__file__).read_text(encoding="utf-8"))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Stage1Config")
    fields = {f for f, _, _ in STAGE1_DEFAULTS}
    restated = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id in fields:
            value = stmt.value
            default = value.args[0] if isinstance(value, ast.Call) and value.args else value
            if _literal_number(default):
                restated.append(f"{stmt.target.id} = {ast.unparse(value)}")
    assert restated == []


@pytest.mark.spec("QC-08")
def test_qc_counts_the_one_delimiter():
    """QC's leak count knows no delimiter of its own: it takes cleaning's."""
    from cai_bootstrap import qc

    assert "delimiter" not in inspect.signature(qc.compute_qc_summary).parameters
    assert cleaning.DELIMITER.startswith(cleaning.PARTIAL_DELIMITER)


# -- shipped run files --------------------------------------------------------------------------------


@pytest.mark.spec("QC-08", "PR-02")
@pytest.mark.parametrize("name", ["generate_pilot.yaml", "generate_scale.yaml"])
def test_shipped_generation_configs_run_with_the_calibrated_defaults(name):
    """The run files spell the settings out for readers; every value they restate is the code's default."""
    cfg = gencfg.load_config(CONFIGS / name)
    for section in ("instructions", "responses", "critic", "qc"):
        assert getattr(cfg, section) == type(getattr(cfg, section))(), f"{name}: {section} differs from the code default"
    if cfg.mode == "pilot":
        assert gates.PILOT_MIN_ITEMS <= cfg.target <= gates.PILOT_MAX_ITEMS


@pytest.mark.spec("GT-01", "GT-02", "GT-03")
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("stage1_*.yaml")), ids=lambda p: p.name)
def test_shipped_stage1_configs_keep_the_gate_thresholds(path):
    cfg = stage1.load_stage1_config(path)
    assert cfg.final_alpha == gates.DEFAULT_ALPHA
    assert cfg.gap_max_base_rate == gates.DEFAULT_MAX_BASE_RATE
    assert (cfg.pilot_min_items, cfg.pilot_max_items) == (gates.PILOT_MIN_ITEMS, gates.PILOT_MAX_ITEMS)
    assert gates.PILOT_MIN_ITEMS <= cfg.pilot_target <= gates.PILOT_MAX_ITEMS


@pytest.mark.spec("SFT-06")
def test_shipped_sft_config_keeps_the_leakage_threshold():
    cfg = sftcfg.load_config(CONFIGS / "sft_default.yaml")
    assert cfg.near_duplicate_threshold == dedup.NEAR_DUP_THRESHOLD


# -- timestamps ------------------------------------------------------------------------------------------


@pytest.mark.spec("PV-01")
def test_one_timestamp_helper():
    """Every artifact timestamp has the same format, from ``provenance.utc_now``; no module keeps its own clock."""
    import re

    from cai_bootstrap.provenance import utc_now

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "provenance.py":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("def _now(", "strftime(", "datetime.now(", ".isoformat("):
            if needle in text:
                offenders.append(f"{path.relative_to(PKG)}: {needle}")
    assert offenders == []
