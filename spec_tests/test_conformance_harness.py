"""The harness itself: a clause without a passing check, or missing from specs, fails the gate."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cai_bootstrap.conformance import build_report, catalogue_ids, parse_specs


def _specs(tmp_path, body):
    d = tmp_path / "specs"
    d.mkdir()
    (d / "x.md").write_text(textwrap.dedent(body))
    return d


def test_statuses_and_problems(tmp_path):
    clauses = parse_specs(_specs(tmp_path, """
        - [CG-01] done and passing
        - [CG-02] done but only skipped
        - [CG-03] [planned] not built
        - [CG-04] done without a check
        - [CG-05] done and failing
    """))
    clauses["CG-01"].checks.append({"nodeid": "t::a", "outcome": "passed"})
    clauses["CG-02"].checks.append({"nodeid": "t::b", "outcome": "skipped"})
    clauses["CG-05"].checks += [{"nodeid": "t::c", "outcome": "passed"}, {"nodeid": "t::d", "outcome": "failed"}]
    report = build_report(clauses, ["CG-01", "CG-02", "CG-03", "CG-04", "CG-05", "CG-06"], {"CG-09": ["t::e"]})
    st = {cid: c["status"] for cid, c in report["clauses"].items()}
    assert st == {"CG-01": "passing", "CG-02": "no_passing_check", "CG-03": "planned",
                  "CG-04": "no_passing_check", "CG-05": "failing"}
    assert not report["ok"]
    text = "\n".join(report["problems"])
    for needle in ("CG-06: in the catalogue", "CG-02", "only skipped", "CG-04", "no check", "t::d", "CG-09"):
        assert needle in text
    assert report["counts"]["planned"] == 1 and report["counts"]["implemented"] == 4


def test_duplicate_clause_is_a_spec_error(tmp_path):
    import pytest

    from cai_bootstrap.conformance import SpecError

    with pytest.raises(SpecError, match="already defined"):
        parse_specs(_specs(tmp_path, "- [CG-01] a\n- [CG-01] b\n"))


def test_catalogue_reader_handles_markdown_and_lists(tmp_path):
    md = tmp_path / "cat.md"
    md.write_text("# title\n- CG-01 first\n- PR-02 second\ntext mentioning CG-09 inline\n")
    assert catalogue_ids(md) == ["CG-01", "PR-02"]


def test_gate_fails_a_real_pytest_run_with_an_uncovered_clause(tmp_path):
    """End to end through pytest: the plugin turns an uncovered clause into a failing session."""
    proj = tmp_path / "proj"
    (proj / "specs").mkdir(parents=True)
    (proj / "specs" / "a.md").write_text("- [CG-01] covered\n- [CG-02] not covered\n")
    (proj / "test_a.py").write_text(
        "import pytest\n@pytest.mark.spec('CG-01')\ndef test_a():\n    assert True\n"
    )
    plugin = (
        "import cai_bootstrap.conformance as c, pathlib\n"
        "from spec_tests import conformance_plugin as p\n"
        f"p.SPEC_DIR = pathlib.Path({str(proj / 'specs')!r})\n"
        "p.CATALOGUES = []\n"
        "from spec_tests.conformance_plugin import *\n"
    )
    (proj / "gateplugin.py").write_text(plugin)
    import spec_tests

    repo = __import__("pathlib").Path(spec_tests.__file__).parent.parent
    env = {"PYTHONPATH": f"{proj}:{repo}", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gateplugin", "--rootdir", str(proj),
           "-c", "/dev/null", "--conformance-gate", "--conformance-report", str(tmp_path / "rep"), str(proj / "test_a.py")]
    r = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "CG-02" in r.stdout and "conformance gate: FAIL" in r.stdout
    assert (tmp_path / "rep" / "report.json").exists()
    (proj / "specs" / "a.md").write_text("- [CG-01] covered\n- [CG-02] [planned] not covered\n")
    r = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
