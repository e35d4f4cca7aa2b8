"""Stage 2 (preference pairs + DPO) from Stage 1's model: the gate check, then the commands.

    python -m cai_bootstrap.stages.stage2 [STAGE1_FINAL_GATE] [--override REASON] [--run-dir runs/stage2]

Stage 2 starts only from the model Stage 1's final gate passed (ST-01,
:func:`~cai_bootstrap.stages.registry.resolve_input_model`); ``--override`` lets an
experiment start from a model the gate failed, and the reason is recorded in
``<run_dir>/stage2/input_model.json`` and, through ``stage1_gate``, in the DPO model's lineage.

What Stage 2 has built is its data and training code (``pairs``, ``validate``,
``train-dpo``); its instruction source, evaluation and final gate are planned. So after
the gate check this prints the exact commands of the built steps, filled in with the
resolved model, and exits 3 naming the planned steps: a chain that ran only the built
part would end with a model no gate has judged.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from cai_bootstrap.stages.registry import InputModel, StageInputError, get_stage, resolve_input_model

STAGE = 2
STATE_DIR = "stage2"
INPUT_RECORD = "input_model.json"
EXIT_REFUSED = 2
EXIT_PLANNED = 3


def stage2_commands(inp: InputModel, *, run_dir: Path, stage1_data: Path, instructions: Path) -> list[tuple[str, list[str]]]:
    """(step, argv) of the built Stage-2 steps, in order, for the resolved Stage-1 model."""
    from cai_bootstrap.preference.config import default_config_path

    if inp.stage != STAGE or inp.run_dir is None or inp.gate is None:
        raise StageInputError("the Stage-2 commands need a resolved Stage-1 model (resolve_input_model(2, ...))")
    pairs, configs = run_dir / "pairs", default_config_path().parent
    return [
        ("pairs", ["cai-bootstrap", "pairs", "--config", str(configs / "pairs_default.yaml"), "--model", inp.base_model,
                   "--sft-run", str(inp.run_dir), "--stage1-data", str(stage1_data), "--instructions", str(instructions),
                   "--out", str(pairs)]),
        ("validate", ["cai-bootstrap", "validate", str(pairs)]),
        ("train_dpo", ["cai-bootstrap", "train-dpo", "--config", str(default_config_path()), "--model", inp.base_model,
                       "--sft-run", str(inp.run_dir), "--pairs", str(pairs), "--out", str(run_dir / "dpo"),
                       "--set", f"stage1_gate={inp.gate['path']}"]),
    ]


def _stage1_data(inp: InputModel) -> Path:
    """The generation run the Stage-1 adapter was trained on, as its training manifest records it."""
    from cai_bootstrap.sft.train import MANIFEST_NAME

    path = inp.run_dir / MANIFEST_NAME
    try:
        return Path(json.loads(path.read_text(encoding="utf-8"))["dataset"]["run_dir"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageInputError(f"{path}: cannot read the Stage-1 dataset it names ({e}); is {inp.run_dir} a finished SFT run?") from None


def main(argv: list[str] | None = None) -> int:
    stage = get_stage(STAGE)
    prev = get_stage(STAGE - 1)
    ap = argparse.ArgumentParser(prog="python -m cai_bootstrap.stages.stage2", description=__doc__.splitlines()[0])
    ap.add_argument("gate", nargs="?", default=str(prev.final_gate_manifest),
                    help=f"Stage 1's final gate manifest (default {prev.final_gate_manifest})")
    ap.add_argument("--override", metavar="REASON", help="start even though the gate said FAIL (an experiment); recorded")
    ap.add_argument("--run-dir", default=str(stage.run_dir))
    ap.add_argument("--instructions", help="JSONL of candidate instructions (default RUN_DIR/instructions.jsonl)")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        inp = resolve_input_model(STAGE, gate_manifest=args.gate, override=args.override)
        commands = stage2_commands(inp, run_dir=run_dir, stage1_data=_stage1_data(inp),
                                   instructions=Path(args.instructions) if args.instructions else run_dir / "instructions.jsonl")
    except StageInputError as e:
        print(f"stage2: REFUSED: {e}", file=sys.stderr)
        return EXIT_REFUSED
    from cai_bootstrap.io_utils import atomic_write_json

    planned = stage.planned_steps()
    record = atomic_write_json(run_dir / STATE_DIR / INPUT_RECORD, {
        **inp.to_dict(), "commands": {name: shlex.join(argv) for name, argv in commands}, "planned_steps": planned})
    print(f"stage2: input model: {inp.adapter_path} on base {inp.base_model}; stage-1 gate {inp.gate['path']}: "
          f"{inp.gate['decision'].upper()}" + (f" (OVERRIDE: {inp.override['reason']})" if inp.override else ""))
    print(f"stage2: recorded in {record}; the built steps, in order:")
    for _, argv in commands:
        print("  " + shlex.join(argv))
    notes = {s.name: s.note for s in stage.steps}
    print("stage2: NOT RUN: steps planned, not built: " + "; ".join(f"{n} ({notes[n]})" if notes[n] else n for n in planned),
          file=sys.stderr)
    return EXIT_PLANNED


if __name__ == "__main__":
    sys.exit(main())
