"""Builders for the consumer-side checks (PV-07): a finished training folder and a finished evaluation folder,
pinned the way `train` and `evaluate` pin them, without training or evaluating anything."""

from __future__ import annotations

import json
from pathlib import Path

from cai_bootstrap.evaluation import report as rp
from cai_bootstrap.io_utils import sha256_file
from cai_bootstrap.provenance import TRAINING_MANIFEST, artifact_manifest, write_manifest
from cai_bootstrap.sft.train import ADAPTER_DIR, MANIFEST_NAME


def make_adapter_run(root: Path) -> Path:
    """A training output folder: adapter/ (a small, loadable-looking LoRA) and the manifest pinning it."""
    import numpy as np
    from safetensors.numpy import save_file

    adapter = root / ADAPTER_DIR
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "target_modules": ["q_proj"]}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.ones((4, 8), dtype=np.float32)},
              str(adapter / "adapter_model.safetensors"))
    files = sorted(p for p in adapter.rglob("*") if p.is_file())
    write_manifest(root / MANIFEST_NAME, artifact_manifest(TRAINING_MANIFEST, files, base_dir=root))
    return adapter


def pin_eval_outputs(folder: Path, **contents: dict) -> Path:
    """Write JSON outputs (keyword: report key -> content) and an eval manifest with their hashes."""
    names = {"summary": rp.SUMMARY_FILE, "rates": rp.RATES_FILE}
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for key, obj in contents.items():
        path = folder / names[key]
        path.write_text(json.dumps(obj))
        outputs[key] = {"path": path.name, "sha256": sha256_file(path)}
    manifest = folder / rp.MANIFEST_FILE
    manifest.write_text(json.dumps({"artifact_type": "evaluation", "outputs": outputs}))
    return manifest
