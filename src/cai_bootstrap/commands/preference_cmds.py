"""`pairs` and `train-dpo`: Stage-2 preference data and training (PO-01..03), thin adapters over the functions.

    cai-bootstrap pairs --config src/cai_bootstrap/configs/pairs_default.yaml --stage1-data runs/stage1/merged --out runs/stage2/pairs
    cai-bootstrap train-dpo --config src/cai_bootstrap/configs/dpo_default.yaml --sft-run runs/stage1/sft --pairs runs/stage2/pairs

Every value is validated and the data gated before any model loads, as for `train`.
"""

from __future__ import annotations

import json

from cai_bootstrap.config_io import path_arg


def register(sub) -> None:
    p = sub.add_parser("train-dpo", help="DPO (or ORPO/SimPO) on preference pairs, on top of the Stage-1 model, behind the data gate")
    p.add_argument("--config", help="YAML run file (default: the shipped src/cai_bootstrap/configs/dpo_default.yaml)")
    p.add_argument("--pairs", type=path_arg, help="run directory of a finished pairs run")
    p.add_argument("--sft-run", type=path_arg, help="output_dir of the finished Stage-1 SFT run (the reference model)")
    p.add_argument("--model", help="the Stage-1 base model")
    p.add_argument("--out", "--output-dir", dest="output_dir", type=path_arg, help="output directory (adapter, manifest)")
    p.add_argument("--eval-set", type=path_arg, help="held-out eval set for the leakage check (default: the shipped one)")
    p.add_argument("--method", choices=["dpo", "orpo", "simpo"])
    p.add_argument("--beta", type=float, help="0.1-0.3")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", default=None, help="plumbing run: allows max_steps (recorded)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any field; values are read as YAML")
    p.add_argument("--check", action="store_true", help="validate config, pairs gate and Stage-1 run, then stop before loading")
    p.set_defaults(func=_train_dpo)
    _register_pairs(sub)


def _register_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="Best-of-N preference pairs with hard negatives, for instructions new to Stage 1")
    p.add_argument("--config", help="YAML run file (e.g. src/cai_bootstrap/configs/pairs_default.yaml)")
    p.add_argument("--model")
    p.add_argument("--sft-run", type=path_arg, help="sample with the Stage-1 model (its SFT output_dir)")
    p.add_argument("--stage1-data", type=path_arg, help="the Stage-1 generation run whose instructions are not reused")
    p.add_argument("--instructions", type=path_arg, help="JSONL of candidate instructions")
    p.add_argument("--out", dest="out_dir", type=path_arg)
    p.add_argument("--eval-set", type=path_arg)
    p.add_argument("--k", type=int, help="candidates per instruction (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any field; values are read as YAML")
    p.set_defaults(func=_pairs)


def _pairs(args) -> int:
    from cai_bootstrap.commands.train_cmds import set_overrides
    from cai_bootstrap.preference.pairs import run_pairs
    from cai_bootstrap.preference.pairs_config import load_pairs_config

    flags = {"model": args.model, "sft_run": args.sft_run, "stage1_data": args.stage1_data, "instructions": args.instructions,
             "out_dir": args.out_dir, "eval_set": args.eval_set, "k": args.k}
    cfg = load_pairs_config(args.config, {**set_overrides(args.set), **{k: v for k, v in flags.items() if v is not None}})
    summary = run_pairs(cfg)
    print(json.dumps({"out": str(cfg.out_dir), "pairs": summary["counts"]["pairs"], "by_negative_type": summary["counts"]["by_negative_type"],
                      "thresholds_passed": summary["thresholds_passed"], "failed_reasons": summary["failed_reasons"]}, indent=2))
    return 0 if summary["thresholds_passed"] else 1


def _train_dpo(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.commands.train_cmds import set_overrides
    from cai_bootstrap.preference.config import default_config_path, load_config
    from cai_bootstrap.preference.train_dpo import check_before_load, run_dpo
    from cai_bootstrap.sft.data_gate import DataGateError, EvalLeakageError
    from cai_bootstrap.sft.train import TrainingSetupError

    flags = {"pairs": args.pairs, "sft_run": args.sft_run, "model": args.model, "output_dir": args.output_dir,
             "eval_set": args.eval_set, "method": args.method, "beta": args.beta, "device": args.device,
             "smoke": args.smoke, "max_steps": args.max_steps}
    overrides = {**set_overrides(args.set), **{k: v for k, v in flags.items() if v is not None}}
    cfg = load_config(args.config or default_config_path(), overrides)
    try:
        if args.check:
            pre = check_before_load(cfg)
            print(json.dumps({"config": "ok", "data_gate": pre["gate"].to_dict(), "leakage": pre["leakage"],
                              "sft_run": pre["sft"]}, indent=2))
            return 0
        result = run_dpo(cfg)
    except (DataGateError, EvalLeakageError, TrainingSetupError) as e:
        raise CLIError(str(e)) from None
    print(json.dumps({"adapter": str(result.adapter_dir), "training_manifest": str(result.manifest_path),
                      "global_step": result.global_step, "method": cfg.method, "beta": cfg.beta,
                      "final_loss": (result.manifest["loss_history"] or [{}])[-1].get("loss")}, indent=2))
    return 0
