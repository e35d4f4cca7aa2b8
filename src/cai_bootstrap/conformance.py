"""Spec-clause bookkeeping: which clauses exist, which are planned, which checks cover them.

Pure logic with no test-runner dependency, so the same report can be rebuilt from any
results source (pytest today, a CI log tomorrow).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

CLAUSE_PREFIXES = ("CG", "PR", "CL", "CR", "DG", "QC", "PV", "SFT", "EV", "GT", "PO", "ST", "OPS")
CLAUSE_ID_RE = re.compile(r"\b(?:%s)-\d{2}\b" % "|".join(CLAUSE_PREFIXES))
CLAUSE_LINE_RE = re.compile(r"^\s*-\s*\[((?:%s)-\d{2})\](.*)$" % "|".join(CLAUSE_PREFIXES))
PLANNED_TAG = "[planned]"


@dataclass
class Clause:
    clause_id: str
    text: str
    file: str
    line: int
    planned: bool
    checks: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        outcomes = [c["outcome"] for c in self.checks]
        if any(o == "failed" for o in outcomes):
            return "failing"
        if self.planned:
            return "planned"
        if any(o == "passed" for o in outcomes):
            return "passing"
        # Skipped-only or no checks at all: a skipped check is not a pass.
        return "no_passing_check"


class SpecError(ValueError):
    """The spec files themselves are malformed (duplicate IDs, bad tags)."""


def parse_specs(spec_dir: Path) -> dict[str, Clause]:
    clauses: dict[str, Clause] = {}
    for path in sorted(Path(spec_dir).glob("*.md")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            m = CLAUSE_LINE_RE.match(line)
            if not m:
                continue
            cid, rest = m.group(1), m.group(2)
            if cid in clauses:
                prev = clauses[cid]
                raise SpecError(f"{path}:{lineno}: clause {cid} already defined at {prev.file}:{prev.line}")
            planned = PLANNED_TAG in rest
            text = rest.replace(PLANNED_TAG, "").strip()
            clauses[cid] = Clause(cid, text, str(path), lineno, planned)
    return clauses


def catalogue_ids(path: Path) -> list[str]:
    """IDs of a catalogue file: either a plain ID list or the Markdown catalogue itself."""
    ids: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("#"):
            continue
        m = re.match(r"^-?\s*((?:%s)-\d{2})\b" % "|".join(CLAUSE_PREFIXES), s)
        if m and m.group(1) not in ids:
            ids.append(m.group(1))
    return ids


def build_report(clauses: dict[str, Clause], catalogue: list[str], unknown_marked: dict[str, list[str]]) -> dict:
    missing = [cid for cid in catalogue if cid not in clauses]
    by_status: dict[str, list[str]] = {}
    for cid, c in clauses.items():
        by_status.setdefault(c.status, []).append(cid)
    problems: list[str] = []
    for cid in missing:
        problems.append(f"{cid}: in the catalogue but not restated in specs/")
    for cid in by_status.get("no_passing_check", []):
        c = clauses[cid]
        what = "only skipped checks" if c.checks else "no check"
        problems.append(f"{cid} ({c.file}:{c.line}): implemented (not [planned]) but has {what}")
    for cid in by_status.get("failing", []):
        failed = [ch["nodeid"] for ch in clauses[cid].checks if ch["outcome"] == "failed"]
        problems.append(f"{cid}: failing checks: {', '.join(failed)}")
    for cid, nodeids in unknown_marked.items():
        problems.append(f"{cid}: marked on {', '.join(nodeids)} but not defined in specs/")
    return {
        "counts": {
            "total": len(clauses),
            "implemented": sum(1 for c in clauses.values() if not c.planned),
            "planned": len(by_status.get("planned", [])),
            "passing": len(by_status.get("passing", [])),
            "failing": len(by_status.get("failing", [])),
            "no_passing_check": len(by_status.get("no_passing_check", [])),
            "missing_from_specs": len(missing),
        },
        "ok": not problems,
        "problems": problems,
        "clauses": {
            cid: {
                "status": c.status,
                "planned": c.planned,
                "spec": f"{c.file}:{c.line}",
                "text": c.text,
                "checks": c.checks,
            }
            for cid, c in sorted(clauses.items(), key=lambda kv: _sort_key(kv[0]))
        },
    }


def _sort_key(cid: str) -> tuple[int, int]:
    prefix, num = cid.rsplit("-", 1)
    return (CLAUSE_PREFIXES.index(prefix), int(num))


def render_markdown(report: dict) -> str:
    c = report["counts"]
    lines = [
        "# Spec conformance report",
        "",
        f"Result: **{'PASS' if report['ok'] else 'FAIL'}**",
        "",
        f"Clauses: {c['total']} | implemented: {c['implemented']} | passing: {c['passing']} | "
        f"planned: {c['planned']} | failing: {c['failing']} | without passing check: {c['no_passing_check']} | "
        f"missing from specs: {c['missing_from_specs']}",
        "",
    ]
    if report["problems"]:
        lines += ["## Problems", ""] + [f"- {p}" for p in report["problems"]] + [""]
    lines += ["## Clauses", "", "| clause | status | checks |", "|---|---|---|"]
    for cid, cl in report["clauses"].items():
        checks = "<br>".join(f"{ch['outcome']}: `{ch['nodeid']}`" for ch in cl["checks"]) or "-"
        lines.append(f"| {cid} | {cl['status']} | {checks} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    from cai_bootstrap.io_utils import atomic_write_text

    out_dir = Path(out_dir)
    jp = atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    mp = atomic_write_text(out_dir / "report.md", render_markdown(report))
    return jp, mp
