"""GPU tests: skipped, with the reason, where CUDA is absent; measurements gathered into one JSON file.

The results file goes to ``$GPU_RESULTS`` if set, else ``$OUT/gpu_results.json`` when the
device runner provides ``OUT``, else ``artifacts/gpu/gpu_results.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_HERE = Path(__file__).resolve().parent


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        # `cpu`-marked tests check the logic of a GPU script (its data, its summary) and run anywhere.
        if _HERE in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("cpu") is None:
            item.add_marker(skip)


def _results_path() -> Path:
    if os.environ.get("GPU_RESULTS"):
        return Path(os.environ["GPU_RESULTS"])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_results.json"
    return _HERE.parent / "artifacts" / "gpu" / "gpu_results.json"


@pytest.fixture(scope="session")
def gpu_results():
    """A dict each test adds its measurements to; written once when the test run ends."""
    from cai_bootstrap.provenance import environment, git_info, utc_now

    results: dict = {"created_at": utc_now(), "git_commit": git_info()["commit"], "environment": environment()}
    yield results
    path = _results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nGPU results written to {path}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from cai_bootstrap.testmodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random", seed=0)
