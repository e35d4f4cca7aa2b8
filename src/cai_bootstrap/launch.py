"""OPS-05: the shards of a scale run as independent processes, one per GPU, then merge.

This is a fan-out over the command a user would run by hand, ``cai-bootstrap generate
--shard i/N``, and nothing more: N processes on N devices, started together, their
output prefixed with their shard, waited for, reported. Each shard is the same
resumable run it would be alone (DG-06), so there is nothing to schedule or retry here:
a failed shard fails the launch with its exit status, the other shards finish (their
outputs are complete and are not redone), and rerunning the same launch resumes every
shard from its own run state. On a cluster the same fan-out is a Slurm array of the
same command (docs/CLUSTER.md); training is data-parallel through ``accelerate launch``
instead (``sft/distributed.py``).

Logic (which shard, which device, which environment) is in pure functions; only
:func:`run_shards` starts processes.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

# What every shard process runs; the generate arguments follow it.
GENERATE_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "cai_bootstrap.cli")
# Exit statuses of a finished shard: 0 QC passed, 1 QC thresholds failed (the merge recomputes
# QC over the union, so a shard's own verdict does not stop the launch).
FINISHED_CODES = (0, 1)
# Arguments the launcher sets per shard; given by the user they would make every shard the same one.
PER_SHARD_OPTIONS = ("--shard", "--out")
MERGED_DIR = "merged"
DEFAULT_SHARDS_PER_GPU = 1


class LaunchError(ValueError):
    """The launch cannot start as asked; the message says what to change."""


def shard_dir(root: str | os.PathLike, index: int) -> Path:
    """Where shard ``index`` writes under a launch's output root (the stage-1 chain uses it too)."""
    return Path(root) / f"shard-{index}"


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may hand out, by the ids a child's ``CUDA_VISIBLE_DEVICES`` needs."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_devices(*, gpus: int | None = None, devices: str | None = None, procs: int | None = None,
                  visible: str | None = None, per_gpu: int = DEFAULT_SHARDS_PER_GPU) -> list[str | None]:
    """One entry per process: a CUDA device id, or None for a CPU process. Exactly one option is given.

    ``--gpus N`` takes the first N GPUs of ``visible`` (the launcher's own
    ``CUDA_VISIBLE_DEVICES``, when set), so ``CUDA_VISIBLE_DEVICES=2,3 ... --gpus 2`` uses 2 and 3.
    ``per_gpu`` (``--shards-per-gpu``) starts that many shard processes on each GPU: a small
    model leaves a large GPU mostly idle in one process, which a second process can fill.
    """
    if per_gpu < 1:
        raise LaunchError(f"--shards-per-gpu must be at least 1, got {per_gpu}")
    if per_gpu > 1:
        if procs is not None:
            raise LaunchError("--shards-per-gpu applies to GPUs; with --procs give the number of CPU processes itself")
        return [d for d in parse_devices(gpus=gpus, devices=devices, visible=visible) for _ in range(per_gpu)]
    given = [name for name, v in (("--gpus", gpus), ("--devices", devices), ("--procs", procs)) if v is not None]
    if len(given) != 1:
        raise LaunchError("give exactly one of --gpus N, --devices 0,1,... or --procs N (CPU processes)"
                          + (f"; got {' and '.join(given)}" if given else ""))
    if devices is not None:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        bad = [d for d in ids if not d.isdigit()]
        if not ids or bad:
            raise LaunchError(f"--devices expects comma-separated GPU indices such as 0,1,3; got {devices!r}")
        if len(set(ids)) != len(ids):
            raise LaunchError(f"--devices lists a GPU twice ({devices!r}); to run several shards on one GPU, "
                              "list it once and add --shards-per-gpu K")
        return list(ids)
    n = gpus if gpus is not None else procs
    if n < 1:
        raise LaunchError(f"{given[0]} must be at least 1, got {n}")
    if procs is not None:
        return [None] * n
    if visible is None:
        return [str(i) for i in range(n)]
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    if n > len(ids):
        raise LaunchError(f"--gpus {n} but CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)}; "
                          "ask for fewer, or list the GPUs with --devices")
    return ids[:n]


def refuse_per_shard_options(generate_args: Sequence[str]) -> None:
    for a in generate_args:
        name = a.split("=", 1)[0]
        if name in PER_SHARD_OPTIONS or name == "--output-dir":
            raise LaunchError(f"{name} is set per shard by the launcher (shard i/N writes OUT/shard-i); "
                              "remove it from the generate arguments and give the launcher --out")


@dataclass(frozen=True)
class ShardJob:
    index: int
    n_shards: int
    device: str | None  # the CUDA device this process sees as its only one; None: CPU
    out_dir: Path
    argv: tuple[str, ...]  # generate arguments, after the program
    env: dict[str, str] = field(default_factory=dict)  # what the launcher sets on top of its own environment

    @property
    def label(self) -> str:
        return f"{self.index}/{self.n_shards}"


def plan_shards(generate_args: Sequence[str], devices: Sequence[str | None], out_root: str | os.PathLike, *,
                indices: Sequence[int] | None = None, n_shards: int | None = None,
                base_env: dict[str, str] | None = None, cpu_count: int | None = None,
                extra_env: dict[str, str] | None = None) -> list[ShardJob]:
    """One job per device: shard ``indices[k]`` of ``n_shards`` on ``devices[k]``.

    By default the launch makes shards 0..N-1 of N with N the number of devices. The
    stage-1 chain passes ``indices`` to run a larger shard count a device-full at a time.
    GPU processes see only their own device (``CUDA_VISIBLE_DEVICES``); CPU processes see
    none and, unless the caller fixed ``OMP_NUM_THREADS``, share the cores evenly.
    """
    refuse_per_shard_options(generate_args)
    n = n_shards if n_shards is not None else len(devices)
    indices = list(range(n)) if indices is None else list(indices)
    if len(indices) > len(devices):
        raise LaunchError(f"{len(indices)} shards for {len(devices)} devices: one process per device")
    if len(set(indices)) != len(indices) or any(not 0 <= i < n for i in indices):
        raise LaunchError(f"shard indices {indices} must be distinct and in 0..{n - 1}")
    base_env = os.environ if base_env is None else base_env
    cpu_count = cpu_count or os.cpu_count() or 1
    jobs = []
    for i, device in zip(indices, devices):
        env = {"CUDA_VISIBLE_DEVICES": device if device is not None else ""}
        if device is None and "OMP_NUM_THREADS" not in base_env:
            env["OMP_NUM_THREADS"] = str(max(1, cpu_count // len(indices)))
        env.update(extra_env or {})
        out = shard_dir(out_root, i)
        argv = ("generate", *generate_args, "--shard", f"{i}/{n}", "--out", str(out))
        jobs.append(ShardJob(i, n, device, out, argv, env))
    return jobs


@dataclass(frozen=True)
class ShardOutcome:
    job: ShardJob
    returncode: int
    wall_s: float

    @property
    def finished(self) -> bool:
        return self.returncode in FINISHED_CODES


def exit_status(returncode: int) -> int:
    """A shell-style status: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def launch_status(outcomes: Sequence[ShardOutcome]) -> int:
    """0 when every shard finished, else the exit status of the first shard (in shard order) that did not."""
    failed = [o for o in sorted(outcomes, key=lambda o: o.job.index) if not o.finished]
    return exit_status(failed[0].returncode) if failed else 0


def describe(outcome: ShardOutcome) -> str:
    j = outcome.job
    where = f"GPU {j.device}" if j.device is not None else "CPU"
    rc = outcome.returncode
    state = "finished" if outcome.finished else (f"killed by signal {-rc}" if rc < 0 else "FAILED")
    return f"shard {j.label} ({where}): exit {exit_status(rc)} {state} after {outcome.wall_s:.0f} s -> {j.out_dir}"


def shell_command(job: ShardJob, program: Sequence[str] = ("cai-bootstrap",)) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in job.env.items())
    return f"{env} {shlex.join([*program, *job.argv])}".strip()


def merge_command(jobs: Sequence[ShardJob], merge_out: str | os.PathLike) -> str:
    return shlex.join(["cai-bootstrap", "merge", *(str(j.out_dir) for j in jobs), "--out", str(merge_out)])


def _pump(stream, prefix: str, sink: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sink.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            sink.flush()


def run_shards(jobs: Sequence[ShardJob], *, program: Sequence[str] | None = None,
               sink: TextIO | None = None) -> list[ShardOutcome]:
    """Start every job, stream its output line by line with a ``[shard i/N]`` prefix, wait for all.

    A shard that fails does not stop the others: what they finish is kept, and a rerun
    resumes only what is left. If the launcher itself is interrupted, the shards are
    stopped (SIGTERM) and waited for; their work files hold only whole batches.
    """
    from cai_bootstrap.run_lock import delegated_env

    program = tuple(program or GENERATE_PROGRAM)
    sink = sink or sys.stdout
    lock = threading.Lock()
    # A shard may write below a run directory this process holds (the stage-1 chain's).
    inherited = delegated_env()
    procs: list[tuple[ShardJob, subprocess.Popen, threading.Thread, float]] = []
    try:
        for job in jobs:
            with lock:
                sink.write(f"[launch] shard {job.label}: {shell_command(job)}\n")
                sink.flush()
            p = subprocess.Popen([*program, *job.argv], env={**os.environ, **inherited, **job.env},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 errors="replace")
            t = threading.Thread(target=_pump, args=(p.stdout, f"[shard {job.label}] ", sink, lock), daemon=True)
            t.start()
            procs.append((job, p, t, time.time()))
        outcomes = []
        for job, p, t, t0 in procs:
            rc = p.wait()
            t.join()
            outcomes.append(ShardOutcome(job, rc, time.time() - t0))
        return outcomes
    finally:
        for _, p, _, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p, _, _ in procs:
            if p.poll() is None:
                p.wait()


@dataclass(frozen=True)
class LaunchResult:
    outcomes: list[ShardOutcome]
    status: int  # launch_status of the shards
    merge_summary: dict | None = None  # the merged QC summary, when merged


def launch_generate(generate_args: Sequence[str], devices: Sequence[str | None], out_root: str | os.PathLike, *,
                    merge_out: str | os.PathLike | None = None, merge: bool = True,
                    program: Sequence[str] | None = None, sink: TextIO | None = None) -> LaunchResult:
    """Check every shard's configuration, run the shards, report, then merge them (or say how).

    The configuration is validated for every shard before any process starts, so a typo
    fails once, in a second, instead of N times after N model loads.
    """
    sink = sink or sys.stdout
    jobs = plan_shards(generate_args, devices, out_root)
    for job in jobs:
        validate_generate_args(job.argv)
    outcomes = run_shards(jobs, program=program, sink=sink)
    for o in outcomes:
        sink.write(f"[launch] {describe(o)}\n")
    status = launch_status(outcomes)
    merge_out = Path(merge_out) if merge_out is not None else Path(out_root) / MERGED_DIR
    if status != 0:
        rerun = [o.job.label for o in outcomes if not o.finished]
        # A failure is reported on stderr too, where scripts and schedulers look for it.
        err = sys.stderr if sink is sys.stdout else sink
        err.write(f"[launch] shard(s) {', '.join(rerun)} did not finish; the finished shards are complete. "
                  "Rerun the same command to resume (finished shards are not redone), then it merges.\n")
        err.flush()
        return LaunchResult(outcomes, status)
    if not merge:
        sink.write(f"[launch] all shards finished; merge with:\n  {merge_command(jobs, merge_out)}\n")
        sink.flush()
        return LaunchResult(outcomes, status)
    from cai_bootstrap.datagen.merge import merge_shards

    sink.write(f"[launch] {merge_command(jobs, merge_out)}\n")
    sink.flush()
    summary = merge_shards([j.out_dir for j in jobs], merge_out)
    return LaunchResult(outcomes, status, summary)


def validate_generate_args(argv: Sequence[str]) -> None:
    """Parse and validate one shard's generate command the way the command itself will (no model load)."""
    from cai_bootstrap.cli import build_parser
    from cai_bootstrap.commands.generate_cmds import config_from_args

    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit:  # argparse has printed what is wrong
        raise LaunchError(f"the generate arguments are not valid for `cai-bootstrap generate` (see above): "
                          f"{shlex.join(argv)}") from None
    config_from_args(args)
