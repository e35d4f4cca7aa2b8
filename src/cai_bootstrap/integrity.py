"""What a consumer checks before it trusts its inputs (PV-07): pure checks, no model, no writes.

Every phase reads what an earlier phase wrote; a file edited, truncated or swapped since
must stop the consumer before it spends minutes loading a model, and the message must
name the file and say what to do. A command must also never write over what it reads,
nor follow a link out of the folder it owns. These functions only read; the commands
call them first and turn an :class:`IntegrityError` into a one-line error (exit 2).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping

from cai_bootstrap.evaluation.report import MANIFEST_FILE as EVAL_MANIFEST_NAME
from cai_bootstrap.io_utils import read_text_file, sha256_file
from cai_bootstrap.provenance import InputIntegrityError, verify_inputs
from cai_bootstrap.sft.train import MANIFEST_NAME as TRAINING_MANIFEST_NAME
from cai_bootstrap.weights import weights_fingerprint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors",)
MODEL_WEIGHTS = ("model.safetensors",)
SHARD_INDEXES = ("model.safetensors.index.json",)
# Pickle formats run code when loaded; a model folder may hold weights only as safetensors.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# The config fields that size the model, and how large each may sensibly be: a wrong one would
# otherwise reach transformers as a negative dimension or a terabyte allocation.
CONFIG_SIZE_LIMITS = {"vocab_size": 4_000_000, "hidden_size": 131_072, "num_hidden_layers": 1_024,
                      "num_attention_heads": 1_024, "num_key_value_heads": 1_024, "intermediate_size": 1_048_576,
                      "max_position_embeddings": 16_777_216, "head_dim": 16_384}
# Any one of these makes a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


class IntegrityError(ValueError):
    """An input is missing, malformed or differs from what its manifest pinned; the message names it."""


# -- thresholds and paths -----------------------------------------------------------------------------


def check_open_unit_interval(name: str, value: float) -> None:
    """A probability threshold of 0 or 1 makes a gate always or never pass: refuse it."""
    if not 0.0 < float(value) < 1.0:
        raise IntegrityError(f"{name} must lie strictly between 0 and 1, got {value}")


def check_non_negative(name: str, value: float) -> None:
    """A negative minimum lift would let a model that got worse pass."""
    if not float(value) >= 0.0 or float(value) == float("inf"):  # NaN compares false both ways
        raise IntegrityError(f"{name} must be a finite number >= 0 (a negative value passes a model that got worse), got {value}")


def check_output_file(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, flag: str = "--out") -> Path:
    """The file a command will write: not one of its inputs, not a folder, in a writable place."""
    out = Path(out)
    target = out.resolve()
    for p in inputs:
        if Path(p).resolve() == target:
            raise IntegrityError(f"{flag} {out} is one of this command's inputs; writing there would destroy it: "
                                 "give another path")
    if out.is_dir():
        raise IntegrityError(f"{flag} {out} is a directory; give a file path such as {out / 'gate.json'}")
    check_writable_location(out.parent, flag=flag)
    return out


def check_writable_location(folder: str | os.PathLike, *, flag: str = "--out") -> None:
    """The folder (or the nearest existing folder above it) accepts new files; nothing is created."""
    p = Path(folder).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise IntegrityError(f"{flag}: {p} is a file, not a folder; choose an output path that is not under a file")
    if not os.access(p, os.W_OK | os.X_OK):
        raise IntegrityError(f"{flag}: {p} is not writable; choose another output folder")


def check_no_links_out(root: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Refuse a symbolic link among the files a command appends to: it could point anywhere."""
    base = Path(root).resolve()
    for p in paths:
        p = Path(p)
        if p.is_symlink() or (p.exists() and not p.resolve().is_relative_to(base)):
            raise IntegrityError(f"{p} is a symbolic link (to {p.resolve()}); work files are written only inside "
                                 f"{base}: remove the link or use a new --out")


# -- model folders ---------------------------------------------------------------------------------------


def read_json_file(path: str | os.PathLike, *, what: str = "file") -> object:
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); restore this {what}") from None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a .safetensors file cannot be loaded (truncated, not safetensors), read from its header only."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header claims {n} bytes but the file has {size}: truncated or not a safetensors file"
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "header is not valid JSON: not a safetensors file"
    if not isinstance(header, dict):
        return "header is not a JSON object: not a safetensors file"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if need > size:
        return f"tensors need {need} bytes but the file has {size}: truncated"
    return None


def _weights_problems(folder: Path, names: Iterable[str]) -> list[str]:
    problems = []
    for name in names:
        w = folder / name
        if not w.is_file():
            problems.append(f"{w}: missing")
        elif w.suffix == ".safetensors":
            why = safetensors_problem(w)
            if why:
                problems.append(f"{w}: {why}")
    return problems


def check_model_folder(folder: str | os.PathLike, *, require_weights: bool = True) -> None:
    """A local Hugging Face model folder whose config and weights can be read, checked in milliseconds.

    ``require_weights=False`` checks only the weights present (planning steps read a config alone).
    """
    folder = Path(folder)
    cfg = read_json_file(folder / "config.json", what="model config (re-download or rebuild the model)")
    if not isinstance(cfg, dict):
        raise IntegrityError(f"{folder / 'config.json'}: not a model config (not a JSON object); re-download or rebuild the model")
    sizes = [cfg] + [v for v in cfg.values() if isinstance(v, dict)]  # composite models nest a text_config
    for block in sizes:
        for key, limit in CONFIG_SIZE_LIMITS.items():
            v = block.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit):
                raise IntegrityError(f"{folder / 'config.json'}: {key} must be a whole number from 1 to {limit:,}, got "
                                     f"{v!r:.40}; re-download or rebuild the model")
    # Weight files in pickle form; other pickles some folders ship (training_args.bin) are never loaded.
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES
                     and (p.suffix != ".bin" or p.name.startswith(("pytorch_model", "model", "adapter_model"))))
    if pickles:
        raise IntegrityError(f"{folder}: holds pickle weights ({', '.join(pickles[:3])}), which run code when loaded; "
                             "only safetensors weights are accepted: convert them (transformers' save_pretrained "
                             "writes safetensors) and remove the pickle files")
    if require_weights and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise IntegrityError(f"{folder}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); a base model folder "
                             "needs its tokenizer: copy it from where the model came from")
    index_path = next((folder / n for n in SHARD_INDEXES if (folder / n).is_file()), None)
    if index_path is not None:
        index = read_json_file(index_path, what="shard index")
        shards = sorted(set((index.get("weight_map") or {}).values())) if isinstance(index, dict) else []
        problems = _weights_problems(folder, shards) if shards else [f"{index_path}: lists no shards"]
    else:
        present = [n for n in MODEL_WEIGHTS if (folder / n).is_file()]
        if not present and require_weights:
            raise IntegrityError(f"{folder}: no weights ({' or '.join(MODEL_WEIGHTS)}); re-download or rebuild the model")
        problems = _weights_problems(folder, present)
    if problems:
        raise IntegrityError("model weights cannot be loaded: " + "; ".join(problems) + "; re-download or rebuild the model")


# -- adapters and their training manifest -----------------------------------------------------------------


def training_manifest_for(adapter_dir: str | os.PathLike) -> Path:
    """The training manifest of an adapter written by `train`: in the folder above the adapter."""
    folder = Path(adapter_dir)
    for candidate in (folder.parent / TRAINING_MANIFEST_NAME, folder / TRAINING_MANIFEST_NAME):
        if candidate.is_file():
            return candidate
    raise IntegrityError(f"{folder}: no {TRAINING_MANIFEST_NAME} next to this adapter, so its hashes cannot be "
                         "checked; pass the adapter folder of a finished `cai-bootstrap train` run")


def verify_adapter(adapter_dir: str | os.PathLike) -> Path:
    """Every file of the adapter is listed in its training manifest with the same sha256; returns the manifest."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist")
    manifest = training_manifest_for(folder)
    base = manifest.resolve().parent
    required = [p.resolve().relative_to(base).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    try:
        verify_inputs(manifest, required=required)
    except InputIntegrityError as e:
        raise IntegrityError(f"adapter {folder} differs from its training manifest: {e}; "
                             "evaluate the adapter a training run wrote, or retrain") from None
    return manifest


def check_adapter_base(training_manifest: str | os.PathLike, model_source: str | os.PathLike) -> None:
    """PV-07: an adapter is used only on the base weights it was trained on, as its training manifest
    recorded them; another model's weights (say, the tiny model rebuilt with another seed) are
    refused before they load. A hub id has no local files to hash and is left to its revision."""
    manifest = read_json_file(training_manifest, what="training manifest")
    recorded = ((manifest.get("loader_provenance") or {}).get("weights") or {}) if isinstance(manifest, Mapping) else {}
    folder = Path(model_source)
    if not recorded.get("combined") or not folder.is_dir():
        return
    now = weights_fingerprint(folder)
    if (now["mode"], now["combined"]) != (recorded.get("mode"), recorded["combined"]):
        raise IntegrityError(f"the adapter of {training_manifest} was trained on other base weights (recorded "
                             f"{recorded.get('mode')} {recorded['combined'][:16]}..., {folder} has {now['mode']} "
                             f"{now['combined'][:16]}...): give the base model it was trained on")


def check_adapter_loadable(adapter_dir: str | os.PathLike) -> None:
    """The adapter's config parses and its weights are whole, so loading it cannot fail after the base model ran."""
    folder = Path(adapter_dir)
    cfg = read_json_file(folder / ADAPTER_CONFIG, what="adapter config")
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise IntegrityError(f"{folder / ADAPTER_CONFIG}: not a PEFT adapter config (no 'peft_type')")
    present = [n for n in ADAPTER_WEIGHTS if (folder / n).is_file()]
    if not present:
        raise IntegrityError(f"{folder}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    problems = _weights_problems(folder, present)
    if problems:
        raise IntegrityError("adapter weights cannot be loaded: " + "; ".join(problems))


# -- evaluation outputs --------------------------------------------------------------------------------------


def eval_output_problems(manifest: Mapping, folder: Path) -> list[str]:
    """Each output an evaluation manifest lists, compared with the file now in ``folder``."""
    outputs = manifest.get("outputs")
    if not isinstance(outputs, Mapping) or not outputs:
        return ["the manifest lists no outputs"]
    problems = []
    for key, entry in outputs.items():
        if not isinstance(entry, Mapping) or "path" not in entry or "sha256" not in entry:
            problems.append(f"output {key!r}: entry lacks path/sha256")
            continue
        f = folder / entry["path"]
        if not f.is_file():
            problems.append(f"{entry['path']}: missing; manifest sha256 {entry['sha256']}")
        elif (actual := sha256_file(f)) != entry["sha256"]:
            problems.append(f"{entry['path']}: changed since the evaluation wrote it; manifest sha256 "
                            f"{entry['sha256']}, file sha256 {actual}")
    return problems


def verify_eval_output(eval_dir: str | os.PathLike, required: str) -> Path:
    """The file ``required`` of an evaluation folder, after checking it and its siblings against the manifest."""
    folder = Path(eval_dir)
    manifest_path = folder / EVAL_MANIFEST_NAME
    if not manifest_path.is_file():
        raise IntegrityError(f"{manifest_path} does not exist, so {required} cannot be checked; "
                             "run `cai-bootstrap evaluate` to completion into this folder")
    manifest = read_json_file(manifest_path, what="evaluation manifest (rerun `cai-bootstrap evaluate`)")
    if not isinstance(manifest, Mapping):
        raise IntegrityError(f"{manifest_path}: must hold a JSON object; rerun `cai-bootstrap evaluate`")
    problems = eval_output_problems(manifest, folder)
    listed = {e.get("path") for e in (manifest.get("outputs") or {}).values() if isinstance(e, Mapping)}
    if required not in listed:
        problems.append(f"{required}: not listed in the manifest, so its hash was never recorded")
    if problems:
        raise IntegrityError(f"refusing {folder}: " + "; ".join(problems) + "; rerun `cai-bootstrap evaluate`")
    return folder / required


# -- run directories ------------------------------------------------------------------------------------------


def manifests_in(directory: str | os.PathLike) -> list[Path]:
    """The manifests a run directory holds (session, training, evaluation), at any depth."""
    from cai_bootstrap.datagen.pipeline import SESSION_MANIFEST

    names = {SESSION_MANIFEST, TRAINING_MANIFEST_NAME, EVAL_MANIFEST_NAME}
    root = Path(directory)
    return sorted(p for p in root.rglob("*.json") if p.name in names and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def manifest_problems(manifest_path: str | os.PathLike) -> list[str]:
    """Every file a manifest pinned that is missing or changed, each named; [] when all match."""
    path = Path(manifest_path)
    try:
        if path.name == EVAL_MANIFEST_NAME:
            manifest = read_json_file(path, what="evaluation manifest")
            if not isinstance(manifest, Mapping):
                return [f"{path}: not a JSON object"]
            return eval_output_problems(manifest, path.parent)
        verify_inputs(path)
    except InputIntegrityError as e:
        return [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    except (ValueError, OSError) as e:
        return [str(e)]
    return []
