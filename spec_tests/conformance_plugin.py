"""Pytest plugin: collects results per spec clause and gates on them.

Tests declare the clauses they check with ``@pytest.mark.spec("CG-03", ...)``. At the end
of the session the plugin writes ``artifacts/conformance/report.json`` and ``report.md``.
With ``--conformance-gate`` the session fails when a clause that is not ``[planned]`` has
no passing check or a failing one, or when specs/ lacks a catalogue ID.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cai_bootstrap.conformance import CLAUSE_ID_RE, build_report, catalogue_ids, parse_specs, write_report

REPO = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO / "specs"
CATALOGUES = [REPO / "spec_tests" / "catalogue_ids.txt", REPO.parent / "shared" / "SPEC_CLAUSES.md"]


def pytest_addoption(parser):
    g = parser.getgroup("conformance")
    g.addoption("--conformance-gate", action="store_true", help="fail unless every implemented clause has a passing check")
    g.addoption("--conformance-report", default=str(REPO / "artifacts" / "conformance"), help="report output folder")


def pytest_configure(config):
    config._spec_results = {}  # nodeid -> (ids, outcome)
    config.addinivalue_line("markers", "spec(*ids): spec clause IDs this test checks")


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        for mark in item.iter_markers("spec"):
            for cid in mark.args:
                if not isinstance(cid, str) or not CLAUSE_ID_RE.fullmatch(cid):
                    raise pytest.UsageError(f"{item.nodeid}: bad clause id {cid!r} in @pytest.mark.spec")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    ids = sorted({cid for m in item.iter_markers("spec") for cid in m.args})
    if ids:
        rec = item.config._spec_results.setdefault(item.nodeid, {"ids": ids, "phases": {}})
        rec["phases"][rep.when] = rep.outcome


def _final_outcome(phases: dict[str, str]) -> str:
    """A check passes only if its call ran and passed and no phase failed; xfail and skip are not passes."""
    if "failed" in phases.values():
        return "failed"
    if "skipped" in phases.values():
        return "skipped"
    return "passed" if phases.get("call") == "passed" else "skipped"


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if getattr(config, "workerinput", None) is not None:
        return
    clauses = parse_specs(SPEC_DIR)
    unknown: dict[str, list[str]] = {}
    for nodeid, rec in config._spec_results.items():
        state = _final_outcome(rec["phases"])
        for cid in rec["ids"]:
            if cid in clauses:
                clauses[cid].checks.append({"nodeid": nodeid, "outcome": state})
            else:
                unknown.setdefault(cid, []).append(nodeid)
    catalogue: list[str] = []
    for p in CATALOGUES:
        if p.exists():
            for cid in catalogue_ids(p):
                if cid not in catalogue:
                    catalogue.append(cid)
    report = build_report(clauses, catalogue, unknown)
    out = Path(config.getoption("--conformance-report"))
    jp, mp = write_report(report, out)
    config._conformance_report = (report, jp, mp)
    if config.getoption("--conformance-gate") and not report["ok"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    got = getattr(config, "_conformance_report", None)
    if not got:
        return
    report, jp, mp = got
    c = report["counts"]
    tr = terminalreporter
    tr.section("spec conformance")
    tr.write_line(
        f"clauses {c['total']}: implemented {c['implemented']}, passing {c['passing']}, planned {c['planned']}, "
        f"failing {c['failing']}, without passing check {c['no_passing_check']}, missing from specs {c['missing_from_specs']}"
    )
    for p in report["problems"]:
        tr.write_line(f"CONFORMANCE PROBLEM: {p}", red=True)
    tr.write_line(f"report: {jp} and {mp}")
    if config.getoption("--conformance-gate"):
        tr.write_line("conformance gate: " + ("PASS" if report["ok"] else "FAIL"), green=report["ok"], red=not report["ok"])
