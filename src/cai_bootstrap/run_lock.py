"""One writer per run directory (OPS-06): an OS file lock held for the whole run.

Two processes writing one run directory interleave their work files and leave a state
file and a manifest that disagree, so every command that writes a run directory holds
``fcntl.flock`` on ``LOCK_NAME`` inside it for as long as it runs. The kernel drops a
flock when its process dies, so a lock file left behind by a killed process blocks
nothing: the next writer takes it over (stale-lock recovery needs no pid guessing).

A lock covers the directory's subtree: a writer is refused when an enclosing directory
is locked by another process, and passes when it is locked by this one (the stage-1
chain holds its run directory and runs each phase's command in-process, below it).
Taking the same directory twice in one process nests. A process this one starts to
write below its directory (a shard the launcher starts for the chain, OPS-05) passes too:
:func:`delegated_env` names the held directories in the child's environment, and the
child accepts them only while their lock is held by its parent process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

from cai_bootstrap.provenance import utc_now

LOCK_NAME = ".cai_bootstrap.lock"
# Directories a parent process holds and lends to its child (os.pathsep-separated real paths).
DELEGATE_ENV = "CAI_BOOTSTRAP_HELD_BY_PARENT"

# realpath -> [fd, depth] of the locks this process holds.
_held: dict[str, list[int]] = {}
_guard = threading.Lock()


class RunDirectoryInUse(ValueError):
    """Another process is writing this run directory; the message names it and since when."""


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(run_dir: Path, info: dict) -> str:
    who = f"pid {info['pid']}" if info.get("pid") else "another process"
    if info.get("host"):
        who += f" on {info['host']}"
    if info.get("command"):
        who += f" (cai-bootstrap {info['command']})"
    since = f" since {info['started_at']}" if info.get("started_at") else ""
    return (f"run directory {run_dir} is in use by {who}{since}; wait for it to finish, "
            "or choose another output directory")


def _locked_by_other(lock_path: Path) -> dict | None:
    """The holder's record if another process holds ``lock_path``, else None (free or stale)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            # A shared probe: it fails only while someone holds the exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def delegated_env() -> dict[str, str]:
    """Environment for a child process that writes below the directories this process holds."""
    with _guard:
        return {DELEGATE_ENV: os.pathsep.join(sorted(_held))} if _held else {}


def _check_enclosing(key: str) -> None:
    lent = set(filter(None, os.environ.get(DELEGATE_ENV, "").split(os.pathsep)))
    for parent in Path(key).parents:
        if str(parent) in _held:
            return  # this process holds the subtree
        info = _locked_by_other(parent / LOCK_NAME)
        if info is not None:
            if str(parent) in lent and info.get("pid") == os.getppid():
                return  # the parent holds the subtree and started this process to write in it
            raise RunDirectoryInUse(_describe(parent, info))


def _acquire(run_dir: Path, key: str, command: str) -> int:
    path = Path(key) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(fd)
            os.close(fd)
            raise RunDirectoryInUse(_describe(run_dir, info)) from None
        # The previous holder may have unlinked the file between our open and our flock.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started_at": utc_now()}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    return fd


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the run directory for one writer; raise :class:`RunDirectoryInUse` if another has it.

    Creates the directory if needed and removes it again if the run left it empty, so a
    refused or failed command leaves no trace.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    key = os.path.realpath(run_dir)
    with _guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _check_enclosing(key)
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                fd = _acquire(run_dir, key, command)
            except (FileExistsError, NotADirectoryError, PermissionError) as e:
                raise PermissionError(f"output directory {run_dir} is not writable ({e.strerror}); "
                                      "choose another output directory") from None
            _held[key] = [fd, 1]
    try:
        yield run_dir
    finally:
        with _guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                fd = _held.pop(key)[0]
                # Unlink while still holding it, so the directory is left as the run made it.
                with contextlib.suppress(OSError):
                    os.unlink(Path(key) / LOCK_NAME)
                os.close(fd)
                if created:
                    with contextlib.suppress(OSError):
                        run_dir.rmdir()  # only if empty
