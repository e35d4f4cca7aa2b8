"""A single-shard scale run starts from the pilot's finished instruction rounds and probe scores.

With one shard, a scale run draws its instruction prompts in exactly the rounds the pilot
drew (the same prompt indices, few-shot seeds and sampling seed per round), so, for the
same model and settings, its first rounds and its critic-probe scores are the pilot's
rows again: recomputing them cost the CPU demo chain about a third of its scale phase.
When everything that decides those rows is equal (the model's weights hash, the seed,
the instruction decoding and batch size, the critic settings, the probe-set hash that
``probe_critics`` checks itself, and the loader version, sampler, device, dtype and library
versions that drew them), the pilot's rows are copied into the new run's work
files before it starts, and the run resumes from them as from its own (DG-06): its
result equals a run that recomputed them. The copy is recorded in ``work/pilot_reuse.json``,
which the session manifest hashes with the other work files.

Anything else (several shards, a run already started, changed settings, a pilot whose
work files no longer match their recorded hashes) copies nothing and says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cai_bootstrap.io_utils import atomic_write_json, sha256_file

RECORD = "pilot_reuse.json"
# Settings that differ between a pilot and its scale run without changing an instruction
# round or a probe score; everything else must be equal.
IGNORED = ("mode", "target", "shard", "out_dir", "pilot_gate", "quiet", "responses")


def pilot_dir_of(gate_manifest: str | Path) -> Path | None:
    """The pilot run a pilot-gate manifest judged (the folder of its session manifest input)."""
    try:
        inputs = json.loads(Path(gate_manifest).read_text(encoding="utf-8")).get("inputs") or []
    except (OSError, ValueError):
        return None
    for item in inputs:
        if isinstance(item, dict) and item.get("name") == "session_manifest" and item.get("path"):
            return Path(item["path"]).parent
    return None


# What, besides the weights and the run settings, decides a sampled row: the code that loads
# and samples (loader version, sampler, stop matching), where it ran and the libraries.
MACHINE_FIELDS = ("loader_version", "dtype", "quantization", "device", "generation")
ENVIRONMENT_FIELDS = ("torch", "transformers", "cuda", "gpu")


def _weights(load_provenance: dict | None) -> str | None:
    return ((load_provenance or {}).get("weights") or {}).get("combined")


def fingerprint(load_provenance: dict | None, environment: dict | None) -> dict:
    """The load and environment facts that must be equal for two runs to draw the same rows."""
    lp, env = load_provenance or {}, environment or {}
    return {**{k: lp.get(k) for k in MACHINE_FIELDS}, **{k: env.get(k) for k in ENVIRONMENT_FIELDS}}


def why_not(config: dict, pilot_config: dict, weights: str | None, pilot_weights: str | None,
            machine: dict | None = None, pilot_machine: dict | None = None) -> list[str]:
    """Reasons the pilot's rows are not this run's rows; empty when they are."""
    reasons = []
    if not str(config.get("shard", "")).endswith("/1"):
        reasons.append(f"shard {config.get('shard')}: only a single-shard scale run draws the pilot's rounds")
    changed = sorted(k for k in set(config) | set(pilot_config) if k not in IGNORED and config.get(k) != pilot_config.get(k))
    if changed:
        reasons.append(f"settings differ from the pilot's: {', '.join(changed)}")
    if weights is None or weights != pilot_weights:
        reasons.append("model weights differ from the pilot's (or are not hashed)")
    machine, pilot_machine = machine or {}, pilot_machine or {}
    other = sorted(k for k in set(machine) | set(pilot_machine) if machine.get(k) != pilot_machine.get(k))
    if other:
        reasons.append(f"code, device or libraries differ from the pilot's: {', '.join(other)}")
    return reasons


def reuse_pilot_work(config: dict, work: Path, load_provenance: dict | None, pilot_dir: Path | None,
                     files: tuple[str, ...]) -> dict | None:
    """Copy ``files`` from the pilot's work folder into ``work`` if they are exactly this run's; return the record.

    Returns None when there is nothing to decide (no pilot named, or this run's work already started).
    """
    if pilot_dir is None or any((work / f).exists() for f in (*files, RECORD)):
        return None
    from cai_bootstrap.provenance import environment

    record: dict = {"pilot": str(pilot_dir), "copied": []}
    try:
        pilot_config = json.loads((pilot_dir / "work" / "session.json").read_text(encoding="utf-8"))["config"]
        manifest = json.loads((pilot_dir / "session_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError) as e:
        record["reasons"] = [f"pilot run unreadable: {e}"]
        atomic_write_json(work / RECORD, record)
        return record
    reasons = why_not(config, pilot_config, _weights(load_provenance), _weights(manifest.get("load_provenance")),
                      fingerprint(load_provenance, environment()),
                      fingerprint(manifest.get("load_provenance"), manifest.get("environment")))
    recorded = {a.get("path"): a.get("sha256") for a in manifest.get("generated_artifacts", []) if isinstance(a, dict)}
    sources = [(pilot_dir / "work" / f, f) for f in files if (pilot_dir / "work" / f).is_file()]
    for src, name in sources:
        if recorded.get(f"work/{name}") != sha256_file(src):
            reasons.append(f"pilot work file {name} no longer matches its recorded hash")
    record["reasons"] = reasons
    if not reasons:
        # The record goes first: a run killed mid-copy still says where its first rows came from.
        record["copied"] = [{"file": name, "sha256": recorded[f"work/{name}"]} for _, name in sources]
        atomic_write_json(work / RECORD, record)
        for src, name in sources:
            tmp = work / f".{name}.copy"
            shutil.copyfile(src, tmp)
            tmp.replace(work / name)
        return record
    atomic_write_json(work / RECORD, record)
    return record
