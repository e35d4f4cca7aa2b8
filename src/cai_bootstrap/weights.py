"""The weights hash of a local model folder: what a load records and what an adapter's consumer compares.

Kept apart from the loader so that checks which run before any load (``integrity``) can hash
the weights without importing the loader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from platformdirs import user_cache_dir

from cai_bootstrap.io_utils import atomic_write_json, sha256_file, sha256_text

# Folders below this total size get a full sha256 of their weight files.
FULL_HASH_LIMIT_BYTES = 4 * 1024**3


def weights_fingerprint(folder: Path) -> dict:
    """The weights hash a load records (and a consumer of an adapter compares): sha256 per weight file, combined."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt") and p.is_file()
    )
    total = sum(p.stat().st_size for p in files)
    if total <= FULL_HASH_LIMIT_BYTES:
        per_file = {p.name: _cached_sha256(p, sha256_file) for p in files}
        mode = "sha256"
    else:
        # Hashing tens of GB at every load is not acceptable; fingerprint and say so.
        per_file = {p.name: f"size={p.stat().st_size}" for p in files}
        mode = "fingerprint(size)"
    combined = sha256_text(json.dumps(per_file, sort_keys=True))
    return {"mode": mode, "combined": combined, "files": per_file, "total_bytes": total}


def _hash_cache_path() -> Path:
    root = os.environ.get("CAI_BOOTSTRAP_CACHE")
    if root:
        return Path(root) / "weight_hashes.json"
    return Path(user_cache_dir("cai-bootstrap")) / "weight_hashes.json"


def _cached_sha256(path: Path, hasher) -> str:
    """sha256 of a weight file, remembered by (path, size, mtime): a 1 GB file is hashed once, not per load."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hasher(path)
    cache[key] = digest
    try:
        atomic_write_json(cache_file, cache)
    except OSError:
        pass  # an unwritable cache only costs time
    return digest
