"""`evaluate` (paired base-vs-trained evaluation) and `gate` (final and gap decisions).

A paired evaluation runs three arms on the same items (EV-08): the base model zero-shot
and in context (PR-07 demonstrations, while it is loaded), then the trained model
zero-shot; GT-02 decides on trained vs base zero-shot.

    cai-bootstrap evaluate --model M --adapter ADAPTER --out runs/eval
    cai-bootstrap gate final --eval runs/eval
    cai-bootstrap evaluate --model M --base-only --mode both --out runs/gap
    cai-bootstrap gate gap --eval runs/gap --max-base-rate 0.5

Every argument is checked before a model loads: a bad flag combination, a missing
adapter or a malformed eval set fails in a second, not after minutes of loading.
`gate` exits 1 on a failed gate, so a shell or nox chain stops there.
"""

from __future__ import annotations

from pathlib import Path

from cai_bootstrap.config_io import device_arg, path_arg


def register(sub) -> None:
    # Defaults are read from the modules that own them (one edit changes CLI, chain and API alike).
    from cai_bootstrap import gates
    from cai_bootstrap.evaluation import runner
    from cai_bootstrap.evaluation import statistics as st

    p = sub.add_parser("evaluate", help="evaluate base (zero-shot and in context) and trained model on the held-out set "
                                        "(paired), or the base alone")
    p.add_argument("--model", required=True, help="base model: folder, hub id, GGUF file, 'gemma-3-270m' or 'tiny-random'")
    p.add_argument("--profile", help="model profile (default: detected)")
    p.add_argument("--adapter", type=path_arg, help="PEFT adapter folder of the trained model")
    p.add_argument("--base-only", action="store_true", help="evaluate only the base model (for the gap check)")
    p.add_argument("--mode", choices=["framed", "raw", "both"],
                   help="prompt mode: framed 'Instruction: ...\\nResponse:', raw instruction text, or both "
                        "(default: framed; both with --base-only)")
    p.add_argument("--eval-set", type=path_arg, help="eval set JSONL (default: the shipped stage-1 set)")
    p.add_argument("--limit", type=int, help="evaluate only the first N items (the set is interleaved by type)")
    p.add_argument("--out", required=True, type=path_arg, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing evaluation in --out")
    p.add_argument("--max-new-tokens", type=int, default=runner.DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--batch-size", type=int, default=runner.DEFAULT_BATCH_SIZE)
    p.add_argument("--seed", type=int, default=runner.EvalDecoding.seed, help="generation and bootstrap seed")
    p.add_argument("--bootstrap-samples", type=int, default=st.DEFAULT_BOOTSTRAP_SAMPLES)
    p.add_argument("--confidence", type=float, default=st.DEFAULT_CONFIDENCE)
    p.add_argument("--fdr", type=float, default=st.DEFAULT_FDR)
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:N or mps (default: cuda when present)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quantization", choices=["none", "nf4"], default="none")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)

    g = sub.add_parser("gate", help="decide a gate from an evaluation folder and write its manifest")
    gs = g.add_subparsers(dest="gate_name", metavar="GATE")
    f = gs.add_parser("final", help="GT-02: trained beats base (McNemar p < alpha, lift > 0, no safety/format regression)")
    f.add_argument("--eval", required=True, dest="eval_dir", type=path_arg, help="folder written by `evaluate` with both models")
    f.add_argument("--alpha", type=float, default=gates.DEFAULT_ALPHA)
    f.add_argument("--min-lift", type=float, default=gates.DEFAULT_MIN_LIFT)
    f.add_argument("--out", type=path_arg, help="manifest path (default: EVAL/gate_final.json)")
    f.set_defaults(func=_gate_final)
    q = gs.add_parser("gap", help="GT-03: the base model is weak on the target (better of framed/raw)")
    q.add_argument("--eval", required=True, dest="eval_dir", type=path_arg, help="folder written by `evaluate --base-only --mode both`")
    q.add_argument("--max-base-rate", type=float, default=gates.DEFAULT_MAX_BASE_RATE)
    q.add_argument("--target-types", help="comma-separated item types (default: all)")
    q.add_argument("--per-type", action="store_true", help="require every target type to be weak on its own")
    q.add_argument("--out", type=path_arg, help="manifest path (default: EVAL/gate_gap.json)")
    q.set_defaults(func=_gate_gap)
    for name, what in (("pilot", "GT-01: a pilot run passes its validation suites and QC thresholds (100-200 items)"),
                       ("scale", "GT-01 after scale: a merged run passes its validation suites and QC thresholds")):
        d = gs.add_parser(name, help=what)
        d.add_argument("run_dir", metavar="RUN_DIR", type=path_arg, help="generation run directory (dataset.jsonl, qc_summary.json, session_manifest.json)")
        d.add_argument("--min-items", type=int, help="smallest pilot target (default: the GT-01 pilot range)")
        d.add_argument("--max-items", type=int, help="largest pilot target (default: the GT-01 pilot range)")
        d.add_argument("--out", type=path_arg, help=f"manifest path (default: RUN_DIR/{name}_gate.json); `generate --mode scale --pilot-gate` reads it")
        d.set_defaults(func=_gate_data, gate_kind=name)
    g.set_defaults(func=_gate_missing)


def _evaluate(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.run_lock import run_lock

    # Before the lock: its file would land in the adapter folder and fail the adapter's hash check.
    if args.adapter and args.out:
        out, adapter = Path(args.out).resolve(), Path(args.adapter).resolve()
        if out == adapter or adapter in out.parents:
            raise CLIError(f"--out {args.out} is inside the adapter folder; evaluation outputs go to a folder of their own")
    with run_lock(args.out, "evaluate"):  # OPS-06: one writer per output folder, for the whole run
        return _evaluate_locked(args)


def _evaluate_locked(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.evaluation.evalset import DEFAULT_EVAL_SET, load_eval_set
    from cai_bootstrap.evaluation.report import MANIFEST_FILE, OUTPUT_FILES, StatsConfig, write_outputs
    from cai_bootstrap.gates import FINAL_GATE_FILE, GAP_GATE_FILE
    from cai_bootstrap.safe_paths import refuse_overlap, refuse_unknown_entries
    from cai_bootstrap.evaluation.runner import BASE, INCONTEXT, SFT, EvalDecoding, check_adapter_dir, evaluate_models
    from cai_bootstrap.integrity import (check_adapter_base, check_adapter_loadable, check_model_folder, check_writable_location,
                                         training_manifest_for, verify_adapter)
    from cai_bootstrap.io_utils import sha256_file
    from cai_bootstrap.model_sources import resolve_model

    # -- everything that can be wrong is checked before a model loads --
    if args.base_only == bool(args.adapter):
        raise CLIError("give either --adapter PATH (paired evaluation) or --base-only, not both and not neither")
    if args.adapter:
        check_adapter_dir(args.adapter)
        verify_adapter(args.adapter)  # PV-07: the adapter training wrote, byte for byte
        check_adapter_loadable(args.adapter)
    mode = args.mode or ("both" if args.base_only else "framed")
    modes = ["framed", "raw"] if mode == "both" else [mode]
    if not args.base_only and "framed" not in modes:
        raise CLIError("the paired comparison uses framed prompts; use --mode framed or both with --adapter")
    out = Path(args.out)
    if (out / MANIFEST_FILE).exists() and not args.force:
        raise CLIError(f"{out} already holds an evaluation; use a new --out or --force")
    # --force replaces an evaluation's own outputs, never anything else in the folder (OPS-06).
    refuse_unknown_entries(out, (*OUTPUT_FILES, FINAL_GATE_FILE, GAP_GATE_FILE), option="--out")
    refuse_overlap(out, {"adapter": args.adapter, "eval set": args.eval_set}, option="--out")
    check_writable_location(out)
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    if not 0.0 < args.confidence < 1.0 or not 0.0 < args.fdr < 1.0 or args.bootstrap_samples < 1:
        raise CLIError("--confidence and --fdr must be in (0, 1) and --bootstrap-samples >= 1")
    decoding = EvalDecoding(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    eval_path = Path(args.eval_set) if args.eval_set else DEFAULT_EVAL_SET
    items = load_eval_set(eval_path, limit=args.limit)
    if out.resolve() == eval_path.resolve().parent and eval_path.name in OUTPUT_FILES:
        raise CLIError(f"--out {out} would overwrite the eval set {eval_path}; choose another --out")
    resolved = resolve_model(args.model, profile=args.profile)
    if args.adapter:
        check_adapter_base(training_manifest_for(args.adapter), resolved.source)
    if Path(resolved.source).is_dir():
        check_model_folder(resolved.source)
        _check_prompt_lengths(items, modes, resolved, args, decoding, eval_path)
    load_kwargs = dict(profile=resolved.profile, dtype=args.dtype,
                       quantization=None if args.quantization == "none" else args.quantization, device=args.device)

    def load_base():
        from cai_bootstrap.loader import load_base_model

        return load_base_model(resolved.source, **load_kwargs)

    def load_sft():
        from cai_bootstrap.evaluation.runner import load_trained_model

        return load_trained_model(resolved.source, args.adapter, **load_kwargs)

    models = [(BASE, load_base)] + ([] if args.base_only else [(SFT, load_sft)])
    extra_modes = {} if args.base_only else {BASE: [INCONTEXT]}  # EV-08: the base model's in-context arm
    run = evaluate_models(items, models, modes=modes, extra_modes=extra_modes, decoding=decoding,
                          progress=False if args.quiet else None)
    eval_set = {"path": str(eval_path.resolve()), "sha256": sha256_file(eval_path), "limit": args.limit,
                "n_items_used": len(items), "model_spec": resolved.to_dict()}
    cfg = StatsConfig(confidence=args.confidence, bootstrap_samples=args.bootstrap_samples, seed=args.seed, fdr=args.fdr)
    result = write_outputs(out, run, cfg, eval_set=eval_set)
    print(result["text"], end="")
    print(f"outputs: {out}")
    return 0


def _check_prompt_lengths(items, modes, resolved, args, decoding, eval_path: Path) -> None:
    """Every prompt fits the model's context with room for the answer; checked with the tokenizer alone."""
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.evaluation.runner import INCONTEXT, prompt_length_problems
    from cai_bootstrap.integrity import read_json_file
    from cai_bootstrap.loader import load_tokenizer

    config = read_json_file(Path(resolved.source) / "config.json", what="model config")
    context = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(context, int):
        return
    if decoding.max_new_tokens >= context:
        raise CLIError(f"--max-new-tokens {decoding.max_new_tokens} leaves no room for a prompt in the model's "
                       f"context of {context} tokens; lower it")
    tokenizer = load_tokenizer(resolved.source, profile=resolved.profile)
    all_modes = list(modes) + ([] if args.base_only else [INCONTEXT])
    problems = prompt_length_problems(items, all_modes, count_tokens=lambda t: len(tokenizer.encode(t, add_special_tokens=False)),
                                      context_tokens=context, max_new_tokens=decoding.max_new_tokens, seed=decoding.seed)
    if problems:
        raise CLIError(f"{eval_path}: {len(problems)} item(s) too long for the model: " + "; ".join(problems[:3])
                       + ("; ..." if len(problems) > 3 else "") + "; shorten or remove them")


def _gate_missing(args) -> int:
    from cai_bootstrap.cli import CLIError

    raise CLIError("name a gate: `gate pilot` or `gate scale` (GT-01), `gate final` (GT-02) or `gate gap` (GT-03)")


def _judging(folder):
    """A gate reads a folder and by default writes its manifest there: it holds the folder's run lock
    (OPS-06), so it never judges files a running `generate` or `evaluate` is still writing."""
    from cai_bootstrap.run_lock import run_lock

    return run_lock(folder, "gate")


def _print_gate(decision, manifest_path: Path) -> int:
    print(decision.headline())
    print(f"gate manifest: {manifest_path}")
    return 0 if decision.passed else 1


def _gate_final(args) -> int:
    from cai_bootstrap.evaluation.final_gate import run_final_gate
    from cai_bootstrap.gates import FinalGateThresholds
    from cai_bootstrap.integrity import check_non_negative, check_open_unit_interval

    check_open_unit_interval("--alpha", args.alpha)
    check_non_negative("--min-lift", args.min_lift)
    with _judging(args.eval_dir):
        decision, manifest = run_final_gate(args.eval_dir, FinalGateThresholds(alpha=args.alpha, min_lift=args.min_lift), out=args.out)
    return _print_gate(decision, manifest)


def _gate_gap(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.gates import GapGateThresholds, run_gap_gate

    if not 0.0 <= args.max_base_rate <= 1.0:
        raise CLIError(f"--max-base-rate is a rate and must lie in [0, 1], got {args.max_base_rate}")
    targets = tuple(t.strip() for t in args.target_types.split(",") if t.strip()) if args.target_types else None
    thresholds = GapGateThresholds(max_base_rate=args.max_base_rate, target_types=targets, per_type=args.per_type)
    with _judging(args.eval_dir):
        decision, manifest = run_gap_gate(args.eval_dir, thresholds, out=args.out)
    return _print_gate(decision, manifest)


def _gate_data(args) -> int:
    from dataclasses import replace

    from cai_bootstrap.gates import DATA_GATE_INPUTS, PILOT_GATE, SCALE_GATE, DataGateThresholds, run_data_gate
    from cai_bootstrap.integrity import check_output_file

    thresholds = DataGateThresholds()
    if args.min_items is not None:
        thresholds = replace(thresholds, min_items=args.min_items)
    if args.max_items is not None:
        thresholds = replace(thresholds, max_items=args.max_items)
    if not 1 <= thresholds.min_items <= thresholds.max_items:
        raise ValueError(f"--min-items/--max-items must satisfy 1 <= min <= max, got {thresholds.min_items}..{thresholds.max_items}")
    gate = PILOT_GATE if args.gate_kind == "pilot" else SCALE_GATE
    run = Path(args.run_dir)
    out = check_output_file(args.out or run / f"{gate}.json", [run / name for name in DATA_GATE_INPUTS.values()])
    with _judging(run):
        decision, manifest = run_data_gate(run, gate=gate, thresholds=thresholds, out=out)
    print(decision.headline())
    print(f"gate manifest: {manifest}")
    return 0 if decision.passed else 1
