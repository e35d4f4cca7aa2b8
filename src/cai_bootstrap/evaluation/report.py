"""Evaluation outputs (EV-06, PV-04): summary JSON, rates, per-item JSONL, text, Markdown, chart.

Everything a reader needs to check a claimed improvement is written next to it: every
item's raw response and verdict, the rates with their intervals, the paired tests, and
a one-line GO / NO-GO taken from the same gate function ``cai-bootstrap gate`` uses.
All files are written atomically, and a manifest records their hashes last, so a
folder with a manifest is complete.

Files in the output folder:
- ``items.jsonl``: one record per (model, mode, item), raw response included;
- ``rates.json``: success rate, Wilson CI, truncation and continuation rates per model
  and prompt mode, overall and per type;
- ``eval_summary.json``: the paired comparison (PV-04), trained vs base, framed prompts
  (``overall``/``by_type``/``bh``, what GT-02 decides on), the same blocks for trained vs
  the base model in context (``vs_incontext``, EV-08) and each arm's rate (``arms``);
  written only when both models were evaluated;
- ``summary.txt``, ``report.md``, ``rates.png``: the same numbers for people;
- ``eval_manifest.json``: inputs, models, decoding, statistics settings, output hashes.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from cai_bootstrap import gates
from cai_bootstrap.evaluation import statistics as st
from cai_bootstrap.evaluation.runner import BASE, FRAMED, INCONTEXT, SFT, EvalRun, build_prompt
from cai_bootstrap.prompts import DEFAULT_N_DEMONSTRATIONS
from cai_bootstrap.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_file
from cai_bootstrap.provenance import utc_now

ITEMS_FILE = "items.jsonl"
RATES_FILE = "rates.json"
SUMMARY_FILE = "eval_summary.json"
TEXT_FILE = "summary.txt"
REPORT_FILE = "report.md"
CHART_FILE = "rates.png"
MANIFEST_FILE = "eval_manifest.json"
OUTPUT_FILES = (ITEMS_FILE, RATES_FILE, SUMMARY_FILE, TEXT_FILE, REPORT_FILE, CHART_FILE, MANIFEST_FILE)
COMPARISON_MODE = FRAMED
SUMMARY_SCHEMA = "cai_bootstrap.eval_summary/v2"
# EV-08: the three arms, each a (model, prompt mode), in the order reports list them.
ARMS = {
    "base_zero_shot": (BASE, FRAMED),
    "base_incontext": (BASE, INCONTEXT),
    "trained_zero_shot": (SFT, FRAMED),
}
ARM_NAMES = {"base_zero_shot": "base zero-shot", "base_incontext": "base in-context", "trained_zero_shot": "trained zero-shot"}
# Above this share of responses cut by max_new_tokens, the verdicts may reflect truncation.
TRUNCATION_WARN_RATE = 0.05


@dataclass(frozen=True)
class StatsConfig:
    confidence: float = st.DEFAULT_CONFIDENCE
    bootstrap_samples: int = st.DEFAULT_BOOTSTRAP_SAMPLES
    seed: int = 0
    fdr: float = st.DEFAULT_FDR
    exact_below: int = st.EXACT_BELOW


def _rate_block(recs: Sequence[dict], confidence: float) -> dict:
    n = len(recs)
    k = sum(bool(r["success"]) for r in recs)
    return {
        "n": n,
        "successes": k,
        "rate": k / n if n else 0.0,
        "ci": list(st.wilson_ci(k, n, confidence)),
        "hit_limit_rate": sum(r["hit_limit"] for r in recs) / n if n else 0.0,
        "continued_rate": sum(r["continued"] for r in recs) / n if n else 0.0,
        "mean_tokens": sum(r["tokens_generated"] for r in recs) / n if n else 0.0,
        "failure_reasons": dict(sorted(Counter(r["reason"] for r in recs if not r["success"]).items())),
    }


def build_rates(run: EvalRun, confidence: float = st.DEFAULT_CONFIDENCE) -> dict:
    """Success rates for every evaluated (model, mode), overall and per type, with categories."""
    models: dict[str, dict] = {}
    for label in run.models:
        models[label] = {}
        for mode in run.modes_of(label):
            recs = run.outcomes(label, mode)
            types = sorted({r["type"] for r in recs})
            by_type = {}
            for t in types:
                sub = [r for r in recs if r["type"] == t]
                by_type[t] = {"category": sub[0]["category"], **_rate_block(sub, confidence)}
            models[label][mode] = {"overall": _rate_block(recs, confidence), "by_type": by_type}
    return {"confidence_level": confidence, "modes": list(run.modes), "models": models}


def paired_outcomes(run: EvalRun, mode: str = COMPARISON_MODE) -> tuple[list[dict], list[dict]]:
    """Base and trained records for one mode, checked to be the same items with the same prompts (EV-02)."""
    base, sft = run.outcomes(BASE, mode), run.outcomes(SFT, mode)
    if [(r["id"], r["prompt"]) for r in base] != [(r["id"], r["prompt"]) for r in sft]:
        raise ValueError(f"base and trained records are not paired in mode {mode!r}: items or prompts differ")
    if not base:
        raise ValueError(f"no paired records in mode {mode!r}")
    return base, sft


def incontext_outcomes(run: EvalRun) -> tuple[list[dict], list[dict]]:
    """Base in-context and trained zero-shot records: the same items in the same order (EV-08).

    The prompts differ by design; the in-context one must end in the zero-shot one, so both
    arms answer the same question in the same frame, only with examples before it.
    """
    ic, sft = run.outcomes(BASE, INCONTEXT), run.outcomes(SFT, COMPARISON_MODE)
    if not ic:
        raise ValueError("no base in-context records: a paired evaluation runs three arms (EV-08); evaluate the base "
                         f"model in mode {INCONTEXT!r} too (evaluate_models(..., extra_modes={{'base': ['incontext']}}))")
    if [r["id"] for r in ic] != [r["id"] for r in sft] or not all(
        a["prompt"].endswith("\n\n" + b["prompt"]) for a, b in zip(ic, sft)
    ):
        raise ValueError("base in-context and trained records are not paired: items differ, or an in-context prompt "
                         "does not end in the item's zero-shot prompt")
    return ic, sft


def paired_comparison(base: Sequence[dict], sft: Sequence[dict], cfg: StatsConfig) -> dict:
    """The PV-04 blocks (overall, by type with BH, BH summary) for one pair of arms."""
    overall, by_type, bh = st.compare_by_type(
        [r["success"] for r in base], [r["success"] for r in sft], [r["type"] for r in base],
        fdr=cfg.fdr, confidence=cfg.confidence, bootstrap_samples=cfg.bootstrap_samples, seed=cfg.seed,
        exact_below=cfg.exact_below,
    )
    categories = {r["type"]: r["category"] for r in base}
    for name, block in by_type.items():
        block["category"] = categories[name]
    return {"overall": overall, "by_type": by_type, "bh": bh}


def arm_rates(run: EvalRun, confidence: float) -> dict:
    """Each arm's success rate with its Wilson interval (EV-08)."""
    out = {}
    for name, (label, mode) in ARMS.items():
        recs = run.outcomes(label, mode)
        k = sum(bool(r["success"]) for r in recs)
        out[name] = {"model": label, "mode": mode, "n": len(recs), "successes": k,
                     "rate": k / len(recs) if recs else 0.0, "ci": list(st.wilson_ci(k, len(recs), confidence))}
    return out


def compact_model(prov: dict) -> dict:
    keep = ("model_name", "loader_version", "dtype", "quantization", "device", "template_disabled", "bos_prepended")
    out = {k: prov[k] for k in keep if k in prov}
    weights = prov.get("weights") or {}
    if weights:
        out["weights"] = {k: weights[k] for k in ("mode", "combined", "revision") if k in weights}
    if "adapter" in prov:
        out["adapter"] = prov["adapter"]
    return out


def build_summary(run: EvalRun, cfg: StatsConfig, *, eval_set: dict) -> dict:
    """The PV-04 evaluation output: trained vs base zero-shot (GT-02), and trained vs base in-context (EV-08)."""
    base, sft = paired_outcomes(run, COMPARISON_MODE)
    incontext, sft_again = incontext_outcomes(run)
    main = paired_comparison(base, sft, cfg)
    return {
        "schema": SUMMARY_SCHEMA,
        **main,
        # the same statistics with the in-context arm in the base_* fields
        "vs_incontext": paired_comparison(incontext, sft_again, cfg),
        "arms": arm_rates(run, cfg.confidence),
        "metadata": {
            "confidence_level": cfg.confidence,
            "bootstrap_samples": cfg.bootstrap_samples,
            "seed": cfg.seed,
            "decoding": run.decoding.as_provenance(),
            "exact_binomial_below": cfg.exact_below,
            "comparison_mode": COMPARISON_MODE,
            "prompt_format": build_prompt("{instruction}", COMPARISON_MODE),
            "pairing": "same items, same prompts, base then trained",
            "incontext": {"mode": INCONTEXT, "n_demonstrations": DEFAULT_N_DEMONSTRATIONS, "seed": run.decoding.seed,
                          "pairing": "same items; the in-context prompt ends in the zero-shot one"},
            "eval_set": eval_set,
            "models": {label: compact_model(p) for label, p in run.models.items()},
            "created": utc_now(),
        },
    }


def verdict(summary: dict | None, rates: dict) -> gates.GateDecision | None:
    """GT-02 for a paired run, GT-03 for a base-only run with both modes, else no verdict."""
    if summary is not None:
        return gates.decide_final(summary)
    if BASE in rates["models"] and all(m in rates["models"][BASE] for m in ("framed", "raw")):
        return gates.decide_gap(rates)
    return None


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _truncation_warnings(rates: dict) -> list[str]:
    out = []
    for label, modes in rates["models"].items():
        for mode, block in modes.items():
            r = block["overall"]["hit_limit_rate"]
            if r > TRUNCATION_WARN_RATE:
                out.append(f"note: {_pct(r)} of {label}/{mode} responses hit max_new_tokens; a base model that "
                           "rambles does so by design, a trained model should stop: if it does not, raise --max-new-tokens")
    return out


def render_text_summary(summary: dict | None, rates: dict, decision: gates.GateDecision | None, *, n_items: int,
                        decoding: dict) -> str:
    lines = [f"cai-bootstrap evaluation: {n_items} items, greedy decoding, max_new_tokens {decoding['max_new_tokens']}"]
    for label, modes in rates["models"].items():
        for mode, block in modes.items():
            o = block["overall"]
            lines.append(f"  {label:<5} {mode:<6} success {_pct(o['rate']):>6} {_ci(o['ci'])}  "
                         f"(hit token limit {_pct(o['hit_limit_rate'])}, continued with a new prompt {_pct(o['continued_rate'])})")
    if summary is not None:
        lines.append(f"three arms, same {summary['overall']['n']} items (EV-08):")
        for name, a in summary["arms"].items():
            lines.append(f"  {ARM_NAMES[name]:<18} success {_pct(a['rate']):>6} {_ci(a['ci'])}  ({a['successes']}/{a['n']})")
        for title, block in (("trained vs base zero-shot (decides GT-02)", summary),
                             ("trained vs base in-context", summary["vs_incontext"])):
            o, bh = block["overall"], block["bh"]
            lines.append(
                f"{title}: lift {100 * o['lift']:+.1f} points, bootstrap CI "
                f"[{100 * o['lift_ci_bootstrap'][0]:+.1f}, {100 * o['lift_ci_bootstrap'][1]:+.1f}]; McNemar "
                f"{o['mcnemar_method']} stat {o['mcnemar_stat']:.3g}, p = {o['mcnemar_p']:.3g} "
                f"(improved {o['discordant']['n01']}, regressed {o['discordant']['n10']}); Cohen's h {o['cohens_h']:+.3f}; "
                f"per type {bh['n_significant_adjusted']}/{bh['n_tests']} significant after Benjamini-Hochberg "
                f"at FDR {bh['fdr']} ({bh['n_significant_raw']} before adjustment)")
    lines += _truncation_warnings(rates)
    if decision is None:
        lines.append("VERDICT: none (a base-only run needs --mode both for the gap check)")
    else:
        lines.append(f"VERDICT: {'GO' if decision.passed else 'NO-GO'} ({decision.gate}, {decision.clause})")
        lines += [f"  - {r}" for r in decision.reasons]
    return "\n".join(lines) + "\n"


def render_markdown(summary: dict | None, rates: dict, decision: gates.GateDecision | None, text_summary: str) -> str:
    md = ["# Evaluation report", "", "```", text_summary.rstrip(), "```", ""]
    if summary is not None:
        md += ["## Three arms (EV-08)", "", "| arm | model | prompt | n | success | 95% CI |", "|---|---|---|---:|---:|---|"]
        for name, a in summary["arms"].items():
            md.append(f"| {ARM_NAMES[name]} | {a['model']} | {a['mode']} | {a['n']} | {_pct(a['rate'])} | {_ci(a['ci'])} |")
        md += ["", "| comparison | lift | bootstrap CI | McNemar p | Cohen's h | improved | regressed |",
               "|---|---:|---|---:|---:|---:|---:|"]
        for title, block in (("trained vs base zero-shot (GT-02)", summary), ("trained vs base in-context", summary["vs_incontext"])):
            o = block["overall"]
            md.append(f"| {title} | {100 * o['lift']:+.1f} | [{100 * o['lift_ci_bootstrap'][0]:+.1f}, "
                      f"{100 * o['lift_ci_bootstrap'][1]:+.1f}] | {o['mcnemar_p']:.3g} | {o['cohens_h']:+.3f} | "
                      f"{o['discordant']['n01']} | {o['discordant']['n10']} |")
        md.append("")
        for title, block, base_name in (("trained vs base zero-shot, framed prompts", summary, "base"),
                                        ("trained vs base in-context", summary["vs_incontext"], "in-context")):
            md += [f"## Paired comparison by type ({title})", "",
                   f"| type | category | n | {base_name} | sft | lift | McNemar p | BH p | significant |",
                   "|---|---|---:|---|---|---:|---:|---:|:---:|"]
            for name, b in block["by_type"].items():
                md.append(f"| {name} | {b['category']} | {b['n']} | {_pct(b['base_rate'])} {_ci(b['base_ci'])} | "
                          f"{_pct(b['sft_rate'])} {_ci(b['sft_ci'])} | {100 * b['lift']:+.1f} | {b['mcnemar_p']:.3g} | "
                          f"{b['p_adjusted']:.3g} | {'yes' if b['significant_after_bh'] else 'no'} |")
            md.append("")
    md += ["## Success rates by model and prompt mode", "", "| model | mode | type | n | success | 95% CI | top failure |",
           "|---|---|---|---:|---:|---|---|"]
    for label, modes in rates["models"].items():
        for mode, block in modes.items():
            for name, b in [("(all)", block["overall"]), *block["by_type"].items()]:
                top = max(b["failure_reasons"].items(), key=lambda kv: kv[1], default=None)
                top_txt = f"{top[0]} ({top[1]})" if top else "-"
                md.append(f"| {label} | {mode} | {name} | {b['n']} | {_pct(b['rate'])} | {_ci(b['ci'])} | {top_txt} |")
    md += ["", f"![success rates with Wilson intervals]({CHART_FILE})", ""]
    return "\n".join(md) + "\n"


def plot_rates(rates: dict) -> bytes:
    """Grouped bars of success rate per type for every (model, mode), with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(label, mode) for label, modes in rates["models"].items() for mode in modes]
    types = sorted({t for modes in rates["models"].values() for b in modes.values() for t in b["by_type"]})
    groups = ["(all)"] + types
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(groups) + 2), 4.5))
    for i, (label, mode) in enumerate(series):
        block = rates["models"][label][mode]
        blocks = [block["overall"]] + [block["by_type"].get(t) for t in types]
        rate = np.array([b["rate"] if b else np.nan for b in blocks])
        lo = np.array([b["rate"] - b["ci"][0] if b else 0 for b in blocks])
        hi = np.array([b["ci"][1] - b["rate"] if b else 0 for b in blocks])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, rate, width, yerr=[lo, hi], capsize=2, label=f"{label} ({mode})")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(f"Success by type, {int(100 * rates['confidence_level'])}% Wilson intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out_dir: str | Path, run: EvalRun, cfg: StatsConfig, *, eval_set: dict) -> dict:
    """Write every output; returns {"summary", "rates", "decision", "paths"}."""
    out = Path(out_dir)
    paired = BASE in run.models and SFT in run.models and COMPARISON_MODE in run.modes
    rates = build_rates(run, cfg.confidence)
    summary = build_summary(run, cfg, eval_set=eval_set) if paired else None
    decision = verdict(summary, rates)
    text = render_text_summary(summary, rates, decision, n_items=eval_set["n_items_used"],
                               decoding=run.decoding.as_provenance())
    paths = {"items": atomic_write_jsonl(out / ITEMS_FILE, run.records),
             "rates": atomic_write_json(out / RATES_FILE, rates)}
    if summary is not None:
        paths["summary"] = atomic_write_json(out / SUMMARY_FILE, summary)
    paths["text"] = atomic_write_text(out / TEXT_FILE, text)
    paths["report"] = atomic_write_text(out / REPORT_FILE, render_markdown(summary, rates, decision, text))
    paths["chart"] = atomic_write_bytes(out / CHART_FILE, plot_rates(rates))
    from cai_bootstrap.provenance import git_info

    manifest = {
        "artifact_type": "evaluation",
        "created": utc_now(),
        "git": git_info(),
        "eval_set": eval_set,
        "modes": run.modes,
        "model_modes": {label: run.modes_of(label) for label in run.models},
        "decoding": run.decoding.as_provenance(),
        "statistics": asdict(cfg),
        "models": run.models,
        "timings_s": run.timings,
        "verdict": decision.to_dict() if decision else None,
        "outputs": {k: {"path": p.name, "sha256": sha256_file(p)} for k, p in paths.items()},
    }
    paths["manifest"] = atomic_write_json(out / MANIFEST_FILE, manifest)
    return {"summary": summary, "rates": rates, "decision": decision, "paths": paths, "text": text}
