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
from cai_bootstrap.screening import record_problems

# What the training data gate screens in a pair (screening.py): the prompt's instruction and both answers.
SCREENED_FIELDS = {"instruction": "instruction", "chosen": "response", "rejected": "response"}
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
    check_records=lambda records: check_pair_records(records) + record_problems(records, SCREENED_FIELDS),
    producer="pair generation (cai-bootstrap pairs)",
)


# -- the chain's pairs gate (GT-01 for pairs): suite + pair QC, as a gate manifest ------------------------

PAIRS_GATE_NAME = "pairs_gate"
PAIRS_GATE_INPUTS = {"pair_qc_summary": PAIR_QC_FILE, "pairs": PAIRS_FILE, "session_manifest": "session_manifest.json"}


def decide_pairs(summary: dict, *, qc_passed: bool, qc_reasons: list[str], validation_failures: list[str],
                 loosened: list[str], required: PairQCThresholds | None = None):
    """The pairs gate over what the pairs run recorded: its QC verdict (read, never recomputed), the
    Great Expectations results of its files (PV-06), and that its thresholds were not loosened."""
    from cai_bootstrap.gates import Check, GateDecision

    checks = (
        Check("pair_qc_thresholds", qc_passed, "all pair QC thresholds passed" if qc_passed else "pair QC failed: " + "; ".join(qc_reasons)),
        Check("expectations", not validation_failures,
              "Great Expectations suites passed" if not validation_failures
              else f"{len(validation_failures)} validation failure(s): " + "; ".join(validation_failures[:5])),
        Check("pair_qc_thresholds_required", not loosened,
              "pair QC thresholds at least as strict as the required ones" if not loosened
              else "pair QC judged under loosened thresholds: " + "; ".join(loosened)),
    )
    values = {"qc_thresholds_passed": qc_passed, "qc_failed_reasons": list(qc_reasons), "counts": summary.get("counts"),
              "shares": summary.get("shares"), "margin_gap": summary.get("margin_gap"),
              "length_ratio": summary.get("length_ratio"), "validation_failures": list(validation_failures)}
    thresholds = {**(summary.get("thresholds") or {}), "required": (required or PairQCThresholds()).to_dict()}
    return GateDecision(PAIRS_GATE_NAME, "PO-01/PO-02/PV-06", thresholds, values, checks)


def run_pairs_gate(run_dir: str | Path, *, out: str | Path, required: PairQCThresholds | None = None):
    """The pairs gate on a finished pairs run (what `cai-bootstrap validate RUN` checks, plus its QC); writes the manifest."""
    from cai_bootstrap.gates import GateInputError, write_gate_manifest
    from cai_bootstrap.validation import validate_paths

    run = Path(run_dir)
    missing = [name for name in PAIRS_GATE_INPUTS.values() if not (run / name).is_file()]
    if missing:
        raise GateInputError(f"{run} lacks {', '.join(missing)}; is it a finished `cai-bootstrap pairs` run?")
    qc_path = run / PAIR_QC_FILE
    qc_passed, qc_reasons = read_pair_qc_decision(qc_path)
    summary = json.loads(qc_path.read_text(encoding="utf-8"))
    loosened = loosened_pair_thresholds(thresholds_from(summary["thresholds"]), required or PairQCThresholds())
    failures = [r.format() for r in validate_paths([run]) if not r.ok]
    decision = decide_pairs(summary, qc_passed=qc_passed, qc_reasons=qc_reasons, validation_failures=failures,
                            loosened=loosened, required=required)
    return decision, write_gate_manifest(decision, out, inputs={k: run / v for k, v in PAIRS_GATE_INPUTS.items()})
