"""Builders shared by the SFT tests: a finished data-generation run directory, made the way the pipeline makes one."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cai_bootstrap.io_utils import atomic_write_json, atomic_write_jsonl
from cai_bootstrap.provenance import add_generated_artifact, new_session_manifest, record_metadata, sft_record, write_manifest
from cai_bootstrap.qc import QCThresholds, compute_qc_summary

from spec_tests.probe_support import INFORMATIVE_PROBES_AUROC, probe_results

DEFAULT_PAIRS = (
    ("Name a fruit that is yellow.", "A banana is yellow."),
    ("Give one word that rhymes with cat.", "Hat rhymes with cat."),
    ("Say how many legs a spider has.", "A spider has eight legs."),
    ("State the boiling point of water at sea level in Celsius.", "Water boils at 100 degrees Celsius."),
    ("Tell me the opposite of cold.", "The opposite of cold is hot."),
    ("Name the largest planet in our solar system.", "Jupiter is the largest planet."),
)


def _verdict(good: bool, margin: float = 2.8) -> dict:
    return {"is_good": good, "predicted_label": "A" if good else "B", "logp_a": -0.2 if good else -0.2 - margin,
            "logp_b": -0.2 - margin if good else -0.2, "margin": margin, "confident": True}


def make_records(pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS) -> list[dict]:
    md = record_metadata(
        script_name="tests",
        generation={"seed": 0, "temperature": 0.4, "max_new_tokens": 80, "do_sample": True},
        model_name="tiny-random",
        quantization="none",
        template_disabled=True,
        loader_version="test",
    )
    return [sft_record(i, r, instruction_critique=_verdict(True), pair_critique=_verdict(True), metadata=md) for i, r in pairs]


def make_generation_run(run_dir: str | Path, records: Sequence[dict] | None = None, *, qc_passed: bool = True,
                        run_block: dict | None = None) -> Path:
    """dataset.jsonl + qc_summary.json (computed by the QC code) + session_manifest.json pinning both;
    ``run_block``: the summary's run block (e.g. ``{"mode": "pilot", "target": 100}``)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    records = list(records) if records is not None else make_records()
    atomic_write_jsonl(run / "dataset.jsonl", records)
    n = len(records)
    summary = compute_qc_summary(
        instruction_verdicts=[_verdict(qc_passed)] * n,
        responses=[{"delimiter_found": True, "heuristic_cutoff": False, "hit_token_limit": False, "reason": None}] * n,
        # Margins vary, as a critic that reads the pairs gives them (QC-09 fails a constant margin).
        pair_verdicts=[_verdict(True, 2.0 + 0.3 * i) for i in range(n)],
        kept_response_tokens=[8] * n,
        kept_responses=[r["response"] for r in records],
        drop_reasons={},
        sentinels_ok=True,
        thresholds=QCThresholds(),
        critic_probes=probe_results(INFORMATIVE_PROBES_AUROC),
    )
    assert summary["thresholds_passed"] is qc_passed
    if run_block is not None:
        summary["run"] = dict(run_block)
    atomic_write_json(run / "qc_summary.json", summary)
    manifest = new_session_manifest(planned_artifacts=["dataset.jsonl", "qc_summary.json"])
    for name in ("dataset.jsonl", "qc_summary.json"):
        add_generated_artifact(manifest, run / name, run)
    write_manifest(run / "session_manifest.json", manifest)
    return run


def no_expectation_failures(path: Path) -> list[str]:
    """Stands in for the Great Expectations suite where a test is about something else."""
    return []
