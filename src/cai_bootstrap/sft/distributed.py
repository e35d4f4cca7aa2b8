"""OPS-05: training data-parallel under ``accelerate launch`` (DDP), one config for any process count.

``accelerate launch --num_processes N -m cai_bootstrap.cli train ...`` (or torchrun) starts
N copies of the same command with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set; the
Trainer then builds its process group (accelerate's ``PartialState``) and shards the
batches. What the project adds is the bookkeeping around it: every rank runs the data
gate and the leakage check (cheap, and a rank must not train on data it has not
checked), but only the main process takes the run lock and writes the gate manifest,
run config, adapter, training manifest and success marker; the Trainer already writes
checkpoints from the main process only.

The layout is read from the launcher's environment, not from a process group, because
the run must know whether it is the writer before anything (the model, the Trainer, the
process group) exists; once the Trainer is built, :func:`trainer_layout` checks that it
agrees. The batch the optimizer sees is ``per_device x accumulation x world_size``: the
config's SFT-04 range is for one device's share, so one file serves 1 or N processes and
the manifest records the product.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

# Set by torchrun, and so by `accelerate launch`, for every process it starts.
RANK_ENV, LOCAL_RANK_ENV, WORLD_SIZE_ENV = "RANK", "LOCAL_RANK", "WORLD_SIZE"


class DistributedSetupError(RuntimeError):
    """The launcher's environment or the trainer's process group is not what the run expects."""


@dataclass(frozen=True)
class ProcessLayout:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The one process that writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def batch(self, per_device_batch_size: int, gradient_accumulation_steps: int) -> dict:
        """What one optimizer step sees, recorded in the training manifest."""
        return {
            "world_size": self.world_size,
            "per_device_batch_size": per_device_batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "effective_batch_size": per_device_batch_size * gradient_accumulation_steps * self.world_size,
        }


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedSetupError(f"{name}={raw!r} is not an integer; start training with `accelerate launch` "
                                    "or torchrun, which set it, or unset it for one process") from None


def process_layout(env: Mapping[str, str] | None = None) -> ProcessLayout:
    """This process's place in the run, from the launcher's environment (one process when unset)."""
    env = os.environ if env is None else env
    world = _int_env(env, WORLD_SIZE_ENV, 1)
    rank = _int_env(env, RANK_ENV, 0)
    local = _int_env(env, LOCAL_RANK_ENV, rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedSetupError(f"inconsistent launcher environment: {RANK_ENV}={rank}, {LOCAL_RANK_ENV}={local}, "
                                    f"{WORLD_SIZE_ENV}={world} (need 0 <= RANK < WORLD_SIZE)")
    return ProcessLayout(rank, local, world)


def trainer_layout(layout: ProcessLayout, trainer: Any) -> dict:
    """What the Trainer's process group says, checked against the launcher's environment."""
    acc = trainer.accelerator
    seen = int(acc.num_processes)
    if seen != layout.world_size or int(acc.process_index) != layout.rank:
        raise DistributedSetupError(
            f"the launcher set {WORLD_SIZE_ENV}={layout.world_size}, {RANK_ENV}={layout.rank} but the trainer runs "
            f"{seen} process(es) as rank {acc.process_index}; start every rank with the same `accelerate launch` command")
    state = acc.state
    return {"distributed_type": str(state.distributed_type).split(".")[-1], "backend": getattr(state, "backend", None)}
