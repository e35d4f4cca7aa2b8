"""Stage-1 data generation: instructions -> parse -> dedup -> critic probes -> instruction
critic -> responses -> clean -> pair judges -> QC -> artifacts (DG-02).

The critics are measured on the shipped probe set before they judge anything (CR-06);
only judges whose probe AUROC clears the bar drop data (QC-09), the others' verdicts are
kept on the record.

Each phase is a plain function over plain records. The run function wires them with
resumable work files (``work/*.jsonl``): a run killed at any point is rerun with the
same command and finishes without redoing finished batches, without duplicates, and
with the same result as an uninterrupted run (DG-06). Sampling is seeded per fixed
batch, and instruction prompts are seeded per global prompt index, so shards of a scale
run draw disjoint, reproducible prompts whatever the number of shards (DG-05).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from cai_bootstrap import cleaning, parsing, prompts
from cai_bootstrap.critic_probes import INSTRUCTION_JUDGE, JUDGES, PAIR_JUDGE, RELEVANCE_JUDGE, with_policy
from cai_bootstrap.datagen.config import RELEVANCE_THRESHOLD_FROM_PROBES, GenerateConfig
from cai_bootstrap.datagen.pilot_reuse import RECORD as PILOT_REUSE
from cai_bootstrap.datagen.pilot_reuse import pilot_dir_of, reuse_pilot_work
from cai_bootstrap.datagen.store import PhaseStore
from cai_bootstrap.dedup import DuplicateIndex
from cai_bootstrap.io_utils import atomic_write_json, atomic_write_jsonl, read_jsonl
from cai_bootstrap.provenance import (
    SFT_RECORDS,
    add_generated_artifact,
    new_session_manifest,
    record_metadata,
    sft_record,
    utc_now,
    write_manifest,
)
from cai_bootstrap.qc import compute_qc_summary
from cai_bootstrap.run_lock import run_lock
from cai_bootstrap.safe_paths import refuse_foreign, refuse_unknown_entries

SCRIPT_NAME = "cai_bootstrap.datagen"
WORK = "work"
RAW_INSTRUCTIONS = "raw_instructions.jsonl"
INSTRUCTION_VERDICTS = "instruction_verdicts.jsonl"
RESPONSES = "responses.jsonl"
PAIR_VERDICTS = "pair_verdicts.jsonl"
RELEVANCE_VERDICTS = "relevance_verdicts.jsonl"
CRITIC_PROBES = "critic_probes.json"
DATASET = "dataset.jsonl"
REJECTS = "rejects.jsonl"
QC_SUMMARY = "qc_summary.json"
SESSION_MANIFEST = "session_manifest.json"
SESSION_STATE = "session.json"

# Stable drop reasons of this module (cleaning and parsing own theirs).
REASON_SURPLUS = "oversample_surplus"
REASON_CRITIC_BAD = "critic_bad"
REASON_CRITIC_LOW_CONFIDENCE = "critic_low_confidence"
REASON_CROSS_SHARD_DUP = "cross_shard_duplicate"
REASON_RELEVANCE_LOW = "relevance_low"


# -- pure phases -------------------------------------------------------------------------------


def prompt_indices(shard_index: int, n_shards: int, start: int, count: int) -> list[int]:
    """Global instruction-prompt indices of a shard: interleaved, so shards never share a prompt."""
    return [shard_index + n_shards * k for k in range(start, start + count)]


def parse_raw(raw_rows: Sequence[dict], forbidden_tokens_in: Callable[[str], Sequence[str]] | None = None
              ) -> tuple[list[dict], list[dict]]:
    """Parse every raw list continuation into candidate instructions with stable ids.

    Items holding a forbidden token (emitted, per the row's ``special_tokens``, or typed as
    text the loader's ``forbidden_tokens_in`` finds) are dropped here with a reason: at the
    critic, encoding them would abort the whole run (CG-03).
    """
    candidates, rejects = [], []
    for row in sorted(raw_rows, key=lambda r: r["prompt_index"]):
        res = parsing.parse_instruction_list(
            row["text"], continues_item=row["next_number"], truncated=row["hit_limit"],
            forbidden_offsets=[s["offset"] for s in row.get("special_tokens", ()) if "offset" in s],
            forbidden_tokens_in=forbidden_tokens_in)
        for ins in res.instructions:
            candidates.append({"id": f"p{row['prompt_index']}-l{ins.line}", "instruction": ins.text, "prompt_index": row["prompt_index"]})
        for rej in res.rejects:
            rejects.append({"stage": "parse", "reason": rej.reason, "text": rej.text, "prompt_index": row["prompt_index"], "line": rej.line})
    return candidates, rejects


def dedup_candidates(candidates: Sequence[dict], index: DuplicateIndex | None = None) -> tuple[list[dict], list[dict]]:
    """DG-04: drop exact, normalized and ROUGE-L > 0.7 duplicates against the kept pool."""
    # An empty index is falsy (it has a length): test for None so a caller's pool is used.
    index = DuplicateIndex() if index is None else index
    kept, rejects = [], []
    for c in candidates:
        hit = index.add_if_new(c["instruction"])
        if hit is None:
            kept.append(c)
        else:
            reason, matched, score = hit
            rejects.append({"stage": "dedup", "reason": reason, "id": c["id"], "instruction": c["instruction"],
                            "matched": matched, "rouge_l": round(score, 4)})
    return kept, rejects


def verdict_reason(critique: dict) -> str | None:
    if critique["is_good"]:
        return None
    return REASON_CRITIC_LOW_CONFIDENCE if not critique["confident"] else REASON_CRITIC_BAD


@dataclass
class RunRows:
    """Everything a run's artifacts are computed from; shards concatenate into a merge."""

    instruction_verdicts: list[dict]
    responses: list[dict]
    pair_verdicts: list[dict]
    pre_rejects: list[dict]
    relevance_verdicts: list[dict] = field(default_factory=list)


def filtering_judges(critic_probes: dict | None, bar: float) -> dict[str, bool]:
    """QC-09: which judges drop data, by the policy over the run's probe AUROCs (none without probes)."""
    judges = with_policy((critic_probes or {}).get("judges") or {}, bar)
    return {n: bool((judges.get(n) or {}).get("filters")) for n in JUDGES}


def finalize(rows: RunRows, *, config_max_new_tokens: int, metadata_for: Callable[[dict], dict],
             count_tokens: Callable[[str], int], sentinels_ok: bool | None, thresholds,
             critic_probes: dict | None) -> tuple[list[dict], list[dict], dict]:
    """Dataset, rejects and QC summary from a run's rows. Pure given its callables.

    Only judges that clear the probe bar drop items (QC-09); QC counts what the filtering
    judges accepted, while every judge's own verdict stays in the work files.
    """
    filters = filtering_judges(critic_probes, thresholds.min_judge_auroc)
    rejects = list(rows.pre_rejects)
    by_id_instr = {v["id"]: v for v in rows.instruction_verdicts}
    instr_effective = []
    for v in rows.instruction_verdicts:
        reason = verdict_reason(v["critique"]) if filters[INSTRUCTION_JUDGE] else None
        instr_effective.append(effective_verdict(v["critique"], reason))
        if reason:
            rejects.append({"stage": "instruction_critic", "reason": reason, "id": v["id"], "instruction": v["instruction"],
                            "critique": v["critique"]})
    pair_by_id = {p["id"]: p for p in rows.pair_verdicts}
    rel_by_id = {p["id"]: p for p in rows.relevance_verdicts}
    pair_effective: dict[str, dict] = {}
    response_flags, kept_texts, kept_tokens, dataset = [], [], [], []
    for r in rows.responses:
        res = cleaning.clean_response(r["raw"], n_tokens=r["n_tokens"], max_new_tokens=config_max_new_tokens,
                                      special_tokens=r.get("special_tokens", ()))
        response_flags.append({"id": r["id"], "reason": res.reason, "delimiter_found": res.delimiter_found,
                               "heuristic_cutoff": res.heuristic_cutoff, "hit_token_limit": res.hit_token_limit})
        if not res.kept:
            extra = {"special_tokens": r["special_tokens"]} if r.get("special_tokens") else {}
            rejects.append(cleaning.reject_record(res, r["raw"], id=r["id"], instruction=r["instruction"], **extra))
            continue
        pv = pair_by_id.get(r["id"])
        if pv is None:
            raise ValueError(f"response {r['id']} was kept by cleaning but has no pair verdict; rerun to finish the pair critic")
        rv = rel_by_id.get(r["id"])
        if filters[RELEVANCE_JUDGE] and rv is None:
            raise ValueError(f"response {r['id']} was kept by cleaning but has no relevance verdict; rerun to finish the pair judges")
        reason = verdict_reason(pv["critique"]) if filters[PAIR_JUDGE] else None
        if reason:
            rejects.append({"stage": "pair_critic", "reason": reason, "id": r["id"], "instruction": r["instruction"],
                            "response": res.text, "critique": pv["critique"]})
        elif filters[RELEVANCE_JUDGE] and not rv["relevance"]["is_good"]:
            reason = REASON_RELEVANCE_LOW
            rejects.append({"stage": "relevance_judge", "reason": reason, "id": r["id"], "instruction": r["instruction"],
                            "response": res.text, "relevance": rv["relevance"], "critique": pv["critique"]})
        pair_effective[r["id"]] = effective_verdict(pv["critique"], reason)
        if reason:
            continue
        kept_texts.append(res.text)
        kept_tokens.append(pv["clean_tokens"] if "clean_tokens" in pv else count_tokens(res.text))
        dataset.append(sft_record(
            r["instruction"], res.text,
            instruction_critique=by_id_instr[r["id"]]["critique"], pair_critique=pv["critique"],
            metadata=metadata_for(r),
            prompt=prompts.render_response_prompt(r["instruction"]), completion=" " + res.text,
            judges={"instruction_filters": filters[INSTRUCTION_JUDGE], "pair_filters": filters[PAIR_JUDGE],
                    "relevance_filters": filters[RELEVANCE_JUDGE],
                    "relevance_passed": bool(rv is not None and rv["relevance"]["is_good"])},
        ))
    drop_counts = Counter(f"{x['stage']}:{x['reason']}" for x in rejects)
    summary = compute_qc_summary(
        instruction_verdicts=instr_effective,
        responses=response_flags,
        pair_verdicts=[pair_effective[p["id"]] for p in rows.pair_verdicts if p["id"] in pair_effective],
        kept_response_tokens=kept_tokens,
        kept_responses=kept_texts,
        drop_reasons=dict(drop_counts),
        sentinels_ok=sentinels_ok,
        thresholds=thresholds,
        critic_probes=critic_probes,
    )
    summary["counts"]["instructions_judged"] = len(rows.instruction_verdicts)
    summary["counts"]["rejects"] = len(rejects)
    return dataset, rejects, summary


def effective_verdict(critique: dict, reason: str | None) -> dict:
    """What QC counts for an item: accepted unless a filtering judge dropped it, with the A/B margin."""
    return {**critique, "is_good": reason is None, "confident": reason is None or reason != REASON_CRITIC_LOW_CONFIDENCE}


# -- the run -----------------------------------------------------------------------------------


def _bar(total: int, desc: str, quiet: bool, unit: str = "item"):
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, mininterval=0.5)


def _batches(items: Sequence, size: int):
    for b, start in enumerate(range(0, len(items), size)):
        yield b, items[start : start + size]


def _load_model(cfg: GenerateConfig):
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.model_sources import resolve_model

    resolved = resolve_model(cfg.model, profile=cfg.profile)
    lm = load_base_model(resolved.source, profile=resolved.profile, device=cfg.device, dtype=cfg.dtype)
    lm.provenance["model_source"] = resolved.to_dict()
    return lm.use_decode_backend(cfg.decode_backend)


def generate_instructions(lm, cfg: GenerateConfig, store: PhaseStore) -> tuple[list[dict], list[dict]]:
    """Continue few-shot lists until enough unique candidates exist (DG-01 oversampling).

    Prompts go out in fixed rounds and the stop test runs after every round over the
    rounds so far only, so a resumed run stops after exactly the round an uninterrupted
    run stops after, even when the store already holds part of a later round.
    """
    ic = cfg.instructions
    need = ic.n_candidates(cfg.shard_target())
    max_prompts = max(8, need)  # a model that yields nothing must not loop forever
    bar = _bar(need, "instructions", cfg.quiet, "instr")
    index = DuplicateIndex()
    kept: list[dict] = []
    rejects: list[dict] = []
    n_rows = 0
    rnd = 0
    while True:
        idx = prompt_indices(cfg.shard_index, cfg.n_shards, rnd * ic.batch_size, ic.batch_size)
        rnd += 1
        if any(f"prompt-{i}" not in store for i in idx):
            built = [prompts.build_instruction_generation_prompt(cfg.seed + i) for i in idx]
            gens = lm.generate([b.text for b in built], **ic.generate_kwargs(),
                               seed=cfg.seed + 7919 * (idx[0] + 1), batch_size=len(idx), progress=False)
            store.append_batch(
                {"id": f"prompt-{i}", "prompt_index": i, "seed": cfg.seed + i, "next_number": b.next_number,
                 "prompt_provenance": b.provenance(), "text": g.text, "n_tokens": g.n_tokens, "hit_limit": g.hit_limit,
                 "special_tokens": g.special_tokens}
                for i, b, g in zip(idx, built, gens)
            )
        # Rounds come in increasing prompt index, so parsing and deduplicating round by
        # round against one growing pool equals doing it once over all rows.
        candidates, parse_rejects = parse_raw([store.get(f"prompt-{i}") for i in idx], lm.forbidden_tokens_in)
        new_kept, dedup_rejects = dedup_candidates(candidates, index)
        kept += new_kept
        rejects += parse_rejects + dedup_rejects
        n_rows += len(idx)
        bar.n = min(len(kept), need)
        bar.refresh()
        if len(kept) >= need or n_rows >= max_prompts:
            break
    bar.close()
    surplus = [{"stage": "dedup", "reason": REASON_SURPLUS, "id": c["id"], "instruction": c["instruction"]} for c in kept[need:]]
    return kept[:need], rejects + surplus


def judge(critic, items: Sequence[dict], render: Callable[[dict], object], store: PhaseStore, batch: int,
          desc: str, quiet: bool, extra: Callable[[dict], dict] = lambda _: {}, key: str = "critique") -> None:
    """Score items with a critic into ``store``, in fixed batches so a resumed run scores only what is missing."""
    todo_batches = [(b, chunk) for b, chunk in _batches(list(items), batch) if any(c["id"] not in store for c in chunk)]
    bar = _bar(len(items), desc, quiet)
    bar.update(len(items) - sum(len(c) for _, c in todo_batches))
    for _, chunk in todo_batches:
        results = critic.score([render(c) for c in chunk])
        store.append_batch({"id": c["id"], **extra(c), key: r.to_dict()} for c, r in zip(chunk, results))
        bar.update(len(chunk))
    bar.close()


def emitted_or_typed(lm, gen) -> list[dict]:
    """Forbidden tokens of a generation: those the model emitted (erased from its text by
    decoding) and those its text would encode to, which would abort the pair critic (CG-03)."""
    return list(gen.special_tokens) + [{"token": t, "in_text": True} for t in lm.forbidden_tokens_in(gen.text)]


def response_prompts(cfg: GenerateConfig, accepted: Sequence[dict]) -> list[dict]:
    """What the model is shown per item, in batch order; ``prompt`` is always the zero-shot PR-01 prompt.

    In the demonstration frame (PR-07) each item gets its own seeded draw, and items are
    ordered by frame length so a batch pads little; the order is a function of the items
    alone, so a resumed run forms the same batches.
    """
    rc = cfg.responses
    rows = []
    for c in accepted:
        zero_shot = prompts.render_response_prompt(c["instruction"])
        if rc.response_frame == "demonstrations":
            built = prompts.build_demonstration_prompt(c["instruction"], seed=cfg.seed, item_id=c["id"], k=rc.n_demonstrations)
            rows.append({**c, "prompt": zero_shot, "shown": built.text, "demonstration_ids": list(built.demonstration_ids)})
        else:
            rows.append({**c, "prompt": zero_shot, "shown": zero_shot, "demonstration_ids": []})
    if rc.response_frame == "demonstrations":
        rows.sort(key=lambda r: (len(r["shown"]), r["id"]))
    return rows


def generate_responses(lm, cfg: GenerateConfig, accepted: Sequence[dict], store: PhaseStore) -> None:
    """Sample one response per accepted instruction; each batch has its own seed, so a redone batch comes out the same."""
    rc = cfg.responses
    batches = list(_batches(response_prompts(cfg, accepted), rc.batch_size))
    bar = _bar(len(accepted), "responses", cfg.quiet)
    for b, chunk in batches:
        if all(c["id"] in store for c in chunk):
            bar.update(len(chunk))
            continue
        seed = cfg.seed + 104729 * (b + 1) + cfg.shard_index
        gens = lm.generate([c["shown"] for c in chunk], **rc.generate_kwargs(),
                           seed=seed, batch_size=len(chunk), progress=False)
        made = utc_now()
        store.append_batch({"id": c["id"], "instruction": c["instruction"], "prompt": c["prompt"], "raw": g.text,
                            "n_tokens": g.n_tokens, "hit_limit": g.hit_limit, "seed": seed, "generated_at": made,
                            "special_tokens": emitted_or_typed(lm, g),
                            "response_frame": rc.response_frame, "demonstration_ids": c["demonstration_ids"]}
                           for c, g in zip(chunk, gens))
        bar.update(len(chunk))
    bar.close()


def make_judges(lm, cfg: GenerateConfig):
    """The run's instruction critic, pair critic and relevance judge, as configured."""
    from cai_bootstrap.critic import DEFAULT_RELEVANCE_THRESHOLD, instruction_critic, pair_critic, relevance_judge

    c = cfg.critic
    ab = {"threshold": c.threshold, "batch_size": c.batch_size, "prefix_reuse": c.prefix_reuse, "calibrate": c.calibrate}
    # A threshold taken from the probes is set by ``probe_critics`` before any pair is judged.
    fixed = DEFAULT_RELEVANCE_THRESHOLD if c.relevance_threshold == RELEVANCE_THRESHOLD_FROM_PROBES else c.relevance_threshold
    return (instruction_critic(lm, **ab), pair_critic(lm, **ab),
            relevance_judge(lm, threshold=fixed, batch_size=c.batch_size))


def probe_critics(icritic, pcritic, rjudge, path: Path, *, bar: float, relevance_threshold: float | str) -> dict:
    """CR-06: the judges' probe results, scored once per run and cached so a resumed run reuses them.

    With ``relevance_threshold="probes"`` the relevance judge leaves with the probe-chosen threshold,
    from the cache on a resumed run, so resumed and uninterrupted runs judge pairs alike.
    """
    import json

    from cai_bootstrap.critic_probes import evaluate_probes, load_probe_set

    from_probes = relevance_threshold == RELEVANCE_THRESHOLD_FROM_PROBES
    probe_set = load_probe_set()
    probes = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    cached_rule = ((probes or {}).get("judges") or {}).get(RELEVANCE_JUDGE, {}).get("threshold_rule")
    # A cache scored on another probe set (an upgraded package) or under another threshold rule is scored again.
    if (probes is None or (probes.get("probe_set") or {}).get("sha256") != probe_set.sha256
            or (rjudge is not None and cached_rule != ("youden_j_on_probes" if from_probes else "fixed"))
            or (rjudge is not None and not from_probes and probes["judges"][RELEVANCE_JUDGE]["threshold"] != rjudge.threshold)):
        probes = evaluate_probes(probe_set, instruction_critic=icritic, pair_critic=pcritic, relevance_judge=rjudge, bar=bar,
                                 relevance_threshold_from_probes=from_probes)
        atomic_write_json(path, probes)
    elif rjudge is not None:
        rjudge.threshold = float(probes["judges"][RELEVANCE_JUDGE]["threshold"])
    return {**probes, "judges": with_policy(probes["judges"], bar)}


def run_generation(cfg: GenerateConfig, *, lm=None) -> dict:
    """Run (or resume) one pilot or shard into ``cfg.out_dir``; return the QC summary."""
    out = Path(cfg.out_dir)
    work = out / WORK
    state_path = work / SESSION_STATE
    cfg_dump = cfg.model_dump(mode="json")
    # Everything that can be refused is checked before the model loads (OPS-01).
    state = _read_state(state_path, cfg_dump) if state_path.exists() else None
    with run_lock(out, "generate"):  # OPS-06: one writer per run directory
        if state is None and state_path.exists():  # a writer that finished meanwhile
            state = _read_state(state_path, cfg_dump)
        if state is None:
            _refuse_foreign_outputs(out)
            refuse_unknown_entries(out, (WORK,), option="--out")  # a new run starts in an empty folder
        _check_writable(out)
        if cfg.mode == "scale":
            _require_pilot_gate(cfg)
        return _run_locked(cfg, lm, out, work, state_path, cfg_dump, state)


def _refuse_foreign_outputs(out: Path) -> None:
    """A directory without run state may not hold the files a run writes: they are someone else's (OPS-06)."""
    found = [n for n in (DATASET, REJECTS, QC_SUMMARY, SESSION_MANIFEST) if (out / n).exists()]
    if found:
        refuse_foreign(out, f"holds {', '.join(found)} but no run state ({WORK}/{SESSION_STATE})", option="--out")


def _run_locked(cfg: GenerateConfig, lm, out: Path, work: Path, state_path: Path, cfg_dump: dict, state: dict | None) -> dict:
    own_model = lm is None
    if own_model:
        lm = _load_model(cfg)
    if state is None:
        # Written only once a model loaded, so a typo in --model leaves no run behind to clash with.
        state = {"config": cfg_dump, "started_at": utc_now()}
        atomic_write_json(state_path, state)
    if cfg.mode == "scale":
        reused = reuse_pilot_work(cfg_dump, work, lm.provenance, pilot_dir_of(cfg.pilot_gate),
                                  (RAW_INSTRUCTIONS, CRITIC_PROBES))
        if reused is not None and not cfg.quiet:
            print(f"pilot reuse: {'copied ' + ', '.join(c['file'] for c in reused['copied']) if reused['copied'] else 'none'}"
                  + (f" ({'; '.join(reused['reasons'])})" if reused["reasons"] else ""), flush=True)
    raw_store = PhaseStore(work / RAW_INSTRUCTIONS)
    kept, pre_rejects = generate_instructions(lm, cfg, raw_store)

    icritic, pcritic, rjudge = make_judges(lm, cfg)
    critic_probes = probe_critics(icritic, pcritic, rjudge, work / CRITIC_PROBES, bar=cfg.qc.min_judge_auroc,
                                  relevance_threshold=cfg.critic.relevance_threshold)
    filters = filtering_judges(critic_probes, cfg.qc.min_judge_auroc)
    iv_store = PhaseStore(work / INSTRUCTION_VERDICTS)
    judge(icritic, kept, lambda c: {"instruction": c["instruction"]}, iv_store, cfg.critic.batch_size,
          "instruction critic", cfg.quiet, extra=lambda c: {"instruction": c["instruction"]})
    verdicts = [iv_store.get(c["id"]) for c in kept]
    # An instruction critic below the probe bar is recorded, not obeyed (QC-09).
    accepted = [c for c, v in zip(kept, verdicts) if v["critique"]["is_good"] or not filters[INSTRUCTION_JUDGE]]

    resp_store = PhaseStore(work / RESPONSES)
    generate_responses(lm, cfg, accepted, resp_store)
    responses = [resp_store.get(c["id"]) for c in accepted]

    to_judge = []
    for r in responses:
        res = cleaning.clean_response(r["raw"], n_tokens=r["n_tokens"], max_new_tokens=cfg.responses.max_new_tokens,
                                      special_tokens=r.get("special_tokens", ()))
        if res.kept:
            to_judge.append({"id": r["id"], "instruction": r["instruction"], "response": res.text,
                             "clean_tokens": len(lm.encode_continuation(res.text))})
    pv_store = PhaseStore(work / PAIR_VERDICTS)
    judge(pcritic, to_judge, lambda c: {"instruction": c["instruction"], "response": c["response"]}, pv_store,
          cfg.critic.batch_size, "pair critic", cfg.quiet, extra=lambda c: {"clean_tokens": c["clean_tokens"]})
    rv_store = PhaseStore(work / RELEVANCE_VERDICTS)
    judge(rjudge, to_judge, lambda c: (c["instruction"], c["response"]), rv_store, cfg.critic.batch_size,
          "relevance judge", cfg.quiet, key="relevance")

    rows = RunRows(verdicts, responses, [pv_store.get(c["id"]) for c in to_judge], pre_rejects,
                   [rv_store.get(c["id"]) for c in to_judge])
    gen_params = {"seed": cfg.seed, **cfg.responses.as_provenance()}
    gen_params.pop("batch_size")

    def metadata_for(r: dict) -> dict:
        # The record's time is when its response was sampled, so rewriting the artifacts
        # (a resumed or repeated run) reproduces them byte for byte.
        return record_metadata(script_name=SCRIPT_NAME, generation={**gen_params, "sample_seed": r["seed"]},
                               artifact_type=SFT_RECORDS, load_provenance=lm.provenance, timestamp=r.get("generated_at"),
                               extra={"record_id": r["id"], "shard": cfg.shard, "mode": cfg.mode,
                                      # PR-07: what the model was shown; the record's prompt is zero-shot.
                                      "response_frame": r.get("response_frame", "zero_shot"),
                                      "demonstration_ids": list(r.get("demonstration_ids", []))})

    dataset, rejects, summary = finalize(
        rows, config_max_new_tokens=cfg.responses.max_new_tokens, metadata_for=metadata_for,
        count_tokens=lambda t: len(lm.encode_continuation(t)),
        sentinels_ok=(lm.provenance.get("sentinels") or {}).get("ok"), thresholds=cfg.qc.thresholds(),
        critic_probes=critic_probes,
    )
    summary["run"] = {"mode": cfg.mode, "shard": cfg.shard, "target": cfg.shard_target(), "seed": cfg.seed}
    # The critics' configuration, without per-call counters: a resumed run must write the same summary.
    summary["critics"] = {name: {k: v for k, v in c.provenance.items() if k != "last_run"}
                          for name, c in ((INSTRUCTION_JUDGE, icritic), (PAIR_JUDGE, pcritic), (RELEVANCE_JUDGE, rjudge))}
    write_artifacts(out, dataset, rejects, summary, state=state, budgets={
        "target": cfg.shard_target(), "oversample": cfg.instructions.oversample,
        "instruction_prompts": len(raw_store)}, config=cfg_dump, load_provenance=lm.provenance)
    if own_model:
        lm.release()
    return summary


def write_artifacts(out: Path, dataset, rejects, summary, *, state: dict, budgets: dict, config: dict,
                    load_provenance: dict | None, inputs: Sequence[dict] = (), notes: Sequence[str] = ()) -> dict:
    """DG-03: the run's files, written atomically, then the manifest that pins their hashes."""
    atomic_write_jsonl(out / DATASET, dataset)
    atomic_write_jsonl(out / REJECTS, rejects)
    atomic_write_json(out / QC_SUMMARY, summary)
    manifest = new_session_manifest(
        planned_artifacts=[DATASET, REJECTS, QC_SUMMARY], budgets=budgets,
        notes=list(notes) or [f"qc thresholds_passed={summary['thresholds_passed']}"],
        loader_version=(load_provenance or {}).get("loader_version"),
        extra={"config": config, "load_provenance": load_provenance, "inputs": list(inputs),
               "qc_passed": summary["thresholds_passed"], "n_records": len(dataset), "n_rejects": len(rejects),
               "critic_probes": summary.get("critic_probes")},
    )
    manifest["started_at"] = state.get("started_at", manifest["started_at"])
    for name in (DATASET, REJECTS, QC_SUMMARY):
        add_generated_artifact(manifest, out / name, out)
    for p in sorted((out / WORK).glob("*.jsonl")) + sorted((out / WORK).glob(CRITIC_PROBES)) + sorted((out / WORK).glob(PILOT_REUSE)):
        add_generated_artifact(manifest, p, out, role="work")
    manifest["finished_at"] = utc_now()
    write_manifest(out / SESSION_MANIFEST, manifest)
    return manifest


# Settings that may differ between a run and its resumption: they change no result (a run
# directory may be moved or copied and resumed where it now lies).
# Where a run or its pilot gate lives may change (a moved folder); the gate itself is checked again.
RESUMABLE_CHANGES = ("quiet", "out_dir", "pilot_gate")


def _read_state(state_path: Path, cfg_dump: dict) -> dict:
    """The state of an earlier run in this directory; refuse to resume it with other settings."""
    import json

    out = state_path.parent.parent
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        old = state["config"]
        if not isinstance(old, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{state_path} is not a run state file (unreadable or without 'config'); "
                         "use a new --out directory") from None
    changed = sorted(k for k in set(cfg_dump) | set(old) if cfg_dump.get(k) != old.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"{out} holds a run with a different configuration (changed: {changed}); "
                         "use a new --out directory or the original settings to resume")
    return state


class PilotGateError(RuntimeError):
    """Scale generation asked for without a passed pilot (GT-01)."""


def _require_pilot_gate(cfg: GenerateConfig) -> None:
    """GT-01 in the phase it protects: no scale run without a passed, unchanged pilot gate."""
    from cai_bootstrap.gates import PILOT_GATE, GateError, require_gate_passed

    if cfg.pilot_gate is None:
        raise PilotGateError("scale generation needs a passed pilot gate: run a pilot, decide its gate "
                             "(nox -s stage1 does both), then pass --pilot-gate PATH/pilot_gate.json")
    try:
        require_gate_passed(cfg.pilot_gate, gate=PILOT_GATE)
    except GateError as e:
        raise PilotGateError(f"scale generation refused: {e}") from None


def _check_writable(out: Path) -> None:
    """Checked without creating anything, so a run refused later (a bad --model) leaves no empty folder."""
    from cai_bootstrap.integrity import check_no_links_out, check_writable_location

    try:
        check_writable_location(out)
    except ValueError as e:
        raise PermissionError(f"output directory {out} is not writable ({e}); choose another --out") from None
    work = out / WORK
    # Work files are appended to: a link planted among them would send the writes out of the run directory.
    check_no_links_out(out, [work, *(sorted(work.iterdir()) if work.is_dir() and not work.is_symlink() else [])])


def load_rows(run_dir: Path) -> RunRows:
    """Rows of a finished run, for merging; parse/dedup rejects come from its rejects file."""
    work = run_dir / WORK
    pre = [r for r in read_jsonl(run_dir / REJECTS) if r.get("stage") in ("parse", "dedup")]
    rel = read_jsonl(work / RELEVANCE_VERDICTS) if (work / RELEVANCE_VERDICTS).exists() else []
    return RunRows(read_jsonl(work / INSTRUCTION_VERDICTS), read_jsonl(work / RESPONSES),
                   read_jsonl(work / PAIR_VERDICTS), pre, rel)
