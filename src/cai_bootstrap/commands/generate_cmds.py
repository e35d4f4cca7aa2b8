"""`generate` (a pilot or one shard), `merge` (join shards) and `launch generate` (one shard
process per GPU, then merge; OPS-05) subcommands."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator

from cai_bootstrap.config_io import path_arg
from cai_bootstrap.decode_backends import GENERATION_DECODE_BACKENDS
from cai_bootstrap.launch import DEFAULT_SHARDS_PER_GPU
from cai_bootstrap.prompts import RESPONSE_FRAMES


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate Stage-1 SFT data (pilot or one shard of a scale run)")
    p.add_argument("--config", help="YAML run file (see src/cai_bootstrap/configs/)")
    p.add_argument("--model", help="model: folder, hub id, GGUF file, 'gemma-3-270m' or 'tiny-random'")
    p.add_argument("--profile", help="model profile (default: detected)")
    p.add_argument("--out", dest="out_dir", type=path_arg, help="run directory")
    p.add_argument("--mode", choices=["pilot", "scale"])
    p.add_argument("--target", type=int, help="instruction-response pairs to aim for")
    p.add_argument("--seed", type=int)
    p.add_argument("--shard", help="'i/N': this process makes shard i of N (scale mode)")
    p.add_argument("--pilot-gate", type=path_arg, help="passed pilot gate manifest (required in scale mode, GT-01)")
    p.add_argument("--device")
    p.add_argument("--decode-backend", choices=GENERATION_DECODE_BACKENDS,
                   help="how decoding runs (default: the config's, else eager): eager (dynamic KV cache) or static "
                        "(static KV cache, faster on a GPU; docs/ARCHITECTURE.md)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bars (CI)")
    p.add_argument("--response-frame", choices=RESPONSE_FRAMES,
                   help="what the base model sees when answering (PR-07): answered examples first, or the bare prompt")
    p.set_defaults(func=_generate)

    p = sub.add_parser("merge", help="merge finished shards: re-deduplicate and recompute QC over the union")
    p.add_argument("shards", nargs="+", type=path_arg, help="shard run directories")
    p.add_argument("--out", required=True, type=path_arg, help="merged run directory (new)")
    p.set_defaults(func=_merge)

    p = sub.add_parser("launch", help="start the shards of a scale run as one process per GPU, then merge (OPS-05)")
    launch_sub = p.add_subparsers(dest="launch_command", metavar="WHAT", required=True)
    p = launch_sub.add_parser(
        "generate", help="one `generate --shard i/N` process per GPU (or CPU process), then merge",
        description="Starts one `cai-bootstrap generate --shard i/N --out OUT/shard-i` process per device, each "
                    "seeing only its own GPU (CUDA_VISIBLE_DEVICES), prefixes their output, waits, reports each "
                    "shard's exit, then merges into OUT/merged. Generate arguments go after `--`: "
                    "cai-bootstrap launch generate --gpus 4 --out runs/scale -- --config "
                    "src/cai_bootstrap/configs/generate_scale.yaml --pilot-gate runs/stage1/pilot/pilot_gate.json. "
                    "On a cluster use a Slurm array of the same command instead (docs/CLUSTER.md).")
    devices = p.add_mutually_exclusive_group(required=True)
    devices.add_argument("--gpus", type=int, help="N shards on GPUs 0..N-1")
    devices.add_argument("--devices", help="one shard per listed GPU, e.g. 0,1,3")
    devices.add_argument("--procs", type=int, help="N shards as CPU processes (no GPU; for tests and CPU machines)")
    p.add_argument("--shards-per-gpu", type=int, default=DEFAULT_SHARDS_PER_GPU,
                   help="shard processes started on each GPU (default 1; more can fill a large GPU with a small model)")
    p.add_argument("--out", required=True, type=path_arg, help="output root: shard i writes OUT/shard-i, the merge OUT/merged")
    p.add_argument("--merge-out", type=path_arg, help="merged run directory (default: OUT/merged)")
    p.add_argument("--no-merge", action="store_true", help="do not merge; print the merge command instead")
    p.add_argument("--dry-run", action="store_true", help="print each shard's command and the merge command; start nothing")
    p.add_argument("generate_args", nargs=argparse.REMAINDER, help="after --: arguments of `cai-bootstrap generate`")
    p.set_defaults(func=_launch_generate)


def _print_qc(summary: dict) -> int:
    acc, counts = summary["acceptance"], summary["counts"]
    print(json.dumps({
        "kept": counts["kept"], "generated_responses": counts["generated"],
        "instruction_acceptance": round(acc["instruction_acceptance_rate"], 3),
        "pair_acceptance": round(acc["pair_acceptance_rate"], 3),
        "runaway_rate": round(summary["rates"]["runaway_rate"], 3),
        "token_limit_rate": round(summary["rates"]["token_limit_rate"], 3),
        "median_tokens": summary["token_stats"]["median"],
        "thresholds_passed": summary["thresholds_passed"],
        "failed_reasons": summary["failed_reasons"],
    }, indent=2))
    return 0 if summary["thresholds_passed"] else 1


# What a full disk, a quota or a read-only volume raise.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


@contextlib.contextmanager
def _io_errors(out_dir, then: str = "rerun the same command to resume") -> Iterator[None]:
    """A failed write (full disk, read-only volume) is a user-facing error: say what is safe and what to do."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise  # the CLI reports these as they are
    except OSError as e:
        from cai_bootstrap.cli import CLIError

        if e.errno not in WRITE_ERRNOS:
            raise  # not a failed write (a network error, say): reported as itself

        raise CLIError(f"could not write under {out_dir}: {e.strerror or e} (errno {e.errno}). Files already "
                       f"written are complete (writes are atomic, work files append whole batches); free space "
                       f"and {then}") from None


def config_from_args(args):
    """The generation config a parsed ``generate`` command line means (shared with the launcher's checks)."""
    from cai_bootstrap.datagen.config import load_config

    return load_config(args.config, model=args.model, profile=args.profile, out_dir=args.out_dir, mode=args.mode,
                       target=args.target, seed=args.seed, shard=args.shard, pilot_gate=args.pilot_gate, device=args.device,
                       decode_backend=args.decode_backend, quiet=args.quiet, **{"responses.response_frame": args.response_frame})


def _generate(args) -> int:
    from cai_bootstrap.datagen.pipeline import run_generation

    cfg = config_from_args(args)
    with _io_errors(cfg.out_dir):
        summary = run_generation(cfg)
    print(f"run directory: {cfg.out_dir}")
    return _print_qc(summary)


def _merge(args) -> int:
    from cai_bootstrap.datagen.merge import merge_shards

    with _io_errors(args.out, then="rerun the same merge (it starts over; the shards are untouched)"):
        summary = merge_shards(args.shards, args.out)
    print(f"merged into: {args.out}")
    return _print_qc(summary)


def _launch_generate(args) -> int:
    from cai_bootstrap import launch as L

    generate_args = list(args.generate_args)
    if generate_args[:1] == ["--"]:
        generate_args = generate_args[1:]
    devices = L.parse_devices(gpus=args.gpus, devices=args.devices, procs=args.procs,
                              visible=os.environ.get("CUDA_VISIBLE_DEVICES"), per_gpu=args.shards_per_gpu)
    if args.dry_run:
        jobs = L.plan_shards(generate_args, devices, args.out)
        for job in jobs:
            L.validate_generate_args(job.argv)
            print(L.shell_command(job))
        print(L.merge_command(jobs, args.merge_out or Path(args.out) / L.MERGED_DIR))
        return 0
    result = L.launch_generate(generate_args, devices, args.out, merge_out=args.merge_out, merge=not args.no_merge)
    if result.status != 0 or result.merge_summary is None:
        return result.status
    print(f"merged into: {args.merge_out or Path(args.out) / L.MERGED_DIR}")
    return _print_qc(result.merge_summary)
