"""The stage registry (ST-01): stages 1..6, each naming its input model, data recipe, training
method, evaluation and gate, and the code that implements each of its steps.

A stage's output model is the next stage's generator: stage 1 starts from the base model,
stage k from stage k-1's trained model, and only when stage k-1's final gate said GO
(GT-02) for that very model. :func:`resolve_input_model` is that rule as code: it reads the
previous stage's final gate manifest, checks the decision and that the gate's inputs and
the adapter it judged are unchanged, and returns the model to start from. An experiment
may start from a model whose gate said no, but only with an explicit override reason,
which is returned with the model so the run records it.

A step is built when it names its entry point (``module:function``); a stage is built
when all its steps are, planned when none is, partial otherwise. The registry is data:
adding a stage is one entry here plus its recipe module, reusing the chain engine
(:mod:`.chain`), the gates and the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cai_bootstrap.evaluation.final_gate import rederive_final_gate
from cai_bootstrap.gates import FINAL_GATE, GateError, check_decision_matches_inputs, rederive_decision
from cai_bootstrap.stages.stage2_gate import CLAUSE as PREFERENCE_GATE_CLAUSE
from cai_bootstrap.stages.stage2_gate import rederive_stage2_final

BASE = "base"  # the input model of stage 1
TRAINING_METHODS = ("sft", "dpo")
STATUSES = ("built", "partial", "planned")
# A stage chain's layout: gate manifests under <run_dir>/gates/, the final one named after its gate.
GATES_DIR = "gates"
FINAL_GATE_MANIFEST = f"{FINAL_GATE}.json"


def input_of(stage_id: int) -> str:
    """The rule of ST-01: stage 1 reads the base model, stage k the output of stage k-1."""
    return BASE if stage_id == 1 else f"stage-{stage_id - 1}"


class StageInputError(ValueError):
    """A stage was asked to start from a model its predecessor's gate did not pass; the message says why."""


@dataclass(frozen=True)
class Step:
    name: str
    entry_point: str | None = None  # "module:function"; None while planned
    note: str = ""

    @property
    def built(self) -> bool:
        return self.entry_point is not None


@dataclass(frozen=True)
class Stage:
    id: int
    name: str
    input_model: str  # "base" or "stage-<k-1>"
    data_recipe: str
    training_method: str
    evaluation: str
    gate: str
    steps: tuple[Step, ...]
    command: str | None = None  # the module `python -m` runs for this stage (its chain, or its gated entry)

    def __post_init__(self) -> None:
        problems = []
        if self.input_model != input_of(self.id):
            problems.append(f"input_model {self.input_model!r} breaks the chain rule (expected {input_of(self.id)!r})")
        if self.training_method not in TRAINING_METHODS:
            problems.append(f"training_method {self.training_method!r} unknown; known: {', '.join(TRAINING_METHODS)}")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names) or not names:
            problems.append(f"steps must be named, each once: {names}")
        if problems:
            raise ValueError(f"stage {self.id} ({self.name}): " + "; ".join(problems))

    @property
    def status(self) -> str:
        built = [s.built for s in self.steps]
        return "built" if all(built) else "planned" if not any(built) else "partial"

    @property
    def run_dir(self) -> Path:
        return Path("runs") / f"stage{self.id}"

    @property
    def final_gate_manifest(self) -> Path:
        """Where the stage's chain writes the gate the next stage reads."""
        return self.run_dir / GATES_DIR / FINAL_GATE_MANIFEST

    def planned_steps(self) -> list[str]:
        return [s.name for s in self.steps if not s.built]


_PAIRED_EVAL = "paired evaluation on the held-out set, this stage's model vs its input model (EV-01..08)"

STAGES: dict[int, Stage] = {s.id: s for s in (
    Stage(1, "explicit instruction following", input_of(1),
          data_recipe="the base model writes instructions and answers in completion mode; A/B critics and QC keep "
                      "what passes; pilot gate, sharded scale, merge, scale gate (DG, CR, QC)",
          training_method="sft", evaluation="paired evaluation, base vs trained, framed and in context (EV-01..08)",
          gate=FINAL_GATE,
          steps=(Step("generate", "cai_bootstrap.datagen.pipeline:run_generation"),
                 Step("data_gate", "cai_bootstrap.gates:run_data_gate"),
                 Step("merge", "cai_bootstrap.datagen.merge:merge_shards"),
                 Step("train", "cai_bootstrap.sft.train:run_training"),
                 Step("evaluate", "cai_bootstrap.evaluation.runner:evaluate_models"),
                 Step("final_gate", "cai_bootstrap.evaluation.final_gate:run_final_gate")),
          command="cai_bootstrap.stage1"),
    Stage(2, "preference optimization", input_of(2),
          data_recipe="Best-of-N pairs: k answers per instruction new to Stage 1 sampled with the Stage-1 model, "
                      "ranked by the A/B pair critic plus the relevance judge, with hard negatives (PO-01, PO-02)",
          training_method="dpo", evaluation=_PAIRED_EVAL, gate=FINAL_GATE,
          steps=(Step("instructions", "cai_bootstrap.stages.stage2:generate_stage2_instructions",
                      "candidate instructions from the base model, on prompt seeds Stage 1 did not use"),
                 Step("pairs", "cai_bootstrap.preference.pairs:run_pairs"),
                 Step("validate", "cai_bootstrap.validation:validate_paths"),
                 Step("pairs_gate", "cai_bootstrap.preference.gate:run_pairs_gate"),
                 Step("train_dpo", "cai_bootstrap.preference.train_dpo:run_dpo"),
                 Step("evaluate", "cai_bootstrap.stages.stage2_eval:evaluate_three_way",
                      "base, stage-1 and stage-2 models on the same items, paired"),
                 Step("final_gate", "cai_bootstrap.stages.stage2_gate:run_stage2_final_gate",
                      "no regression against stage 1 and a significant gain over it")),
          command="cai_bootstrap.stages.stage2"),
    Stage(3, "implicit instructions", input_of(3),
          data_recipe="the stage-2 model writes requests whose instruction is implied (a text to continue, a table "
                      "to fill, a question inside a document) and answers them; critics judge whether the answer "
                      "does what was implied",
          training_method="sft", evaluation=_PAIRED_EVAL + " plus an implicit-instruction item type", gate=FINAL_GATE,
          steps=(Step("generate"), Step("train"), Step("evaluate"), Step("final_gate"))),
    Stage(4, "generation", input_of(4),
          data_recipe="the stage-3 model writes open-ended texts (stories, explanations, summaries) to instructions "
                      "with checkable constraints; verifiers and critics keep those that meet them",
          training_method="sft", evaluation=_PAIRED_EVAL + " plus constrained-generation items", gate=FINAL_GATE,
          steps=(Step("generate"), Step("train"), Step("evaluate"), Step("final_gate"))),
    Stage(5, "evaluation and revision", input_of(5),
          data_recipe="the stage-4 model judges its own answers and revises the ones it finds wanting; "
                      "(revised, original) become preference pairs when the critics prefer the revision",
          training_method="dpo", evaluation=_PAIRED_EVAL, gate=FINAL_GATE,
          steps=(Step("generate"), Step("revise"), Step("pairs"), Step("train"), Step("evaluate"), Step("final_gate"))),
    Stage(6, "constitutional critique and revision", input_of(6),
          data_recipe="the stage-5 model answers, then critiques and revises its answer against principles drawn "
                      "from constitution.yaml, one at a time; revised answers that cleaning keeps are the data (ST-02)",
          training_method="sft", evaluation=_PAIRED_EVAL + " plus harmlessness items", gate=FINAL_GATE,
          steps=(Step("generate"), Step("critique_and_revise", "cai_bootstrap.constitution:critique_and_revise"),
                 Step("train"), Step("evaluate"), Step("final_gate"))),
)}


def get_stage(stage_id: int) -> Stage:
    if stage_id not in STAGES:
        raise KeyError(f"no stage {stage_id!r}; known stages: {', '.join(str(k) for k in STAGES)}")
    return STAGES[stage_id]


def check_registry(stages: Mapping[int, Stage] = STAGES) -> list[str]:
    """Every problem of a registry at once: ids 1..n in order, each under its own id.

    The chain rule itself (stage k reads stage k-1's output) is checked when a Stage is made.
    """
    problems = []
    ids = list(stages)
    if ids != list(range(1, len(ids) + 1)):
        problems.append(f"stage ids must be 1..{len(ids)} in order, got {ids}")
    problems += [f"key {k} holds stage {s.id}" for k, s in stages.items() if k != s.id]
    return problems


# -- the input model of a stage ------------------------------------------------------------------------


@dataclass(frozen=True)
class InputModel:
    """The model a stage starts from, and why it may: the gate that let it through (or the override)."""

    stage: int
    source: str  # "base" or "stage-<k>"
    base_model: str
    adapter_path: str | None = None
    adapter_files: dict = field(default_factory=dict)  # file name -> sha256, as the gate's evaluation recorded
    gate: dict | None = None  # path, sha256, gate, decision, reasons of the previous stage's final gate
    override: dict | None = None  # {"reason", "decision"} when the decision was not GO

    @property
    def run_dir(self) -> Path | None:
        """The training run that made the adapter (its ``training_manifest.json`` and success marker)."""
        return Path(self.adapter_path).parent if self.adapter_path else None

    def to_dict(self) -> dict:
        return {"stage": self.stage, "source": self.source, "base_model": self.base_model, "adapter_path": self.adapter_path,
                "adapter_files": dict(self.adapter_files), "gate": self.gate, "override": self.override}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StageInputError(f"{what} {path} cannot be read ({e})") from None


def _trained_model(summary: Mapping, where: str) -> tuple[str, str, dict]:
    """(base model, adapter folder, adapter file hashes) of the trained model an evaluation summary names."""
    from cai_bootstrap.evaluation.runner import SFT

    sft = ((summary.get("metadata") or {}).get("models") or {}).get(SFT) or {}
    adapter = sft.get("adapter") or {}
    if not sft.get("model_name") or not adapter.get("path") or not adapter.get("files"):
        raise StageInputError(f"{where} names no trained model (metadata.models.{SFT} with model_name and adapter path "
                              "and files); the final gate must judge a paired evaluation of a trained adapter")
    return str(sft["model_name"]), str(adapter["path"]), dict(adapter["files"])


def decide_again(manifest: Mapping):
    """A stage's final gate decided again on its pinned inputs, by the decider of its kind."""
    if manifest.get("gate") != FINAL_GATE:
        return rederive_decision(manifest)
    if manifest.get("clause") == PREFERENCE_GATE_CLAUSE:
        return rederive_stage2_final(manifest)
    if manifest.get("clause") == "GT-02":
        return rederive_final_gate(manifest)
    raise GateError(f"gate {manifest.get('gate')}: unknown clause {manifest.get('clause')!r}; rerun the gate")


def resolve_input_model(stage_id: int, *, gate_manifest: str | Path | None = None, base_model: str | None = None,
                        override: str | None = None) -> InputModel:
    """The model stage ``stage_id`` starts from; see the module docstring for the rule.

    Stage 1 needs ``base_model``. Stage k reads stage k-1's final gate manifest (default:
    its chain's ``runs/stage<k-1>/gates/final_eval.json``); it must say ``pass`` for the
    model its evaluation names, unless ``override`` gives a reason, which is returned.
    """
    from cai_bootstrap.io_utils import sha256_file

    stage = get_stage(stage_id)
    if stage.input_model == BASE:
        if not base_model:
            raise StageInputError(f"stage {stage_id} starts from a base model; name it (a folder, a hub id or a built-in name)")
        return InputModel(stage_id, BASE, base_model)
    if override is not None and not override.strip():
        raise StageInputError("an override needs a reason (it is recorded with the run); give one or drop the override")
    prev = get_stage(stage_id - 1)
    path = Path(gate_manifest) if gate_manifest is not None else prev.final_gate_manifest
    if not path.is_file():
        raise StageInputError(f"stage {stage_id} starts from stage {prev.id}'s model, which needs stage {prev.id}'s final gate "
                              f"manifest; {path} does not exist. Run stage {prev.id} to its final gate (nox -s stage{prev.id}) "
                              "or pass the manifest's path")
    m = _read_json(path, "gate manifest")
    if not isinstance(m, dict) or m.get("gate") != prev.gate or m.get("decision") not in ("pass", "fail"):
        raise StageInputError(f"{path} is not stage {prev.id}'s final gate manifest (expected gate {prev.gate!r} with a "
                              f"pass/fail decision, got gate {m.get('gate') if isinstance(m, dict) else None!r})")
    inputs = {i.get("name"): i for i in m.get("inputs") or [] if isinstance(i, dict)}
    if "eval_summary" not in inputs:
        raise StageInputError(f"{path} records no eval_summary input; it cannot say which model it judged")
    changed = [f"{name} ({i.get('path')})" for name, i in inputs.items()
               if not Path(str(i.get("path"))).is_file() or sha256_file(Path(str(i.get("path")))) != i.get("sha256")]
    if changed:
        raise StageInputError(f"{path}: its inputs are missing or changed since the decision: {', '.join(changed)}; "
                              "rerun the evaluation and the gate")
    try:
        check_decision_matches_inputs(m, path, decide_again)  # the decision, not only the hashes, must follow from the inputs
    except GateError as e:
        raise StageInputError(str(e)) from None
    base, adapter, files = _trained_model(_read_json(Path(inputs["eval_summary"]["path"]), "evaluation summary"),
                                          inputs["eval_summary"]["path"])
    now = {name: (sha256_file(Path(adapter) / name) if (Path(adapter) / name).is_file() else None) for name in files}
    moved = [name for name, sha in files.items() if now[name] != sha]
    if moved:
        raise StageInputError(f"the adapter the gate judged ({adapter}) has changed or lost files since: {', '.join(moved)}; "
                              f"it is not the model stage {prev.id}'s gate passed")
    reasons = list(m.get("reasons") or [])
    gate = {"path": str(path.resolve()), "sha256": sha256_file(path), "gate": m["gate"], "decision": m["decision"],
            "reasons": reasons}
    recorded_override = None
    if m["decision"] != "pass":
        if override is None:
            raise StageInputError(f"stage {stage_id} starts only from a model whose stage-{prev.id} final gate said GO; "
                                  f"{path} says FAIL: {'; '.join(reasons) or 'no reasons recorded'}. Improve stage {prev.id} "
                                  "and rerun its gate, or pass an override reason to run this as an experiment (recorded)")
        recorded_override = {"reason": override.strip(), "decision": m["decision"]}
    return InputModel(stage_id, input_of(stage_id), base, adapter, files, gate, recorded_override)
