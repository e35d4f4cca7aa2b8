"""`validate`: check artifact files or run directories against the Great Expectations suites (PV-06).

Kept free of torch imports so a CI job with only the ``validate`` extra can run it.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="validate artifacts (dataset.jsonl, qc_summary.json, manifests, eval output, preference pairs)",
        description="Validate artifact files or run directories with the shipped Great Expectations suites. "
        "Exit status 0: all passed; 1: some expectation failed or a file could not be read; 2: usage error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="artifact files or run directories")
    p.add_argument("--type", dest="artifact_type", help="artifact type of the files named (default: by file name or their artifact_type field)")
    p.add_argument("--suites-dir", help="folder of suite JSON files (default: the suites shipped in the package, cai_bootstrap/data/expectations/)")
    p.add_argument("--quiet", action="store_true", help="print failures only")
    p.set_defaults(func=_validate)


def _validate(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.provenance import ARTIFACT_TYPES
    from cai_bootstrap.validation import ValidationSetupError, manifest_hash_reports, validate_paths

    if args.artifact_type and args.artifact_type not in ARTIFACT_TYPES:
        raise CLIError(f"unknown --type {args.artifact_type!r}; known: {', '.join(ARTIFACT_TYPES)}")
    try:
        reports = validate_paths(args.paths, artifact_type=args.artifact_type, suites_path=args.suites_dir)
    except ValidationSetupError as e:
        raise CLIError(str(e)) from None
    # PV-07: a run directory's files must also still be the ones its manifests pinned.
    reports += [r for p in args.paths if Path(p).is_dir() for r in manifest_hash_reports(Path(p))]
    bad = [r for r in reports if not r.ok]
    for r in reports:
        if not (args.quiet and r.ok):
            print(r.format())
    print(f"{len(reports) - len(bad)} of {len(reports)} file(s) passed" + (f"; {len(bad)} failed" if bad else ""))
    return 1 if bad else 0
