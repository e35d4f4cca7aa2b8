"""The Stage-2 run report: phase times, every gate's decision, pair QC, DPO training curves, the
three-way evaluation with CIs and McNemar p, and the model's lineage, as Markdown plus PNG plots.

It reads only what the phases recorded, so a stopped chain gets a report of what it decided.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai_bootstrap.io_utils import atomic_write_bytes, atomic_write_text
from cai_bootstrap.preference.schema import PAIR_QC_FILE
from cai_bootstrap.stage1_report import format_ci, format_p, png_bytes, read_json_or_none

GATES = ("pairs_gate", "final_eval")
ARM_NAMES = {"base": "base zero-shot", "stage1": "stage-1 model zero-shot", "stage2": "stage-2 model zero-shot"}


def _curves_plot(loss: list[dict], rewards: list[dict]) -> bytes | None:
    series = [("loss", [(e.get("step"), e.get("loss")) for e in loss]),
              ("reward margin", [(e.get("step"), e.get("rewards/margins")) for e in rewards]),
              ("reward accuracy", [(e.get("step"), e.get("rewards/accuracies")) for e in rewards])]
    series = [(name, [p for p in pts if p[1] is not None]) for name, pts in series]
    if not any(pts for _, pts in series):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (name, pts) in zip(axes, series):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel("optimizer step")
        ax.set_title(name)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def pair_qc_lines(qc: dict | None) -> list[str]:
    if not qc:
        return ["## Preference pairs (PO-01, PO-02)", "", "(no pairs run)", ""]
    c, lr = qc.get("counts") or {}, qc.get("length_ratio") or {}
    lines = ["## Preference pairs (PO-01, PO-02)", "",
             f"{c.get('pairs')} pairs from {c.get('instructions_with_pairs')} of {c.get('instructions')} instructions; "
             f"{c.get('rejects')} rejects; chosen/rejected length ratio median {_fmt((lr.get('all') or {}).get('median'))}; "
             f"margin gap median {_fmt((qc.get('margin_gap') or {}).get('median'))}; "
             f"QC {'passed' if qc.get('thresholds_passed') else 'failed: ' + '; '.join(qc.get('failed_reasons') or [])}", "",
             "| negative kind | pairs | share | length ratio (median) |", "|---|---|---|---|"]
    for kind, n in (c.get("by_negative_type") or {}).items():
        lines.append(f"| {kind} | {n} | {_fmt((qc.get('shares') or {}).get(kind))} | {_fmt((lr.get('by_negative_type') or {}).get(kind))} |")
    drops = qc.get("drop_reasons") or {}
    if drops:
        lines += ["", "Drop reasons: " + ", ".join(f"{k} {v}" for k, v in drops.items())]
    return lines + [""]


def training_lines(tm: dict | None) -> list[str]:
    if not tm:
        return []
    lines = ["## DPO training (PO-03)", "", f"Hyperparameters: `{json.dumps(tm.get('hyperparameters', {}))}`", "",
             "| step | loss | reward margin | reward accuracy |", "|---|---|---|---|"]
    loss = {e.get("step"): e.get("loss") for e in tm.get("loss_history") or []}
    rewards = {e.get("step"): e for e in tm.get("reward_history") or []}
    for step in sorted(set(loss) | set(rewards), key=lambda s: (s is None, s)):
        r = rewards.get(step, {})
        lines.append(f"| {step} | {_fmt(loss.get(step))} | {_fmt(r.get('rewards/margins'))} | {_fmt(r.get('rewards/accuracies'))} |")
    return lines + [""]


def evaluation_lines(ev: dict | None) -> list[str]:
    if not ev:
        return []
    arms, cmps = ev.get("arms") or {}, ev.get("comparisons") or {}
    lines = ["## Evaluation: base, stage 1, stage 2 (paired, greedy, same items)", "",
             "| arm | n | successes | rate | 95% CI |", "|---|---|---|---|---|"]
    for label, a in arms.items():
        lines.append(f"| {ARM_NAMES.get(label, label)} | {a.get('n')} | {a.get('successes')} | {_fmt(a.get('rate'))} | {format_ci(a.get('ci'))} |")
    lines += ["", "| comparison | lift | lift 95% CI (bootstrap) | McNemar p | improved | regressed |", "|---|---|---|---|---|---|"]
    for name, c in cmps.items():
        o, d = c.get("overall") or {}, (c.get("overall") or {}).get("discordant") or {}
        lines.append(f"| {name.replace('_', ' ')} | {o.get('lift', 0):+.3f} | {format_ci(o.get('lift_ci_bootstrap'))} | "
                     f"{format_p(o.get('mcnemar_p'))} | {d.get('n01')} | {d.get('n10')} |")
    s21 = (cmps.get("stage2_vs_stage1") or {}).get("by_type") or {}
    if s21:
        lines += ["", "Stage 2 vs stage 1 by type:", "", "| type | category | n | stage 1 | stage 2 | lift | p (BH-adjusted) |",
                  "|---|---|---|---|---|---|---|"]
        for t, b in sorted(s21.items()):
            lines.append(f"| {t} | {b.get('category')} | {b.get('n')} | {_fmt(b.get('base_rate'))} | {_fmt(b.get('sft_rate'))} | "
                         f"{b.get('lift', 0):+.3f} | {format_p(b.get('p_adjusted'))} |")
    return lines + [""]


def write_report(run_dir: str | Path) -> list[Path]:
    from cai_bootstrap.stages.lineage import format_lineage
    from cai_bootstrap.stages.registry import GATES_DIR

    run = Path(run_dir)
    out = run / "report"
    lines = ["# Stage-2 run report", "", f"Run directory: `{run}`", ""]
    inp = read_json_or_none(run / "input_model.json")
    if inp:
        lines += [f"Input model: adapter `{inp.get('adapter_path')}` on base `{inp.get('base_model')}`; stage-1 gate "
                  f"{str((inp.get('gate') or {}).get('decision')).upper()}"
                  + (f" (OVERRIDE: {inp['override']['reason']})" if inp.get("override") else ""), ""]
    lines += ["## Phases", "", "| phase | status | wall (s) | note |", "|---|---|---|---|"]
    for p in sorted((run / "stage2").glob("*.json"), key=lambda p: (read_json_or_none(p) or {}).get("started_at", "")):
        st = read_json_or_none(p) or {}
        if "phase" in st:
            lines.append(f"| {st['phase']} | {st.get('status')} | {st.get('wall_s')} | {str(st.get('reason', ''))[:120]} |")
    lines += ["", "## Gates", ""]
    for g in GATES:
        m = read_json_or_none(run / GATES_DIR / f"{g}.json")
        lines.append(f"- **{g}** ({m.get('clause')}): **{m['decision'].upper()}**: " + "; ".join(m.get("reasons", []))
                     if m else f"- **{g}**: not decided")
    lines += [""] + pair_qc_lines(read_json_or_none(run / "pairs" / PAIR_QC_FILE))
    written: list[Path] = []
    tm = read_json_or_none(run / "dpo" / "training_manifest.json")
    lines += training_lines(tm)
    if tm:
        img = _curves_plot(tm.get("loss_history") or [], tm.get("reward_history") or [])
        if img:
            written.append(atomic_write_bytes(out / "dpo_curves.png", img))
            lines += ["![DPO curves](dpo_curves.png)", ""]
    lines += evaluation_lines(read_json_or_none(run / "eval" / "eval_summary.json"))
    final = read_json_or_none(run / GATES_DIR / "final_eval.json")
    if tm and tm.get("lineage"):
        lines += ["## Model lineage (ST-03)", "", *format_lineage(tm["lineage"], [(2, final)] if final else []), ""]
    written.append(atomic_write_text(out / "REPORT.md", "\n".join(lines) + "\n"))
    return written
