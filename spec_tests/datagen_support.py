"""Shared setup for the data-generation tests: a tiny model whose critic lets items through.

Every tiny random model gives nearly the same A/B preference to every critic prompt
(the prompts share their rubric and their ``Label:`` ending); with the session's seed-0
model that preference is B, so no instruction would ever reach the response phase. The
tests here use a tiny model built from a seed whose critics lean to A, with a threshold
near its margins, so some items are accepted and some rejected by the real critic.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cai_bootstrap.datagen.config import GenerateConfig, load_config
from cai_bootstrap.datagen.pipeline import DATASET, WORK
from cai_bootstrap.io_utils import read_jsonl

# Tried in order; the first whose critics prefer A on the probe items is used.
CANDIDATE_SEEDS = (5, 2, 4, 7, 8, 9, 10, 11, 12, 13)
_cache: dict[str, object] = {}


def _probe(lm) -> tuple[bool, float]:
    """(critics lean to A, a threshold splitting the instruction critic's margins)."""
    from cai_bootstrap.critic import instruction_critic, pair_critic

    from spec_tests.scripted_lm import TEMPLATES, TOPICS

    items = [t.format(t=x) for t, x in zip(TEMPLATES, TOPICS)]
    ins = instruction_critic(lm, threshold=0.0).score(items)
    pairs = pair_critic(lm, threshold=0.0).score([(i, "Sure. it depends mostly on the weather.") for i in items])
    lean_a = sum(r.is_good for r in ins) > len(ins) // 2 and sum(r.is_good for r in pairs) > len(pairs) // 2
    return lean_a, statistics.median(r.margin for r in ins)


def flowing_lm(tmp_path_factory):
    """(loaded tiny model, its folder, mid threshold); built once per test session."""
    if "lm" not in _cache:
        from cai_bootstrap.loader import load_base_model
        from cai_bootstrap.testmodel import build_tiny_model

        root = tmp_path_factory.mktemp("flowing-models")
        for seed in CANDIDATE_SEEDS:
            folder = build_tiny_model(root / f"tiny-seed{seed}", seed=seed)
            lm = load_base_model(folder, device="cpu")
            lean_a, mid = _probe(lm)
            if lean_a:
                _cache.update(lm=lm, dir=folder, mid=mid)
                break
            lm.release()
        else:
            raise RuntimeError(f"no tiny model seed in {CANDIDATE_SEEDS} gives critics that lean to A")
    return _cache["lm"], _cache["dir"], _cache["mid"]


def small_settings(out_dir: Path, model_dir: Path, **overrides) -> dict:
    """``load_config`` overrides for a run small enough for CI: a dozen instructions, short budgets.

    A tiny random model cannot discriminate (its probe AUROCs are near 0.5), so under the
    default bar no judge would filter and the run would fail QC-09 by design. These runs
    test the data flow through judges that filter, so they set the bar to 0, keep the A/B
    critic uncalibrated (the seed was picked for its uncalibrated lean to A) and put the
    relevance threshold out of reach. ``test_datagen`` runs the defaults on the tiny model
    and checks that QC-09 fails it.
    """
    settings = {
        "model": str(model_dir),
        "out_dir": str(out_dir),
        "target": 6,
        "quiet": True,
        "instructions.batch_size": 2,
        "instructions.max_new_tokens": 64,
        "responses.batch_size": 2,
        "responses.max_new_tokens": 40,
        "critic.batch_size": 4,
        "critic.threshold": 0.0,
        "qc.min_judge_auroc": 0.0,
        "critic.calibrate": False,
        "critic.relevance_threshold": -100.0,
    }
    settings.update(overrides)
    return settings


def passed_pilot_gate(folder: Path) -> Path:
    """A real, passed pilot gate manifest (GT-01), decided by the gate over a pilot run whose QC passed."""
    from cai_bootstrap.gates import run_data_gate
    from spec_tests.sft_support import make_generation_run

    folder = Path(folder)
    manifest = folder / "pilot_gate.json"
    if manifest.exists():
        return manifest
    run = make_generation_run(folder / "pilot-for-gate", run_block={"mode": "pilot", "target": 100})
    decision, _ = run_data_gate(run, out=manifest)
    assert decision.passed, decision.reasons
    return manifest


def small_config(out_dir: Path, model_dir: Path, **overrides) -> GenerateConfig:
    if overrides.get("mode") == "scale" and "pilot_gate" not in overrides:
        overrides["pilot_gate"] = str(passed_pilot_gate(Path(out_dir).parent))
    return load_config(None, **small_settings(out_dir, model_dir, **overrides))


def work_rows(run_dir: Path) -> dict[str, list[dict]]:
    """Every work file of a run, by file name."""
    return {p.name: read_jsonl(p) for p in sorted((Path(run_dir) / WORK).glob("*.jsonl"))}


def without_timestamps(obj):
    """A record with its wall-clock fields removed, for comparing runs made at different times."""
    if isinstance(obj, dict):
        return {k: without_timestamps(v) for k, v in obj.items() if k not in ("timestamp", "generated_at")}
    if isinstance(obj, list):
        return [without_timestamps(v) for v in obj]
    return obj


def dataset(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / DATASET)


def canonical(records: list[dict]) -> list[str]:
    return [json.dumps(without_timestamps(r), sort_keys=True) for r in records]
