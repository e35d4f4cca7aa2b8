"""Builders shared by the preference tests: pair records and a finished pairs run, made the way the code makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cai_bootstrap.preference.qc import PairQCThresholds, compute_pair_qc
from cai_bootstrap.preference.run_dir import write_pairs_run
from cai_bootstrap.preference.schema import pair_record
from cai_bootstrap.provenance import PREFERENCE_PAIRS, record_metadata

# (instruction, chosen, rejected, negative_type, chosen_score, rejected_score)
DEFAULT_PAIRS = (
    ("Name a fruit that is yellow.", "A banana is yellow.", "Bananas are a fruit.", "sampled", 3.0, 1.5),
    ("Name a fruit that is yellow.", "A banana is yellow.", "I'm sorry, but I can't help with that.", "unwarranted_refusal", 3.0, -1.0),
    ("Say how many legs a spider has.", "A spider has eight legs.", "A spider has six legs.", "wrong_fact", 2.5, 0.5),
    ("Tell me the opposite of cold.", "The opposite of cold is hot.", "Paris is the capital of France.", "off_topic", 2.2, -0.4),
    ("Name the largest planet in our solar system.", "Jupiter is the largest planet.",
     "Jupiter is the largest planet. " * 6, "over_verbose", 2.9, 1.2),
)


def provenance() -> dict:
    return record_metadata(script_name="tests", artifact_type=PREFERENCE_PAIRS,
                           generation={"seed": 0, "temperature": 0.7, "max_new_tokens": 80, "do_sample": True},
                           model_name="tiny-random", quantization="none", template_disabled=True, loader_version="test")


def make_pairs(rows: Sequence[tuple] = DEFAULT_PAIRS) -> list[dict]:
    judges = {"pair_critic": True, "relevance_judge": False, "chosen": {}, "rejected": {}}
    return [pair_record(id=f"pair-{i}", instruction=ins, chosen=c, rejected=r, chosen_score=cs, rejected_score=rs,
                        negative_type=kind, judges=judges, provenance=provenance())
            for i, (ins, c, r, kind, cs, rs) in enumerate(rows)]


def make_pairs_run(run_dir: str | Path, pairs: Sequence[dict] | None = None,
                   thresholds: PairQCThresholds | None = None) -> Path:
    pairs = list(pairs) if pairs is not None else make_pairs()
    summary = compute_pair_qc(pairs, n_instructions=len({p["instruction"] for p in pairs}), drop_reasons={},
                              thresholds=thresholds or PairQCThresholds())
    write_pairs_run(run_dir, pairs, [], summary, config={"test": True}, load_provenance={"loader_version": "test"})
    return Path(run_dir)
