"""`train`: Stage-1 SFT from a YAML run file, with command-line overrides.

Every value is validated (SFT-04 ranges) and the dataset gated (SFT-01, SFT-06) before
any model loads; flags override the file, and ``--set key=value`` reaches any field.
Data-parallel: ``accelerate launch --num_processes N -m cai_bootstrap.cli train ...`` with
the same flags and file (OPS-05); the main process reports, the others stay quiet.
"""

from __future__ import annotations

import json

from cai_bootstrap.config_io import path_arg


def register(sub) -> None:
    p = sub.add_parser("train", help="QLoRA SFT (plain LoRA on CPU) behind the data gate; resumable")
    p.add_argument("--config", help="YAML run file (default: the shipped src/cai_bootstrap/configs/sft_default.yaml)")
    p.add_argument("--dataset", type=path_arg, help="run directory of a finished data generation run")
    p.add_argument("--model", help="model: folder, hub id, GGUF file, 'gemma-3-270m' or 'tiny-random'")
    p.add_argument("--profile", help="model profile (default: detected)")
    p.add_argument("--out", "--output-dir", dest="output_dir", type=path_arg, help="output directory (adapter, checkpoints, manifest)")
    p.add_argument("--eval-set", type=path_arg, help="held-out eval set for the leakage check (default: the shipped one)")
    p.add_argument("--backend", choices=["hf", "unsloth"])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--quantization", choices=["nf4", "none"])
    p.add_argument("--smoke", action="store_true", default=None, help="plumbing run: relaxes the SFT-04 size ranges (recorded)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (needs --smoke)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, dotted for nested ones (e.g. lora.r=32); values are read as YAML")
    p.add_argument("--check", action="store_true", help="validate the config and the data gate, then stop before loading")
    p.set_defaults(func=_train)


def set_overrides(items) -> dict:
    """``--set KEY=VALUE`` items as dotted overrides, values read as YAML (shared by the training commands)."""
    import yaml

    from cai_bootstrap.cli import CLIError

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise CLIError(f"--set {item!r}: value is not valid YAML ({e})") from None
    return out


def _overrides(args) -> dict:
    out = set_overrides(args.set)
    flags = {
        "dataset": args.dataset,
        "model": args.model,
        "profile": args.profile,
        "output_dir": args.output_dir,
        "eval_set": args.eval_set,
        "backend": args.backend,
        "device": args.device,
        "quantization": args.quantization,
        "smoke": args.smoke,
        "max_steps": args.max_steps,
    }
    # A flag left unset must not undo a --set of the same field.
    out.update({k: str(v) if k in ("dataset", "output_dir", "eval_set") else v for k, v in flags.items() if v is not None})
    return out


def _train(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.sft.data_gate import DataGateError, EvalLeakageError
    from cai_bootstrap.sft.preflight import PreflightError
    from cai_bootstrap.sft.train import TrainingSetupError

    from cai_bootstrap.sft.distributed import DistributedSetupError, process_layout

    try:
        return _run(args)
    except (DataGateError, EvalLeakageError, PreflightError, TrainingSetupError, DistributedSetupError) as e:
        if not process_layout().is_main:
            return 2  # every rank refuses alike; the main process says why, once
        raise CLIError(str(e)) from None


def _run(args) -> int:
    from cai_bootstrap.sft.config import default_config_path, load_config

    cfg = load_config(args.config or default_config_path(), _overrides(args))
    if args.check:
        from cai_bootstrap.sft.data_gate import check_dataset_gate, check_no_leakage, load_eval_instructions
        from cai_bootstrap.sft.train import check_output_dir

        check_output_dir(cfg)
        gate = check_dataset_gate(cfg.dataset)
        leak = check_no_leakage(gate.records, load_eval_instructions(cfg.eval_set), threshold=cfg.near_duplicate_threshold)
        print(json.dumps({"config": "ok", "data_gate": gate.to_dict(), "leakage": leak}, indent=2))
        return 0
    from cai_bootstrap.sft.train import run_training

    result = run_training(cfg)
    if not result.main_process:
        return 0
    stats = result.manifest["train_stats"]
    print(json.dumps({
        "adapter": str(result.adapter_dir),
        "training_manifest": str(result.manifest_path),
        "success_marker": str(result.marker_path),
        "global_step": result.global_step,
        "quantization": result.manifest["quantization"],
        "final_loss": (result.manifest["loss_history"] or [{}])[-1].get("loss"),
        "tokens_per_second": stats["tokens_per_second"],
        "peak_gpu_memory_gb": stats["peak_gpu_memory_gb"],
    }, indent=2))
    return 0
