"""Schema validation of artifacts with the Great Expectations suites in ``expectations/`` (PV-06).

A suite is a JSON file in Great Expectations' own suite format, so it can be read and
run by GX tooling directly; its ``meta`` says which artifact type it checks, which files
it applies to, which spec clauses it covers and how to turn the file into a table:

- ``format``: ``jsonl`` (one row per record) or ``json`` (one row for the object);
- ``rows``: optional dotted path of a list of objects, or of an object of objects, whose
  items become the rows instead (``row_key`` names the column that receives the keys);
- ``keep_objects``: dotted paths kept as whole values instead of being flattened, for
  fields whose keys vary (histograms, free-form budgets).

Nested objects become dotted columns (``pair_critique.margin``) so column expectations
apply. Unlike ``pandas.json_normalize`` an empty object stays a value instead of
vanishing, so a present-but-empty field is never reported missing. Every column is kept
as ``object`` dtype: Great Expectations then checks the type of each value, which is what
a JSON schema means, instead of guessing from a pandas dtype.

This module must not import torch: the ``validate`` extra (great-expectations, pyyaml) is
all a CI job checking artifacts installs.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cai_bootstrap.io_utils import MalformedInputError, iter_jsonl
from cai_bootstrap.provenance import ARTIFACT_TYPES

SUITES_ENV = "CAI_EXPECTATIONS_DIR"
# Package data, so an installed wheel validates too; `expectations/` at the repository root links here.
_DEFAULT_SUITES_DIR = Path(__file__).resolve().parent / "data" / "expectations"
_MAX_EXAMPLES = 3


class ValidationSetupError(ValueError):
    """The suites themselves cannot be found or read, or a file cannot be matched to one."""


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    artifact_type: str
    clauses: tuple[str, ...]
    file_names: tuple[str, ...]
    format: str
    rows: str | None
    row_key: str | None
    keep_objects: tuple[str, ...]
    definition: dict
    path: Path

    @property
    def columns(self) -> set[str]:
        cols: set[str] = set()
        for e in self.definition.get("expectations", []):
            kw = e.get("kwargs", {})
            for k in ("column", "column_A", "column_B"):
                if k in kw:
                    cols.add(kw[k])
            cols.update(kw.get("column_list", []))
        return cols


@dataclass(frozen=True)
class Failure:
    suite: str
    expectation: str
    column: str | None
    clause: str | None
    detail: str

    def __str__(self) -> str:
        where = f"({self.column})" if self.column else ""
        clause = f" [{self.clause}]" if self.clause else ""
        return f"{self.expectation}{where}{clause}: {self.detail}"


@dataclass
class FileReport:
    path: Path
    artifact_type: str | None
    suites: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_checks: int = 0
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    def format(self) -> str:
        kind = self.artifact_type or "?"
        if self.error:
            return f"ERROR {self.path} [{kind}]: {self.error}"
        if self.ok:
            return f"OK    {self.path} [{kind}] {self.n_rows} row(s), {self.n_checks} expectation(s)"
        lines = [f"FAIL  {self.path} [{kind}] {len(self.failures)} of {self.n_checks} expectation(s) failed"]
        lines += [f"      - {f}" for f in self.failures]
        return "\n".join(lines)


# -- suites ------------------------------------------------------------------------------------------


def suites_dir(path: str | os.PathLike | None = None) -> Path:
    d = Path(path) if path else Path(os.environ.get(SUITES_ENV) or _DEFAULT_SUITES_DIR)
    if not d.is_dir():
        raise ValidationSetupError(
            f"no expectation suites at {d}; they ship inside the package (cai_bootstrap/data/expectations/), linked from expectations/ in the source tree: "
            f"pass --suites-dir or set {SUITES_ENV}"
        )
    return d


def load_suites(path: str | os.PathLike | None = None) -> list[SuiteSpec]:
    """Read every suite file; a malformed one is an error, not a silently skipped check."""
    d = suites_dir(path)
    specs: list[SuiteSpec] = []
    for p in sorted(d.glob("*.json")):
        try:
            definition = json.loads(p.read_text(encoding="utf-8"))
            meta = definition["meta"]
            spec = SuiteSpec(
                name=definition["name"],
                artifact_type=meta["artifact_type"],
                clauses=tuple(meta["clauses"]),
                file_names=tuple(meta.get("file_names", ())),
                format=meta["format"],
                rows=meta.get("rows"),
                row_key=meta.get("row_key"),
                keep_objects=tuple(meta.get("keep_objects", ())),
                definition=definition,
                path=p,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValidationSetupError(f"{p}: not a readable suite ({type(e).__name__}: {e})") from None
        if spec.artifact_type not in ARTIFACT_TYPES:
            raise ValidationSetupError(f"{p}: unknown artifact_type {spec.artifact_type!r}; known: {', '.join(ARTIFACT_TYPES)}")
        if spec.format not in ("json", "jsonl"):
            raise ValidationSetupError(f"{p}: format must be json or jsonl, got {spec.format!r}")
        specs.append(spec)
    if not specs:
        raise ValidationSetupError(f"{d}: no suite files (*.json)")
    return specs


def suite_for_name(file_name: str, suites: Sequence[SuiteSpec]) -> str | None:
    for s in suites:
        if any(fnmatch.fnmatch(file_name, pat) for pat in s.file_names):
            return s.artifact_type
    return None


# -- files to tables -----------------------------------------------------------------------------------


def flatten(obj: dict, keep: Iterable[str] = (), prefix: str = "") -> dict:
    """Nested objects to dotted keys; empty objects and ``keep`` paths stay whole values."""
    keep = set(keep)
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in keep:
            out.update(flatten(v, keep, key + "."))
        else:
            out[key] = v
    return out


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def read_records(path: Path, fmt: str) -> tuple[list[dict], list[str]]:
    """Records of a file plus a label per record for messages (line numbers for JSONL)."""
    if fmt == "jsonl":
        pairs = list(iter_jsonl(path))
        return [r for _, r in pairs], [f"line {i}" for i, _ in pairs]
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MalformedInputError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedInputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return [obj], [""]


def table_rows(records: list[dict], labels: list[str], spec: SuiteSpec) -> tuple[list[dict], list[str]]:
    if not spec.rows:
        return [flatten(r, spec.keep_objects) for r in records], labels
    rows: list[dict] = []
    out_labels: list[str] = []
    for rec, label in zip(records, labels):
        items = _dig(rec, spec.rows)
        if isinstance(items, dict):
            for k, v in items.items():
                row = flatten(v, spec.keep_objects) if isinstance(v, dict) else {"value": v}
                rows.append({spec.row_key or "key": k, **row})
                out_labels.append(f"{spec.rows}[{k!r}]")
        elif isinstance(items, list):
            for i, v in enumerate(items):
                rows.append(flatten(v, spec.keep_objects) if isinstance(v, dict) else {"value": v})
                out_labels.append(f"{spec.rows}[{i}]")
    return rows, out_labels


def detect_artifact_type(path: Path, suites: Sequence[SuiteSpec]) -> str | None:
    """By file name first, then by the ``artifact_type`` the content declares."""
    by_name = suite_for_name(path.name, suites)
    if by_name:
        return by_name
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                first = json.loads(next((ln for ln in f if ln.strip()), "{}"))
            declared = first.get("artifact_type") or _dig(first, "metadata.artifact_type") or _dig(first, "provenance.artifact_type")
        elif path.suffix == ".json":
            declared = json.loads(path.read_text(encoding="utf-8")).get("artifact_type")
        else:
            return None
    except (ValueError, OSError, AttributeError):
        return None
    return declared if declared in ARTIFACT_TYPES else None


# -- Great Expectations ------------------------------------------------------------------------------------


class _GX:
    """One ephemeral context and one dataframe asset per process: context setup is the slow part."""

    _instance: "_GX | None" = None

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("cai_bootstrap_artifacts").add_dataframe_asset("artifact")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        self._suites: dict[Path, Any] = {}

    @classmethod
    def get(cls) -> "_GX":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def suite(self, spec: SuiteSpec):
        if spec.path not in self._suites:
            d = spec.definition
            try:
                self._suites[spec.path] = self.gx.ExpectationSuite(name=d["name"], expectations=d["expectations"], meta=d.get("meta", {}))
            except Exception as e:  # GX raises its own exception types for bad configurations
                raise ValidationSetupError(f"{spec.path}: invalid suite: {e}") from None
        return self._suites[spec.path]

    def validate(self, rows: list[dict], spec: SuiteSpec) -> tuple[Any, int, list]:
        """(table, expectations run, results of the failed ones with examples).

        GX's cost is per expectation, and collecting unexpected values roughly doubles
        it, so the whole suite runs pass/fail only and just the failures run again in detail.
        """
        import pandas as pd

        df = pd.DataFrame(rows, dtype=object)
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": df})
        quick = batch.validate(self.suite(spec), result_format="BOOLEAN_ONLY")
        failed = [r.expectation_config.to_json_dict() for r in quick.results if not r.success]
        if not failed:
            return df, len(quick.results), []
        for e in failed:
            e.pop("id", None)
            e.get("kwargs", {}).pop("batch_id", None)
        detail_suite = self.gx.ExpectationSuite(name=f"{spec.name}-failures", expectations=failed)
        detail = batch.validate(detail_suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": _MAX_EXAMPLES})
        return df, len(quick.results), [r for r in detail.results if not r.success]


def _short(v: Any, width: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= width else s[: width - 3] + "..."


def _describe(res, labels: list[str]) -> str:
    """What went wrong, where (line numbers or row keys), with a few offending values."""
    r = res.result or {}
    if r.get("unexpected_count"):
        shown = [labels[i] for i in (r.get("partial_unexpected_index_list") or [])[:_MAX_EXAMPLES] if isinstance(i, int) and i < len(labels)]
        where = f" at {', '.join(shown)}" if any(shown) else ""
        count = f"{r['unexpected_count']} of {r.get('element_count', '?')} value(s)"
        if res.expectation_config.type == "expect_column_values_to_not_be_null":
            return f"{count} missing or null{where}"
        examples = ", ".join(_short(v) for v in (r.get("partial_unexpected_list") or [])[:_MAX_EXAMPLES])
        return f"{count} unexpected, e.g. {examples}{where}"
    if res.expectation_config.type == "expect_table_row_count_to_be_between":
        return f"{r.get('observed_value')} row(s)"
    if "observed_value" in r:
        return f"observed {_short(r['observed_value'])}"
    info = res.exception_info or {}
    msgs = [v.get("exception_message") for v in info.values() if isinstance(v, dict)] or [info.get("exception_message")]
    msgs = [m for m in msgs if m]
    return f"could not be evaluated: {msgs[0]}" if msgs else "failed"


_EXISTENCE = ("expect_table_columns_to_match_set", "expect_column_to_exist")


def _columns_of(kwargs: dict) -> list[str]:
    return [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs] + list(kwargs.get("column_list", []))


def run_suite(spec: SuiteSpec, records: list[dict], labels: list[str]) -> tuple[int, int, list[Failure]]:
    """(rows, expectations run, failures); checks of a missing column are folded into its one failure."""
    rows, row_labels = table_rows(records, labels, spec)
    df, n_checks, failed = _GX.get().validate(rows, spec)
    present = set(df.columns)
    failures: list[Failure] = []
    for res in failed:
        cfg = res.expectation_config
        kwargs = dict(cfg.kwargs)
        clause = (cfg.meta or {}).get("clause")
        if cfg.type in _EXISTENCE:
            if not rows:
                continue  # an empty table has no columns; the row-count expectation says so once
            wanted = kwargs.get("column_set") or [kwargs.get("column")]
            for c in wanted:
                if c not in present:
                    failures.append(Failure(spec.name, cfg.type, c, clause, f"field {c!r} is absent from every row"))
            continue
        cols = _columns_of(kwargs)
        if any(c not in present for c in cols):
            continue  # already reported by the existence check, once per column
        failures.append(Failure(spec.name, cfg.type, ", ".join(cols) or None, clause, _describe(res, row_labels)))
    if failed and not failures:  # folding must never hide that GX said no
        failures.append(Failure(spec.name, failed[0].expectation_config.type, None, None, "no rows to check" if not rows else "failed"))
    # A value of the wrong type also breaks that column's range and set checks; the type failure says it all.
    mistyped = {f.column for f in failures if f.expectation == "expect_column_values_to_be_in_type_list"}
    failures = [f for f in failures if not (f.column in mistyped and f.detail.startswith("could not be evaluated"))]
    failures.sort(key=lambda f: (f.column or "", f.expectation))
    return len(rows), n_checks, failures


# -- entry points ----------------------------------------------------------------------------------------------


def validate_file(path: str | os.PathLike, *, artifact_type: str | None = None, suites: Sequence[SuiteSpec] | None = None) -> FileReport:
    path = Path(path)
    suites = list(suites) if suites is not None else load_suites()
    kind = artifact_type or detect_artifact_type(path, suites)
    report = FileReport(path, kind)
    if not path.is_file():
        report.error = "no such file"
        return report
    if kind is None:
        known = sorted({s.artifact_type for s in suites})
        report.error = f"no suite matches this file; name its type with --type ({', '.join(known)})"
        return report
    chosen = [s for s in suites if s.artifact_type == kind]
    if not chosen:
        report.error = f"no suite for artifact type {kind!r}"
        return report
    try:
        records, labels = read_records(path, chosen[0].format)
    except (MalformedInputError, OSError, UnicodeDecodeError) as e:
        report.error = str(e)
        return report
    report.n_rows = len(records)
    for spec in chosen:
        _, n_checks, failures = run_suite(spec, records, labels)
        report.suites.append(spec.name)
        report.n_checks += n_checks
        report.failures.extend(failures)
    return report


def _candidates(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl") and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


MANIFEST_HASHES = "manifest_hashes"


def manifest_hash_reports(directory: Path) -> list[FileReport]:
    """PV-07: every manifest in a run directory, its listed files compared with their hashes.

    The suites check what the files say; this checks that they are still the files the
    phase wrote (a dataset deleted or edited after its run passes the suites). Run by
    `validate RUN_DIR`; the suites alone also serve sample files that are no run.
    """
    from cai_bootstrap.integrity import manifest_problems, manifests_in

    reports = []
    for manifest in manifests_in(directory):
        problems = manifest_problems(manifest)
        reports.append(FileReport(manifest, MANIFEST_HASHES, n_checks=1,
                                  error="; ".join(problems) if problems else None))
    return reports


def validate_paths(
    paths: Iterable[str | os.PathLike],
    *,
    artifact_type: str | None = None,
    suites_path: str | os.PathLike | None = None,
) -> list[FileReport]:
    """Validate files and run directories.

    In a directory every ``.json``/``.jsonl`` file whose name or declared ``artifact_type``
    a suite claims is checked; other files (work files, rejects) are left alone.
    ``artifact_type`` applies to the files named directly.
    """
    suites = load_suites(suites_path)
    reports: list[FileReport] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = []
            for f in _candidates(p):
                kind = detect_artifact_type(f, suites)  # a folder mixes types; --type is for named files
                if kind:
                    found.append(validate_file(f, artifact_type=kind, suites=suites))
            if not found:
                found.append(FileReport(p, artifact_type, error="no artifact files that a suite applies to"))
            reports.extend(found)
        else:
            reports.append(validate_file(p, artifact_type=artifact_type, suites=suites))
    return reports
