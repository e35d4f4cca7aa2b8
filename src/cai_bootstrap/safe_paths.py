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
from typing import Iterable, Iterator

from cai_bootstrap.run_lock import LOCK_NAME


class ForeignPathError(ValueError):
    """The output path holds something this project did not write; it is left untouched."""


def refuse_foreign(path: str | os.PathLike, why: str, *, option: str = "output directory") -> None:
    raise ForeignPathError(f"{path} {why}; it is left untouched: choose another {option}, or remove it yourself")


def is_empty_dir(path: Path) -> bool:
    """Empty but for a run lock (ours, or one left by a crashed run)."""
    return path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir())


# Short-lived files of the project's own checks (a preflight's write probe).
TRANSIENT_PREFIXES = (".preflight-",)


def refuse_unknown_entries(out: str | os.PathLike, own: Iterable[str], *, option: str = "output directory") -> None:
    """An output folder may hold only what this command writes there (``own``, by name) and a run lock;
    anything else is someone else's, and the folder is refused untouched (OPS-06)."""
    out = Path(out)
    if not out.is_dir():
        return
    own = tuple(own)
    allowed = {LOCK_NAME, *own}
    # .NAME.*: a temporary or set-aside sibling of one of ours (publish_dir, replace_dir)
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in allowed and not any(p.name.startswith(f".{o}.") for o in own)
                     and not p.name.startswith(TRANSIENT_PREFIXES))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        refuse_foreign(out, f"holds files this command did not write ({shown})", option=option)


def refuse_overlap(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *, option: str = "--out") -> None:
    """The output folder is none of the inputs, inside none of them, and holds none of them: a command
    never writes into what it reads (PV-07)."""
    o = Path(out).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        i = Path(path).resolve()
        # A folder input may not hold, lie in or be the output; a file input may not be in the output.
        if o == i or o in i.parents or (not i.is_file() and i in o.parents):
            raise ForeignPathError(f"{option} {out} overlaps the {name} {path} this command reads; write to a folder "
                                   "of its own")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# renameat2(2) flags and the "current directory" descriptor, from <linux/fs.h> and <fcntl.h>.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False when this system or filesystem cannot (no ``renameat2``, or it refuses the flag);
    any other failure is raised.
    """
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: Path, final: Path) -> Path:
    """Put the finished folder ``src`` at ``final``; an existing ``final`` must be the caller's own.

    An existing ``final`` is swapped with ``src`` in one atomic step where the system can, so
    the real name always names a whole folder, old or new, even across a crash. Elsewhere it
    takes two renames, and a crash between them leaves the old folder under a hidden
    ``.NAME.old-*`` name beside it.
    """
    src, final = Path(src), Path(final)
    if not final.exists():
        os.replace(src, final)
        return final
    if exchange_paths(src, final):
        shutil.rmtree(src, ignore_errors=True)  # now the old folder
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
