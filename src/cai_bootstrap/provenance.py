"""Provenance: where an artifact came from (code version, environment, inputs)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

_REPO_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def git_info() -> dict:
    """Commit, branch and dirty flag of the source tree; 'unknown' outside a git checkout."""

    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "branch": "unknown", "dirty": None}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": run("rev-parse", "--abbrev-ref", "HEAD") or "unknown", "dirty": bool(status)}
