"""A pairs run directory: pairs, rejects and QC summary, then the manifest that pins them (PV-05).

Laid out like a Stage-1 generation run, so the same tools read it: ``cai-bootstrap
validate RUN`` checks every file against its suite and the data gate checks the
manifest's hashes before training reads a pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from cai_bootstrap.io_utils import atomic_write_json, atomic_write_jsonl
from cai_bootstrap.preference.schema import PAIR_QC_FILE, PAIR_REJECTS_FILE, PAIRS_FILE, PairSchemaError, check_pair_records
from cai_bootstrap.provenance import add_generated_artifact, new_session_manifest, utc_now, write_manifest

MANIFEST_FILE = "session_manifest.json"
RUN_FILES = (PAIRS_FILE, PAIR_REJECTS_FILE, PAIR_QC_FILE)


def write_pairs_run(out: str | Path, pairs: Sequence[Mapping[str, Any]], rejects: Sequence[Mapping[str, Any]],
                    summary: Mapping[str, Any], *, config: Mapping[str, Any], load_provenance: Mapping[str, Any] | None,
                    inputs: Sequence[Mapping[str, Any]] = (), started_at: str | None = None,
                    work_files: Sequence[Path] = ()) -> dict:
    """Write the run's files atomically and then its manifest; refuse records that break the schema."""
    problems = check_pair_records(pairs)
    if problems:
        raise PairSchemaError("refusing to write invalid pairs:\n  " + "\n  ".join(problems[:20]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / PAIRS_FILE, [dict(p) for p in pairs])
    atomic_write_jsonl(out / PAIR_REJECTS_FILE, [dict(r) for r in rejects])
    atomic_write_json(out / PAIR_QC_FILE, dict(summary))
    manifest = new_session_manifest(
        planned_artifacts=list(RUN_FILES),
        budgets={"pairs": len(pairs)},
        notes=[f"pair qc thresholds_passed={summary['thresholds_passed']}"],
        loader_version=(load_provenance or {}).get("loader_version"),
        extra={"config": dict(config), "load_provenance": dict(load_provenance or {}), "inputs": [dict(i) for i in inputs],
               "qc_passed": summary["thresholds_passed"], "n_records": len(pairs), "n_rejects": len(rejects)},
    )
    if started_at:
        manifest["started_at"] = started_at
    for name in RUN_FILES:
        add_generated_artifact(manifest, out / name, out)
    for p in work_files:
        add_generated_artifact(manifest, p, out, role="work")
    manifest["finished_at"] = utc_now()
    write_manifest(out / MANIFEST_FILE, manifest)
    return manifest
