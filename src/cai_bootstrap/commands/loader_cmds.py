"""`tiny-model` and `inspect-model`: build the test model, load a model and show its provenance."""

from __future__ import annotations

import json

from cai_bootstrap.config_io import path_arg


def register(sub) -> None:
    p = sub.add_parser("tiny-model", help="build the tiny random Qwen2 test model (real Qwen tokenizer)")
    p.add_argument("out_dir", type=path_arg)
    p.add_argument("--seed", type=int, help="weight seed, >= 0 (default: the builder's)")
    p.set_defaults(func=_tiny_model)

    p = sub.add_parser("inspect-model", help="load a base model cleanly, run the sentinels, print provenance")
    p.add_argument("model", help="model folder or hub id")
    p.add_argument("--profile", default=None, help="model profile (default: detected from the config)")
    p.set_defaults(func=_inspect)


def _tiny_model(args) -> int:
    from cai_bootstrap.cli import CLIError
    from cai_bootstrap.integrity import check_writable_location
    from cai_bootstrap.testmodel import build_tiny_model

    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    check_writable_location(args.out_dir, flag="out_dir")

    print(build_tiny_model(args.out_dir, **({} if args.seed is None else {"seed": args.seed})))
    return 0


def _inspect(args) -> int:
    from cai_bootstrap.loader import load_base_model

    lm = load_base_model(args.model, profile=args.profile)
    print(json.dumps(lm.provenance, indent=2, default=str))
    return 0
