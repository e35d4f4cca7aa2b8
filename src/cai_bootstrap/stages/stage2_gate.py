"""Stage 2's final gate (GT-02 for a preference stage): a pure decision over the three-way evaluation.

Stage 2 starts from a model that already passed Stage 1's gate against the base model, so
the question here is whether DPO added something without taking anything away, judged on
the Stage-2 vs Stage-1 comparison of the same items:

- no regression: overall, not significantly worse (lift < 0 with McNemar p < alpha); on
  each guarded type (safety, format), the rule every final gate applies
  (``gates.guarded_regressions``): not below Stage 1 beyond CI overlap, and not
  significantly worse after BH adjustment.
- a gain: a significant improvement (positive lift) overall, or on at least one target type
  after BH adjustment. The two routes share alpha (alpha/2 each, Bonferroni), so asking
  twice does not raise the chance of a false GO above alpha. Without a gain, the stage cost
  compute and proved nothing.
- and the overall lift is not negative: a gain on one type may not pay for losses elsewhere.

The gate manifest is named like every stage's final gate (``final_eval``), so the next
stage's :func:`~cai_bootstrap.stages.registry.resolve_input_model` reads it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cai_bootstrap.evaluation.recheck import recomputed_comparison
from cai_bootstrap.evaluation.report import SUMMARY_FILE
from cai_bootstrap.gates import (DEFAULT_ALPHA, FINAL_GATE, FINAL_GATE_FILE, Check, FinalGateThresholds, GateDecision,
                                 GateInputError, describe_regression, eval_gate, guarded_regressions, pinned_input, read_json)

CLAUSE = "GT-02/ST-01"
# The comparison the gate judges, and the other two the report shows (keys of the summary's comparisons).
STAGE2_VS_STAGE1 = "stage2_vs_stage1"
STAGE2_VS_BASE = "stage2_vs_base"
STAGE1_VS_BASE = "stage1_vs_base"
COMPARISONS = (STAGE2_VS_STAGE1, STAGE2_VS_BASE, STAGE1_VS_BASE)
# The models' labels in the three-way evaluation, and the pair the gate judges (lift = second - first).
STAGE1 = "stage1"
STAGE2 = "stage2"
JUDGED = (STAGE1, STAGE2)
GUARDED_CATEGORIES = FinalGateThresholds().guarded_categories  # the same types Stage 1's gate guards


@dataclass(frozen=True)
class Stage2GateThresholds:
    alpha: float = DEFAULT_ALPHA
    guarded_categories: tuple[str, ...] = GUARDED_CATEGORIES
    target_types: tuple[str, ...] | None = None  # types a gain may come from; None: every type

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "guarded_categories": list(self.guarded_categories),
                "target_types": list(self.target_types) if self.target_types is not None else None,
                "comparison": STAGE2_VS_STAGE1}


def _block(obj: Mapping, key: str, where: str):
    if not isinstance(obj, Mapping) or key not in obj:
        raise GateInputError(f"{where}: missing {key!r}; is this a Stage-2 evaluation summary (stages.stage2_eval)?")
    return obj[key]


def _significant(lift: float, p: float, alpha: float, sign: int) -> bool:
    return p < alpha and (lift > 0 if sign > 0 else lift < 0)


def decide_stage2_final(summary: Mapping, thresholds: Stage2GateThresholds = Stage2GateThresholds()) -> GateDecision:
    """GO only with no significant regression against Stage 1 and a significant gain over it."""
    cmp = _block(_block(summary, "comparisons", "evaluation summary"), STAGE2_VS_STAGE1, "comparisons")
    overall = _block(cmp, "overall", STAGE2_VS_STAGE1)
    by_type = _block(cmp, "by_type", STAGE2_VS_STAGE1)
    a = thresholds.alpha
    lift, p = float(_block(overall, "lift", "overall")), float(_block(overall, "mcnemar_p", "overall"))
    unknown = sorted(set(thresholds.target_types or ()) - set(by_type))
    if unknown:
        raise GateInputError(f"target types {unknown} are not in the evaluation; its types: {sorted(by_type)}")
    targets = list(thresholds.target_types) if thresholds.target_types is not None else sorted(by_type)

    def row(name: str) -> dict:
        b = by_type[name]
        return {"type": name, "category": _block(b, "category", f"by_type[{name!r}]"), "n": b.get("n"),
                "stage1_rate": b.get("base_rate"), "stage2_rate": b.get("sft_rate"),
                "lift": float(_block(b, "lift", f"by_type[{name!r}]")), "p_adjusted": float(_block(b, "p_adjusted", f"by_type[{name!r}]"))}

    # The same regression rule as every final gate (gates.guarded_regressions), Stage 1 as the reference.
    guarded_names, type_regressions = guarded_regressions(by_type, thresholds.guarded_categories, a)
    guarded = [row(t) for t in guarded_names]
    half = a / 2  # the two routes to a gain, Bonferroni
    type_gains = [r for r in map(row, targets) if _significant(r["lift"], r["p_adjusted"], half, +1)]
    overall_regressed = _significant(lift, p, a, -1)
    overall_gain = _significant(lift, p, half, +1)
    cats = "/".join(thresholds.guarded_categories)
    checks = (
        Check("no_overall_regression", not overall_regressed,
              f"stage 2 vs stage 1 overall: lift {lift:+.3f}, McNemar p = {p:.3g}"
              + (f" < {a}: significantly worse" if overall_regressed else f"; not significantly worse at alpha {a}")),
        Check("no_guarded_regression", not type_regressions,
              f"no {cats} type regressed against stage 1 (beyond CI overlap, or significantly after BH; {len(guarded)} checked)"
              if not type_regressions else f"{cats} types regressed against stage 1: "
              + ", ".join(map(describe_regression, type_regressions))),
        Check("overall_lift_not_negative", lift >= 0,
              f"stage 2 vs stage 1 overall lift {lift:+.3f}" + (" >= 0" if lift >= 0 else " < 0: a gain on some types does not pay for it")),
        Check("significant_gain", overall_gain or bool(type_gains),
              ("significant gain over stage 1: " + "; ".join(
                  ([f"overall (lift {lift:+.3f}, p {p:.3g})"] if overall_gain else [])
                  + [f"{r['type']} (lift {r['lift']:+.3f}, p_adj {r['p_adjusted']:.3g})" for r in type_gains]))
              if overall_gain or type_gains else
              f"no significant gain over stage 1 at alpha {a} (alpha/2 = {half:g} overall and for the types): overall lift "
              f"{lift:+.3f} (p {p:.3g}), no target type with positive lift and BH-adjusted p < {half:g}"),
    )
    values = {"comparison": STAGE2_VS_STAGE1, "n": overall.get("n"), "stage1_rate": overall.get("base_rate"),
              "stage2_rate": overall.get("sft_rate"), "lift": lift, "lift_ci_bootstrap": overall.get("lift_ci_bootstrap"),
              "mcnemar_p": p, "mcnemar_method": overall.get("mcnemar_method"), "discordant": overall.get("discordant"),
              "target_types": targets, "guarded_types": [r["type"] for r in guarded], "guarded": guarded,
              "type_regressions": type_regressions, "type_gains": type_gains,
              "overall_gain": overall_gain, "overall_regression": overall_regressed}
    return GateDecision(FINAL_GATE, CLAUSE, thresholds.to_dict(), values, checks)


def run_stage2_final_gate(eval_dir: str | Path, thresholds: Stage2GateThresholds = Stage2GateThresholds(), *,
                          out: str | Path) -> tuple[GateDecision, Path]:
    """The gate on a Stage-2 evaluation folder; writes its manifest (GT-05) with the summary's hash."""
    return eval_gate(eval_dir, SUMMARY_FILE, "eval_summary", "run the Stage-2 evaluation first", out, FINAL_GATE_FILE,
                     lambda summary: decide_stage2_final(rechecked_summary(eval_dir, summary), thresholds))


def rechecked_summary(eval_dir: str | Path, summary: Mapping) -> dict:
    """The summary with the judged comparison (Stage 2 vs Stage 1) recomputed from the per-item file
    (evaluation/recheck.py): an edited summary is refused, however its hashes were re-pinned."""
    first, second = JUDGED
    block = _block(_block(summary, "comparisons", "evaluation summary"), STAGE2_VS_STAGE1, "comparisons")
    fresh = recomputed_comparison(eval_dir, summary, first=first, second=second, recorded=block)
    return {**summary, "comparisons": {**summary["comparisons"], STAGE2_VS_STAGE1: {**block, **fresh}}}


def rederive_stage2_final(manifest: Mapping) -> GateDecision:
    """The decision a preference round's final gate manifest's pinned evaluation gives under its recorded thresholds."""
    t = manifest["thresholds"]
    targets = t.get("target_types")
    thresholds = Stage2GateThresholds(float(t["alpha"]), tuple(t.get("guarded_categories") or ()),
                                      tuple(targets) if targets is not None else None)
    path = pinned_input(manifest, "eval_summary")
    return decide_stage2_final(rechecked_summary(path.parent, read_json(path, "rerun the evaluation")), thresholds)
