"""DG-05 merge: join finished shards, re-deduplicate across them, recompute QC over the union.

Shards are verified against their own manifests first (PV-05) and are never modified or
deleted; the merged run records each shard manifest's hash as an input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.dedup import DuplicateIndex
from cai_bootstrap.io_utils import atomic_write_json, read_jsonl, sha256_file
from cai_bootstrap.provenance import utc_now, verify_inputs
from cai_bootstrap.qc import QCThresholds
from cai_bootstrap.run_lock import run_lock
from cai_bootstrap.safe_paths import is_empty_dir, refuse_foreign


class MergeError(ValueError):
    """The shards cannot be merged: not shards of one run, or the output would overwrite one."""


# Settings every shard of one run shares; anything else would make the union a mix of recipes.
SHARED_SETTINGS = ("model", "profile", "mode", "target", "seed", "instructions", "responses", "critic", "qc")


REASON_EVAL_OVERLAP = "eval_overlap"
# The shard label of a merged run: how a merge recognises its own earlier output.
MERGED = "merged"
# Written before any output: a merge cut short still says it is a merge's folder.
MERGE_MARKER = "merge.json"


def cross_shard_dedup(verdicts: Sequence[dict], eval_items: Sequence[tuple[str, str]], *,
                      pairwise: bool = False) -> tuple[set, list[dict]]:
    """Ids kept after re-deduplicating across shards (in shard order), and a reject row for each dropped one.

    SFT-06 at the source: an instruction that repeats a held-out eval item leaves the data
    here, with its reason, instead of stopping training later. ``pairwise`` selects the
    reference search of :mod:`cai_bootstrap.dedup` (for tests).
    """
    from cai_bootstrap.sft.data_gate import find_leaks

    index = DuplicateIndex(pairwise=pairwise)
    kept_ids, cross = set(), []
    for v in verdicts:
        hit = index.add_if_new(v["instruction"])
        if hit is None:
            kept_ids.add(v["id"])
        else:
            cross.append({"stage": "merge_dedup", "reason": P.REASON_CROSS_SHARD_DUP, "id": v["id"],
                          "instruction": v["instruction"], "matched": hit[1], "rouge_l": round(hit[2], 4), "kind": hit[0]})
    candidates = [v for v in verdicts if v["id"] in kept_ids]
    for hit in find_leaks([v["instruction"] for v in candidates], eval_items, pairwise=pairwise):
        v = candidates[hit.train_index]
        kept_ids.discard(v["id"])
        cross.append({"stage": "merge_dedup", "reason": REASON_EVAL_OVERLAP, "id": v["id"], "instruction": v["instruction"],
                      "matched": hit.eval_text, "eval_id": hit.eval_id, "rouge_l": round(hit.score, 4), "kind": hit.kind})
    return kept_ids, cross


def merge_shards(shard_dirs: Sequence[str | Path], out_dir: str | Path, *, thresholds: QCThresholds | None = None) -> dict:
    shard_dirs = [Path(d) for d in shard_dirs]
    if not shard_dirs:
        raise MergeError("no shard directories given")
    out = Path(out_dir)
    if any(out.resolve() == d.resolve() for d in shard_dirs):
        raise MergeError("the merge output must be a new directory, not one of the shards")
    with run_lock(out, "merge"):  # OPS-06: one writer per run directory
        _refuse_foreign_output(out)
        return _merge_locked(shard_dirs, out, thresholds)


def _refuse_foreign_output(out: Path) -> None:
    """The output may be new, empty, or an earlier merge: never a run whose files the merge would
    overwrite, nor one whose work files its manifest would vouch for (OPS-06)."""
    if not out.exists() or is_empty_dir(out):
        return
    if not out.is_dir():
        refuse_foreign(out, "is not a directory", option="--out")
    if (out / P.WORK / MERGE_MARKER).is_file():
        return  # a merge of ours that stopped before its manifest (a full disk, say): the rerun redoes it
    work = [p.name for p in (out / P.WORK).glob("*")] if (out / P.WORK).is_dir() else []
    if work:
        refuse_foreign(out, f"holds another run's work files ({P.WORK}/{sorted(work)[0]}, ...)", option="--out")
    manifest_path = out / P.SESSION_MANIFEST
    try:
        shard = (json.loads(manifest_path.read_text(encoding="utf-8")).get("config") or {}).get("shard")
    except (OSError, ValueError, AttributeError):
        shard = None
    if shard != MERGED:
        refuse_foreign(out, f"already exists and is not the output of an earlier merge ({P.SESSION_MANIFEST} "
                            f"does not say shard {MERGED!r})", option="--out")


def _merge_locked(shard_dirs: list[Path], out: Path, thresholds: QCThresholds | None) -> dict:
    rows = P.RunRows([], [], [], [])
    metadata: dict[str, dict] = {}
    inputs, configs, sentinel_flags = [], [], []
    probes: list[dict | None] = []
    seen_shards: set[str] = set()
    verified = []
    for d in shard_dirs:
        manifest_path = d / P.SESSION_MANIFEST
        verify_inputs(manifest_path, required=[P.DATASET, P.REJECTS, P.QC_SUMMARY])
        if not read_jsonl(d / P.DATASET):
            raise MergeError(f"{d / P.DATASET} holds no records; a shard without data cannot be merged: "
                             "rerun that shard or leave it out")
        manifest = json.loads(manifest_path.read_text())
        cfg = manifest.get("config") or {}
        shard = cfg.get("shard", "?")
        if shard in seen_shards:
            raise MergeError(f"shard {shard} given twice ({d})")
        seen_shards.add(shard)
        verified.append((d, manifest_path, manifest, cfg, shard))
    # Shard order, not argument order, decides which copy of a cross-shard duplicate stays.
    verified.sort(key=lambda v: int(str(v[4]).split("/")[0]) if str(v[4]).split("/")[0].isdigit() else 0)
    for d, manifest_path, manifest, cfg, shard in verified:
        configs.append(cfg)
        sentinel_flags.append(((manifest.get("load_provenance") or {}).get("sentinels") or {}).get("ok"))
        inputs.append({"path": str(manifest_path.resolve()), "sha256": sha256_file(manifest_path), "shard": shard})
        r = P.load_rows(d)
        rows.instruction_verdicts += r.instruction_verdicts
        rows.responses += r.responses
        rows.pair_verdicts += r.pair_verdicts
        rows.relevance_verdicts += r.relevance_verdicts
        probes.append(json.loads((d / P.QC_SUMMARY).read_text(encoding="utf-8")).get("critic_probes"))
        rows.pre_rejects += [{**x, "shard": shard} for x in r.pre_rejects]
        for rec in read_jsonl(d / P.DATASET):
            metadata[rec["metadata"]["record_id"]] = rec["metadata"]
    differ = sorted(k for k in SHARED_SETTINGS if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)
    if differ:
        raise MergeError(f"shards differ in {differ}; merge only shards of one run (same settings, distinct --shard)")
    n_shards = {str(c.get("shard", "?")).split("/")[-1] for c in configs}
    if len(n_shards) > 1:
        raise MergeError(f"shards were cut for different shard counts {sorted(n_shards)}; merge only shards of one run")
    ids = [v["id"] for v in rows.instruction_verdicts]
    if len(ids) != len(set(ids)):
        raise MergeError("shards share item ids: they were not made with distinct --shard values of one run")

    from cai_bootstrap.sft.data_gate import load_eval_instructions

    kept_ids, cross = cross_shard_dedup(rows.instruction_verdicts, load_eval_instructions())
    union = P.RunRows(
        [v for v in rows.instruction_verdicts if v["id"] in kept_ids],
        [r for r in rows.responses if r["id"] in kept_ids],
        [p for p in rows.pair_verdicts if p["id"] in kept_ids],
        rows.pre_rejects + cross,
        [p for p in rows.relevance_verdicts if p["id"] in kept_ids],
    )
    max_new = {(c.get("responses") or {}).get("max_new_tokens", 80) for c in configs}
    if thresholds is None:
        qc_cfg = configs[0].get("qc") or {}
        thresholds = QCThresholds(**qc_cfg) if qc_cfg else QCThresholds()

    def no_tokenizer(text: str) -> int:
        raise MergeError("a pair verdict lacks clean_tokens; the shard was made by an older version, rerun it")

    sentinels_ok = all(f is True for f in sentinel_flags)
    # Shards of one run score the same probes with the same model; the union keeps the
    # first shard's results only if every shard's judges filtered alike (QC-09).
    verdicts = {json.dumps(P.filtering_judges(p, thresholds.min_judge_auroc), sort_keys=True) for p in probes}
    if len(verdicts) > 1:
        raise MergeError(f"shards disagree on which critics filter ({sorted(verdicts)}); rerun them on one model and device")
    dataset, rejects, summary = P.finalize(
        union, config_max_new_tokens=max_new.pop(), metadata_for=lambda r: metadata[r["id"]],
        count_tokens=no_tokenizer, sentinels_ok=sentinels_ok, thresholds=thresholds, critic_probes=probes[0],
    )
    summary["run"] = {"mode": "merge", "shards": sorted(seen_shards), "target": configs[0].get("target")}
    out.mkdir(parents=True, exist_ok=True)
    (out / P.WORK).mkdir(exist_ok=True)
    atomic_write_json(out / P.WORK / MERGE_MARKER, {"merge_of": [str(d) for d in shard_dirs], "started_at": utc_now()})
    P.write_artifacts(out, dataset, rejects, summary, state={"started_at": utc_now()},
                      budgets={"shards": len(shard_dirs)}, config={"merge_of": [str(d) for d in shard_dirs], **configs[0], "shard": MERGED},
                      load_provenance=None, inputs=inputs, notes=[f"merge of {len(shard_dirs)} shards"])
    return summary
