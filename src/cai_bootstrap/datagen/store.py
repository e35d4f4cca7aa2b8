"""Append-only, resumable per-phase work files.

Each phase processes items in fixed batches (fixed by position in a deterministic list)
and appends a whole batch at a time with fsync. After a kill, the torn last line (if any)
is dropped on read, finished ids are skipped, and an unfinished batch is recomputed with
the same seed, so results equal an uninterrupted run and no id is written twice.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterable

from cai_bootstrap.io_utils import MalformedInputError, iter_jsonl


class PhaseStore:
    """One phase's finished items by id, backed by an append-only JSONL work file."""

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.key = key
        self._records: dict = {}
        if self.path.exists():
            self._truncate_torn_tail()
            for line, rec in iter_jsonl(self.path):
                if key not in rec:
                    raise MalformedInputError(f"{self.path}: line {line}: record has no {key!r} field; "
                                              "this is not a work file of this phase (move it away or use a new --out)")
                self._records.setdefault(rec[key], rec)

    def _truncate_torn_tail(self) -> None:
        """Cut an incomplete last line left by a kill mid-write, so appends stay line-aligned."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)  # never truncate through a link
            try:
                os.ftruncate(fd, cut)
            finally:
                os.close(fd)

    def __contains__(self, item_id) -> bool:
        return item_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, item_id):
        return self._records.get(item_id)

    def records(self) -> list[dict]:
        return list(self._records.values())

    def append_batch(self, records: Iterable[dict]) -> int:
        new = [r for r in records if r[self.key] not in self._records]
        if not new:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new)
        # O_NOFOLLOW: a link put in place of a work file is refused by the open itself, with no window
        # between a check and the write.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "work file is a symbolic link; remove it or use a new --out", str(self.path)) from None
            raise
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in new:
            self._records[r[self.key]] = r
        return len(new)
