"""The `cai-bootstrap` command: one subcommand per phase.

Each phase module exposes ``register(subparsers)`` which adds its subcommand and sets
``func`` on its parser; this file only wires them together so phases stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "cai_bootstrap.commands.loader_cmds",
    "cai_bootstrap.commands.generate_cmds",
    "cai_bootstrap.commands.validate_cmds",
    "cai_bootstrap.commands.evaluate_cmds",
    "cai_bootstrap.commands.train_cmds",
    "cai_bootstrap.commands.preference_cmds",
]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai-bootstrap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"cai-bootstrap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, PermissionError) as e:
        # Known bad-input failures carry messages meant for the user.
        print(f"cai-bootstrap {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # Our own errors (contamination, refused gates, integrity) are meant to be read, not traced.
        if type(e).__module__.startswith("cai_bootstrap"):
            print(f"cai-bootstrap {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
