"""The Stage-1 run report: every gate's numbers, QC distributions, the loss curve, the eval
table with CIs and the lineage of every artifact, as Markdown plus PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from cai_bootstrap.io_utils import atomic_write_bytes, atomic_write_text, sha256_file

GATES = ("gap_check", "pilot_gate", "scale_gate", "final_eval")


def read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _loss_plot(history: list[dict]) -> bytes | None:
    pts = [(h.get("step"), h.get("loss")) for h in history if h.get("loss") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("SFT loss")
    data = png_bytes(fig)
    plt.close(fig)
    return data


def _margin_plot(qc: dict, title: str) -> bytes | None:
    hist = ((qc.get("margins") or {}).get("pair") or {}).get("histogram")
    ihist = ((qc.get("margins") or {}).get("instruction") or {}).get("histogram")
    if not hist and not ihist:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, h, name in ((axes[0], ihist or {}, "instruction critic"), (axes[1], hist or {}, "pair critic")):
        ax.bar(range(len(h)), list(h.values()))
        ax.set_xticks(range(len(h)))
        ax.set_xticklabels(list(h.keys()), rotation=45, fontsize=7)
        ax.set_title(f"{name} margins")
    fig.suptitle(title)
    data = png_bytes(fig)
    plt.close(fig)
    return data


def _qc_rows(name: str, qc: dict | None) -> list[str]:
    if not qc:
        return [f"| {name} | (not run) | | | | | | |"]
    r, a, t = qc.get("rates", {}), qc.get("acceptance", {}), qc.get("token_stats", {})
    return [f"| {name} | {qc['counts'].get('generated')} | {qc['counts'].get('kept')} | "
            f"{a.get('instruction_acceptance_rate', 0):.3f} | {a.get('pair_acceptance_rate', 0):.3f} | "
            f"{r.get('runaway_rate', 0):.3f} | {r.get('token_limit_rate', 0):.3f} | {t.get('median')} |"]


def _probe_rows(qc: dict | None) -> list[str]:
    """CR-06 / QC-09: how well each judge told the probe set's good side from its bad side."""
    judges = ((qc or {}).get("critic_probes") or {}).get("judges") or {}
    if not judges:
        return []
    rows = ["## Critic probes (CR-06, QC-09)", "",
            "| judge | AUROC | accepts good | accepts bad | calibration offset | filters |", "|---|---|---|---|---|---|"]
    for name, j in judges.items():
        off = j.get("calibration_offset")
        rows.append(f"| {name} | {j.get('auroc', 0):.3f} | {j.get('acceptance_good', 0):.3f} | {j.get('acceptance_bad', 0):.3f} | "
                    f"{'' if off is None else f'{off:+.3f}'} | {'yes' if j.get('filters') else 'no (uninformative)'} |")
    return rows + [""]


def format_ci(ci) -> str:
    """A confidence interval as [lo, hi] with three decimals (or as recorded when not a pair of numbers)."""
    try:
        lo, hi = ci
        return f"[{float(lo):.3f}, {float(hi):.3f}]"
    except (TypeError, ValueError):
        return str(ci)


def format_p(p) -> str:
    return f"{p:.3g}" if isinstance(p, (int, float)) else str(p)


def _arm_rows(ev: dict) -> list[str]:
    """EV-08: the three arms side by side, and trained vs the base model in context."""
    arms, vs = ev.get("arms") or {}, (ev.get("vs_incontext") or {}).get("overall")
    rows = []
    if arms:
        rows += ["", "| arm | n | successes | rate | 95% CI |", "|---|---|---|---|---|"]
        for name, a in arms.items():
            rows.append(f"| {name} | {a.get('n')} | {a.get('successes')} | {a.get('rate', 0):.3f} | {format_ci(a.get('ci'))} |")
    if vs:
        d = vs.get("discordant") or {}
        rows += ["", f"Trained vs base in context: lift {vs.get('lift', 0):+.3f} (bootstrap CI {format_ci(vs.get('lift_ci_bootstrap'))}); "
                     f"McNemar p = {format_p(vs.get('mcnemar_p'))}; improved {d.get('n01')}, regressed {d.get('n10')}."]
    return rows


def _model_lineage(training_manifest: dict | None, final_gate: dict | None) -> list[str]:
    """ST-03: the trained model's chain as its manifest records it, then the final gate decided after it."""
    lineage = (training_manifest or {}).get("lineage")
    if not lineage:
        return []
    from cai_bootstrap.stages.lineage import format_lineage

    return ["## Model lineage (ST-03)", "", *format_lineage(lineage, [(1, final_gate)] if final_gate else []), ""]


def write_report(run_dir: str | Path) -> list[Path]:
    run = Path(run_dir)
    out = run / "report"
    lines = ["# Stage-1 run report", "", f"Run directory: `{run}`", ""]
    state_dir = run / "stage1"
    lines += ["## Phases", "", "| phase | status | wall (s) | note |", "|---|---|---|---|"]
    for p in sorted(state_dir.glob("*.json"), key=lambda p: (read_json_or_none(p) or {}).get("started_at", "")):
        st = read_json_or_none(p) or {}
        if "phase" not in st:
            continue
        lines.append(f"| {st['phase']} | {st.get('status')} | {st.get('wall_s')} | {str(st.get('reason', ''))[:120]} |")
    lines += ["", "## Gates", ""]
    for g in GATES:
        m = read_json_or_none(run / "gates" / f"{g}.json")
        if not m:
            lines.append(f"- **{g}**: not decided")
            continue
        lines.append(f"- **{g}** ({m.get('clause')}): **{m['decision'].upper()}**: " + "; ".join(m.get("reasons", [])))
    gap = read_json_or_none(run / "gap" / "rates.json")
    if gap:
        base = (gap.get("models") or {}).get("base", {})
        modes = [m for m in ("framed", "raw") if m in base]
        lines += ["", "## Gap check: base model success by type", "",
                  "| type | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
        types = sorted(set().union(*[base[m].get("by_type", {}) for m in modes])) if modes else []
        for t in types:
            cells = [f"{base[m]['by_type'][t]['successes']}/{base[m]['by_type'][t]['n']}" for m in modes]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("| **overall** | " + " | ".join(
            f"{base[m]['overall']['rate']:.3f} CI [{base[m]['overall']['ci'][0]:.3f}, {base[m]['overall']['ci'][1]:.3f}]"
            for m in modes) + " |")
    lines += ["", "## Data quality (QC)", "",
              "| run | responses | kept | instr. acceptance | pair acceptance | runaway | token-limit | median tokens |",
              "|---|---|---|---|---|---|---|---|"]
    written: list[Path] = []
    for name in ("pilot", "merged"):
        qc = read_json_or_none(run / name / "qc_summary.json")
        lines += _qc_rows(name, qc)
        if qc:
            img = _margin_plot(qc, f"{name}: critic margins")
            if img:
                written.append(atomic_write_bytes(out / f"margins_{name}.png", img))
    lines += [""] + [f"![{p.stem}]({p.name})" for p in written] + [""]
    lines += _probe_rows(read_json_or_none(run / "merged" / "qc_summary.json") or read_json_or_none(run / "pilot" / "qc_summary.json"))
    tm = read_json_or_none(run / "sft" / "training_manifest.json")
    if tm:
        hp = tm.get("hyperparameters", {})
        lines += ["## Training", "", f"Hyperparameters: `{json.dumps(hp)}`", ""]
        img = _loss_plot(tm.get("loss_history") or tm.get("log_history") or [])
        if img:
            written.append(atomic_write_bytes(out / "loss.png", img))
            lines += ["![loss](loss.png)", ""]
    ev = read_json_or_none(run / "eval" / "eval_summary.json")
    if ev:
        o = ev.get("overall", {})
        lines += ["## Evaluation (base vs trained, paired)", "",
                  f"n = {o.get('n')}; base {o.get('base_rate'):.3f} CI {format_ci(o.get('base_ci'))}; trained {o.get('sft_rate'):.3f} "
                  f"CI {format_ci(o.get('sft_ci'))}; lift {o.get('lift'):+.3f} (bootstrap CI {format_ci(o.get('lift_ci_bootstrap'))}); "
                  f"McNemar p = {format_p(o.get('mcnemar_p'))}; Cohen's h = {format_p(o.get('cohens_h'))}", "",
                  "| type | n | base | trained | p (BH-adjusted) |", "|---|---|---|---|---|"]
        for t, b in sorted((ev.get("by_type") or {}).items()):
            lines.append(f"| {t} | {b.get('n')} | {b.get('base_rate'):.3f} | {b.get('sft_rate'):.3f} | {format_p(b.get('p_adjusted'))} |")
        lines += _arm_rows(ev)
        if (run / "eval" / "rates.png").exists():
            lines += ["", "![rates](../eval/rates.png)"]
        lines.append("")
    from cai_bootstrap.stages.registry import FINAL_GATE_MANIFEST, GATES_DIR

    lines += _model_lineage(tm, read_json_or_none(run / GATES_DIR / FINAL_GATE_MANIFEST))
    lines += ["## Lineage (sha256 of every artifact)", "", "| file | sha256 |", "|---|---|"]
    for p in sorted(run.rglob("*")):
        if p.is_file() and "report" not in p.parts and p.suffix in (".json", ".jsonl", ".safetensors", ".png") and "checkpoint" not in str(p):
            lines.append(f"| {p.relative_to(run)} | {sha256_file(p)[:16]}... |")
    written.append(atomic_write_text(out / "REPORT.md", "\n".join(lines) + "\n"))
    return written
