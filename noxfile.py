"""Sessions of cai-bootstrap. `nox -l` lists them; costly ones are not run by default.

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


def _install(session: nox.Session, *extras: str) -> None:
    if not _has_cuda():
        session.install(CPU_TORCH)
    spec = ".[" + ",".join(extras) + "]" if extras else "."
    session.install("-e", spec)


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
        env=OFFLINE_ENV,
    )


@nox.session(default=False)
def stage1(session: nox.Session) -> None:
    """The gated Stage-1 chain on the embedded base model (or `-- --model M --config C`)."""
    _install(session, "demo", "testmodel", "train", "validate", "stats")
    session.run("python", "-m", "cai_bootstrap.stage1", *session.posargs, env=OFFLINE_ENV)


@nox.session(default=False)
def expectations(session: nox.Session) -> None:
    """Validate data batches with the Great Expectations suites: `nox -s expectations -- PATH...` (no torch)."""
    if not session.posargs:
        session.error("give one or more artifact files or run directories: nox -s expectations -- PATH...")
    session.install("great-expectations>=1.3,<2", "pyyaml>=6", "pydantic>=2.6", "platformdirs>=4", "tqdm>=4.66")
    session.install("--no-deps", "-e", ".")
    session.run("python", "-m", "cai_bootstrap.cli", "validate", *session.posargs, env=OFFLINE_ENV)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Measure throughput (critic, generation, training) on this machine; results under artifacts/bench/."""
    _install(session, "testmodel", "train", "stats", "test")
    session.run("python", "-m", "cai_bootstrap.bench", *session.posargs, env=OFFLINE_ENV)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """Run gpu_tests/ (skipped cleanly without CUDA)."""
    _install(session, "testmodel", "train", "gpu", "validate", "stats", "test")
    session.run("pytest", "gpu_tests", "-q", *session.posargs, env=OFFLINE_ENV)
