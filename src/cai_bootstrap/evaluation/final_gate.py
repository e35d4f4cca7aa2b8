"""GT-02 on a paired evaluation folder, decided on numbers recomputed from its per-item results (PV-07).

The decision itself is the pure ``gates.decide_final``; what this module adds is where its inputs
come from: never the summary alone (a summary edited together with re-pinned hashes is
self-consistent), but the pinned per-item file, re-verified and recomputed (``recheck``). The same
holds when a later stage decides a recorded gate again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cai_bootstrap.evaluation.recheck import recomputed_comparison
from cai_bootstrap.evaluation.report import SUMMARY_FILE
from cai_bootstrap.gates import (FINAL_GATE_FILE, FinalGateThresholds, GateDecision, GateError, decide_final, eval_gate,
                                 pinned_input, read_json)


def decide_final_on_items(eval_dir: str | Path, summary: Mapping, thresholds: FinalGateThresholds) -> GateDecision:
    return decide_final({**summary, **recomputed_comparison(eval_dir, summary)}, thresholds)


def run_final_gate(eval_dir: str | Path, thresholds: FinalGateThresholds = FinalGateThresholds(), *,
                   out: str | Path | None = None) -> tuple[GateDecision, Path]:
    """GT-02 on a paired evaluation folder; writes the manifest (default ``EVAL/gate_final.json``)."""
    return eval_gate(eval_dir, SUMMARY_FILE, "eval_summary", "run `cai-bootstrap evaluate --adapter ...` (a paired evaluation) first",
                     out, FINAL_GATE_FILE, lambda summary: decide_final_on_items(eval_dir, summary, thresholds))


def rederive_final_gate(manifest: Mapping) -> GateDecision:
    """The decision a Stage-1 final gate manifest's pinned evaluation gives under its recorded thresholds."""
    t = manifest["thresholds"]
    thresholds = FinalGateThresholds(float(t["alpha"]), float(t["min_lift"]),
                                     tuple(t.get("guarded_categories") or FinalGateThresholds().guarded_categories))
    if not 0.0 < thresholds.alpha < 1.0 or not thresholds.min_lift >= 0.0:
        raise GateError(f"gate {manifest.get('gate')}: recorded thresholds out of range ({thresholds.to_dict()})")
    path = pinned_input(manifest, "eval_summary")
    return decide_final_on_items(path.parent, read_json(path, "rerun the evaluation"), thresholds)
