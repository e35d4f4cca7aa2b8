"""The pair data gate: the SFT data gate (SFT-01) with the pairs run's files, suite, QC and schema.

Before any model loads, DPO training checks the pairs run exactly as SFT checks a
generation run (manifest, hashes, QC verdict re-derived, thresholds not loosened,
Great Expectations suite) and every record against the pair schema, including that its
prompt is the PR-01 rendering of its instruction.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai_bootstrap.preference.qc import PairQCThresholds, loosened_pair_thresholds, read_pair_qc_decision, thresholds_from
from cai_bootstrap.preference.schema import PAIR_QC_FILE, PAIRS_FILE, check_pair_records
from cai_bootstrap.provenance import PREFERENCE_PAIRS
from cai_bootstrap.sft.data_gate import DataGateError, DataGateSpec


def check_pair_thresholds(qc_path: Path, manifest: Path, required: PairQCThresholds | None) -> str:
    """The recorded pair-QC thresholds against the required ones and the run's own configuration."""
    summary = json.loads(qc_path.read_text(encoding="utf-8"))
    recorded = thresholds_from(summary["thresholds"])  # read_pair_qc_decision has validated them
    references = {"required": required if required is not None else PairQCThresholds()}
    run_qc = (json.loads(manifest.read_text(encoding="utf-8")).get("config") or {}).get("qc")
    if isinstance(run_qc, dict):
        try:
            references["the run's configuration"] = thresholds_from(run_qc)
        except (TypeError, ValueError) as e:
            raise DataGateError("qc_thresholds", f"{manifest}: its config.qc is malformed ({e}); regenerate the pairs") from None
    problems = [f"{line} ({what})" for what, ref in references.items() for line in loosened_pair_thresholds(recorded, ref)]
    if problems:
        raise DataGateError("qc_thresholds", f"{qc_path} was judged under loosened pair QC thresholds: {'; '.join(problems)}. "
                            "Fix: regenerate the pairs under the required thresholds.")
    return "recorded thresholds are no looser than " + " and ".join(references)


PAIRS_GATE = DataGateSpec(
    dataset_file=PAIRS_FILE,
    qc_file=PAIR_QC_FILE,
    artifact_type=PREFERENCE_PAIRS,
    read_qc=read_pair_qc_decision,
    check_thresholds=check_pair_thresholds,
    check_records=check_pair_records,
    producer="pair generation (cai-bootstrap pairs)",
)
