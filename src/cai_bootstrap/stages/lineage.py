"""Lineage (ST-03): the chain of stages, datasets, gates and models a model artifact came from.

Every training manifest carries a ``lineage`` block: base weights -> stage-1 dataset ->
(its gate) -> stage-1 adapter -> (stage-1 final gate) -> stage-2 pairs -> (their gate) ->
stage-2 adapter, each step with the sha256 the manifests recorded. It is built by a pure
function from the manifest itself (and, for a later stage, the lineage of the model it
started from), so it can be rebuilt and checked by anyone holding the manifests; it
copies hashes, never recomputes them, so it says exactly what the manifests say.

A later stage's lineage must continue its parent's: same base weights, and the adapter
it started from must be the one its parent's lineage ends with. A mismatch is refused,
since a chain that silently changes models between stages is the error this exists to catch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

LINEAGE_SCHEMA = "cai_bootstrap.lineage/v1"
ADAPTER_PREFIX = "adapter/"  # file paths of a training manifest's adapter, relative to its folder


class LineageError(ValueError):
    """The manifests do not make one chain; the message names the step and both values."""


def _need(obj: Mapping, dotted: str, where: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or cur.get(part) is None:
            raise LineageError(f"{where} lacks {dotted!r}; lineage is built from what the manifest records")
        cur = cur[part]
    return cur


def adapter_digest(files: Mapping[str, str]) -> str:
    """One sha256 for an adapter: over its files' names and sha256, so any changed file changes it."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), sort_keys=True).encode("utf-8")).hexdigest()


def base_weights(manifest: Mapping) -> dict:
    """The base weights as the loader recorded them: a sha256 of the files, or the hub revision."""
    w = _need(manifest, "loader_provenance.weights", "training manifest")
    return {k: w[k] for k in ("mode", "combined", "revision") if k in w}


def adapter_files(manifest: Mapping) -> dict[str, str]:
    files = {e["path"]: e["sha256"] for e in manifest.get("files") or [] if str(e.get("path", "")).startswith(ADAPTER_PREFIX)}
    if not files:
        raise LineageError(f"training manifest lists no {ADAPTER_PREFIX}* files; the adapter it describes has no recorded hash")
    return files


def gate_step(stage: int, gate: Mapping) -> dict:
    """A gate decision as a lineage step: which gate, its decision, and the hashes of what it read."""
    return {"kind": "gate", "stage": stage, "gate": _need(gate, "gate", "gate manifest"),
            "clause": gate.get("clause"), "decision": _need(gate, "decision", "gate manifest"),
            "reasons": list(gate.get("reasons") or []),
            "inputs": {i.get("name"): i.get("sha256") for i in gate.get("inputs") or []}}


def build_lineage(manifest: Mapping, *, stage: int, method: str, gates: Sequence[tuple[int, Mapping]] = (),
                  parent: Mapping | None = None, started_from: Mapping[str, str] | None = None) -> dict:
    """The lineage block of a training manifest (without ``lineage`` itself).

    ``gates`` are (stage, gate manifest) decided before this model was trained, in order;
    ``parent`` is the lineage of the model this run continued and ``started_from`` that
    model's adapter files (path -> sha256) as this run recorded them; both or neither.
    """
    if (parent is None) != (started_from is None):
        raise LineageError("a continued model needs both its parent's lineage and the adapter files it started from")
    base = base_weights(manifest)
    if parent is None:
        steps: list[dict] = [{"kind": "base_model", "stage": 0, "name": _need(manifest, "model.spec", "training manifest"),
                              "weights": base}]
    else:
        steps = [dict(s) for s in _need(parent, "steps", "parent lineage")]
        if steps[0].get("weights") != base:
            raise LineageError(f"stage {stage} loaded base weights {base} but its parent was trained on {steps[0].get('weights')}")
        models = [s for s in steps if s.get("kind") == "model"]
        if not models or models[-1].get("files") != dict(started_from):
            raise LineageError(f"stage {stage} started from adapter {adapter_digest(started_from)} but its parent's lineage "
                               f"ends at {models[-1].get('adapter_sha256') if models else 'no model'}")
    dataset = _need(manifest, "dataset", "training manifest")
    ds = {"kind": "dataset", "stage": stage, "role": dataset.get("kind", "sft_records"),
          "sha256": _need(manifest, "dataset.sha256", "training manifest"), "path": dataset.get("path"),
          "records": dataset.get("records")}
    files = adapter_files(manifest)
    steps += [gate_step(s, g) for s, g in gates if s < stage]
    steps.append(ds)
    steps += [gate_step(s, g) for s, g in gates if s >= stage]
    steps.append({"kind": "model", "stage": stage, "method": method, "adapter_sha256": adapter_digest(files), "files": files})
    return {"schema": LINEAGE_SCHEMA, "stages": sorted({s["stage"] for s in steps if s["stage"] > 0}), "steps": steps}


def _short(h: str | None) -> str:
    return f"{h[:12]}..." if isinstance(h, str) and len(h) > 12 else str(h)


def format_lineage(lineage: Mapping, extra_gates: Sequence[tuple[int, Mapping]] = ()) -> list[str]:
    """One line per step, for the run report; ``extra_gates`` are decisions taken after the manifest was written."""
    lines = []
    for s in [*_need(lineage, "steps", "lineage"), *(gate_step(st, g) for st, g in extra_gates)]:
        kind = s.get("kind")
        if kind == "base_model":
            w = s.get("weights") or {}
            lines.append(f"base model `{s.get('name')}`: weights {w.get('mode')} {_short(w.get('combined') or w.get('revision'))}")
        elif kind == "dataset":
            lines.append(f"stage {s['stage']} {s.get('role')}: {s.get('records')} records, sha256 {_short(s.get('sha256'))}")
        elif kind == "gate":
            lines.append(f"stage {s['stage']} gate {s.get('gate')}: {str(s.get('decision')).upper()}")
        elif kind == "model":
            lines.append(f"stage {s['stage']} {s.get('method')} adapter: sha256 {_short(s.get('adapter_sha256'))}")
    return [f"{i + 1}. {line}" for i, line in enumerate(lines)]
