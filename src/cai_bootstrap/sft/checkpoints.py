"""Which training checkpoints a run can resume from (OPS-06).

The trainer writes ``checkpoint-N`` file by file under its final name, so a kill while it
saves leaves a folder that looks like a checkpoint but is empty or cut short, and
resuming from it fails every time. A checkpoint counts only if every file the trainer
writes is there and whole; trainer state goes last, so its step must match the name.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from cai_bootstrap.integrity import safetensors_problem

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# torch.save archives (zip): a cut file lacks the central directory at its end. The RNG state is
# `rng_state.pth` on one process and `rng_state_{rank}.pth` per rank under data parallelism.
TORCH_ARCHIVES = ("optimizer.pt", "scheduler.pt")
RNG_STATE_GLOB = "rng_state*.pth"


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None if it is complete."""
    m = CHECKPOINT_RE.match(folder.name)
    if not m:
        return "not named checkpoint-N"
    try:
        step = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8")).get("global_step")
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError, AttributeError):
        return f"{TRAINER_STATE} is unreadable"
    if step != int(m.group(1)):
        return f"{TRAINER_STATE} says step {step}"
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        return f"no {ADAPTER_WEIGHTS}"
    problem = safetensors_problem(weights)
    if problem:
        return f"{ADAPTER_WEIGHTS}: {problem}"
    archives = [folder / name for name in TORCH_ARCHIVES] + sorted(folder.glob(RNG_STATE_GLOB))
    if not any(p.name.startswith("rng_state") for p in archives):
        return "no rng_state*.pth"
    for p in archives:
        if not p.is_file():
            return f"no {p.name}"
        if not zipfile.is_zipfile(p):
            return f"{p.name} is truncated"
    return None


def scan_checkpoints(root: Path) -> tuple[Path | None, dict[Path, str]]:
    """The last complete checkpoint under ``root`` and every incomplete one with its reason."""
    if not root.is_dir():
        return None, {}
    found = sorted((p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)),
                   key=lambda p: int(p.name.split("-")[-1]))
    incomplete = {p: why for p in found if (why := checkpoint_problem(p))}
    complete = [p for p in found if p not in incomplete]
    return (complete[-1] if complete else None), incomplete
