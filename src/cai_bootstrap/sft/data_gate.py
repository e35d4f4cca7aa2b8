"""What must be true of the data before a training run may start (SFT-01, SFT-06).

A gate that lives only in a nox session is skipped by anyone who calls the trainer
directly, so these checks are code on the training path itself. They run before any
model loads and stop at the first failure with the check's name and the fix:

1. ``manifest``: the generation run's ``session_manifest.json`` exists;
2. ``hashes``: it lists ``dataset.jsonl`` and ``qc_summary.json`` and both still have
   the sha256 it pinned (an edited dataset is a new dataset and needs its own run);
3. ``qc``: ``qc_summary.json`` says ``thresholds_passed: true`` (read, never recomputed);
   ``qc_thresholds``: and the thresholds it was judged under are no looser than those
   required: the caller's, else the shipped defaults, and never looser than the ``qc``
   section of the run configuration its manifest records (QC-08). A verdict that follows
   from its own thresholds proves nothing if the thresholds were raised until it passed;
4. ``expectations``: the dataset passes its Great Expectations suite;
5. ``records``: every record has a non-empty ``instruction`` and ``response``.

Then the leakage check: no training instruction may repeat a held-out evaluation
instruction exactly, after normalization, or as a near duplicate (ROUGE-L F above 0.7,
the self-instruct rule, via :mod:`cai_bootstrap.dedup`). A leak would make the
evaluation measure memorisation; any hit aborts and every pair is listed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from cai_bootstrap.dedup import KIND_EXACT, KIND_NEAR, KIND_NORMALIZED, KIND_REORDERED, NEAR_DUP_THRESHOLD, DuplicateIndex, best_set_matches
from cai_bootstrap.screening import record_problems

DATASET_FILE = "dataset.jsonl"
QC_FILE = "qc_summary.json"
MANIFEST_FILE = "session_manifest.json"
GATE_CHECKS = ("manifest", "hashes", "qc", "qc_thresholds", "expectations", "records")

# A validator returns the failed expectations of one file (empty: it passed).
Validator = Callable[[Path], Sequence[str]]


@dataclass(frozen=True)
class DataGateSpec:
    """What one kind of training data is: its files, its suite, its QC reading and its record rule.

    The checks and their order are the gate's; a new training method (DPO on pairs) brings
    its own spec and gets the same gate, not a copy of it.
    """

    dataset_file: str
    qc_file: str
    artifact_type: str
    # (qc_summary path) -> (passed, failed reasons); raises ValueError on a malformed or inconsistent summary
    read_qc: Callable[[Path], tuple[bool, list[str]]]
    # (qc_summary path, session manifest path, required thresholds or None) -> a line for the gate manifest
    check_thresholds: Callable[[Path, Path, object], str]
    # problems of the records (empty: fine), e.g. empty texts or a schema break
    check_records: Callable[[list[dict]], list[str]]
    producer: str = "data generation"


class DataGateError(RuntimeError):
    """Training refused: ``check`` names the failed gate check; the message says how to fix it."""

    def __init__(self, check: str, message: str):
        super().__init__(f"training refused by the data gate [{check}]: {message}")
        self.check = check


class EvalLeakageError(RuntimeError):
    """Training data repeats held-out evaluation items (SFT-06); ``hits`` lists every pair."""

    def __init__(self, hits: Sequence["LeakHit"]):
        shown = "\n  ".join(h.describe() for h in hits[:50])
        more = f"\n  ... and {len(hits) - 50} more" if len(hits) > 50 else ""
        super().__init__(
            f"training refused: {len(hits)} training instruction(s) overlap the held-out eval set (SFT-06):\n  {shown}{more}\n"
            "Fix: remove these records in the data generation run (its dedup step takes the eval set as a blocklist) "
            "and regenerate, so the dataset gets a new manifest."
        )
        self.hits = list(hits)


@dataclass
class GateResult:
    run_dir: Path
    dataset_path: Path
    dataset_sha256: str
    qc_summary_path: Path
    manifest_path: Path
    records: list[dict] = field(repr=False)
    checks: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "dataset_path": str(self.dataset_path),
            "dataset_sha256": self.dataset_sha256,
            "qc_summary_path": str(self.qc_summary_path),
            "manifest_path": str(self.manifest_path),
            "n_records": len(self.records),
            "checks": dict(self.checks),
        }


def _run_dir(path: str | Path, spec: DataGateSpec) -> Path:
    p = Path(path)
    if p.is_file() and p.name == spec.dataset_file:
        return p.parent
    if not p.exists():
        raise DataGateError("manifest", f"dataset path {p} does not exist; give the run directory of a {spec.producer} run")
    if not p.is_dir():
        raise DataGateError("manifest", f"{p} is not a run directory or its {spec.dataset_file}")
    return p


def default_validator(path: Path, artifact_type: str = "sft_records") -> list[str]:
    """The artifact's Great Expectations suite (PV-06) over the dataset: its failures, or nothing."""
    try:
        from cai_bootstrap import validation
    except ImportError as e:  # the validate extra (great-expectations) is missing
        raise DataGateError(
            "expectations",
            f"cannot run the Great Expectations suite ({e}); install it with: pip install 'cai-bootstrap[validate]'",
        ) from None
    try:
        report = validation.validate_file(path, artifact_type=artifact_type)
    except validation.ValidationSetupError as e:
        raise DataGateError("expectations", f"cannot run the Great Expectations suite: {e}") from None
    failures = [str(f) for f in report.failures]
    if report.error:
        failures.insert(0, report.error)
    return failures


def _sft_read_qc(path: Path) -> tuple[bool, list[str]]:
    from cai_bootstrap.qc import read_qc_decision

    return read_qc_decision(path)


def _sft_records(records: list[dict]) -> list[str]:
    empty = [
        f"record {i + 1}: {key} must be a non-empty string"
        for i, r in enumerate(records)
        for key in ("instruction", "response")
        if not isinstance(r.get(key), str) or not r[key].strip()
    ]
    # Before any model loads: markup, invisible or control characters, a second prompt, a huge field.
    return empty + record_problems(records, {"instruction": "instruction", "response": "response"})


def check_dataset_gate(run_dir: str | Path, *, validator: Validator | None = None,
                       required_thresholds=None, spec: DataGateSpec | None = None) -> GateResult:
    """Run the checks in order; raise :class:`DataGateError` at the first failure.

    ``required_thresholds`` (a ``QCThresholds``, or the spec's own kind): the least strict
    QC the training run accepts; None means the shipped defaults. ``spec``: which kind of
    data (default: Stage-1 SFT records).
    """
    from cai_bootstrap.io_utils import MalformedInputError, read_jsonl
    from cai_bootstrap.provenance import InputIntegrityError, verify_inputs

    spec = spec or SFT_GATE
    DATASET_FILE, QC_FILE = spec.dataset_file, spec.qc_file  # noqa: N806 (the messages below name these files)
    run = _run_dir(run_dir, spec)
    manifest = run / MANIFEST_FILE
    checks: dict[str, str] = {}

    if not manifest.is_file():
        raise DataGateError(
            "manifest",
            f"{manifest} does not exist. Training accepts only the output of a finished {spec.producer} run, whose "
            f"manifest pins the sha256 of {DATASET_FILE} and {QC_FILE}. Fix: point the dataset at that run directory, "
            "or finish the run (cai-bootstrap generate ... resumes it).",
        )
    checks["manifest"] = f"found {manifest}"

    try:
        verified = verify_inputs(manifest, required=[DATASET_FILE, QC_FILE])
    except InputIntegrityError as e:
        raise DataGateError(
            "hashes",
            f"{e}\nFix: restore the files the manifest vouches for, or regenerate the dataset; a changed dataset "
            "must come from a run that writes its own manifest (never edit dataset.jsonl in place).",
        ) from None
    except (ValueError, FileNotFoundError) as e:
        raise DataGateError("hashes", f"{manifest}: {e}\nFix: regenerate the run; its manifest is unreadable.") from None
    dataset, qc_path = verified[DATASET_FILE], verified[QC_FILE]
    from cai_bootstrap.io_utils import sha256_file

    dataset_sha = sha256_file(dataset)
    checks["hashes"] = f"{len(verified)} file(s) match the manifest; {DATASET_FILE} sha256 {dataset_sha}"

    try:
        passed, reasons = spec.read_qc(qc_path)
    except ValueError as e:  # QCSummaryError and its kin for other data are ValueErrors
        raise DataGateError("qc", f"{e}") from None
    if not passed:
        raise DataGateError(
            "qc",
            f"{qc_path} says thresholds_passed: false ({'; '.join(reasons) or 'no reason recorded'}). "
            "Fix: tune generation (prompts, critics, decoding) and regenerate until the pilot passes QC (GT-01); "
            "the thresholds are not loosened to let a dataset through.",
        )
    checks["qc"] = "thresholds_passed: true"
    checks["qc_thresholds"] = spec.check_thresholds(qc_path, manifest, required_thresholds)

    failures = list(validator(dataset) if validator else default_validator(dataset, spec.artifact_type))
    if failures:
        shown = "\n  ".join(failures[:20]) + (f"\n  ... {len(failures) - 20} more" if len(failures) > 20 else "")
        raise DataGateError(
            "expectations",
            f"{dataset} fails its Great Expectations suite:\n  {shown}\n"
            "Fix: the generation run wrote malformed records; regenerate it (cai-bootstrap validate shows the same report).",
        )
    checks["expectations"] = "suite passed"

    try:
        records = read_jsonl(dataset)
    except MalformedInputError as e:
        raise DataGateError("records", str(e)) from None
    bad = spec.check_records(records)
    if bad or not records:
        raise DataGateError("records", ("; ".join(bad[:20]) if bad else f"{dataset} holds no records") + ". Fix: regenerate the dataset.")
    checks["records"] = f"{len(records)} records pass the record checks"
    return GateResult(run, dataset, dataset_sha, qc_path, manifest, records, checks)


def _check_recorded_thresholds(qc_path: Path, manifest: Path, required) -> str:
    """QC-08: the summary's thresholds against the required ones and its run's own config."""
    import json

    from cai_bootstrap.qc import QCThresholds, loosened_thresholds

    summary = json.loads(qc_path.read_text(encoding="utf-8"))
    recorded = QCThresholds(**summary["thresholds"])  # read_qc_decision has validated them
    references = {"required": required if required is not None else QCThresholds()}
    run_qc = (json.loads(manifest.read_text(encoding="utf-8")).get("config") or {}).get("qc")
    if isinstance(run_qc, dict):
        try:
            references["the run's configuration"] = QCThresholds(**run_qc)
        except (TypeError, ValueError) as e:
            raise DataGateError("qc_thresholds", f"{manifest}: its config.qc is malformed ({e}); regenerate the run") from None
    problems = [f"{line} ({what})" for what, ref in references.items() for line in loosened_thresholds(recorded, ref)]
    if problems:
        raise DataGateError(
            "qc_thresholds",
            f"{qc_path} was judged under loosened QC thresholds: {'; '.join(problems)}. "
            "Fix: regenerate the data under the required thresholds; a summary passed by raising them is not a pass.",
        )
    return "recorded thresholds are no looser than " + " and ".join(references)


SFT_GATE = DataGateSpec(
    dataset_file=DATASET_FILE,
    qc_file=QC_FILE,
    artifact_type="sft_records",
    read_qc=_sft_read_qc,
    check_thresholds=_check_recorded_thresholds,
    check_records=_sft_records,
)


# -- SFT-06: leakage against the held-out eval set ---------------------------------------------------


@dataclass(frozen=True)
class LeakHit:
    kind: str  # exact | normalized | near_duplicate (ROUGE-L) | reordered (word-set Jaccard)
    train_index: int
    train_text: str
    eval_id: str
    eval_text: str
    score: float

    def describe(self) -> str:
        return (
            f"{self.kind} ({'Jaccard of word sets' if self.kind == 'reordered' else 'ROUGE-L'} {self.score:.2f}): training record {self.train_index + 1} {self.train_text[:100]!r} "
            f"~ eval item {self.eval_id} {self.eval_text[:100]!r}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


_LEAK_KINDS = {KIND_EXACT: "exact", KIND_NORMALIZED: "normalized", KIND_NEAR: "near_duplicate", KIND_REORDERED: "reordered"}


def find_leaks(
    train_texts: Sequence[str],
    eval_items: Sequence[tuple[str, str]],
    *,
    threshold: float = NEAR_DUP_THRESHOLD,
    pairwise: bool = False,
) -> list[LeakHit]:
    """Every training text that repeats an eval text (``(id, text)`` pairs); the strongest match each
    (the earliest eval item among equal scores).

    The eval items form a :class:`DuplicateIndex` (DG-09), so the search is the one
    deduplication uses; ``pairwise=True`` compares every pair (the reference). ROUGE-L follows
    word order, so a text that only reorders an eval item's words ("Using exactly 8 words, write
    a sentence about snowfall." / "Write a sentence about snowfall using exactly 8 words.",
    ROUGE-L 0.56) is caught beside it by the Jaccard similarity of the two word sets, at the same
    threshold.
    """
    index = DuplicateIndex(threshold, pairwise=pairwise)
    for _, text in eval_items:
        index.add(text)
    hits: list[LeakHit] = []
    for i, text in enumerate(train_texts):
        m = index.find(text, best=True)
        if m is not None:
            j = m.position
            score = m.score if m.kind != KIND_NEAR else round(m.score, 4)
            hits.append(LeakHit(_LEAK_KINDS[m.kind], i, text, eval_items[j][0], eval_items[j][1], score))
    found = {h.train_index for h in hits}
    for i, j, score in best_set_matches(train_texts, [t for _, t in eval_items], threshold):
        if i not in found:
            hits.append(LeakHit(_LEAK_KINDS[KIND_REORDERED], i, train_texts[i], eval_items[j][0], eval_items[j][1], round(score, 4)))
    return sorted(hits, key=lambda h: h.train_index)


def load_eval_instructions(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(id, instruction) of every held-out item; the shipped set when ``path`` is None."""
    from cai_bootstrap.io_utils import iter_jsonl

    if path is None:
        from cai_bootstrap.evaluation.evalset import load_eval_set

        items = load_eval_set()
        return [(str(it.get("id", f"item-{k + 1}")), it["instruction"]) for k, it in enumerate(items)]
    out: list[tuple[str, str]] = []
    for line, rec in iter_jsonl(path):
        text = rec.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: line {line}: eval item lacks a non-empty 'instruction'")
        out.append((str(rec.get("id", f"line-{line}")), text))
    if not out:
        raise ValueError(f"{path}: the eval set is empty; the leakage check needs the held-out items")
    return out


def check_no_leakage(
    records: Iterable[Mapping[str, str]],
    eval_items: Sequence[tuple[str, str]],
    *,
    threshold: float = NEAR_DUP_THRESHOLD,
) -> dict:
    """Abort with every overlapping pair, or return what was checked (for the training manifest)."""
    texts = [r["instruction"] for r in records]
    hits = find_leaks(texts, eval_items, threshold=threshold)
    if hits:
        raise EvalLeakageError(hits)
    return {
        "train_instructions": len(texts),
        "eval_items": len(eval_items),
        "checks": ["exact", "normalized", f"near_duplicate (ROUGE-L > {threshold})"],
        "hits": 0,
    }
