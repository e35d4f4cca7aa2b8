"""OPS-05 (generation): `launch generate` fans the shards of a scale run out as one process
per GPU (CPU processes in CI), reports each shard's exit, and merges; the stage-1 chain
uses the same launcher when asked and several GPUs are visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from cai_bootstrap import launch as L
from cai_bootstrap.datagen import pipeline as P
from cai_bootstrap.datagen.config import load_config
from cai_bootstrap.datagen.merge import merge_shards
from cai_bootstrap.io_utils import read_jsonl
from cai_bootstrap.run_lock import DELEGATE_ENV, run_lock
from cai_bootstrap.stage1 import Chain, Stage1Config, Stage1Error, _scale
from spec_tests.datagen_support import canonical, flowing_lm, passed_pilot_gate, small_settings, without_timestamps
from spec_tests.scripted_lm import ScriptedLM

ROOT = Path(__file__).resolve().parents[1]
CANARY = "Write a limerick about a forgetful lighthouse keeper."


@pytest.mark.spec("OPS-05")
@pytest.mark.parametrize("kwargs, visible, expected", [
    ({"gpus": 2}, None, ["0", "1"]),
    ({"gpus": 2}, "2,3,5", ["2", "3"]),  # the launcher's own CUDA_VISIBLE_DEVICES is respected
    ({"devices": "0, 3"}, None, ["0", "3"]),
    ({"procs": 3}, None, [None, None, None]),
    ({"gpus": 3}, "1,2", "lists 2"),
    ({"devices": "0,0"}, None, "--shards-per-gpu"),  # sharing a GPU is asked for by name
    ({"devices": "a,1"}, None, "GPU indices"),
    ({"gpus": 0}, None, "at least 1"),
    ({}, None, "exactly one"),
    ({"gpus": 2, "procs": 2}, None, "--gpus and --procs"),
    # Several shard processes on one GPU only when asked for, and only for GPUs.
    ({"gpus": 1, "per_gpu": 2}, None, ["0", "0"]),
    ({"devices": "1,3", "per_gpu": 2}, None, ["1", "1", "3", "3"]),
    ({"gpus": 2, "per_gpu": 2}, "4", "lists 1"),
    ({"procs": 2, "per_gpu": 2}, None, "applies to GPUs"),
    ({"gpus": 1, "per_gpu": 0}, None, "at least 1"),
])
def test_devices_one_process_each(kwargs, visible, expected):
    if isinstance(expected, list):
        assert L.parse_devices(**kwargs, visible=visible) == expected
    else:
        with pytest.raises(L.LaunchError, match=expected):
            L.parse_devices(**kwargs, visible=visible)


@pytest.mark.spec("OPS-05")
def test_each_shard_sees_only_its_gpu_and_writes_its_own_directory(tmp_path):
    jobs = L.plan_shards(["--config", "g.yaml"], ["2", "5"], tmp_path, base_env={})
    assert [j.env["CUDA_VISIBLE_DEVICES"] for j in jobs] == ["2", "5"]
    assert [j.argv[-4:] for j in jobs] == [("--shard", "0/2", "--out", str(tmp_path / "shard-0")),
                                           ("--shard", "1/2", "--out", str(tmp_path / "shard-1"))]
    assert all(j.argv[:3] == ("generate", "--config", "g.yaml") and "OMP_NUM_THREADS" not in j.env for j in jobs)
    cpu = L.plan_shards([], [None, None], tmp_path, base_env={}, cpu_count=8)
    assert [(j.env["CUDA_VISIBLE_DEVICES"], j.env["OMP_NUM_THREADS"]) for j in cpu] == [("", "4"), ("", "4")]
    kept = L.plan_shards([], [None, None], tmp_path, base_env={"OMP_NUM_THREADS": "1"}, cpu_count=8)
    assert all("OMP_NUM_THREADS" not in j.env for j in kept)  # the caller's setting stands
    later = L.plan_shards([], ["0", "1"], tmp_path, indices=[4], n_shards=5, base_env={})
    assert [(j.label, j.out_dir.name) for j in later] == [("4/5", "shard-4")]


@pytest.mark.spec("OPS-05")
@pytest.mark.parametrize("args", [["--out", "x"], ["--shard=0/2"], ["--output-dir", "x"]])
def test_per_shard_options_are_the_launchers(args, tmp_path):
    with pytest.raises(L.LaunchError, match="set per shard by the launcher"):
        L.plan_shards(args, ["0", "1"], tmp_path)


@pytest.mark.spec("OPS-05")
@pytest.mark.parametrize("codes, status", [
    ([0, 0], 0), ([0, 1], 0), ([1, 1], 0),  # 1: the shard finished, its own QC failed; the merge decides
    ([0, 3], 3), ([2, 5], 2), ([-9, 0], 137), ([0, -15], 143),
])
def test_the_first_failed_shard_decides_the_launch_status(codes, status, tmp_path):
    jobs = L.plan_shards([], [None] * len(codes), tmp_path, base_env={})
    assert L.launch_status([L.ShardOutcome(j, c, 1.0) for j, c in zip(jobs, codes)]) == status


# A stand-in shard program: shard 1 of 2 fails with status 3, shard 0 finishes.
FAKE_SHARD = ("import sys; a = sys.argv[1:]; s = a[a.index('--shard') + 1]; "
              "print('working on', s, flush=True); sys.exit(3 if s == '1/2' else 0)")


@pytest.mark.spec("OPS-05")
def test_a_failed_shard_fails_the_launch_with_its_status_and_nothing_is_merged(tmp_path, monkeypatch, capsys):
    from cai_bootstrap.cli import main

    monkeypatch.setattr(L, "GENERATE_PROGRAM", (sys.executable, "-c", FAKE_SHARD))
    monkeypatch.setattr(L, "validate_generate_args", lambda argv: None)  # the stand-in takes no config
    rc = main(["launch", "generate", "--procs", "2", "--out", str(tmp_path / "run"), "--", "--mode", "scale"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 3
    assert "[shard 0/2] working on 0/2" in out and "[shard 1/2] working on 1/2" in out
    assert "shard 0/2 (CPU): exit 0 finished" in out and "shard 1/2 (CPU): exit 3 FAILED" in out
    assert "Rerun the same command to resume" in captured.err  # a failure is reported where scripts look for it
    assert not (tmp_path / "run" / "merged").exists()


@pytest.mark.spec("OPS-05", "OPS-01")
def test_bad_generate_arguments_fail_before_any_shard_starts(tmp_path, monkeypatch, capsys):
    from cai_bootstrap.cli import main

    def never(*a, **k):
        raise AssertionError("a shard was started")

    monkeypatch.setattr(L, "run_shards", never)
    # A pilot is not sharded: the generate config itself refuses, once, before any process.
    assert main(["launch", "generate", "--procs", "2", "--out", str(tmp_path), "--", "--mode", "pilot"]) == 2
    assert "a pilot is not sharded" in capsys.readouterr().err
    assert main(["launch", "generate", "--procs", "2", "--out", str(tmp_path), "--", "--out", "x"]) == 2
    assert "set per shard by the launcher" in capsys.readouterr().err


@pytest.mark.spec("OPS-05")
def test_dry_run_prints_each_shard_command_and_the_merge(tmp_path, capsys, monkeypatch):
    from cai_bootstrap.cli import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["launch", "generate", "--gpus", "2", "--out", str(tmp_path), "--dry-run", "--",
                 "--mode", "scale", "--target", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0 cai-bootstrap generate --mode scale --target 10 --shard 0/2 --out ")
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=1 ") and "--shard 1/2" in lines[1]
    assert lines[2] == f"cai-bootstrap merge {tmp_path / 'shard-0'} {tmp_path / 'shard-1'} --out {tmp_path / 'merged'}"
    assert not any(tmp_path.iterdir())


@pytest.mark.spec("OPS-05")
def test_shards_per_gpu_puts_several_shard_processes_on_one_gpu(tmp_path, capsys, monkeypatch):
    from cai_bootstrap.cli import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main(["launch", "generate", "--gpus", "1", "--shards-per-gpu", "2", "--out", str(tmp_path), "--dry-run",
                 "--", "--mode", "scale", "--target", "10", "--decode-backend", "static"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:2]] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=0"]
    assert "--shard 0/2" in lines[0] and "--shard 1/2" in lines[1] and "--decode-backend static" in lines[1]
    assert lines[2].startswith("cai-bootstrap merge ")


def _nested(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        cur = out
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    return out


@pytest.mark.spec("OPS-05", "DG-05")
def test_launch_procs_2_runs_both_shards_and_merges_like_a_sequential_run(tmp_path_factory, monkeypatch, capsys):
    """Two real shard processes (scripted generation, real critic on the tiny model) against the
    same two shards run one after another in this process: the merged data must be the same."""
    from cai_bootstrap.cli import main

    lm, model_dir, mid = flowing_lm(tmp_path_factory)
    root = tmp_path_factory.mktemp("launch")
    settings = small_settings(root / "unused", model_dir, mode="scale", target=4,
                              pilot_gate=str(passed_pilot_gate(root)), **{"critic.threshold": float(mid)})
    settings.pop("out_dir")
    gen = root / "gen.yaml"
    gen.write_text(yaml.safe_dump({"generate": _nested(settings)}))

    # Same thread count in the shard processes as here, so the critic's float sums agree bit for bit.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    monkeypatch.setenv("LAUNCH_TEST_CANARY", CANARY)
    monkeypatch.setattr(L, "GENERATE_PROGRAM", (sys.executable, "-m", "spec_tests.launch_worker"))
    rc = main(["launch", "generate", "--procs", "2", "--out", str(root / "par"), "--", "--config", str(gen)])
    out = capsys.readouterr().out
    merged = root / "par" / "merged"
    summary = json.loads((merged / P.QC_SUMMARY).read_text())
    assert rc == (0 if summary["thresholds_passed"] else 1), out
    for i in range(2):
        assert f"[shard {i}/2] shard {i}/2 finished" in out
        assert f"shard {i}/2 (CPU): exit 0 finished" in out
        assert json.loads((root / "par" / f"shard-{i}" / P.SESSION_MANIFEST).read_text())["config"]["shard"] == f"{i}/2"

    seq = root / "seq"
    for i in range(2):
        P.run_generation(load_config(gen, shard=f"{i}/2", out_dir=str(seq / f"shard-{i}")), lm=ScriptedLM(lm, canary=CANARY))
    merge_shards([seq / "shard-0", seq / "shard-1"], seq / "merged")

    dataset = read_jsonl(merged / P.DATASET)
    assert dataset, "the scripted shards should keep some pairs"
    assert canonical(dataset) == canonical(read_jsonl(seq / "merged" / P.DATASET))
    assert canonical(read_jsonl(merged / P.REJECTS)) == canonical(read_jsonl(seq / "merged" / P.REJECTS))
    assert CANARY in {r["instruction"] for r in read_jsonl(merged / P.REJECTS) if r["reason"] == P.REASON_CROSS_SHARD_DUP}
    assert without_timestamps(summary) == without_timestamps(json.loads((seq / "merged" / P.QC_SUMMARY).read_text()))


# -- the run lock lent to shard processes ---------------------------------------------------------

LOCK_CHILD = textwrap.dedent("""\
    import sys
    from cai_bootstrap.run_lock import RunDirectoryInUse, run_lock
    try:
        with run_lock(sys.argv[1], "generate"):
            print("wrote")
    except RunDirectoryInUse as e:
        print("refused:", e)
""")


@pytest.mark.spec("OPS-05", "OPS-06")
def test_a_shard_started_by_the_lock_holder_writes_below_its_directory_and_no_one_else_does(tmp_path):
    from cai_bootstrap.run_lock import delegated_env

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with run_lock(tmp_path / "run", "stage1"):
        lent = delegated_env()
        assert lent[DELEGATE_ENV] == os.path.realpath(tmp_path / "run")
        child = [sys.executable, "-c", LOCK_CHILD, str(tmp_path / "run" / "scale" / "shard-0")]
        ok = subprocess.run(child, env={**env, **lent}, capture_output=True, text=True, timeout=120)
        alone = subprocess.run(child, env=env, capture_output=True, text=True, timeout=120)
        # A grandchild (its parent is not the holder) does not inherit the loan.
        nested = subprocess.run([sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
                                 *child], env={**env, **lent}, capture_output=True, text=True, timeout=120)
    assert ok.stdout.strip() == "wrote", ok.stderr
    assert alone.stdout.startswith("refused:") and "in use by pid" in alone.stdout
    assert nested.stdout.startswith("refused:")


# -- the stage-1 chain ------------------------------------------------------------------------------


def _chain(tmp_path, gpus, launched, codes=None, **cfg):
    def launcher(jobs):
        launched.append(jobs)
        return [L.ShardOutcome(j, (codes or {}).get(j.index, 0), 0.1) for j in jobs]

    calls: list[list[str]] = []
    ch = Chain(Stage1Config(run_dir=tmp_path, scale_shards=3, **cfg), cli=lambda argv: calls.append(argv) or 0,
               launcher=launcher, gpus=lambda: gpus)
    return ch, calls


@pytest.mark.spec("OPS-05", "GT-04")
def test_chain_runs_scale_shards_through_the_launcher_a_device_full_at_a_time(tmp_path):
    launched: list = []
    ch, calls = _chain(tmp_path, ["0", "1"], launched, scale_parallel=True)
    result = _scale(ch)
    assert calls == []  # nothing ran in-process
    assert [[(j.label, j.device) for j in jobs] for jobs in launched] == [[("0/3", "0"), ("1/3", "1")], [("2/3", "0")]]
    assert all(j.out_dir == tmp_path / "scale" / f"shard-{j.index}" and "--pilot-gate" in j.argv for b in launched for j in b)
    assert result.outputs == [tmp_path / "scale" / f"shard-{i}" / "session_manifest.json" for i in range(3)]


@pytest.mark.spec("OPS-05", "GT-04")
@pytest.mark.parametrize("parallel, gpus", [(False, ["0", "1"]), (True, ["0"]), (True, [])])
def test_chain_stays_sequential_by_default_or_without_several_gpus(tmp_path, parallel, gpus):
    launched: list = []
    ch, calls = _chain(tmp_path, gpus, launched, scale_parallel=parallel)
    _scale(ch)
    assert launched == []
    assert [c[c.index("--shard") + 1] for c in calls] == ["0/3", "1/3", "2/3"]


@pytest.mark.spec("OPS-05", "GT-04")
def test_chain_stops_when_a_launched_shard_fails(tmp_path):
    launched: list = []
    ch, _ = _chain(tmp_path, ["0", "1"], launched, codes={1: 2}, scale_parallel=True)
    with pytest.raises(Stage1Error, match=r"shard\(s\) 1/3 exited with 2"):
        _scale(ch)
    assert len(launched) == 1  # the next device-full is not started


@pytest.mark.spec("OPS-05", "OPS-01")
def test_scale_parallel_is_a_typed_field():
    assert Stage1Config().scale_parallel is False
    with pytest.raises(ValueError, match="scale_parallel"):
        Stage1Config(scale_parallel="sometimes")
