"""Stage 2's evaluation: base, Stage-1 and Stage-2 models on the same held-out items, paired.

The same runner as Stage 1 (:func:`~cai_bootstrap.evaluation.runner.evaluate_models`: one
model resident at a time, greedy, the canonical frame) and the same statistics
(Wilson CIs, exact McNemar on few discordant pairs, bootstrap lift CI, per-type BH), over
three pairs of arms: Stage 2 vs Stage 1 (what the gate judges: did DPO add anything),
Stage 2 vs base and Stage 1 vs base (the whole way so far, and Stage 1's result re-measured
on these items). In every comparison block ``base_*`` is the first model named and
``sft_*`` the second, as in Stage 1's summary.

The summary also names the Stage-2 model under ``metadata.models.sft``, the key the next
stage's :func:`~cai_bootstrap.stages.registry.resolve_input_model` reads.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from cai_bootstrap.evaluation.report import (
    ITEMS_FILE,
    MANIFEST_FILE,
    RATES_FILE,
    SUMMARY_FILE,
    StatsConfig,
    paired_comparison,
    compact_model,
    build_rates,
)
from cai_bootstrap.evaluation.runner import BASE, FRAMED, SFT, EvalDecoding, EvalRun, evaluate_models
from cai_bootstrap.stages.stage2_gate import JUDGED, STAGE1, STAGE1_VS_BASE, STAGE2, STAGE2_VS_BASE, STAGE2_VS_STAGE1

MODELS = (BASE, STAGE1, STAGE2)  # the order they load in, and the arms' order in reports
SCHEMA = "cai_bootstrap.stage2_eval_summary/v1"
# comparison -> (first model, second model): lift = second - first
PAIRS = {STAGE2_VS_STAGE1: JUDGED, STAGE2_VS_BASE: (BASE, STAGE2), STAGE1_VS_BASE: (BASE, STAGE1)}


def paired_records(run: EvalRun, labels: Sequence[str] = MODELS, mode: str = FRAMED) -> dict[str, list[dict]]:
    """Each model's records in ``mode``, checked to be the same items with the same prompts in the same order (EV-02)."""
    recs = {label: run.outcomes(label, mode) for label in labels}
    keys = {label: [(r["id"], r["prompt"]) for r in rs] for label, rs in recs.items()}
    first = keys[labels[0]]
    if not first:
        raise ValueError(f"no {labels[0]} records in mode {mode!r}")
    unpaired = [label for label in labels if keys[label] != first]
    if unpaired:
        raise ValueError(f"models {unpaired} did not answer the same items with the same prompts as {labels[0]} in mode {mode!r}")
    return recs


def three_way_summary(run: EvalRun, cfg: StatsConfig, *, eval_set: dict) -> dict:
    """Arms with Wilson CIs and the three paired comparisons (PV-04 blocks each)."""
    from cai_bootstrap.evaluation import statistics as st
    from cai_bootstrap.provenance import utc_now

    recs = paired_records(run)
    arms = {}
    for label in MODELS:
        k, n = sum(bool(r["success"]) for r in recs[label]), len(recs[label])
        arms[label] = {"model": label, "mode": FRAMED, "n": n, "successes": k, "rate": k / n, "ci": list(st.wilson_ci(k, n, cfg.confidence))}
    models = {label: compact_model(p) for label, p in run.models.items()}
    return {
        "schema": SCHEMA,
        "arms": arms,
        "comparisons": {name: {"first": a, "second": b, **paired_comparison(recs[a], recs[b], cfg)} for name, (a, b) in PAIRS.items()},
        "metadata": {
            "confidence_level": cfg.confidence, "bootstrap_samples": cfg.bootstrap_samples, "seed": cfg.seed, "fdr": cfg.fdr,
            "exact_binomial_below": cfg.exact_below, "decoding": run.decoding.as_provenance(), "comparison_mode": FRAMED,
            "pairing": "same items, same prompts, base then stage 1 then stage 2", "eval_set": eval_set,
            "models": {**models, SFT: models[STAGE2]}, "created": utc_now(),
        },
    }


def evaluate_three_way(items: Sequence[dict], factories: dict[str, Callable[[], Any]], out: str | Path, *,
                       decoding: EvalDecoding, stats: StatsConfig, eval_set: dict, progress: bool | None = None) -> dict:
    """Run the three models (``factories``: label -> loader, for every label of :data:`MODELS`) and write the outputs."""
    from cai_bootstrap.io_utils import atomic_write_json, atomic_write_jsonl, sha256_file
    from cai_bootstrap.provenance import git_info, utc_now

    missing = [m for m in MODELS if m not in factories]
    if missing:
        raise ValueError(f"the Stage-2 evaluation needs a loader for each of {list(MODELS)}; missing {missing}")
    run = evaluate_models(items, [(m, factories[m]) for m in MODELS], modes=(FRAMED,), decoding=decoding, progress=progress)
    summary = three_way_summary(run, stats, eval_set=eval_set)
    out = Path(out)
    paths = {"items": atomic_write_jsonl(out / ITEMS_FILE, run.records),
             "rates": atomic_write_json(out / RATES_FILE, build_rates(run, stats.confidence)),
             "summary": atomic_write_json(out / SUMMARY_FILE, summary)}
    atomic_write_json(out / MANIFEST_FILE, {
        "artifact_type": "evaluation", "created": utc_now(), "git": git_info(), "eval_set": eval_set, "modes": [FRAMED],
        "decoding": decoding.as_provenance(), "statistics": asdict(stats), "models": run.models, "timings_s": run.timings,
        "outputs": {k: {"path": p.name, "sha256": sha256_file(p)} for k, p in paths.items()}})
    return summary
