"""The gated Stage-1 chain: preflight -> clean load + sentinels -> gap check -> pilot ->
validation + QC gate -> scale -> merge + validation + QC gate -> SFT -> evaluation ->
final gate -> report (GT-04).

The chain engine is :mod:`cai_bootstrap.stages.chain` (shared by every stage); this module
holds Stage 1's phases and its command. Each phase runs the same code a user would run
by hand (``cai-bootstrap`` subcommands or the functions behind them), then the engine
records a phase manifest (``stage1/<phase>.json``) with the sha256 of its inputs and
outputs (PV-05). A rerun skips a phase only if its manifest says done and every
recorded file still has its hash, so it resumes from the last completed phase and
redoes anything whose inputs changed. The chain stops at the first failed gate with a
readable reason and a non-zero exit; each gate is enforced again inside the phase it
protects (scale refuses a failed pilot gate, training refuses an unvalidated dataset).

Scale shards run one after another in this process by default; with ``scale_parallel:
true`` and several GPUs visible they run as one ``generate`` process per GPU through the
same launcher as ``cai-bootstrap launch generate`` (OPS-05).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai_bootstrap.config_io import Seed, UserPath, format_validation_errors, read_yaml_section
from cai_bootstrap.evaluation.runner import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from cai_bootstrap.gates import DEFAULT_ALPHA, DEFAULT_MAX_BASE_RATE, DEFAULT_PILOT_TARGET, PILOT_MAX_ITEMS, PILOT_MIN_ITEMS
from cai_bootstrap import launch
from cai_bootstrap.integrity import check_writable_location
from cai_bootstrap.io_utils import atomic_write_json, atomic_write_text
from cai_bootstrap.model_sources import GEMMA_NAME
from cai_bootstrap.prompts import RESPONSE_FRAMES
from cai_bootstrap.run_lock import RunDirectoryInUse
from cai_bootstrap.stages.chain import Chain as _Chain
from cai_bootstrap.stages.chain import ChainError, Phase, PhaseResult, PhaseStateError, check_phase_name, config_files, gate_result
from cai_bootstrap.stages.registry import FINAL_GATE_MANIFEST, GATES_DIR, get_stage

STATE_DIR = "stage1"


# The chain's errors under the names this module has always exported.
Stage1Error = ChainError
__all__ = ["Chain", "Phase", "PhaseResult", "PhaseStateError", "Stage1Config", "Stage1Error", "STATE_DIR",
           "check_phase_name", "load_stage1_config", "main", "phases"]


# -- configuration -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage1Config(_Strict):
    model: str = GEMMA_NAME
    profile: str | None = None
    run_dir: UserPath = Field(get_stage(1).run_dir, validate_default=True)
    device: str | None = None
    seed: Seed = 0
    quiet: bool = False
    pilot_target: int = Field(DEFAULT_PILOT_TARGET, ge=1)
    pilot_min_items: int = Field(PILOT_MIN_ITEMS, ge=1)  # GT-01; smoke configs may lower this, recorded
    pilot_max_items: int = Field(PILOT_MAX_ITEMS, ge=1)
    scale_target: int = Field(200, ge=1)
    scale_shards: int = Field(1, ge=1, le=1024)
    # OPS-05: run the scale shards at once, one process per visible GPU, through the launcher
    # (cai_bootstrap.launch); false, or fewer than 2 GPUs visible: one after another in this process.
    scale_parallel: bool = False
    generate_config: UserPath | None = None  # extra generation settings (YAML of GenerateConfig fields)
    # PR-07 response frame for generation; None: the generation config's (demonstrations by default).
    response_frame: Literal[RESPONSE_FRAMES] | None = None  # type: ignore[valid-type]
    sft_config: UserPath | None = None  # SFT YAML; default: the shipped one
    sft_overrides: dict = Field(default_factory=dict)
    eval_limit: int | None = Field(None, ge=1)
    eval_max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=8)
    eval_batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    gap_max_base_rate: float = Field(DEFAULT_MAX_BASE_RATE, ge=0, le=1)
    gap_limit: int | None = Field(None, ge=1)
    final_alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=1)
    quantization: str | None = None


def load_stage1_config(path: str | Path | None, **overrides) -> Stage1Config:
    data: dict = read_yaml_section(path, "stage1", Stage1Error) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = Stage1Config.model_validate(data)
    except ValidationError as e:
        raise Stage1Error(f"invalid stage-1 config: {format_validation_errors(e)}") from None
    # The run files it names are read by later phases: a wrong one must stop the chain now, not an hour in.
    from cai_bootstrap.datagen.config import ConfigError, load_config

    try:
        if cfg.generate_config is not None:
            load_config(cfg.generate_config)
        if cfg.sft_config is not None:
            read_yaml_section(cfg.sft_config, "sft", Stage1Error)
    except ConfigError as e:
        raise Stage1Error(f"generate_config: {e}") from None
    except Stage1Error as e:
        raise Stage1Error(f"sft_config: {e}") from None
    return cfg


# -- the chain ------------------------------------------------------------------------------------


class Chain(_Chain):
    """The generic chain with Stage 1's label: state under ``<run_dir>/stage1/``, log lines ``[stage1] ...``."""

    def __init__(self, cfg: Stage1Config, cli: Callable[[list[str]], int] | None = None, *,
                 launcher: Callable[[list], list] | None = None, gpus: Callable[[], list[str]] | None = None) -> None:
        super().__init__(cfg, cli, label=STATE_DIR)
        self.launcher = launcher or launch.run_shards  # starts shard processes (OPS-05)
        self.gpus = gpus or launch.visible_gpus


# -- the phases ------------------------------------------------------------------------------------


def _none(_: Chain) -> list[Path]:
    return []


def _preflight(ch: Chain) -> PhaseResult:
    from cai_bootstrap.sft.preflight import run_preflight

    out = ch.p("preflight.json")
    from cai_bootstrap.model_sources import resolve_model

    resolved = resolve_model(ch.cfg.model, profile=ch.cfg.profile)
    ch.run_dir.mkdir(parents=True, exist_ok=True)
    report = run_preflight(output_root=ch.run_dir, model_source=resolved.source if resolved.kind != "hub" else None,
                           quantization=ch.cfg.quantization or "nf4")
    atomic_write_json(out, report.to_dict())
    return PhaseResult([out], report.ok, "; ".join(report.problems), report.to_dict())


def _load(ch: Chain) -> PhaseResult:
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.model_sources import resolve_model

    resolved = resolve_model(ch.cfg.model, profile=ch.cfg.profile)
    lm = load_base_model(resolved.source, profile=resolved.profile, device=ch.cfg.device)
    prov = {**lm.provenance, "model_source": resolved.to_dict()}
    lm.release()
    out = ch.p("load", "provenance.json")
    atomic_write_json(out, prov)
    s = prov["sentinels"]
    ok = bool(s.get("ok"))
    return PhaseResult([out], ok, "" if ok else "sentinels failed", {"sentinels_ok": s.get("ok"), "profile": prov["profile"]["name"]})


def _gap(ch: Chain) -> PhaseResult:
    out = ch.p("gap")
    argv = ["evaluate", "--model", ch.cfg.model, "--base-only", "--mode", "both", "--out", out, "--force",
            "--max-new-tokens", ch.cfg.eval_max_new_tokens, "--batch-size", ch.cfg.eval_batch_size, "--seed", ch.cfg.seed]
    argv += _common_model_args(ch)
    if ch.cfg.gap_limit or ch.cfg.eval_limit:
        argv += ["--limit", ch.cfg.gap_limit or ch.cfg.eval_limit]
    _check(ch.call(*argv), "gap-check evaluation")
    from cai_bootstrap.gates import GapGateThresholds, run_gap_gate

    decision, manifest = run_gap_gate(out, GapGateThresholds(max_base_rate=ch.cfg.gap_max_base_rate),
                                      out=ch.p("gates", "gap_check.json"))
    ch.say(decision.headline())
    return gate_result(manifest)


def _common_model_args(ch: Chain) -> list:
    argv: list = []
    if ch.cfg.profile:
        argv += ["--profile", ch.cfg.profile]
    if ch.cfg.device:
        argv += ["--device", ch.cfg.device]
    if ch.cfg.quiet:
        argv += ["--quiet"]
    return argv


def _check(rc: int, what: str) -> None:
    if rc not in (0,):
        raise Stage1Error(f"{what} exited with {rc}")


def _generate_args(ch: Chain) -> list:
    argv: list = ["--model", ch.cfg.model, "--seed", ch.cfg.seed]
    if ch.cfg.generate_config:
        argv += ["--config", ch.cfg.generate_config]
    if ch.cfg.response_frame:
        argv += ["--response-frame", ch.cfg.response_frame]
    return argv + _common_model_args(ch)


def _pilot(ch: Chain) -> PhaseResult:
    out = ch.p("pilot")
    rc = ch.call("generate", *_generate_args(ch), "--mode", "pilot", "--target", ch.cfg.pilot_target, "--out", out)
    if rc not in (0, 1):  # 1 = QC failed; judged by the pilot gate next
        raise Stage1Error(f"pilot generation exited with {rc}")
    return PhaseResult([out / "dataset.jsonl", out / "qc_summary.json", out / "session_manifest.json"])


def _data_gate(ch: Chain, run: Path, name: str) -> PhaseResult:
    from cai_bootstrap.gates import DataGateThresholds, run_data_gate

    thresholds = DataGateThresholds(min_items=ch.cfg.pilot_min_items, max_items=ch.cfg.pilot_max_items)
    decision, manifest = run_data_gate(run, gate=name, thresholds=thresholds, out=ch.p("gates", f"{name}.json"))
    return gate_result(manifest)


def _shard_devices(ch: Chain) -> list[str]:
    """The GPUs to run scale shards on at once; empty: run them one after another."""
    if not ch.cfg.scale_parallel or ch.cfg.scale_shards < 2:
        return []
    gpus = ch.gpus()
    if len(gpus) < 2:
        print(f"[stage1] scale_parallel: {len(gpus)} GPU visible; running the shards one after another", flush=True)
        return []
    return gpus


def _scale(ch: Chain) -> PhaseResult:
    n = ch.cfg.scale_shards
    root = ch.p("scale")
    argv = [str(a) for a in (*_generate_args(ch), "--mode", "scale", "--target", ch.cfg.scale_target,
                             "--pilot-gate", ch.p("gates", "pilot_gate.json"))]
    devices = _shard_devices(ch)
    if not devices:
        for i in range(n):
            rc = ch.call("generate", *argv, "--shard", f"{i}/{n}", "--out", launch.shard_dir(root, i))
            if rc not in launch.FINISHED_CODES:
                raise Stage1Error(f"scale shard {i} exited with {rc}")
    else:
        # One process per GPU, a device-full of shards at a time (each shard is an ordinary `generate`).
        for start in range(0, n, len(devices)):
            jobs = launch.plan_shards(argv, devices, root, indices=range(start, min(n, start + len(devices))), n_shards=n)
            outcomes = ch.launcher(jobs)
            for o in outcomes:
                print(f"[stage1] {launch.describe(o)}", flush=True)
            status = launch.launch_status(outcomes)
            if status:
                failed = [o.job.label for o in outcomes if not o.finished]
                raise Stage1Error(f"scale shard(s) {', '.join(failed)} exited with {status}; finished shards are kept "
                                  "and a rerun resumes the rest")
    return PhaseResult([launch.shard_dir(root, i) / "session_manifest.json" for i in range(n)])


def _merge(ch: Chain) -> PhaseResult:
    shards = [launch.shard_dir(ch.p("scale"), i) for i in range(ch.cfg.scale_shards)]
    out = ch.p("merged")
    from cai_bootstrap.datagen.merge import merge_shards

    ch.say(f"merge_shards({len(shards)} shards) -> {out}")
    merge_shards(shards, out)  # its QC verdict is judged by the scale gate next
    return PhaseResult([out / "dataset.jsonl", out / "qc_summary.json", out / "session_manifest.json"])


def _sft(ch: Chain) -> PhaseResult:
    from cai_bootstrap.sft.config import default_config_path, load_config
    from cai_bootstrap.sft.train import run_training

    out = ch.p("sft")
    # What `cai-bootstrap train --config C --set K=V --dataset D --model M --out O` builds: overrides, then the paths.
    cfg = load_config(ch.cfg.sft_config or default_config_path(),
                      {**ch.cfg.sft_overrides, "dataset": str(ch.p("merged")), "model": ch.cfg.model, "output_dir": str(out)})
    ch.say(f"run_training(dataset={cfg.dataset}, output_dir={cfg.output_dir})")
    run_training(cfg)
    return PhaseResult([out / "TRAINING_SUCCESS", out / "training_manifest.json"])


def _adapter(ch: Chain) -> Path:
    marker = json.loads(ch.p("sft", "TRAINING_SUCCESS").read_text())
    return Path(marker["adapter_path"])


def _evaluate(ch: Chain) -> PhaseResult:
    out = ch.p("eval")
    argv = ["evaluate", "--model", ch.cfg.model, "--adapter", _adapter(ch), "--out", out, "--force",
            "--max-new-tokens", ch.cfg.eval_max_new_tokens, "--batch-size", ch.cfg.eval_batch_size, "--seed", ch.cfg.seed]
    if ch.cfg.eval_limit:
        argv += ["--limit", ch.cfg.eval_limit]
    _check(ch.call(*argv, *_common_model_args(ch)), "evaluation")
    return PhaseResult(sorted(p for p in out.iterdir() if p.is_file()))


def _final(ch: Chain) -> PhaseResult:
    from cai_bootstrap.evaluation.final_gate import run_final_gate
    from cai_bootstrap.gates import FinalGateThresholds

    decision, manifest = run_final_gate(ch.p("eval"), FinalGateThresholds(alpha=ch.cfg.final_alpha),
                                        out=ch.p(GATES_DIR, FINAL_GATE_MANIFEST))
    ch.say(decision.headline())
    return gate_result(manifest)


def _report(ch: Chain) -> PhaseResult:
    from cai_bootstrap.stage1_report import write_report

    paths = write_report(ch.run_dir)
    return PhaseResult(paths)


# The config fields each phase reads (Phase.settings): a change redoes that phase and what depends on it.
MODEL = ("model", "profile", "device")
EVAL = (*MODEL, "seed", "eval_max_new_tokens", "eval_batch_size", "eval_limit")
GENERATE = (*MODEL, "seed", "generate_config", "response_frame")


def phases() -> list[Phase]:
    P = lambda *parts: (lambda ch: [ch.p(*parts)])  # noqa: E731
    return [
        Phase("preflight", "device, memory, bf16 and output checks (OPS-03)", _none, _preflight, gate=True,
              settings=("model", "profile", "quantization")),
        Phase("load", "clean load of the base model and the sentinel suite (CG-01..CG-06)", _none, _load, gate=True,
              settings=MODEL),
        Phase("gap_check", "base model evaluated framed and raw; training only if it is weak (GT-03)",
              P("load", "provenance.json"), _gap, gate=True, settings=(*EVAL, "gap_limit", "gap_max_base_rate")),
        Phase("pilot", "pilot data generation", lambda ch: [ch.p("gates", "gap_check.json"), *config_files(ch, "generate_config")],
              _pilot, settings=(*GENERATE, "pilot_target")),
        Phase("pilot_gate", "validation suites + QC thresholds on the pilot (GT-01)",
              lambda ch: [ch.p("pilot", "dataset.jsonl"), ch.p("pilot", "qc_summary.json")],
              lambda ch: _data_gate(ch, ch.p("pilot"), "pilot_gate"), gate=True, settings=("pilot_min_items", "pilot_max_items")),
        Phase("scale", "scale generation, sharded", lambda ch: [ch.p("gates", "pilot_gate.json"), *config_files(ch, "generate_config")],
              _scale, settings=(*GENERATE, "scale_target", "scale_shards")),
        Phase("merge", "merge shards, re-deduplicate, recompute QC",
              lambda ch: [launch.shard_dir(ch.p("scale"), i) / "session_manifest.json" for i in range(ch.cfg.scale_shards)], _merge,
              settings=("scale_shards",)),
        Phase("scale_gate", "validation suites + QC thresholds on the merged data",
              lambda ch: [ch.p("merged", "dataset.jsonl"), ch.p("merged", "qc_summary.json")],
              lambda ch: _data_gate(ch, ch.p("merged"), "scale_gate"), gate=True, settings=("pilot_min_items", "pilot_max_items")),
        Phase("sft", "QLoRA SFT (plain LoRA on CPU) behind the data gate",
              lambda ch: [ch.p("gates", "scale_gate.json"), *config_files(ch, "sft_config")], _sft,
              settings=("model", "sft_config", "sft_overrides")),
        Phase("evaluate", "paired evaluation, base vs trained", P("sft", "TRAINING_SUCCESS"), _evaluate, settings=EVAL),
        Phase("final_gate", "McNemar p < alpha, positive lift, no safety/format regression (GT-02)",
              P("eval", "eval_summary.json"), _final, gate=True, settings=("final_alpha",)),
        Phase("report", "run report with every gate's numbers and lineage", P(GATES_DIR, FINAL_GATE_MANIFEST), _report,
              settings=()),
    ]


def _report_after_stop(run_dir: Path | None) -> None:
    """A stopped chain still gets its report: the gates decided so far and why it stopped."""
    if run_dir is None or not (run_dir / STATE_DIR).is_dir():
        return
    try:
        from cai_bootstrap.stage1_report import write_report

        paths = write_report(run_dir)
        print(f"stage1: report of the phases run so far: {paths[-1]}", file=sys.stderr)
    except Exception as e:  # the stop reason above matters more than a report failure
        print(f"stage1: could not write the report ({type(e).__name__}: {e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cai_bootstrap.stage1", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="stage-1 YAML (default: the shipped CPU demo config)")
    ap.add_argument("--model")
    ap.add_argument("--run-dir")
    ap.add_argument("--until", help="stop after this phase")
    ap.add_argument("--quiet", action="store_true", default=None)
    args = ap.parse_args(argv)
    path = args.config or (Path(__file__).parent / "configs" / "stage1_cpu_demo.yaml")
    try:
        # Bad input (a config, a phase name, an unusable run directory) is refused before any phase runs.
        check_phase_name("--until", args.until, [p.name for p in phases()])
        cfg = load_stage1_config(path, model=args.model, run_dir=args.run_dir, quiet=args.quiet)
        check_writable_location(cfg.run_dir, flag="run_dir")
    except (Stage1Error, ValueError) as e:
        print(f"stage1: error: {e}", file=sys.stderr)
        return 2
    try:
        chain = Chain(cfg)
        t0 = time.time()
        result = chain.run(phases(), until=args.until)
    except RunDirectoryInUse as e:
        print(f"stage1: error: {e}", file=sys.stderr)  # another chain's run: not ours to report on
        return 2
    except Stage1Error as e:
        print(f"stage1: STOPPED: {e}", file=sys.stderr)
        _report_after_stop(Path(cfg.run_dir))
        return 1
    except (PhaseStateError, OSError) as e:
        print(f"stage1: error: {e}", file=sys.stderr)
        return 2
    print(f"stage1: finished in {time.time() - t0:.0f} s; run directory {cfg.run_dir}")
    atomic_write_text(Path(cfg.run_dir) / STATE_DIR / "last_run.json", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
