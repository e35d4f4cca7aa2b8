"""Shared fixtures: the tiny random test model, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from cai_bootstrap.testmodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random", seed=0)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from cai_bootstrap.loader import load_base_model

    return load_base_model(tiny_model_dir, device="cpu")
