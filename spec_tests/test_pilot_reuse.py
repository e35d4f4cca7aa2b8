"""DG-06: a single-shard scale run resumes from the pilot's instruction rounds and probe scores
only when they are exactly its own, and ends with the result of a run that recomputed them."""

from __future__ import annotations

import json

import pytest

from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.pilot_reuse import RECORD, fingerprint, why_not
from cai_bootstrap.gates import Check, GateDecision, write_gate_manifest
from cai_bootstrap.io_utils import read_jsonl
from spec_tests.datagen_support import canonical, flowing_lm, small_config
from spec_tests.scripted_lm import ScriptedLM


def _gate(pilot, folder):
    """A passed pilot gate naming the pilot's files, as the data gate writes it."""
    d = GateDecision("pilot_gate", "GT-01", {}, {}, (Check("qc", True, "ok"),))
    return write_gate_manifest(d, folder / "pilot_gate.json", inputs={
        "qc_summary": pilot / P.QC_SUMMARY, "dataset": pilot / P.DATASET, "session_manifest": pilot / P.SESSION_MANIFEST})


@pytest.fixture(scope="module", autouse=True)
def gate_not_decided_again():
    """These pilots are scripted runs made to be reused, not to pass QC; the gate here stands in for a
    passed one, so the scale run's re-derivation of its decision (tested in test_integrity) is off."""
    import cai_bootstrap.gates as G

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(G, "check_decision_matches_inputs", lambda manifest, path: None)
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    lm, model_dir, mid = flowing_lm(tmp_path_factory)
    root = tmp_path_factory.mktemp("reuse")
    common = {"critic.threshold": mid}
    P.run_generation(small_config(root / "pilot", model_dir, mode="pilot", target=6, **common), lm=ScriptedLM(lm))
    gate = _gate(root / "pilot", root)
    out = {"root": root, "gate": gate, "lm": lm, "model_dir": model_dir, "common": common}
    for name in ("reused", "other_batch"):
        extra = {"instructions.batch_size": 3} if name == "other_batch" else {}
        cfg = small_config(root / name, model_dir, mode="scale", target=4, pilot_gate=str(gate), **common, **extra)
        P.run_generation(cfg, lm=ScriptedLM(lm))
    return out


@pytest.mark.spec("DG-06")
def test_scale_run_starts_from_the_pilots_rows_and_ends_as_a_recomputing_run(runs, monkeypatch):
    root = runs["root"]
    record = json.loads((root / "reused" / P.WORK / RECORD).read_text())
    assert record["reasons"] == [] and [c["file"] for c in record["copied"]] == [P.RAW_INSTRUCTIONS, P.CRITIC_PROBES]
    pilot_rows = read_jsonl(root / "pilot" / P.WORK / P.RAW_INSTRUCTIONS)
    assert read_jsonl(root / "reused" / P.WORK / P.RAW_INSTRUCTIONS)[: len(pilot_rows)] == pilot_rows
    manifest = json.loads((root / "reused" / P.SESSION_MANIFEST).read_text())
    assert f"{P.WORK}/{RECORD}" in {a["path"] for a in manifest["generated_artifacts"]}

    # The same scale run with nothing copied computes every row itself and ends with the same dataset.
    from cai_bootstrap.datagen import pilot_reuse

    monkeypatch.setattr(P, "reuse_pilot_work", lambda *a, **k: None)
    cfg = small_config(root / "recomputed", runs["model_dir"], mode="scale", target=4, pilot_gate=str(runs["gate"]),
                       **runs["common"])
    P.run_generation(cfg, lm=ScriptedLM(runs["lm"]))
    assert not (root / "recomputed" / P.WORK / RECORD).exists()
    assert canonical(read_jsonl(root / "recomputed" / P.DATASET)) == canonical(read_jsonl(root / "reused" / P.DATASET))
    assert pilot_reuse.RECORD == RECORD


@pytest.mark.spec("DG-06")
def test_changed_settings_copy_nothing_and_say_why(runs):
    record = json.loads((runs["root"] / "other_batch" / P.WORK / RECORD).read_text())
    assert record["copied"] == [] and any("instructions" in r for r in record["reasons"])


@pytest.mark.spec("DG-06")
@pytest.mark.parametrize("change, weights, expected", [
    ({}, ("w", "w"), []),
    ({"shard": "0/2"}, ("w", "w"), ["shard 0/2"]),
    ({"seed": 1}, ("w", "w"), ["settings differ from the pilot's: seed"]),
    ({"decode_backend": "static"}, ("w", "w"), ["settings differ from the pilot's: decode_backend"]),  # rows may differ
    ({"responses": {"max_new_tokens": 9}, "target": 9, "mode": "scale"}, ("w", "w"), []),  # no instruction row changes
    ({}, ("w", "v"), ["model weights differ"]),
    ({}, (None, None), ["model weights differ"]),
    ({"machine": {"generation": {"sampler": "another"}}}, ("w", "w"), ["code, device or libraries differ from the pilot's: generation"]),
    ({"machine": {"torch": "2.0"}}, ("w", "w"), ["code, device or libraries differ from the pilot's: torch"]),
])
def test_what_must_be_equal(change, weights, expected):
    pilot = {"mode": "pilot", "target": 6, "shard": "0/1", "seed": 0, "instructions": {"batch_size": 2}, "responses": {}}
    pilot_machine = fingerprint({"generation": {"sampler": "top-k-first"}, "device": "cpu"}, {"torch": "2.13"})
    change = dict(change)
    machine = {**pilot_machine, **change.pop("machine", {})}
    reasons = why_not({**pilot, **change}, pilot, *weights, machine, pilot_machine)
    assert len(reasons) == len(expected) and all(r.startswith(e) for r, e in zip(reasons, expected))
