"""Atomic, line-checked file I/O: a crash never leaves a half-written artifact behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class MalformedInputError(ValueError):
    """Input file is unreadable or has bad lines; the message names the file and line numbers."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; an artifact should get the permissions of any other new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_text_file(path: str | os.PathLike) -> str:
    """A text input, with errors that name the file: missing, a folder, or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise MalformedInputError(f"{path} is a directory; expected a file here: give the path of the file itself")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedInputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record); malformed lines raise with every bad line number listed."""
    path = Path(path)
    raw = read_text_file(path)
    lines = raw.split("\n")
    errors: list[str] = []
    good: list[tuple[int, dict]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {i}: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"line {i}: expected a JSON object, got {type(obj).__name__}")
            continue
        good.append((i, obj))
    if errors:
        shown = "; ".join(errors[:20]) + (f"; ... {len(errors) - 20} more" if len(errors) > 20 else "")
        raise MalformedInputError(f"{path}: {len(errors)} malformed JSONL line(s): {shown}. Fix or remove those lines.")
    yield from good


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [r for _, r in iter_jsonl(path)]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
