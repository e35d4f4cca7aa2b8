"""The gated Stage-2 chain: input model -> instructions -> pairs -> pairs gate -> DPO ->
three-way evaluation -> final gate -> report.

    python -m cai_bootstrap.stages.stage2 --config C [STAGE1_FINAL_GATE] [--override REASON] [--run-dir D] [--until PHASE]

Stage 2 starts only from the model Stage 1's final gate passed (ST-01,
:func:`~cai_bootstrap.stages.registry.resolve_input_model`); ``--override`` lets an
experiment start from a model the gate failed, and the reason is recorded in
``<run_dir>/input_model.json`` and, through ``stage1_gate``, in the DPO model's lineage (ST-03).

Each phase calls the typed function the matching command calls (never the CLI), on the
generic engine :mod:`cai_bootstrap.stages.chain` (hashed phase manifests under
``<run_dir>/stage2/``, resume, redo on changed inputs, stop at a failed gate):

- instructions: the *base* model writes candidate instructions with Stage 1's machinery
  (:func:`~cai_bootstrap.datagen.pipeline.generate_instructions`, DG-01 oversampling) from
  prompt seeds offset by :data:`INSTRUCTION_SEED_OFFSET`, so they are new samples rather
  than Stage 1's prompts again; the pairs run removes any that repeat Stage-1 data or the
  eval set (:func:`~cai_bootstrap.preference.pairs.new_instructions`).
- pairs: Best-of-N with the Stage-1 model as generator, plus hard negatives (PO-01/02).
- pairs_gate: the pair suites (PV-06) and pair QC, as ``gates/pairs_gate.json``.
- dpo: DPO on top of the Stage-1 model (PO-03), its gate and Stage 1's final gate in the lineage.
- evaluate / final_gate: :mod:`.stage2_eval` and :mod:`.stage2_gate`; report: :mod:`.stage2_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai_bootstrap.config_io import Seed, UserPath, format_validation_errors, read_yaml_section
from cai_bootstrap.evaluation.runner import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from cai_bootstrap.gates import DEFAULT_ALPHA
from cai_bootstrap.io_utils import atomic_write_json, atomic_write_jsonl, atomic_write_text
from cai_bootstrap.stages.chain import Chain, ChainError, Phase, PhaseResult, PhaseStateError, check_phase_name, config_files, gate_result
from cai_bootstrap.stages.registry import FINAL_GATE_MANIFEST, GATES_DIR, InputModel, StageInputError, get_stage, resolve_input_model
from cai_bootstrap.sft.train import SUCCESS_MARKER
from cai_bootstrap.stages.stage2_gate import GUARDED_CATEGORIES

STAGE = 2
STATE_DIR = "stage2"
INPUT_RECORD = "input_model.json"  # under the run directory (the phase manifest of the same name is under stage2/)
EXIT_STOPPED = 1
EXIT_REFUSED = 2
# Stage 1 seeds instruction prompt i with seed + i; Stage 2 starts its prompts this far on, so its
# few-shot draws and sampling seeds are new ones whatever Stage 1's seed and size were.
INSTRUCTION_SEED_OFFSET = 1_000_000_000
PAIRS_GATE_MANIFEST = "pairs_gate.json"
INSTRUCTIONS_FILE = "instructions.jsonl"
INSTRUCTIONS_MANIFEST = "instructions_manifest.json"


# -- configuration -------------------------------------------------------------------------------


class Stage2Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage1_gate: UserPath = Field(get_stage(1).final_gate_manifest, validate_default=True)
    override: str | None = None  # a reason to start from a model Stage 1's gate failed; recorded
    run_dir: UserPath = Field(get_stage(STAGE).run_dir, validate_default=True)
    profile: str | None = None
    device: str | None = None
    seed: Seed = 0
    quiet: bool = False
    # instructions: how many the pairs run should get (the generator oversamples, DG-01), and their decoding
    instructions_target: int = Field(200, ge=1)
    instruction_decoding: dict = Field(default_factory=dict)  # InstructionGen fields (max_new_tokens, batch_size, ...)
    pairs_config: UserPath | None = None  # pairs YAML; default: the shipped pairs_default.yaml
    pairs_overrides: dict = Field(default_factory=dict)  # dotted PairsConfig fields (k, qc.min_pairs, ...)
    dpo_config: UserPath | None = None  # DPO YAML; default: the shipped dpo_default.yaml
    dpo_overrides: dict = Field(default_factory=dict)
    eval_set: UserPath | None = None  # default: the shipped held-out set (Stage 1's)
    eval_limit: int | None = Field(None, ge=1)
    eval_max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=8)
    eval_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    final_alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    guarded_categories: tuple[str, ...] = GUARDED_CATEGORIES
    target_types: tuple[str, ...] | None = None  # where a gain may come from; None: any type


def load_stage2_config(path: str | Path | None, **overrides) -> Stage2Config:
    data: dict = read_yaml_section(path, "stage2", ChainError) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = Stage2Config.model_validate(data)
    except ValidationError as e:
        raise ChainError(f"invalid stage-2 config: {format_validation_errors(e)}") from None
    problems = override_problems(cfg)
    if problems:
        raise ChainError("invalid stage-2 config: " + "; ".join(problems))
    return cfg


def override_problems(cfg: Stage2Config) -> list[str]:
    """What the phases would refuse only when they run (an hour in, after DPO), found before any runs:
    unknown override fields, guarded categories and target types the evaluation set does not have."""
    from cai_bootstrap.datagen.config import InstructionGen
    from cai_bootstrap.evaluation.evalset import DEFAULT_EVAL_SET, load_eval_set
    from cai_bootstrap.preference.config import DPORunConfig
    from cai_bootstrap.preference.pairs_config import PairsConfig

    problems = []
    for name, model, given in (("instruction_decoding", InstructionGen, cfg.instruction_decoding),
                               ("pairs_overrides", PairsConfig, cfg.pairs_overrides),
                               ("dpo_overrides", DPORunConfig, cfg.dpo_overrides)):
        unknown = sorted(k for k in given if str(k).split(".")[0] not in model.model_fields)
        if unknown:
            problems.append(f"{name}: unknown fields {unknown} (known: {', '.join(sorted(model.model_fields))})")
    items = load_eval_set(cfg.eval_set or DEFAULT_EVAL_SET)
    categories, types = {x["category"] for x in items}, {x["type"] for x in items}
    if set(cfg.guarded_categories) - categories:
        problems.append(f"guarded_categories {sorted(set(cfg.guarded_categories) - categories)} are not categories of the "
                        f"evaluation set ({', '.join(sorted(categories))})")
    if cfg.target_types is not None and set(cfg.target_types) - types:
        problems.append(f"target_types {sorted(set(cfg.target_types) - types)} are not types of the evaluation set "
                        f"({', '.join(sorted(types))})")
    return problems


# -- the phases ------------------------------------------------------------------------------------


def _input(ch: Chain) -> InputModel:
    return resolve_input_model(STAGE, gate_manifest=ch.cfg.stage1_gate, override=ch.cfg.override)


def _recorded_input(ch: Chain) -> dict:
    return json.loads(ch.p(INPUT_RECORD).read_text(encoding="utf-8"))


def stage1_data(inp: InputModel) -> Path:
    """The generation run the Stage-1 adapter was trained on, as its training manifest records it."""
    from cai_bootstrap.sft.train import MANIFEST_NAME

    path = inp.run_dir / MANIFEST_NAME
    try:
        return Path(json.loads(path.read_text(encoding="utf-8"))["dataset"]["run_dir"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageInputError(f"{path}: cannot read the Stage-1 dataset it names ({e}); is {inp.run_dir} a finished SFT run?") from None


def _input_model(ch: Chain) -> PhaseResult:
    inp = _input(ch)
    record = atomic_write_json(ch.p(INPUT_RECORD), {**inp.to_dict(), "stage1_data": str(stage1_data(inp))})
    ch.say(f"input model: {inp.adapter_path} on base {inp.base_model}; stage-1 gate {inp.gate['decision'].upper()}"
           + (f" (OVERRIDE: {inp.override['reason']})" if inp.override else ""))
    return PhaseResult([record], values={"base_model": inp.base_model, "adapter": inp.adapter_path,
                                         "gate_decision": inp.gate["decision"], "override": inp.override})


def _sampler(ch: Chain):
    """What the sampling phases wrap their loaded model in; tests script the sampling of a random model (as datagen's do)."""
    return getattr(ch, "sampler", None) or (lambda lm: lm)


def _resolved(ch: Chain, spec: str):
    from cai_bootstrap.model_sources import resolve_model

    return resolve_model(spec, profile=ch.cfg.profile)


def generate_stage2_instructions(lm, *, target: int, seed: int, out: Path, decoding: dict, quiet: bool = True) -> dict:
    """Candidate instructions from the base model, Stage 1's generator and parser, prompt seeds offset
    by :data:`INSTRUCTION_SEED_OFFSET`; writes the JSONL the pairs run reads and returns the counts."""
    from cai_bootstrap.datagen.config import GenerateConfig
    from cai_bootstrap.datagen.pipeline import RAW_INSTRUCTIONS, WORK, generate_instructions
    from cai_bootstrap.datagen.store import PhaseStore
    from cai_bootstrap.io_utils import sha256_file
    from cai_bootstrap.provenance import utc_now

    gcfg = GenerateConfig(model=str(lm.provenance.get("model_name", "base")), mode="scale", target=target,
                          seed=seed + INSTRUCTION_SEED_OFFSET, out_dir=out, quiet=quiet, instructions=decoding)
    # A rerun resumes the rounds already sampled, but only rounds drawn the same way: rows of other
    # settings or another model are set aside (kept, renamed), never mixed in.
    made_by = {"seed": gcfg.seed, "instructions": gcfg.instructions.model_dump(mode="json"),
               "weights": (lm.provenance.get("weights") or {}).get("combined"), "generation": lm.provenance.get("generation")}
    state = out / WORK / "state.json"
    if (out / WORK).is_dir() and (not state.is_file() or json.loads(state.read_text(encoding="utf-8")) != made_by):
        (out / WORK).rename(out / f"{WORK}.replaced-{utc_now().replace(':', '')}")
    atomic_write_json(state, made_by)
    store = PhaseStore(out / WORK / RAW_INSTRUCTIONS)
    kept, rejects = generate_instructions(lm, gcfg, store)
    path = atomic_write_jsonl(out / INSTRUCTIONS_FILE, [{"id": f"s2-{c['id']}", "instruction": c["instruction"]} for c in kept])
    atomic_write_jsonl(out / "rejects.jsonl", rejects)
    indices = sorted({c["prompt_index"] for c in kept} | {r["prompt_index"] for r in rejects if "prompt_index" in r})
    atomic_write_json(out / INSTRUCTIONS_MANIFEST, {
        "created": utc_now(), "kept": len(kept), "target": target, "requested": gcfg.instructions.n_candidates(target),
        "rejects": len(rejects), "prompt_seed_offset": INSTRUCTION_SEED_OFFSET,
        "prompt_seeds": [gcfg.seed + i for i in (indices[0], indices[-1])] if indices else None,
        "decoding": gcfg.instructions.model_dump(mode="json"), "generator": "base model",
        "load_provenance": dict(lm.provenance), "instructions": {"path": str(path), "sha256": sha256_file(path)}})
    return {"kept": len(kept), "rejects": len(rejects)}


def _instructions(ch: Chain) -> PhaseResult:
    from cai_bootstrap.loader import load_base_model

    inp = _recorded_input(ch)
    resolved = _resolved(ch, inp["base_model"])
    lm = _sampler(ch)(load_base_model(resolved.source, profile=resolved.profile, device=ch.cfg.device))
    try:
        counts = generate_stage2_instructions(lm, target=ch.cfg.instructions_target, seed=ch.cfg.seed, out=ch.p("instructions"),
                                              decoding=ch.cfg.instruction_decoding, quiet=ch.cfg.quiet)
    finally:
        lm.release()
    if not counts["kept"]:
        raise ChainError(f"the base model wrote no usable instruction ({counts['rejects']} rejected, reasons in "
                         f"{ch.p('instructions', 'rejects.jsonl')}); raise instructions_target or instruction_decoding.max_new_tokens")
    return PhaseResult([ch.p("instructions", INSTRUCTIONS_FILE), ch.p("instructions", INSTRUCTIONS_MANIFEST)], values=counts)


def _pairs_files(ch: Chain) -> list[Path]:
    from cai_bootstrap.preference.gate import PAIRS_GATE_INPUTS

    return [ch.p("pairs", name) for name in PAIRS_GATE_INPUTS.values()]


def _pairs(ch: Chain) -> PhaseResult:
    from cai_bootstrap.preference.config import default_config_path
    from cai_bootstrap.preference.pairs import run_pairs
    from cai_bootstrap.preference.pairs_config import load_pairs_config

    inp = _recorded_input(ch)
    cfg = load_pairs_config(ch.cfg.pairs_config or default_config_path().parent / "pairs_default.yaml", {
        **ch.cfg.pairs_overrides, "model": inp["base_model"], "profile": ch.cfg.profile, "sft_run": str(Path(inp["adapter_path"]).parent),
        "stage1_data": inp["stage1_data"], "instructions": str(ch.p("instructions", INSTRUCTIONS_FILE)),
        "out_dir": str(ch.p("pairs")), "eval_set": str(ch.cfg.eval_set) if ch.cfg.eval_set else None, "device": ch.cfg.device})
    ch.say(f"run_pairs(k={cfg.k}, instructions={cfg.instructions}, out_dir={cfg.out_dir})")
    from cai_bootstrap.evaluation.runner import load_trained_model

    resolved = _resolved(ch, inp["base_model"])
    lm = _sampler(ch)(load_trained_model(resolved.source, inp["adapter_path"], profile=resolved.profile, device=ch.cfg.device))
    try:
        summary = run_pairs(cfg, lm=lm)  # its QC verdict is judged by the pairs gate next
    finally:
        lm.release()
    return PhaseResult(_pairs_files(ch), values={"counts": summary["counts"], "thresholds_passed": summary["thresholds_passed"]})


def _pairs_gate(ch: Chain) -> PhaseResult:
    from cai_bootstrap.preference.gate import run_pairs_gate

    decision, manifest = run_pairs_gate(ch.p("pairs"), out=ch.p(GATES_DIR, PAIRS_GATE_MANIFEST))
    ch.say(decision.headline())
    return gate_result(manifest)


def _dpo_device(device: str | None) -> str:
    return "auto" if device is None else "cuda" if device.startswith("cuda") else device


def _dpo(ch: Chain) -> PhaseResult:
    from cai_bootstrap.gates import require_gate_passed
    from cai_bootstrap.preference.config import default_config_path, load_config
    from cai_bootstrap.preference.train_dpo import run_dpo
    from cai_bootstrap.sft.train import MANIFEST_NAME, SUCCESS_MARKER

    require_gate_passed(ch.p(GATES_DIR, PAIRS_GATE_MANIFEST))  # enforced again inside the phase it protects
    inp = _recorded_input(ch)
    out = ch.p("dpo")
    cfg = load_config(ch.cfg.dpo_config or default_config_path(), {
        **ch.cfg.dpo_overrides, "model": inp["base_model"], "profile": ch.cfg.profile, "sft_run": str(Path(inp["adapter_path"]).parent),
        "pairs": str(ch.p("pairs")), "output_dir": str(out), "eval_set": str(ch.cfg.eval_set) if ch.cfg.eval_set else None,
        "stage1_gate": inp["gate"]["path"], "device": _dpo_device(ch.cfg.device)})
    ch.say(f"run_dpo(method={cfg.method}, beta={cfg.beta}, pairs={cfg.pairs}, output_dir={cfg.output_dir})")
    result = run_dpo(cfg)
    return PhaseResult([out / SUCCESS_MARKER, out / MANIFEST_NAME], values={"global_step": result.global_step})


def _evaluate(ch: Chain) -> PhaseResult:
    from cai_bootstrap.evaluation.evalset import DEFAULT_EVAL_SET, load_eval_set
    from cai_bootstrap.evaluation.report import StatsConfig
    from cai_bootstrap.evaluation.runner import BASE, EvalDecoding, load_trained_model
    from cai_bootstrap.io_utils import sha256_file
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.preference.train_dpo import load_dpo_model
    from cai_bootstrap.stages.stage2_eval import STAGE1, STAGE2, evaluate_three_way

    inp = _recorded_input(ch)
    resolved = _resolved(ch, inp["base_model"])
    kw = dict(profile=resolved.profile, device=ch.cfg.device)
    eval_path = Path(ch.cfg.eval_set) if ch.cfg.eval_set else DEFAULT_EVAL_SET
    items = load_eval_set(eval_path, limit=ch.cfg.eval_limit)
    factories = {BASE: lambda: load_base_model(resolved.source, **kw),
                 STAGE1: lambda: load_trained_model(resolved.source, inp["adapter_path"], **kw),
                 STAGE2: lambda: load_dpo_model(resolved.source, ch.p("dpo"), **kw)}
    eval_set = {"path": str(eval_path.resolve()), "sha256": sha256_file(eval_path), "limit": ch.cfg.eval_limit,
                "n_items_used": len(items), "model_spec": resolved.to_dict()}
    decoding = EvalDecoding(max_new_tokens=ch.cfg.eval_max_new_tokens, batch_size=ch.cfg.eval_batch_size, seed=ch.cfg.seed)
    ch.say(f"evaluate_three_way({len(items)} items; base, stage 1, stage 2)")
    summary = evaluate_three_way(items, factories, ch.p("eval"), decoding=decoding, stats=StatsConfig(seed=ch.cfg.seed),
                                 eval_set=eval_set, progress=False if ch.cfg.quiet else None)
    return PhaseResult(sorted(p for p in ch.p("eval").iterdir() if p.is_file()),
                       values={name: {k: c["overall"][k] for k in ("lift", "mcnemar_p")} for name, c in summary["comparisons"].items()})


def _final(ch: Chain) -> PhaseResult:
    from cai_bootstrap.stages.stage2_gate import Stage2GateThresholds, run_stage2_final_gate

    thresholds = Stage2GateThresholds(alpha=ch.cfg.final_alpha, guarded_categories=tuple(ch.cfg.guarded_categories),
                                      target_types=tuple(ch.cfg.target_types) if ch.cfg.target_types is not None else None)
    decision, manifest = run_stage2_final_gate(ch.p("eval"), thresholds, out=ch.p(GATES_DIR, FINAL_GATE_MANIFEST))
    ch.say(decision.headline())
    return gate_result(manifest)


def _report(ch: Chain) -> PhaseResult:
    from cai_bootstrap.stages.stage2_report import write_report

    return PhaseResult(write_report(ch.run_dir))


# The config fields each phase reads (Phase.settings): a change redoes that phase and what depends on it.
MODEL = ("profile", "device")


def phases() -> list[Phase]:
    P = lambda *parts: (lambda ch: [ch.p(*parts)])  # noqa: E731
    return [
        Phase("input_model", "the Stage-1 model its final gate passed (ST-01)", lambda ch: [Path(ch.cfg.stage1_gate)], _input_model,
              settings=("stage1_gate", "override")),
        Phase("instructions", "candidate instructions from the base model, new prompt seeds (DG-01)", P(INPUT_RECORD), _instructions,
              settings=(*MODEL, "seed", "instructions_target", "instruction_decoding")),
        Phase("pairs", "Best-of-N pairs from the Stage-1 model, hard negatives (PO-01, PO-02)",
              lambda ch: [ch.p("instructions", INSTRUCTIONS_FILE), *config_files(ch, "pairs_config")], _pairs,
              settings=(*MODEL, "pairs_config", "pairs_overrides", "eval_set")),
        Phase("pairs_gate", "pair suites (PV-06) + pair QC thresholds", _pairs_files, _pairs_gate, gate=True, settings=()),
        Phase("dpo", "DPO on top of the Stage-1 model behind the pairs gate (PO-03)",
              lambda ch: [ch.p(GATES_DIR, PAIRS_GATE_MANIFEST), *config_files(ch, "dpo_config")], _dpo,
              settings=(*MODEL, "dpo_config", "dpo_overrides", "eval_set")),
        Phase("evaluate", "paired evaluation: base, stage 1, stage 2 on the same items", P("dpo", SUCCESS_MARKER), _evaluate,
              settings=(*MODEL, "seed", "eval_set", "eval_limit", "eval_max_new_tokens", "eval_batch_size")),
        Phase("final_gate", "no regression against stage 1, a significant gain over it (GT-02)",
              P("eval", "eval_summary.json"), _final, gate=True, settings=("final_alpha", "guarded_categories", "target_types")),
        Phase("report", "run report: phases, pair QC, DPO curves, three-way table, lineage", P(GATES_DIR, FINAL_GATE_MANIFEST), _report,
              settings=()),
    ]


def _report_after_stop(run_dir: Path) -> None:
    """A stopped chain still gets its report: the gates decided so far and why it stopped."""
    if not (run_dir / STATE_DIR).is_dir():
        return
    try:
        from cai_bootstrap.stages.stage2_report import write_report

        print(f"stage2: report of the phases run so far: {write_report(run_dir)[-1]}", file=sys.stderr)
    except Exception as e:  # the stop reason matters more than a report failure
        print(f"stage2: could not write the report ({type(e).__name__}: {e})", file=sys.stderr)


def main(argv: list[str] | None = None, *, sampler=None) -> int:
    from cai_bootstrap.integrity import check_writable_location
    from cai_bootstrap.run_lock import RunDirectoryInUse

    prev = get_stage(STAGE - 1)
    ap = argparse.ArgumentParser(prog="python -m cai_bootstrap.stages.stage2", description=__doc__.splitlines()[0])
    ap.add_argument("gate", nargs="?", help=f"Stage 1's final gate manifest (default: the config's, else {prev.final_gate_manifest})")
    ap.add_argument("--config", help="stage-2 YAML (default: the shipped CPU smoke config)")
    ap.add_argument("--override", metavar="REASON", help="start even though the gate said FAIL (an experiment); recorded")
    ap.add_argument("--run-dir")
    ap.add_argument("--until", help="stop after this phase")
    ap.add_argument("--quiet", action="store_true", default=None)
    args = ap.parse_args(argv)
    path = args.config or (Path(__file__).resolve().parent.parent / "configs" / "stage2_cpu_smoke.yaml")
    try:
        # Bad input (a config, a phase name, a run directory, a model Stage 1 did not pass) is refused before any phase runs.
        check_phase_name("--until", args.until, [p.name for p in phases()])
        cfg = load_stage2_config(path, stage1_gate=args.gate, override=args.override, run_dir=args.run_dir, quiet=args.quiet)
        check_writable_location(cfg.run_dir, flag="run_dir")
        resolve_input_model(STAGE, gate_manifest=cfg.stage1_gate, override=cfg.override)
    except StageInputError as e:
        print(f"stage2: REFUSED: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except (ChainError, ValueError) as e:
        print(f"stage2: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    run_dir = Path(cfg.run_dir)
    try:
        t0 = time.time()
        chain = Chain(cfg, label=STATE_DIR)
        chain.sampler = sampler
        result = chain.run(phases(), until=args.until)
    except RunDirectoryInUse as e:
        print(f"stage2: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except ChainError as e:
        print(f"stage2: STOPPED: {e}", file=sys.stderr)
        _report_after_stop(run_dir)
        return EXIT_STOPPED
    except (PhaseStateError, OSError) as e:
        print(f"stage2: error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"stage2: finished in {time.time() - t0:.0f} s; run directory {run_dir}")
    atomic_write_text(run_dir / STATE_DIR / "last_run.json", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
