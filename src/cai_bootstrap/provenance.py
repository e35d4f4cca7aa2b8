"""Provenance: where an artifact came from (code version, environment, inputs) and proof it is unchanged.

Every record and manifest says which code, model and decoding produced it, so a number
in a report can be traced back and reproduced; every manifest pins the sha256 of its
files, so a later phase can refuse inputs that changed under it instead of training or
evaluating on something nobody checked (PV-05).

Nothing here imports torch at module import: the schema constants are shared with the
validation suites, which must run where only the ``validate`` extra is installed.

Paths in a manifest are relative to the manifest's own folder when the file lies inside
it, so a run directory can be moved or copied and still verify.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cai_bootstrap.io_utils import atomic_write_json, sha256_file

_REPO_DIR = Path(__file__).resolve().parent
UNKNOWN = "unknown"

# Artifact types: the value of ``artifact_type`` in records and manifests, and the name of
# the validation suite that checks them.
SFT_RECORDS = "sft_records"
QC_SUMMARY = "qc_summary"
SESSION_MANIFEST = "session_manifest"
TRAINING_MANIFEST = "training_manifest"
EVAL_OUTPUT = "eval_output"
PREFERENCE_PAIRS = "preference_pairs"
PAIR_QC_SUMMARY = "pair_qc_summary"
ARTIFACT_TYPES = (SFT_RECORDS, QC_SUMMARY, SESSION_MANIFEST, TRAINING_MANIFEST, EVAL_OUTPUT, PREFERENCE_PAIRS, PAIR_QC_SUMMARY)

# PV-01 and CR-04 field names, shared by the record builders and the validation suites.
CRITIQUE_FIELDS = ("is_good", "predicted_label", "logp_a", "logp_b", "margin", "confident")
GENERATION_FIELDS = ("seed", "temperature", "max_new_tokens", "do_sample")
RECORD_METADATA_FIELDS = (
    "git_commit",
    "timestamp",
    "loader_version",
    "model_name",
    "quantization",
    "template_disabled",
    "script_name",
    "artifact_type",
    "generation",
)
SFT_RECORD_FIELDS = ("instruction", "response", "instruction_critique", "pair_critique", "metadata")
ENVIRONMENT_FIELDS = ("hostname", "python", "torch", "transformers", "cuda", "gpu", "gpu_memory_gb")
SESSION_MANIFEST_FIELDS = (
    "artifact_type",
    "session_id",
    "started_at",
    "git_commit",
    "git_branch",
    "git_dirty",
    "environment",
    "loader_version",
    "planned_artifacts",
    "generated_artifacts",
    "budgets",
    "notes",
)
# Keys under which a manifest lists the files it vouches for.
FILE_LIST_KEYS = ("files", "generated_artifacts")


class InputIntegrityError(ValueError):
    """An input named by a manifest is missing or differs from the hash the manifest pinned."""


def utc_now() -> str:
    """The one timestamp format of every artifact (UTC, seconds, ``Z``), so records sort and compare as text."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- code and environment -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _git_info_cached() -> tuple[str, str, bool | None]:
    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    if run("rev-parse", "--is-inside-work-tree") != "true":
        return UNKNOWN, UNKNOWN, None
    commit = run("rev-parse", "HEAD") or UNKNOWN  # a repository without commits yet
    branch = run("symbolic-ref", "--short", "-q", "HEAD") or run("rev-parse", "--short", "HEAD") or UNKNOWN
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit, branch, (bool(status) if status is not None else None)


def git_info() -> dict:
    """Commit, branch and dirty flag of this package's source tree; 'unknown' outside a git checkout.

    Cached for the process: records are stamped by the thousand and the answer cannot
    change in a way that matters within one run.
    """
    commit, branch, dirty = _git_info_cached()
    return {"commit": commit, "branch": branch, "dirty": dirty}



def code_version() -> str:
    """The loader/code version recorded everywhere (CG-06): the git commit of this source tree."""
    return git_info()["commit"]


def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def _environment_cached() -> tuple[tuple[str, Any], ...]:
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "torch": None,
        "transformers": dist_version("transformers"),
        "cuda": None,
        "gpu": None,
        "gpu_memory_gb": None,
        "platform": platform.platform(),
    }
    try:
        import torch
    except ImportError:
        return tuple(env.items())
    env["torch"] = torch.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["cuda"] = torch.version.cuda
        env["gpu"] = props.name
        env["gpu_memory_gb"] = round(props.total_memory / 1024**3, 1)
    return tuple(env.items())


def environment() -> dict:
    """Host, library versions and GPU (PV-02); GPU fields are None on a CPU machine."""
    return dict(_environment_cached())


# -- SFT records (PV-01) -----------------------------------------------------------------------------


def _as_dict(obj: Any, what: str) -> dict:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{what} must be a mapping or dataclass, got {type(obj).__name__}")


def _require(d: Mapping, fields: Iterable[str], what: str) -> None:
    missing = [f for f in fields if f not in d or d[f] is None]
    if missing:
        raise ValueError(f"{what} lacks required field(s) {missing}")


def record_metadata(
    *,
    script_name: str,
    generation: Mapping[str, Any],
    artifact_type: str = SFT_RECORDS,
    load_provenance: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    quantization: str | None = None,
    template_disabled: bool | None = None,
    loader_version: str | None = None,
    timestamp: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The PV-01 ``metadata`` block of one record.

    Pass the loader's provenance as ``load_provenance`` so model name, quantization and
    ``template_disabled`` are copied from what the loader observed rather than retyped;
    explicit arguments win. ``generation`` must hold at least seed, temperature,
    max_new_tokens and do_sample; further decoding settings (top_p, repetition_penalty)
    are kept, since PR-02 wants all of them recorded.
    """
    lp = dict(load_provenance or {})
    gen = dict(generation)
    _require(gen, [f for f in GENERATION_FIELDS if f != "temperature"], "generation params")
    if "temperature" not in gen:
        raise ValueError("generation params lack required field(s) ['temperature'] (use None for greedy decoding)")
    if artifact_type not in ARTIFACT_TYPES:
        raise ValueError(f"unknown artifact_type {artifact_type!r}; known: {', '.join(ARTIFACT_TYPES)}")
    md = {
        "git_commit": git_info()["commit"],
        "timestamp": timestamp or utc_now(),
        "loader_version": loader_version or lp.get("loader_version") or code_version(),
        "model_name": model_name if model_name is not None else lp.get("model_name"),
        "quantization": quantization if quantization is not None else lp.get("quantization", "none"),
        "template_disabled": template_disabled if template_disabled is not None else lp.get("template_disabled"),
        "script_name": script_name,
        "artifact_type": artifact_type,
        "generation": gen,
    }
    if not md["model_name"]:
        raise ValueError("record metadata needs model_name (pass it or the loader's provenance)")
    if not isinstance(md["template_disabled"], bool):
        raise ValueError("record metadata needs template_disabled as a bool (pass it or the loader's provenance)")
    if extra:
        clash = sorted(set(extra) & set(md))
        if clash:
            raise ValueError(f"extra metadata may not override {clash}")
        md.update(extra)
    return md


# Which judges dropped data for a record (QC-09); the default is the A/B critics alone.
DEFAULT_JUDGES = {"instruction_filters": True, "pair_filters": True, "relevance_filters": False, "relevance_passed": False}


def sft_record(
    instruction: str,
    response: str,
    *,
    instruction_critique: Any,
    pair_critique: Any,
    metadata: Mapping[str, Any],
    prompt: str | None = None,
    completion: str | None = None,
    judges: Mapping[str, bool] | None = None,
) -> dict:
    """One PV-01 record; critiques may be critic results (dataclasses) or dicts with the CR-04 fields.

    ``judges`` says which judges were allowed to drop data (QC-09) and whether the relevance
    judge passed the pair; without it, both A/B critics filtered, as before probes existed.
    """
    ic = _as_dict(instruction_critique, "instruction_critique")
    pc = _as_dict(pair_critique, "pair_critique")
    _require(ic, CRITIQUE_FIELDS, "instruction_critique")
    _require(pc, CRITIQUE_FIELDS, "pair_critique")
    _require(metadata, RECORD_METADATA_FIELDS, "record metadata")
    rec: dict[str, Any] = {"instruction": instruction, "response": response}
    if prompt is not None:
        rec["prompt"] = prompt
    if completion is not None:
        rec["completion"] = completion
    j = dict(DEFAULT_JUDGES if judges is None else judges)
    if set(j) != set(DEFAULT_JUDGES) or not all(isinstance(v, bool) for v in j.values()):
        raise ValueError(f"judges must map exactly {sorted(DEFAULT_JUDGES)} to booleans, got {j!r}")
    rec.update(instruction_critique=ic, pair_critique=pc, judges=j, metadata=dict(metadata))
    return rec


# -- manifests (PV-02, PV-05) ----------------------------------------------------------------------------


def file_entry(path: str | os.PathLike, base_dir: str | os.PathLike, **extra: Any) -> dict:
    """A manifest's line for one file: path (relative to ``base_dir`` when inside it), sha256, size.

    ``path`` and ``base_dir`` are read as every other file function reads them: relative to the
    current directory. (Joining a relative ``path`` onto ``base_dir`` applied the run folder's
    prefix twice whenever both were relative, and a run then failed at its manifest.)
    """
    base = Path(base_dir).resolve()
    full = Path(path).resolve()
    if not full.is_file():
        raise FileNotFoundError(f"{full}: cannot record a file that does not exist")
    try:
        shown = full.relative_to(base).as_posix()
    except ValueError:
        shown = str(full)
    return {"path": shown, "sha256": sha256_file(full), "bytes": full.stat().st_size, **extra}


def new_session_manifest(
    *,
    planned_artifacts: Iterable[str],
    budgets: Mapping[str, Any] | None = None,
    notes: Iterable[str] | str = (),
    session_id: str | None = None,
    loader_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Start a run's manifest (PV-02); files are added with :func:`add_generated_artifact` as they appear."""
    git = git_info()
    started = utc_now()
    manifest: dict[str, Any] = {
        "artifact_type": SESSION_MANIFEST,
        "session_id": session_id or f"{started.replace('-', '').replace(':', '')}-{uuid.uuid4().hex[:8]}",
        "started_at": started,
        "finished_at": None,
        "git_commit": git["commit"],
        "git_branch": git["branch"],
        "git_dirty": git["dirty"],
        "environment": environment(),
        "loader_version": loader_version or code_version(),
        "planned_artifacts": list(planned_artifacts),
        "generated_artifacts": [],
        "budgets": dict(budgets or {}),
        "notes": [notes] if isinstance(notes, str) else list(notes),
    }
    if extra:
        clash = sorted(set(extra) & set(manifest))
        if clash:
            raise ValueError(f"extra manifest fields may not override {clash}")
        manifest.update(extra)
    return manifest


def _own_file_entry(path: str | os.PathLike, base_dir: str | os.PathLike, **extra: Any) -> dict:
    """A file a manifest vouches for as its own: it must lie inside the manifest's folder, so the
    folder can move and ``validate`` never has to read anything outside it."""
    entry = file_entry(path, base_dir, **extra)
    if Path(entry["path"]).is_absolute():
        raise ValueError(f"{entry['path']} lies outside {Path(base_dir).resolve()}; a manifest's own files live in its folder "
                         "(record other files as inputs)")
    return entry


def add_generated_artifact(manifest: dict, path: str | os.PathLike, base_dir: str | os.PathLike, **extra: Any) -> dict:
    """Record (or re-record, after a resume rewrote it) one produced file with its hash."""
    entry = _own_file_entry(path, base_dir, **extra)
    files = manifest.setdefault("generated_artifacts", [])
    files[:] = [e for e in files if e.get("path") != entry["path"]] + [entry]
    return entry


def artifact_manifest(
    artifact_type: str,
    files: Iterable[str | os.PathLike],
    *,
    base_dir: str | os.PathLike,
    inputs: Iterable[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """A manifest pinning the sha256 of an artifact's files (PV-05); ``inputs`` records what it was made from."""
    manifest: dict[str, Any] = {
        "artifact_type": artifact_type,
        "created_at": utc_now(),
        "git_commit": git_info()["commit"],
        "loader_version": code_version(),
        "files": [_own_file_entry(f, base_dir) for f in files],
        "inputs": [dict(i) for i in inputs],
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(manifest))


def _load_manifest(manifest_path: Path) -> dict:
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest {manifest_path} does not exist; the upstream phase did not finish or the path is wrong")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"manifest {manifest_path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {manifest_path} must hold a JSON object")
    return manifest


def manifest_files(manifest: Mapping[str, Any]) -> list[dict]:
    entries: list[dict] = []
    for key in FILE_LIST_KEYS:
        for e in manifest.get(key) or []:
            if not isinstance(e, Mapping) or "path" not in e or "sha256" not in e:
                raise ValueError(f"manifest entry under {key!r} lacks path/sha256: {e!r}")
            entries.append(dict(e))
    return entries


def verify_inputs(manifest_path: str | os.PathLike, *, required: Iterable[str] = ()) -> dict[str, Path]:
    """Check every file a manifest vouches for; return {manifest path: absolute path}.

    ``required`` names files (as the manifest writes them) the caller is about to read;
    if the manifest does not list one, that is refused too, since an unlisted input was
    never hashed. Every problem is reported at once, each naming the file and both hashes.
    """
    manifest_path = Path(manifest_path)
    manifest = _load_manifest(manifest_path)
    base = manifest_path.resolve().parent
    entries = manifest_files(manifest)
    listed = {e["path"] for e in entries}
    problems = [f"{name}: not listed in the manifest, so its hash was never recorded" for name in required if name not in listed]
    verified: dict[str, Path] = {}
    for e in entries:
        full = (base / str(e["path"])).resolve()
        if Path(str(e["path"])).is_absolute() or not full.is_relative_to(base):
            # A manifest's own files live in its folder; reading (and printing the hash of) a file
            # outside it would let a crafted manifest probe the machine.
            problems.append(f"{e['path']}: lies outside the manifest's folder {base}; a manifest lists only its own "
                            "files, this one was not written by cai-bootstrap (refused, not read)")
            continue
        if not full.is_file():
            problems.append(f"{e['path']}: missing ({full}); manifest sha256 {e['sha256']}")
            continue
        actual = sha256_file(full)
        if actual != e["sha256"]:
            problems.append(f"{e['path']}: changed since the manifest was written ({full}); manifest sha256 {e['sha256']}, file sha256 {actual}")
            continue
        verified[e["path"]] = full
    if problems:
        raise InputIntegrityError(f"refusing inputs of {manifest_path}:\n  " + "\n  ".join(problems))
    return verified
