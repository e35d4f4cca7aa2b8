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


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes in the project's one-line error format (exit 2), with where to look for the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cai-bootstrap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error, already printed in one line (or --help): its exit code
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"cai-bootstrap {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        # Readers name the file (io_utils.read_text_file); this is the fallback for one that does not.
        print(f"cai-bootstrap {args.command}: error: an input file is not UTF-8 text ({e.reason} at byte {e.start}); "
              "save it as UTF-8", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, PermissionError) as e:
        # Known bad-input failures carry messages meant for the user.
        print(f"cai-bootstrap {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (IsADirectoryError, NotADirectoryError) as e:
        print(f"cai-bootstrap {args.command}: error: {e.filename}: {e.strerror}; a file was expected where a folder "
              "is, or a folder where a file is: check the path", file=sys.stderr)
        return 2
    except OSError as e:
        # The system's own errors (network, disk) name their cause; one line, no traceback.
        print(f"cai-bootstrap {args.command}: error: {type(e).__name__}: {one_line(e)[:500]}", file=sys.stderr)
        return 2
    except Exception as e:
        # Our own errors (contamination, refused gates, integrity) are meant to be read, not traced.
        if type(e).__module__.startswith("cai_bootstrap"):
            print(f"cai-bootstrap {args.command}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
            return 2
        raise
    return int(rc or 0)


def one_line(error: BaseException) -> str:
    """An error as one line, so a log shows it whole (multi-line reports are joined with '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines).replace(":;", ":")


if __name__ == "__main__":
    sys.exit(main())
