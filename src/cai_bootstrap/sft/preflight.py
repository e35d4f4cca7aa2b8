"""GPU preflight (OPS-03): find out in a second what would otherwise fail an hour in.

A run that loads a 32B model and then finds no bf16, too little free memory or a
read-only output folder has wasted the load and the queue time; these checks run
before any weights are read, all of them at once, and each failure says how to fix it.

The checks are a pure function over a device-info mapping (what :func:`probe_device`
reads from torch), so they are tested with fakes on machines without a GPU. Without
CUDA the run is a CPU fallback (plain LoRA in fp32), which is reported, not failed,
unless the configuration demands CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

GiB = 1024**3
CPU_FALLBACK = "cpu fallback"
MIN_FREE_DISK_GB = 1.0


class PreflightError(RuntimeError):
    """One or more preflight checks failed; the message lists each with its fix."""

    def __init__(self, report: "PreflightReport"):
        super().__init__("preflight failed before loading the model:\n  " + "\n  ".join(report.problems))
        self.report = report


@dataclass
class PreflightReport:
    mode: str  # "cuda" or CPU_FALLBACK
    checks: list[dict] = field(default_factory=list)
    device: dict = field(default_factory=dict)
    estimate: dict | None = None

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}. Fix: {c['fix']}" for c in self.checks if not c["ok"]]

    def raise_if_failed(self) -> "PreflightReport":
        if not self.ok:
            raise PreflightError(self)
        return self

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail, "fix": fix})

    def to_dict(self) -> dict:
        return {"mode": self.mode, "ok": self.ok, "checks": self.checks, "device": self.device, "estimate": self.estimate}


def probe_device(index: int = 0) -> dict:
    """What torch sees: the input :func:`run_preflight` judges."""
    import torch

    info: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available()), "device_count": 0}
    if not info["cuda_available"]:
        return info
    info["device_count"] = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    info.update(
        name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        total_gb=round(total / GiB, 2),
        free_gb=round(free / GiB, 2),
        bf16_supported=bool(torch.cuda.is_bf16_supported()),
    )
    return info


# -- memory estimate ----------------------------------------------------------------------------------


def read_model_config(folder: str | os.PathLike) -> dict | None:
    """A local model's config.json as a plain dict (text config for multimodal wrappers); None for hub ids."""
    p = Path(folder) / "config.json"
    if not p.is_file():
        return None
    cfg = json.loads(p.read_text(encoding="utf-8"))
    return cfg.get("text_config") or cfg


def estimate_training_memory_gb(
    model_config: Mapping[str, Any],
    *,
    quantization: str,
    seq_len: int,
    batch: int,
    lora_r: int,
    gradient_checkpointing: bool,
) -> dict:
    """A deliberately rough upper estimate of peak GPU memory for LoRA/QLoRA training.

    Parts: frozen weights (nf4 about 0.56 byte per parameter with double quantization,
    bf16 2 bytes), LoRA parameters with AdamW states (16 bytes each), activations (kept
    per layer with gradient checkpointing, otherwise ~16 hidden-size tensors per layer),
    the logits and their gradient in fp32 (often the largest term for 150k vocabularies),
    and 1 GiB of CUDA context.
    """
    h = int(model_config.get("hidden_size") or model_config.get("n_embd") or 0)
    n_layers = int(model_config.get("num_hidden_layers") or model_config.get("n_layer") or 0)
    vocab = int(model_config.get("vocab_size") or 0)
    inter = int(model_config.get("intermediate_size") or 4 * h)
    if not (h and n_layers and vocab):
        raise ValueError("model config lacks hidden_size, num_hidden_layers or vocab_size; cannot estimate memory")
    tied = bool(model_config.get("tie_word_embeddings", False))
    n_linear = n_layers * (4 * h * h + 3 * h * inter)
    n_embed = vocab * h * (1 if tied else 2)
    bytes_per_linear = 0.56 if quantization == "nf4" else 2.0
    weights = n_linear * bytes_per_linear + n_embed * 2.0
    lora_params = n_layers * lora_r * (4 * 2 * h + 3 * (h + inter))
    optimizer = lora_params * 16.0
    tokens = batch * seq_len
    per_layer = tokens * h * 2.0
    activations = per_layer * n_layers + (tokens * (16 * h + 2 * inter) * 2.0 if gradient_checkpointing else per_layer * 16 * n_layers)
    logits = tokens * vocab * 4.0 * 3
    context = 1.0 * GiB
    total = weights + optimizer + activations + logits + context
    parts = {"weights": weights, "lora_and_optimizer": optimizer, "activations": activations, "logits": logits, "cuda_context": context}
    return {
        "total_gb": round(total / GiB, 2),
        "parts_gb": {k: round(v / GiB, 3) for k, v in parts.items()},
        "n_parameters_approx": int(n_linear + n_embed),
        "assumptions": {"quantization": quantization, "seq_len": seq_len, "batch": batch, "lora_r": lora_r,
                        "gradient_checkpointing": gradient_checkpointing},
    }


# -- the checks ---------------------------------------------------------------------------------------


def _writable(root: Path) -> tuple[bool, str]:
    probe_dir = root
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return False, f"{probe_dir} exists and is not a folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".preflight-", delete=True) as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        return False, f"cannot write in {root}: {e.strerror or e}"
    return True, f"{root} is writable"


def run_preflight(
    info: Mapping[str, Any] | None = None,
    *,
    output_root: str | os.PathLike,
    required_gb: float | None = None,
    estimate: Mapping[str, Any] | None = None,
    need_bf16: bool = True,
    require_cuda: bool = False,
    min_free_disk_gb: float = MIN_FREE_DISK_GB,
    model_source: str | os.PathLike | None = None,
    quantization: str | None = "nf4",
    seq_len: int = 1024,
    batch: int = 2,
    lora_r: int = 16,
) -> PreflightReport:
    """Judge ``info`` (default: :func:`probe_device` now) and return every check's verdict.

    Pure given ``info``: nothing is loaded. ``required_gb`` is the memory the run needs; if it
    is not given and ``model_source`` is a local folder, it is estimated from its config.json
    with the SFT-04 defaults. Call :meth:`PreflightReport.raise_if_failed` to fail fast.
    """
    info = probe_device() if info is None else info
    if required_gb is None and estimate is None and model_source is not None and info.get("cuda_available"):
        model_config = read_model_config(model_source)
        if model_config is not None:
            estimate = estimate_training_memory_gb(
                model_config, quantization=quantization or "none", seq_len=seq_len, batch=batch, lora_r=lora_r,
                gradient_checkpointing=True,
            )
            required_gb = estimate["total_gb"]
    cuda = bool(info.get("cuda_available"))
    report = PreflightReport(mode="cuda" if cuda else CPU_FALLBACK, device=dict(info), estimate=dict(estimate) if estimate else None)

    if cuda:
        report.add("device", True, f"CUDA device {info.get('name', '?')} (compute capability {info.get('compute_capability', '?')})")
        free = info.get("free_gb")
        if required_gb is None:
            report.add("memory", True, f"{free} GiB free; no estimate (model config not available locally), not checked")
        elif free is None:
            report.add("memory", False, "free GPU memory unknown", "check the driver (nvidia-smi) before training")
        else:
            ok = float(free) >= required_gb
            report.add(
                "memory",
                ok,
                f"{free} GiB free of {info.get('total_gb', '?')} GiB, estimated need {required_gb:.1f} GiB",
                "" if ok else "free the GPU (other processes: nvidia-smi), lower max_length or per_device_batch_size "
                "(keeping batch x accumulation in range), enable gradient_checkpointing, or use a larger GPU",
            )
        if need_bf16:
            ok = bool(info.get("bf16_supported"))
            report.add(
                "bf16",
                ok,
                "bf16 supported" if ok else f"{info.get('name', 'this GPU')} has no bf16 support",
                "" if ok else "use an Ampere or newer GPU (compute capability >= 8.0); SFT-04 requires bf16 compute",
            )
    elif require_cuda:
        report.add("device", False, "no CUDA device visible", "run on a GPU machine, check CUDA_VISIBLE_DEVICES and "
                   "that torch is a CUDA build (python -c 'import torch; print(torch.version.cuda)'), or set device: auto")
    else:
        report.add("device", True, f"no CUDA device: {CPU_FALLBACK} (plain LoRA, fp32, no 4-bit quantization)")

    root = Path(output_root)
    ok, detail = _writable(root)
    report.add("output_root", ok, detail, "" if ok else "choose an output_dir you can write to (or fix its permissions)")
    if ok:
        free_disk = shutil.disk_usage(root).free / GiB
        ok = free_disk >= min_free_disk_gb
        report.add("disk", ok, f"{free_disk:.1f} GiB free under {root}",
                   "" if ok else f"free at least {min_free_disk_gb} GiB for checkpoints and adapters, or choose another output_dir")
    return report
