"""The lock of tested versions (OPS-04): read it, and compare an environment with it.

CI installs exactly ``requirements/lock.txt``; the conformance suite checks that the
environment it runs in really holds those versions, and ``nox -s latest`` lists what the
newest releases change, so a break is traced to the package that moved.

    python -m cai_bootstrap.lockfile requirements/lock.txt [FREEZE_FILE]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Mapping

_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)\s*(;.*)?$")


class LockFileError(ValueError):
    """A lock line is not an exact pin; the message names the line."""


def canonical(name: str) -> str:
    """PEP 503 name normalisation, so ``Great_Expectations`` and ``great-expectations`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """The version without its local label: the CPU build ``2.13.0+cpu`` is the locked ``2.13.0``."""
    return version.split("+", 1)[0]


def parse_pins(text: str, *, source: str = "lock", strict: bool = True) -> dict[str, str]:
    """``name==version`` lines (pip freeze or uv/pip-tools output) to {canonical name: version}.

    A lock must hold nothing else (``strict``); a freeze may list ``name @ file://...`` installs
    and warnings, which are skipped.
    """
    pins: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        m = _PIN_RE.match(line)
        if not m and not strict:
            continue
        if not m:
            raise LockFileError(f"{source}:{lineno}: {raw.strip()!r} is not an exact pin (name==version)")
        name = canonical(m.group(1))
        if name in pins and pins[name] != m.group(3):
            raise LockFileError(f"{source}:{lineno}: {name} pinned twice ({pins[name]} and {m.group(3)})")
        pins[name] = m.group(3)
    return pins


def read_pins(path: str | Path) -> dict[str, str]:
    p = Path(path)
    return parse_pins(p.read_text(encoding="utf-8"), source=str(p))


def installed_versions() -> dict[str, str]:
    from importlib.metadata import distributions

    return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def differences(locked: Mapping[str, str], installed: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """{name: (locked, installed)} for every locked package installed at another version."""
    return {
        name: (want, installed[name])
        for name, want in sorted(locked.items())
        if name in installed and public_version(installed[name]) != public_version(want)
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print("usage: python -m cai_bootstrap.lockfile LOCK [FREEZE_FILE]", file=sys.stderr)
        return 2
    locked = read_pins(args[0])
    installed = (parse_pins(Path(args[1]).read_text(encoding="utf-8"), source=args[1], strict=False)
                 if len(args) == 2 else installed_versions())
    diff = differences(locked, installed)
    if not diff:
        print(f"every installed package of {args[0]} is at its locked version")
    for name, (want, have) in diff.items():
        print(f"{name}: locked {want}, installed {have}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
