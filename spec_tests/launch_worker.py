"""`cai-bootstrap generate` with the scripted generator: the shard program of the launcher's tests (OPS-05).

Usage: python -m spec_tests.launch_worker generate [generate arguments]

The arguments are parsed and turned into a config by the same functions the real command
uses; only the model's ``generate`` is scripted (a tiny random model cannot write
instructions), so the shards produce data a merge can compare. ``LAUNCH_TEST_CANARY``
names an instruction every shard writes first: a duplicate only the merge can see.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from cai_bootstrap.cli import build_parser
    from cai_bootstrap.commands.generate_cmds import config_from_args
    from cai_bootstrap.datagen.pipeline import run_generation
    from cai_bootstrap.loader import load_base_model

    from spec_tests.scripted_lm import ScriptedLM

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    lm = load_base_model(cfg.model, device="cpu")
    print(f"shard {cfg.shard} loaded", flush=True)
    run_generation(cfg, lm=ScriptedLM(lm, canary=os.environ.get("LAUNCH_TEST_CANARY")))
    print(f"shard {cfg.shard} finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
