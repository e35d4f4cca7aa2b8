"""Sessions of cai-bootstrap. `nox -l` lists them; costly ones are not run by default.

Every session installs the exact versions of `requirements/lock.txt` (OPS-04), so a new
upstream release cannot turn a fresh clone red; `nox -s latest` runs the conformance
suite against the newest releases instead, and `nox -s lock` rewrites the lock.
Torch is installed first as the CPU build where no GPU is present (a plain `torch`
requirement would pull a multi-GB CUDA build), then the package with the extras a
session needs. The venv backend is used because uv cannot see the local torch file.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["conformance"]
nox.options.reuse_existing_virtualenvs = True

CPU_TORCH = os.environ.get("CAI_TORCH_SPEC", "torch==2.13.0")
LOCK = "requirements/lock.txt"
LOCK_INPUT = "requirements/lock.in"
# The extras the lock covers: everything the sessions install (unsloth has its own lock, below).
LOCK_EXTRAS = ("testmodel", "demo", "train", "validate", "stats", "test", "gpu")
LOCK_PYTHON = "3.11"
# The optional unsloth backend pins older trl/transformers/datasets than LOCK, and conflicts with
# `demo` (transformers >= 5.23), so it gets its own lock for the GPU machine it runs on; the
# default lock and every session above are unaffected.
UNSLOTH_LOCK = "requirements/lock-unsloth.txt"
UNSLOTH_LOCK_INPUT = "requirements/lock-unsloth.in"
UNSLOTH_LOCK_EXTRAS = ("train", "gpu", "unsloth")
UNSLOTH_LOCK_PYTHON = "3.12"
UNSLOTH_LOCK_PLATFORM = "x86_64-manylinux_2_28"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
}


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def _pip_install(session: nox.Session, *args: str, locked: bool = True) -> None:
    """Every install of every session goes through here: pinned to the lock unless told otherwise."""
    session.install(*(("-c", LOCK) if locked else ()), *args)


def _locked_env() -> dict:
    # Tells the conformance suite which lock this environment was installed from (OPS-04 check).
    return {**OFFLINE_ENV, "CAI_BOOTSTRAP_LOCK": os.path.abspath(LOCK)}


def _install(session: nox.Session, *extras: str, locked: bool = True) -> None:
    torch = () if _has_cuda() else (CPU_TORCH,)
    spec = ".[" + ",".join(extras) + "]" if extras else "."
    if locked:
        if torch:
            _pip_install(session, *torch)
        _pip_install(session, "-e", spec)
    else:
        # Newest of everything except torch on CPU machines, whose newest release here is a
        # multi-GB CUDA build: it stays at the CPU build, named in the same install so the
        # eager upgrade cannot replace it.
        _pip_install(session, "--upgrade", "--upgrade-strategy", "eager", "-e", spec, *torch, locked=False)


@nox.session
def conformance(session: nox.Session) -> None:
    """Run every spec-clause check on CPU with the tiny test model; fail on any uncovered clause."""
    _install(session, "testmodel", "train", "validate", "stats", "test")
    session.run(
        "pytest",
        "spec_tests",
        "--conformance-gate",
        "-p",
        "no:cacheprovider",
        "-q",
        *session.posargs,
        env=_locked_env(),
    )


@nox.session(default=False)
def latest(session: nox.Session) -> None:
    """The conformance suite against the newest releases (no lock): upstream breaks show here first."""
    _install(session, "testmodel", "train", "validate", "stats", "test", locked=False)
    os.makedirs("artifacts/latest", exist_ok=True)
    freeze = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    with open("artifacts/latest/versions.txt", "w") as fh:
        fh.write(freeze)
    session.run("python", "-m", "cai_bootstrap.lockfile", LOCK, "artifacts/latest/versions.txt")
    session.run(
        "pytest",
        "spec_tests",
        "--conformance-gate",
        "--conformance-report",
        "artifacts/latest/conformance",
        "-p",
        "no:cacheprovider",
        "-q",
        *session.posargs,
        env=OFFLINE_ENV,
    )


@nox.session(default=False, venv_backend="none")
def lock(session: nox.Session) -> None:
    """Rewrite requirements/lock.txt from pyproject.toml and requirements/lock.in (needs `uv` on PATH)."""
    extras = [a for e in LOCK_EXTRAS for a in ("--extra", e)]
    session.run(
        "uv", "pip", "compile", "pyproject.toml", LOCK_INPUT, *extras,
        "--python-version", LOCK_PYTHON, "--no-header", "-o", LOCK, *session.posargs,
        external=True,
    )


@nox.session(default=False, venv_backend="none")
def lock_unsloth(session: nox.Session) -> None:
    """Rewrite requirements/lock-unsloth.txt (unsloth backend, Python 3.12 linux x86-64; needs `uv` on PATH)."""
    extras = [a for e in UNSLOTH_LOCK_EXTRAS for a in ("--extra", e)]
    session.run(
        "uv", "pip", "compile", "pyproject.toml", UNSLOTH_LOCK_INPUT, *extras,
        "--python-version", UNSLOTH_LOCK_PYTHON, "--python-platform", UNSLOTH_LOCK_PLATFORM,
        "--no-header", "-o", UNSLOTH_LOCK, *session.posargs,
        external=True,
    )


@nox.session(default=False)
def stage1(session: nox.Session) -> None:
    """The gated Stage-1 chain on the embedded base model (or `-- --model M --config C`)."""
    _install(session, "demo", "testmodel", "train", "validate", "stats")
    session.run("python", "-m", "cai_bootstrap.stage1", *session.posargs, env=_locked_env())


@nox.session(default=False)
def stage2(session: nox.Session) -> None:
    """The Stage-2 chain (pairs, DPO, gate) from the model Stage 1 passed: `-- --config C [GATE] [--override REASON]`."""
    _install(session, "demo", "testmodel", "train", "validate", "stats")
    session.run("python", "-m", "cai_bootstrap.stages.stage2", *session.posargs, env=_locked_env())


@nox.session(default=False)
def expectations(session: nox.Session) -> None:
    """Validate data batches with the Great Expectations suites: `nox -s expectations -- PATH...` (no torch)."""
    if not session.posargs:
        session.error("give one or more artifact files or run directories: nox -s expectations -- PATH...")
    _pip_install(session, "great-expectations>=1.3,<2", "pyyaml>=6", "pydantic>=2.6", "platformdirs>=4", "tqdm>=4.66")
    _pip_install(session, "--no-deps", "-e", ".")
    session.run("python", "-m", "cai_bootstrap.cli", "validate", *session.posargs, env=_locked_env())


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Measure throughput (critic, dedup, generation, training) on this machine; results under artifacts/bench/."""
    _install(session, "testmodel", "train", "stats", "test")
    session.run("python", "-m", "cai_bootstrap.bench", *session.posargs, env=_locked_env())


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """Run gpu_tests/: the CUDA tests skip cleanly without CUDA; CPU checks of their helpers run everywhere."""
    _install(session, "testmodel", "train", "gpu", "validate", "stats", "test")
    session.run("pytest", "gpu_tests", "-q", *session.posargs, env=_locked_env())
