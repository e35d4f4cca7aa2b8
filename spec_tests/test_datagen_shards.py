"""DG-05: shards of a scale run, each with its own manifest, joined by a merge that
re-deduplicates, recomputes QC over the union and leaves the shards as they were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.config import load_config
from cai_bootstrap.datagen.merge import MergeError, merge_shards
from cai_bootstrap.dedup import normalize
from cai_bootstrap.io_utils import read_jsonl, sha256_file
from cai_bootstrap.provenance import InputIntegrityError, verify_inputs
from spec_tests.datagen_support import flowing_lm, small_config
from spec_tests.scripted_lm import ScriptedLM

# Written first in every list of both shards: a duplicate only the merge can see.
CANARY = "Write a limerick about a forgetful lighthouse keeper."


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    lm, model_dir, mid = flowing_lm(tmp_path_factory)
    root = tmp_path_factory.mktemp("shards")
    dirs = []
    for i in range(2):
        cfg = small_config(root / f"shard-{i}", model_dir, mode="scale", shard=f"{i}/2", target=8,
                           **{"critic.threshold": mid})
        P.run_generation(cfg, lm=ScriptedLM(lm, canary=CANARY))
        dirs.append(root / f"shard-{i}")
    before = {d.name: _tree_hashes(d) for d in dirs}
    merged = root / "merged"
    summary = merge_shards(dirs, merged)
    return {"dirs": dirs, "before": before, "merged": merged, "summary": summary, "root": root}


@pytest.mark.spec("DG-05")
@pytest.mark.parametrize("target, n", [(7, 2), (8, 3), (1, 4), (100, 7)])
def test_shard_targets_split_the_total(target, n):
    shares = [load_config(None, mode="scale", shard=f"{i}/{n}", target=target).shard_target() for i in range(n)]
    assert sum(shares) == target and max(shares) - min(shares) <= 1


@pytest.mark.spec("DG-05")
def test_shards_draw_disjoint_prompt_indices_and_keep_their_own_manifest(shards):
    indices = []
    for i, d in enumerate(shards["dirs"]):
        rows = read_jsonl(d / P.WORK / P.RAW_INSTRUCTIONS)
        idx = {r["prompt_index"] for r in rows}
        assert all(k % 2 == i for k in idx)
        indices.append(idx)
        manifest = json.loads((d / P.SESSION_MANIFEST).read_text())
        assert manifest["config"]["shard"] == f"{i}/2" and manifest["config"]["seed"] == 0
        verify_inputs(d / P.SESSION_MANIFEST, required=[P.DATASET, P.REJECTS, P.QC_SUMMARY])
        assert json.loads((d / P.QC_SUMMARY).read_text())["run"]["shard"] == f"{i}/2"
    assert not indices[0] & indices[1]
    ids = [{v["id"] for v in read_jsonl(d / P.WORK / P.INSTRUCTION_VERDICTS)} for d in shards["dirs"]]
    assert not ids[0] & ids[1]


@pytest.mark.spec("DG-05")
def test_merge_removes_cross_shard_duplicates_and_recomputes_qc_over_the_union(shards):
    merged, summary = shards["merged"], shards["summary"]
    rejects = read_jsonl(merged / P.REJECTS)
    cross = [r for r in rejects if r["reason"] == P.REASON_CROSS_SHARD_DUP]
    assert CANARY in {r["instruction"] for r in cross}
    dataset = read_jsonl(merged / P.DATASET)
    assert len({normalize(r["instruction"]) for r in dataset}) == len(dataset)

    dropped = {r["id"] for r in cross}
    verdicts = [v for d in shards["dirs"] for v in read_jsonl(d / P.WORK / P.INSTRUCTION_VERDICTS)]
    responses = [r for d in shards["dirs"] for r in read_jsonl(d / P.WORK / P.RESPONSES)]
    assert summary["acceptance"]["instructions_judged"] == len(verdicts) - len(dropped)
    assert summary["counts"]["generated"] == len([r for r in responses if r["id"] not in dropped])
    assert summary["counts"]["kept"] == len(dataset)
    shard_records = [r for d in shards["dirs"] for r in read_jsonl(d / P.DATASET)]
    assert len(dataset) == len([r for r in shard_records if r["metadata"]["record_id"] not in dropped])
    assert json.loads((merged / P.QC_SUMMARY).read_text()) == summary
    assert summary["run"]["mode"] == "merge" and summary["run"]["shards"] == ["0/2", "1/2"]
    # Merged records keep the provenance of the shard that made them (DG-08 carries through).
    assert {r["metadata"]["shard"] for r in dataset} <= {"0/2", "1/2"}


@pytest.mark.spec("DG-05", "PV-05")
def test_merge_keeps_the_shards_unchanged_and_pins_them_as_inputs(shards):
    for d in shards["dirs"]:
        assert _tree_hashes(d) == shards["before"][d.name]
    manifest = json.loads((shards["merged"] / P.SESSION_MANIFEST).read_text())
    assert [i["sha256"] for i in manifest["inputs"]] == [sha256_file(d / P.SESSION_MANIFEST) for d in shards["dirs"]]
    verify_inputs(shards["merged"] / P.SESSION_MANIFEST, required=[P.DATASET, P.REJECTS, P.QC_SUMMARY])


@pytest.mark.spec("DG-05")
def test_merge_order_of_arguments_does_not_change_the_result(shards, tmp_path):
    merge_shards(list(reversed(shards["dirs"])), tmp_path / "merged")
    for name in (P.DATASET, P.REJECTS):
        assert read_jsonl(tmp_path / "merged" / name) == read_jsonl(shards["merged"] / name)


@pytest.mark.spec("DG-05", "PV-05")
@pytest.mark.parametrize("victim", [P.DATASET, f"{P.WORK}/{P.RESPONSES}"])
def test_merge_refuses_a_shard_changed_after_its_manifest(shards, tmp_path, victim):
    copy = tmp_path / "shard-1"
    shutil.copytree(shards["dirs"][1], copy)
    with open(copy / victim, "a", encoding="utf-8") as f:
        f.write("\n")
    with pytest.raises(InputIntegrityError, match=victim.split("/")[-1]):
        merge_shards([shards["dirs"][0], copy], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.spec("DG-05")
def test_merge_refuses_shards_of_different_runs_and_repeated_shards(shards, tmp_path):
    copy = tmp_path / "shard-1"
    shutil.copytree(shards["dirs"][1], copy)
    manifest_path = copy / P.SESSION_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["seed"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MergeError, match=r"differ in \['seed'\]"):
        merge_shards([shards["dirs"][0], copy], tmp_path / "m1")
    with pytest.raises(MergeError, match="given twice"):
        merge_shards([shards["dirs"][0], shards["dirs"][0]], tmp_path / "m2")
    with pytest.raises(MergeError, match="new directory"):
        merge_shards(shards["dirs"], shards["dirs"][0])


@pytest.mark.spec("DG-05")
def test_merge_command(shards, tmp_path, capsys):
    from cai_bootstrap.cli import main

    rc = main(["merge", *map(str, shards["dirs"]), "--out", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert rc == (0 if shards["summary"]["thresholds_passed"] else 1)
    assert json.loads(out[out.index("{"):])["kept"] == shards["summary"]["counts"]["kept"]


@pytest.mark.spec("DG-05")
def test_each_shard_defaults_to_its_own_directory():
    dirs = {str(load_config(None, mode="scale", shard=f"{i}/3").out_dir) for i in range(3)}
    assert dirs == {os.path.abspath(f"runs/stage1/shard-{i}-of-3") for i in range(3)}
    assert str(load_config(None, mode="scale", shard="1/3", out_dir="elsewhere").out_dir) == os.path.abspath("elsewhere")


@pytest.mark.spec("DG-05", "SFT-06")
def test_merge_drops_instructions_that_repeat_an_eval_item(tmp_path_factory):
    """Found on the GPU run: a generated instruction repeated an eval item, and training refused the
    whole merged dataset. The merge takes the eval set as a blocklist, so the leak leaves with a reason."""
    from cai_bootstrap.datagen.merge import REASON_EVAL_OVERLAP
    from cai_bootstrap.sft.data_gate import check_no_leakage, load_eval_instructions

    eval_text = next(t for _, t in load_eval_instructions() if 25 < len(t) < 100 and t.startswith("What") and ":" not in t)
    lm, model_dir, mid = flowing_lm(tmp_path_factory)
    root = tmp_path_factory.mktemp("leaky")
    cfg = small_config(root / "shard-0", model_dir, mode="scale", shard="0/1", target=8, **{"critic.threshold": mid})
    P.run_generation(cfg, lm=ScriptedLM(lm, canary=eval_text))
    assert eval_text in {r["instruction"] for r in read_jsonl(root / "shard-0" / P.DATASET)}, "the shard kept the leak"
    merge_shards([root / "shard-0"], root / "merged")
    dropped = [r for r in read_jsonl(root / "merged" / P.REJECTS) if r["reason"] == REASON_EVAL_OVERLAP]
    assert [r["instruction"] for r in dropped] == [eval_text] and dropped[0]["eval_id"]
    check_no_leakage(read_jsonl(root / "merged" / P.DATASET), load_eval_instructions())  # training would accept it


@pytest.mark.spec("DG-05", "OPS-06")
def test_merge_refuses_to_overwrite_a_run_it_did_not_write(shards, tmp_path, capsys):
    """A merge over an existing generation run overwrote its files, and the new manifest vouched for
    the old run's work files. It is refused and left as it was; an earlier merge may be redone."""
    from cai_bootstrap.cli import main

    victim = tmp_path / "shard-copy"
    shutil.copytree(shards["dirs"][1], victim)
    before = _tree_hashes(victim)
    rc = main(["merge", *map(str, shards["dirs"]), "--out", str(victim)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and str(victim) in err[0] and "another --out" in err[0], err
    assert _tree_hashes(victim) == before

    redo = tmp_path / "merged-again"
    shutil.copytree(shards["merged"], redo)
    assert main(["merge", *map(str, shards["dirs"]), "--out", str(redo)]) in (0, 1)
    assert read_jsonl(redo / P.DATASET) == read_jsonl(shards["merged"] / P.DATASET)
