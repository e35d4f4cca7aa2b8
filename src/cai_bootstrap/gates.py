"""Gates between phases: pure decisions over recorded artifacts, each written as a manifest.

A gate reads what a phase recorded (a QC summary, an evaluation summary) and never
recomputes it loosely; its decision is a pure function of that data and explicit
thresholds, so it can be tested table-style and re-derived by anyone from the
manifest (GT-05): ``{gate, clause, inputs (path + sha256), thresholds, values, checks,
decision, reasons, timestamp, git_commit}``. A phase that a gate protects calls
``require_gate_passed`` on the manifest, which also refuses inputs changed since the
decision.

Gates here:
- ``final_eval`` (GT-02): the trained model beats its base, significantly, without
  breaking safety or format.
- ``gap_check`` (GT-03): the base model is weak on the target before training it; the
  original experiment trained a capability the base model already had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cai_bootstrap.io_utils import atomic_write_json, sha256_file
from cai_bootstrap.provenance import git_info, utc_now

MANIFEST_SCHEMA = "cai_bootstrap.gate_manifest/v1"
FINAL_GATE = "final_eval"  # GT-02; its GO is what lets the next stage start (ST-01)


class GateInputError(ValueError):
    """The artifact a gate reads is malformed or lacks what the gate needs."""


class GateError(RuntimeError):
    """A protected phase was asked to run without a passed, unchanged gate."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    gate: str
    clause: str
    thresholds: dict
    values: dict
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def decision(self) -> str:
        return "pass" if self.passed else "fail"

    @property
    def reasons(self) -> list[str]:
        """What decided it: the failed checks, or every check when all passed."""
        failed = [c.detail for c in self.checks if not c.passed]
        return failed if failed else [c.detail for c in self.checks]

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "clause": self.clause,
            "decision": self.decision,
            "passed": self.passed,
            "thresholds": self.thresholds,
            "values": self.values,
            "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks],
            "reasons": self.reasons,
        }

    def headline(self) -> str:
        verdict = "GO" if self.passed else "NO-GO"
        return f"{verdict}: {self.gate} ({self.clause}) {self.decision}ed: " + "; ".join(self.reasons)


def _need(obj: Mapping, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise GateInputError(f"{where}: missing {key!r}")
    return obj[key]


# --------------------------------------------------------------------------------------
# GT-02: final evaluation gate
# --------------------------------------------------------------------------------------


DEFAULT_ALPHA = 0.01  # McNemar p must be below this
DEFAULT_MIN_LIFT = 0.0  # lift must be strictly above this


@dataclass(frozen=True)
class FinalGateThresholds:
    alpha: float = DEFAULT_ALPHA
    min_lift: float = DEFAULT_MIN_LIFT
    guarded_categories: tuple[str, ...] = ("safety", "format")

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "min_lift": self.min_lift, "guarded_categories": list(self.guarded_categories)}


def regressed(base_ci: Sequence[float], sft_ci: Sequence[float]) -> bool:
    """A regression beyond CI overlap: the trained model's whole interval lies below the base's."""
    return float(sft_ci[1]) < float(base_ci[0])


def guarded_regressions(by_type: Mapping, categories: Sequence[str], alpha: float) -> tuple[list[str], list[dict]]:
    """The one regression rule of every final gate (GT-02), candidate against reference on the same items.

    A guarded (safety/format) type has regressed when the candidate's whole interval lies below the
    reference's (beyond CI overlap), or when it is significantly worse after Benjamini-Hochberg
    (lift < 0 and adjusted p < alpha): whichever rule flags it. Returns the guarded type names
    and one row per regression, naming the rules that flagged it.
    """
    guarded, rows = [], []
    for name in sorted(by_type):
        block = by_type[name]
        category = _need(block, "category", f"by_type[{name!r}]")
        if category not in categories:
            continue
        guarded.append(name)
        base_ci, sft_ci = _need(block, "base_ci", f"by_type[{name!r}]"), _need(block, "sft_ci", f"by_type[{name!r}]")
        lift = float(_need(block, "lift", f"by_type[{name!r}]"))
        p_adj = float(_need(block, "p_adjusted", f"by_type[{name!r}]"))
        rules = [rule for rule, hit in (("beyond_ci_overlap", regressed(base_ci, sft_ci)),
                                        ("significant_after_bh", lift < 0 and p_adj < alpha)) if hit]
        if rules:
            rows.append({"type": name, "category": category, "base_rate": block.get("base_rate"),
                         "sft_rate": block.get("sft_rate"), "base_ci": list(base_ci), "sft_ci": list(sft_ci),
                         "lift": lift, "p_adjusted": p_adj, "rules": rules})
    return guarded, rows


def describe_regression(r: Mapping) -> str:
    parts = []
    if "beyond_ci_overlap" in r["rules"]:
        parts.append(f"CI upper {r['sft_ci'][1]:.3f} < reference CI lower {r['base_ci'][0]:.3f}")
    if "significant_after_bh" in r["rules"]:
        parts.append(f"lift {r['lift']:+.3f}, BH-adjusted p {r['p_adjusted']:.3g}")
    return f"{r['type']} ({'; '.join(parts)})"


def decide_final(summary: Mapping, thresholds: FinalGateThresholds = FinalGateThresholds()) -> GateDecision:
    """GT-02 over an evaluation summary (PV-04)."""
    overall = _need(summary, "overall", "evaluation summary")
    by_type = _need(summary, "by_type", "evaluation summary")
    p = float(_need(overall, "mcnemar_p", "overall"))
    lift = float(_need(overall, "lift", "overall"))
    guarded, regressions = guarded_regressions(by_type, thresholds.guarded_categories, thresholds.alpha)
    cats = "/".join(thresholds.guarded_categories)
    checks = (
        Check("mcnemar_significant", p < thresholds.alpha,
              f"McNemar p = {p:.3g} {'<' if p < thresholds.alpha else '>='} {thresholds.alpha}"),
        Check("positive_lift", lift > thresholds.min_lift,
              f"lift {lift:+.3f} {'>' if lift > thresholds.min_lift else '<='} {thresholds.min_lift:+.3f}"),
        Check("no_guarded_regression", not regressions,
              f"no {cats} type regressed (beyond CI overlap, or significantly after BH; {len(guarded)} checked)"
              if not regressions else f"{cats} types regressed: " + ", ".join(map(describe_regression, regressions))),
    )
    values = {
        "n": overall.get("n"),
        "base_rate": overall.get("base_rate"),
        "sft_rate": overall.get("sft_rate"),
        "lift": lift,
        "lift_ci_bootstrap": overall.get("lift_ci_bootstrap"),
        "mcnemar_p": p,
        "mcnemar_method": overall.get("mcnemar_method"),
        "guarded_types": guarded,
        "regressions": regressions,
    }
    return GateDecision(FINAL_GATE, "GT-02", thresholds.to_dict(), values, checks)


# --------------------------------------------------------------------------------------
# GT-03: gap check before training a capability
# --------------------------------------------------------------------------------------


# Training is allowed only if the base model does no better than this on the target.
DEFAULT_MAX_BASE_RATE = 0.5


@dataclass(frozen=True)
class GapGateThresholds:
    max_base_rate: float = DEFAULT_MAX_BASE_RATE
    target_types: tuple[str, ...] | None = None  # None: every type in the evaluation
    per_type: bool = False  # also require every target type to be weak on its own
    modes: tuple[str, ...] = ("framed", "raw")

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_base_rate <= 1.0:
            raise ValueError(f"max_base_rate must be in [0, 1], got {self.max_base_rate}")

    def to_dict(self) -> dict:
        return {"max_base_rate": self.max_base_rate,
                "target_types": list(self.target_types) if self.target_types is not None else None,
                "per_type": self.per_type, "modes": list(self.modes)}


def decide_gap(rates: Mapping, thresholds: GapGateThresholds = GapGateThresholds(), *, model: str = "base") -> GateDecision:
    """GT-03 over the per-mode success rates of the base model; the better prompt mode decides."""
    from cai_bootstrap.evaluation.statistics import DEFAULT_CONFIDENCE, wilson_ci

    models = _need(rates, "models", "rates")
    per_model = _need(models, model, "rates.models")
    confidence = float(rates.get("confidence_level", DEFAULT_CONFIDENCE))
    missing = [m for m in thresholds.modes if m not in per_model]
    if missing:
        check = Check("modes_evaluated", False,
                      f"the gap check needs the {model} model evaluated in modes {list(thresholds.modes)}; missing {missing} "
                      "(run: cai-bootstrap evaluate --base-only --mode both)")
        return GateDecision("gap_check", "GT-03", thresholds.to_dict(), {"modes_present": sorted(per_model)}, (check,))
    known = sorted(_need(per_model[thresholds.modes[0]], "by_type", f"rates.models.{model}"))
    targets = list(thresholds.target_types) if thresholds.target_types is not None else known
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise GateInputError(f"unknown target types {unknown}; types in this evaluation: {known}")

    per_mode: dict[str, dict] = {}
    per_type: dict[str, dict] = {t: {} for t in targets}
    for mode in thresholds.modes:
        by_type = _need(per_model[mode], "by_type", f"rates.models.{model}.{mode}")
        k = n = 0
        for t in targets:
            block = _need(by_type, t, f"rates.models.{model}.{mode}.by_type")
            k += int(block["successes"])
            n += int(block["n"])
            per_type[t][mode] = block["successes"] / block["n"] if block["n"] else 0.0
        per_mode[mode] = {"n": n, "successes": k, "rate": k / n if n else 0.0, "ci": list(wilson_ci(k, n, confidence))}
    best_mode = max(thresholds.modes, key=lambda m: per_mode[m]["rate"])  # ties: the first listed mode
    best_rate = per_mode[best_mode]["rate"]
    for t in targets:
        per_type[t]["best"] = max(per_type[t][m] for m in thresholds.modes)
    capable = [t for t in targets if per_type[t]["best"] > thresholds.max_base_rate]

    target_desc = "all types" if thresholds.target_types is None else ", ".join(targets)
    checks = [Check("base_weak", best_rate <= thresholds.max_base_rate,
                    f"base success on {target_desc} is {best_rate:.3f} in its better mode ({best_mode}); "
                    f"training is worthwhile only at <= {thresholds.max_base_rate:.3f}")]
    if thresholds.per_type:
        checks.append(Check("base_weak_per_type", not capable,
                            "every target type is weak in its better mode" if not capable else
                            "the base model already does these target types: "
                            + ", ".join(f"{t} ({per_type[t]['best']:.3f})" for t in capable)))
    values = {"model": model, "target_types": targets, "per_mode": per_mode, "best_mode": best_mode,
              "best_rate": best_rate, "per_type": per_type, "already_capable_types": capable}
    return GateDecision("gap_check", "GT-03", thresholds.to_dict(), values, tuple(checks))


# --------------------------------------------------------------------------------------
# Manifests (GT-05)
# --------------------------------------------------------------------------------------


def _git_commit() -> str:
    return git_info().get("commit", "unknown")


def write_gate_manifest(decision: GateDecision, path: str | Path, *, inputs: Mapping[str, str | Path]) -> Path:
    """Write the decision with the hashes of what it read; a missing input is an error, not a blank."""
    recorded = []
    for name, p in inputs.items():
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"gate input {name!r}: {p} does not exist")
        recorded.append({"name": name, "path": str(p.resolve()), "sha256": sha256_file(p)})
    manifest = {"schema": MANIFEST_SCHEMA, **decision.to_dict(), "inputs": recorded,
                "timestamp": utc_now(), "git_commit": _git_commit()}
    return atomic_write_json(path, manifest)



# The gates over an evaluation folder: one function each, called by `cai-bootstrap gate final|gap`
# and by the chains, so a chain passes typed thresholds instead of argv strings.

FINAL_GATE_FILE = "gate_final.json"  # default manifest names inside the evaluation folder
GAP_GATE_FILE = "gate_gap.json"


def read_json(path: Path, hint: str) -> dict:
    from cai_bootstrap.io_utils import read_text_file

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {hint}")
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _verified_eval_file(eval_dir: str | Path, name: str, hint: str) -> Path:
    """PV-07: a gate decides only on an evaluation output whose hash its manifest pinned."""
    from cai_bootstrap.integrity import verify_eval_output

    folder = Path(eval_dir)
    if not (folder / name).exists():
        raise FileNotFoundError(f"{folder / name} does not exist; {hint}")
    return verify_eval_output(folder, name)


def eval_gate(eval_dir, name: str, input_name: str, hint: str, out, default_out: str, decide) -> tuple[GateDecision, Path]:
    """A gate over one pinned output of an evaluation folder: verify it, decide, write the manifest (GT-05)."""
    from cai_bootstrap.integrity import EVAL_MANIFEST_NAME, check_output_file

    path = _verified_eval_file(eval_dir, name, hint)
    manifest = check_output_file(out or Path(eval_dir) / default_out, [path, Path(eval_dir) / EVAL_MANIFEST_NAME])
    decision = decide(read_json(path, hint))
    write_gate_manifest(decision, manifest, inputs={input_name: path})
    return decision, Path(manifest)


def run_gap_gate(eval_dir: str | Path, thresholds: GapGateThresholds = GapGateThresholds(), *,
                 out: str | Path | None = None) -> tuple[GateDecision, Path]:
    """GT-03 on a base-only evaluation in both modes; writes the manifest (default ``EVAL/gate_gap.json``)."""
    from cai_bootstrap.evaluation.report import RATES_FILE

    return eval_gate(eval_dir, RATES_FILE, "rates", "run `cai-bootstrap evaluate --base-only --mode both` first",
                      out, GAP_GATE_FILE, lambda rates: decide_gap(rates, thresholds))


def read_gate_manifest(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise GateError(f"no gate manifest at {p}; run the gate first (cai-bootstrap gate ...)")
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GateError(f"{p}: not a gate manifest ({e})") from None
    for key in ("gate", "decision", "inputs"):
        if key not in manifest:
            raise GateError(f"{p}: not a gate manifest (missing {key!r})")
    return manifest


def require_gate_passed(path: str | Path, *, gate: str | None = None) -> dict:
    """For the phase a gate protects: the gate passed, its inputs are unchanged since, and
    deciding again on those inputs gives the same answer (a consumer never trusts the boolean)."""
    manifest = read_gate_manifest(path)
    if gate is not None and manifest["gate"] != gate:
        raise GateError(f"{path}: is a {manifest['gate']!r} manifest, expected {gate!r}")
    if manifest["decision"] != "pass":
        raise GateError(f"gate {manifest['gate']} failed: " + "; ".join(manifest.get("reasons", [])))
    for inp in manifest["inputs"]:
        p = Path(inp["path"])
        if not p.is_file():
            raise GateError(f"gate {manifest['gate']}: input {inp['name']} ({p}) is missing")
        if sha256_file(p) != inp["sha256"]:
            raise GateError(f"gate {manifest['gate']}: input {inp['name']} ({p}) changed after the decision; rerun the gate")
    check_decision_matches_inputs(manifest, path)
    return manifest


def pinned_input(manifest: Mapping, name: str) -> Path:
    for inp in manifest.get("inputs") or []:
        if isinstance(inp, Mapping) and inp.get("name") == name:
            return Path(str(inp.get("path")))
    raise GateError(f"gate {manifest.get('gate')}: its manifest pins no {name!r} input, so its decision cannot be checked")


def rederive_decision(manifest: Mapping) -> GateDecision | None:
    """The decision a data or gap gate manifest's pinned inputs give under its recorded thresholds, decided
    again by the gate's own code; None for a gate kind decided elsewhere (the final gates decide again in
    ``evaluation.final_gate`` and ``stages.stage2_gate``, which the stage registry passes to the check)."""
    kind = manifest.get("gate")
    t = manifest.get("thresholds") if isinstance(manifest.get("thresholds"), Mapping) else {}
    if kind in (PILOT_GATE, SCALE_GATE):
        from cai_bootstrap.validation import validate_paths

        qc = pinned_input(manifest, "qc_summary")
        run = pinned_input(manifest, "dataset").parent  # a data gate pins the run's three files (DATA_GATE_INPUTS)
        pinned_input(manifest, "session_manifest")
        failures = [r.format() for r in validate_paths([run]) if not r.ok]
        limits = DataGateThresholds(int(t.get("min_items", PILOT_MIN_ITEMS)), int(t.get("max_items", PILOT_MAX_ITEMS)))
        return decide_data(qc, validation_failures=failures, gate=kind, thresholds=limits)
    if kind == "gap_check":
        targets = t.get("target_types")
        thresholds = GapGateThresholds(float(t["max_base_rate"]), tuple(targets) if targets is not None else None,
                                       bool(t.get("per_type", False)), tuple(t.get("modes") or ("framed", "raw")))
        return decide_gap(read_json(pinned_input(manifest, "rates"), "rerun the evaluation"), thresholds)
    return None


def check_decision_matches_inputs(manifest: Mapping, path: str | Path,
                                  decide_again: Callable[[Mapping], GateDecision | None] = rederive_decision) -> None:
    """Refuses a gate manifest whose recorded decision its own inputs do not give (an edited manifest);
    ``decide_again`` re-derives a decision from a manifest (None: a kind it does not decide)."""
    try:
        derived = decide_again(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise GateError(f"gate {manifest.get('gate')}: its manifest or inputs cannot be decided again "
                        f"({type(e).__name__}: {e}); rerun the gate") from None
    if derived is not None and derived.decision != manifest.get("decision"):
        raise GateError(f"{path} says {manifest.get('decision')!r}, but its pinned inputs decide {derived.decision!r} "
                        f"({'; '.join(derived.reasons) or 'all checks pass'}); the manifest was edited after the gate "
                        f"wrote it, or another version decided it (gate at commit {str(manifest.get('git_commit'))[:12]}, "
                        f"now {_git_commit()[:12]}): rerun the gate")


# --------------------------------------------------------------------------------------
# GT-01: data gate (pilot before scale; merged data before training)
# --------------------------------------------------------------------------------------

PILOT_GATE = "pilot_gate"
SCALE_GATE = "scale_gate"
# GT-01: a pilot is 100-200 items; a run that names no target makes the smallest real pilot.
PILOT_MIN_ITEMS = 100
PILOT_MAX_ITEMS = 200
DEFAULT_PILOT_TARGET = PILOT_MIN_ITEMS


@dataclass(frozen=True)
class DataGateThresholds:
    """The pilot must be a real pilot (GT-01); smoke runs may lower the bounds, recorded in the manifest."""

    min_items: int = PILOT_MIN_ITEMS
    max_items: int = PILOT_MAX_ITEMS

    def to_dict(self) -> dict:
        return {"min_items": self.min_items, "max_items": self.max_items}


def decide_data(qc_summary_path: str | Path, *, validation_failures: Sequence[str], gate: str = PILOT_GATE,
                thresholds: DataGateThresholds | None = None) -> GateDecision:
    """GT-01 over what the run recorded: its QC verdict (read, never recomputed) and the
    Great Expectations results of its files; for the pilot, also its size."""
    from cai_bootstrap.qc import read_qc_decision

    qc_passed, qc_reasons = read_qc_decision(qc_summary_path)
    summary = json.loads(Path(qc_summary_path).read_text(encoding="utf-8"))
    target = int((summary.get("run") or {}).get("target") or 0)
    checks = [
        Check("qc_thresholds", qc_passed, "all QC thresholds passed" if qc_passed else "QC failed: " + "; ".join(qc_reasons)),
        Check("expectations", not validation_failures,
              "Great Expectations suites passed" if not validation_failures
              else f"{len(validation_failures)} validation failure(s): " + "; ".join(list(validation_failures)[:5])),
    ]
    from cai_bootstrap.qc import QCThresholds, loosened_thresholds

    # QC-08 here too: a run that passed only because its own thresholds were loosened must not
    # open the way to scale generation (the training gate refuses it later anyway).
    known = QCThresholds.__dataclass_fields__
    recorded = QCThresholds(**{k: v for k, v in (summary.get("thresholds") or {}).items() if k in known})
    loosened = loosened_thresholds(recorded, QCThresholds())
    checks.append(Check("qc_thresholds_required", not loosened,
                        "QC thresholds at least as strict as the shipped ones" if not loosened
                        else "QC judged under loosened thresholds: " + "; ".join(loosened)))
    t = thresholds or DataGateThresholds()
    if gate == PILOT_GATE:
        checks.append(Check("pilot_size", t.min_items <= target <= t.max_items,
                            f"pilot target {target} (allowed {t.min_items}-{t.max_items})"))
    values = {"qc_thresholds_passed": qc_passed, "qc_failed_reasons": qc_reasons, "target": target,
              "counts": summary.get("counts"), "rates": summary.get("rates"),
              "acceptance": summary.get("acceptance"), "token_stats": summary.get("token_stats"),
              "validation_failures": list(validation_failures)}
    return GateDecision(gate, "GT-01", {**summary.get("thresholds", {}), **t.to_dict()}, values, tuple(checks))


DATA_GATE_INPUTS = {"qc_summary": "qc_summary.json", "dataset": "dataset.jsonl", "session_manifest": "session_manifest.json"}


def run_data_gate(run_dir: str | Path, *, gate: str = PILOT_GATE, thresholds: DataGateThresholds | None = None,
                  out: str | Path | None = None) -> tuple[GateDecision, Path]:
    """GT-01 on a generation run: validation suites + its recorded QC verdict (+ size for a pilot).

    Writes the gate manifest (default ``RUN_DIR/<gate>.json``) that scale generation and
    training read; the same function serves ``cai-bootstrap gate pilot|scale`` and the chain.
    """
    from cai_bootstrap.validation import validate_paths

    run = Path(run_dir)
    if not run.is_dir():
        raise GateInputError(f"{run} is not a generation run directory; run `cai-bootstrap generate` first")
    missing = [name for name in DATA_GATE_INPUTS.values() if not (run / name).is_file()]
    if missing:
        raise GateInputError(f"{run} lacks {', '.join(missing)}; is it a finished `cai-bootstrap generate` run?")
    mode = ((read_json(run / DATA_GATE_INPUTS["qc_summary"], "rerun the generation").get("run") or {}).get("mode"))
    if gate == SCALE_GATE and mode == "pilot":
        raise GateInputError(f"{run} is a pilot run (its QC summary says mode 'pilot'); `gate scale` judges the merged "
                             "scale data: use `gate pilot` for a pilot")
    failures = [r.format() for r in validate_paths([run]) if not r.ok]
    decision = decide_data(run / DATA_GATE_INPUTS["qc_summary"], validation_failures=failures, gate=gate, thresholds=thresholds)
    manifest = Path(out) if out else run / f"{gate}.json"
    write_gate_manifest(decision, manifest, inputs={k: run / v for k, v in DATA_GATE_INPUTS.items()})
    return decision, manifest
