"""PV-07 at decision time: a gate re-derives the numbers it decides on from the per-item results.

An evaluation folder's files are pinned by its manifest, but a summary edited together with
re-pinned hashes is self-consistent. So the final gate does not read p-values and lifts from
the summary: it re-runs each item's verifier on the recorded response (against the eval set the
evaluation recorded, checked by its hash), recomputes the paired statistics with the recorded
statistics settings, and refuses a summary whose decision-relevant numbers differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from cai_bootstrap.evaluation import statistics as st
from cai_bootstrap.evaluation.evalset import DEFAULT_EVAL_SET, load_eval_set
from cai_bootstrap.evaluation.report import COMPARISON_MODE, ITEMS_FILE, MANIFEST_FILE, StatsConfig, paired_comparison
from cai_bootstrap.evaluation.runner import BASE, SFT
from cai_bootstrap.evaluation.verifiers import verify
from cai_bootstrap.integrity import IntegrityError, verify_eval_output
from cai_bootstrap.io_utils import iter_jsonl, read_text_file, sha256_file

# Numbers are recomputed by the same code from the same inputs; only float noise may differ.
TOLERANCE = 1e-9


def _stats_config(summary: Mapping) -> StatsConfig:
    meta = summary.get("metadata") if isinstance(summary, Mapping) else None
    if not isinstance(meta, Mapping):
        raise IntegrityError("eval_summary.json has no metadata block; rerun `cai-bootstrap evaluate`")
    try:
        cfg = StatsConfig(confidence=float(meta["confidence_level"]), bootstrap_samples=int(meta["bootstrap_samples"]),
                          seed=int(meta["seed"]), exact_below=int(meta.get("exact_binomial_below", st.EXACT_BELOW)),
                          fdr=float(meta.get("fdr", st.DEFAULT_FDR)))
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"eval_summary.json metadata lacks a usable statistics setting ({e}); rerun `cai-bootstrap evaluate`") from None
    if not 0.0 < cfg.confidence < 1.0 or not 0.0 < cfg.fdr < 1.0 or not 1 <= cfg.bootstrap_samples <= 1_000_000 or cfg.exact_below < 0:
        raise IntegrityError(f"eval_summary.json metadata holds out-of-range statistics settings {cfg}; rerun `cai-bootstrap evaluate`")
    return cfg


def _eval_items(folder: Path) -> dict[str, dict]:
    manifest = json.loads(read_text_file(folder / MANIFEST_FILE))
    recorded = manifest.get("eval_set") if isinstance(manifest, Mapping) else None
    if not isinstance(recorded, Mapping) or not recorded.get("path") or not recorded.get("sha256"):
        raise IntegrityError(f"{folder / MANIFEST_FILE} does not record the eval set it used; rerun `cai-bootstrap evaluate`")
    path = Path(recorded["path"])
    if not path.is_file() and DEFAULT_EVAL_SET.is_file() and sha256_file(DEFAULT_EVAL_SET) == recorded["sha256"]:
        path = DEFAULT_EVAL_SET  # the shipped set, now installed elsewhere (a new environment), same content
    if not path.is_file():
        raise IntegrityError(f"the eval set this evaluation used, {path}, is gone, so its results cannot be re-verified; "
                             "restore it or rerun `cai-bootstrap evaluate`")
    if sha256_file(path) != recorded["sha256"]:
        raise IntegrityError(f"the eval set {path} changed since this evaluation used it; rerun `cai-bootstrap evaluate`")
    return {it["id"]: it for it in load_eval_set(path)}


def reverified_records(folder: str | Path) -> list[dict]:
    """The per-item records of an evaluation folder, each one's success re-decided by its verifier."""
    folder = Path(folder)
    items_path = verify_eval_output(folder, ITEMS_FILE)
    items = _eval_items(folder)
    records = []
    for lineno, rec in iter_jsonl(items_path):
        item = items.get(rec.get("id")) if isinstance(rec, Mapping) else None
        if item is None:
            raise IntegrityError(f"{items_path}:{lineno}: item {rec.get('id') if isinstance(rec, Mapping) else rec!r} "
                                 "is not in the eval set this evaluation recorded")
        result = verify(str(rec.get("response", "")), item["verifier"], instruction=item["instruction"],
                        hit_limit=bool(rec.get("hit_limit")))
        if result.passed != rec.get("success"):
            raise IntegrityError(f"{items_path}:{lineno}: item {rec['id']} ({rec.get('model')}/{rec.get('mode')}) records "
                                 f"success {rec.get('success')!r} but its verifier now says {result.passed} "
                                 f"({result.reason}): the per-item file was edited, or it was judged by other verifiers "
                                 "than this version's; rerun `cai-bootstrap evaluate`")
        records.append({**rec, "type": item["type"], "category": item["category"]})
    return records


def _differs(a, b) -> bool:
    try:
        return not math.isclose(float(a), float(b), rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    except (TypeError, ValueError):
        return a != b


def recomputed_comparison(folder: str | Path, summary: Mapping, *, first: str = BASE, second: str = SFT,
                          recorded: Mapping | None = None) -> dict:
    """A final gate's inputs (overall and by-type blocks of ``second`` against ``first``) recomputed from the
    per-item file; refuses a summary whose p-value, lift, discordant counts or per-type intervals differ.
    ``recorded``: the summary's block for this comparison (default: the summary's own top level)."""
    records = reverified_records(folder)
    base = [r for r in records if r.get("model") == first and r.get("mode") == COMPARISON_MODE]
    sft = [r for r in records if r.get("model") == second and r.get("mode") == COMPARISON_MODE]
    if not base or [(r["id"], r.get("prompt")) for r in base] != [(r["id"], r.get("prompt")) for r in sft]:
        raise IntegrityError(f"{Path(folder) / ITEMS_FILE}: {first} and {second} records are not paired; rerun the evaluation")
    fresh = paired_comparison(base, sft, _stats_config(summary))
    problems = []
    summary = recorded if recorded is not None else summary
    overall = summary.get("overall") if isinstance(summary.get("overall"), Mapping) else {}
    for key in ("n", "mcnemar_p", "lift", "base_rate", "sft_rate"):
        if _differs(overall.get(key), fresh["overall"][key]):
            problems.append(f"overall.{key} {overall.get(key)!r} (per-item file: {fresh['overall'][key]!r})")
    if (overall.get("discordant") or {}) != fresh["overall"]["discordant"]:
        problems.append(f"overall.discordant {overall.get('discordant')!r} (per-item file: {fresh['overall']['discordant']!r})")
    by_type = summary.get("by_type") if isinstance(summary.get("by_type"), Mapping) else {}
    if sorted(by_type) != sorted(fresh["by_type"]):
        problems.append(f"types {sorted(by_type)} (per-item file: {sorted(fresh['by_type'])})")
    for name, block in fresh["by_type"].items():
        mine = by_type.get(name) if isinstance(by_type.get(name), Mapping) else {}
        for key in ("category", "base_ci", "sft_ci"):
            want, got = block[key], mine.get(key)
            if key == "category" and got != want or key != "category" and (
                    not isinstance(got, (list, tuple)) or len(got) != 2 or any(_differs(x, y) for x, y in zip(got, want))):
                problems.append(f"by_type.{name}.{key} {got!r} (per-item file: {want!r})")
    if problems:
        raise IntegrityError(f"{Path(folder) / 'eval_summary.json'} disagrees with the per-item results it summarises: "
                             + "; ".join(problems[:6]) + "; the summary was edited, or made by another version's statistics: "
                             "rerun `cai-bootstrap evaluate`")
    return fresh
