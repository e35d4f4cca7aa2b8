"""Outputs that never destroy what the project did not make, and folders published whole (OPS-06).

A command may replace a folder only when it recognises the folder as its own (by its
marker or manifest); anything else is refused with :class:`ForeignPathError`, naming
the path and the way out. A model or adapter folder is built under a temporary sibling
name and swapped in by rename, so a crash leaves either the old folder or the new one,
never a half-written one under the real name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from cai_bootstrap.run_lock import LOCK_NAME


class ForeignPathError(ValueError):
    """The output path holds something this project did not write; it is left untouched."""


def refuse_foreign(path: str | os.PathLike, why: str, *, option: str = "output directory") -> None:
    raise ForeignPathError(f"{path} {why}; it is left untouched: choose another {option}, or remove it yourself")


def is_empty_dir(path: Path) -> bool:
    """Empty but for a run lock (ours, or one left by a crashed run)."""
    return path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(src: Path, final: Path) -> Path:
    """Put the finished folder ``src`` at ``final``; an existing ``final`` must be the caller's own.

    Renames only, so the real name never points at a half-written folder.
    """
    src, final = Path(src), Path(final)
    if not final.exists():
        os.replace(src, final)
        return final
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    os.replace(src, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def publish_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``final`` to fill; on success it replaces ``final``.

    On an error the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder gets the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
