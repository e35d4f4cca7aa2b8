"""OPS-01 / OPS-02 / PV-05: every command that writes accepts its paths in the forms users type
them - relative, ``./x``, ``../x``, through a symbolic link - and a run folder still validates and
resumes after it is moved.

A relative run folder once failed every generation run at its manifest, after all the work was
done: the manifest joined a relative path onto the (relative) run folder a second time. Every
earlier test passed absolute temporary paths, so none saw it. Each command here runs from a
working directory of its own, with paths exactly as a user would type them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cai_bootstrap.cli import build_parser, main
from cai_bootstrap.config_io import absolute_path

from spec_tests.preference_support import make_pairs_run
from spec_tests.sft_support import make_generation_run

FORMS = ("relative", "dot", "dotdot", "symlink")


def typed(form: str, name: str) -> str:
    """``name`` written the way ``form`` types it, from the working directory ``cwd`` (see ``workspace``)."""
    return {"relative": f"runs/{name}", "dot": f"./runs/{name}", "dotdot": f"../elsewhere/{name}",
            "symlink": f"link/{name}"}[form]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """tmp/cwd is the working directory; ``../elsewhere`` and ``link -> tmp/real`` exist beside it."""
    cwd = tmp_path / "cwd"
    (cwd / "runs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "real").mkdir()
    (cwd / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CAI_BOOTSTRAP_CACHE", str(tmp_path / "cache"))
    small = cwd / "small.yaml"  # short generations: the paths are under test here, not the lengths
    small.write_text("generate:\n  quiet: true\n  instructions: {max_new_tokens: 12, batch_size: 4}\n"
                     "  responses: {max_new_tokens: 8, batch_size: 4}\n")
    return cwd


@pytest.fixture
def shard(tmp_path_factory):
    """Makes a finished scale shard at a path as typed: the generation pipeline, run on the tiny model
    through a scripted stand-in that writes instructions, so the shard holds data to merge."""
    from cai_bootstrap.datagen import pipeline as P
    from spec_tests.datagen_support import flowing_lm, small_config
    from spec_tests.scripted_lm import ScriptedLM

    lm, model_dir, mid = flowing_lm(tmp_path_factory)

    def make(path: str, index: int, of: int) -> None:
        cfg = small_config(path, model_dir, mode="scale", shard=f"{index}/{of}", target=4, **{"critic.threshold": mid})
        P.run_generation(cfg, lm=ScriptedLM(lm))

    return make


def _manifest_paths_stay_inside(run: str) -> None:
    m = json.loads((Path(run) / "session_manifest.json").read_text())
    for entry in m["generated_artifacts"]:
        assert not Path(entry["path"]).is_absolute(), entry
        assert (Path(run) / entry["path"]).is_file(), entry


@pytest.mark.spec("OPS-01", "OPS-02", "PV-05")
@pytest.mark.parametrize("form", FORMS)
def test_every_writing_command_takes_the_path_as_typed(form, workspace, shard, capsys):
    p = lambda name: typed(form, name)  # noqa: E731

    # generate (pilot) and its gate: the tiny random model cannot pass QC, so the gate says no (exit 1).
    assert main(["generate", "--config", "small.yaml", "--model", "tiny-random", "--mode", "pilot",
                 "--target", "2", "--out", p("pilot")]) in (0, 1), capsys.readouterr().err
    _manifest_paths_stay_inside(p("pilot"))
    capsys.readouterr()
    assert main(["validate", p("pilot")]) in (0, 1)  # 0 when the random model kept a row
    assert "[manifest_hashes] 0 row(s), 1 expectation(s)" in capsys.readouterr().out
    assert main(["gate", "pilot", p("pilot")]) == 1
    assert (Path(p("pilot")) / "pilot_gate.json").is_file()

    # merge of two shards, the data gate over the union, validate
    shard(p("s0"), 0, 2)
    shard(p("s1"), 1, 2)
    # (QC over the union of two scripted shards may fail its thresholds: exit 1, artifacts written.)
    assert main(["merge", p("s0"), p("s1"), "--out", p("merged")]) in (0, 1), capsys.readouterr().err
    _manifest_paths_stay_inside(p("merged"))
    assert main(["gate", "scale", p("merged")]) in (0, 1)
    assert (Path(p("merged")) / "scale_gate.json").is_file()
    capsys.readouterr()
    assert main(["validate", p("merged")]) in (0, 1)
    assert "[manifest_hashes] 0 row(s), 1 expectation(s)" in capsys.readouterr().out

    # train (on a run that passed QC), evaluate (paired and base-only), the final and gap gates
    make_generation_run(p("data"))
    assert main(["train", "--dataset", p("data"), "--model", "tiny-random", "--out", p("sft"), "--smoke",
                 "--max-steps", "1"]) == 0, capsys.readouterr().err
    assert main(["evaluate", "--model", "tiny-random", "--adapter", p("sft") + "/adapter", "--limit", "2",
                 "--max-new-tokens", "4", "--bootstrap-samples", "50", "--out", p("eval"), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert main(["gate", "final", "--eval", p("eval")]) in (0, 1), capsys.readouterr().err
    assert (Path(p("eval")) / "gate_final.json").is_file()
    assert main(["evaluate", "--model", "tiny-random", "--base-only", "--mode", "both", "--limit", "2",
                 "--max-new-tokens", "4", "--bootstrap-samples", "50", "--out", p("gap"), "--quiet"]) == 0
    assert main(["gate", "gap", "--eval", p("gap")]) in (0, 1)
    assert (Path(p("gap")) / "gate_gap.json").is_file()

    # preference pairs and DPO on top of the SFT run
    Path(p("instructions.jsonl")).write_text(
        '{"id": "i0", "instruction": "Name a colour of the sky at night."}\n'
        '{"id": "i1", "instruction": "Write one word that means happy."}\n')
    pairs_cfg = Path("pairs.yaml")
    pairs_cfg.write_text(f"model: tiny-random\nsft_run: {p('sft')}\nstage1_data: {p('data')}\n"
                         f"instructions: {p('instructions.jsonl')}\nout_dir: {p('pairs')}\nk: 2\nmax_new_tokens: 6\n"
                         "batch_size: 4\nqc: {min_pairs: 1}\n")
    assert main(["pairs", "--config", str(pairs_cfg)]) in (0, 1), capsys.readouterr().err
    assert (Path(p("pairs")) / "session_manifest.json").is_file()
    make_pairs_run(p("fixed-pairs"))
    assert main(["train-dpo", "--model", "tiny-random", "--sft-run", p("sft"), "--pairs", p("fixed-pairs"),
                 "--out", p("dpo"), "--smoke", "--max-steps", "1"]) == 0, capsys.readouterr().err
    assert (Path(p("dpo")) / "adapter").is_dir()

    # the launcher hands its shards absolute folders, whatever the current directory of a child
    assert main(["launch", "generate", "--procs", "2", "--out", p("launch"), "--dry-run", "--", "--model",
                 "tiny-random", "--mode", "scale", "--target", "2", "--pilot-gate", p("pilot") + "/pilot_gate.json"]) == 0
    printed = capsys.readouterr().out
    want = str(absolute_path(p("launch")))
    assert f"--out {want}/shard-0" in printed and f"--out {want}/merged" in printed, printed


@pytest.mark.spec("OPS-02", "PV-05")
def test_a_moved_run_folder_still_validates_and_feeds_the_next_phase(workspace, shard, capsys):
    shard("runs/s0", 0, 1)
    assert main(["merge", "runs/s0", "--out", "runs/merged"]) in (0, 1)
    os.rename("runs/merged", "moved")
    capsys.readouterr()
    assert main(["validate", "moved"]) in (0, 1)
    assert "OK    moved/session_manifest.json [manifest_hashes]" in capsys.readouterr().out
    assert main(["gate", "scale", "moved"]) in (0, 1)
    assert (Path("moved") / "scale_gate.json").is_file()
    make_generation_run("runs/data")
    os.rename("runs/data", "data-moved")
    assert main(["train", "--dataset", "data-moved", "--model", "tiny-random", "--out", "sft", "--smoke", "--max-steps", "1",
                 "--check"]) == 0, capsys.readouterr().err


@pytest.mark.spec("OPS-01")
@pytest.mark.parametrize("form", FORMS)
def test_config_paths_are_absolute_once_loaded(form, workspace):
    """Every config field naming a file or folder, in every typed config, is absolute after loading."""
    from cai_bootstrap.datagen.config import load_config
    from cai_bootstrap.preference.config import config_from_dict as dpo_config
    from cai_bootstrap.preference.pairs_config import PairsConfig
    from cai_bootstrap.sft.config import config_from_dict as sft_config
    from cai_bootstrap.stage1 import Stage1Config
    from cai_bootstrap.stages.stage2 import Stage2Config

    want = lambda name: Path(os.path.realpath(typed(form, name)))  # noqa: E731
    got = load_config(None, out_dir=typed(form, "pilot"), pilot_gate=typed(form, "g.json"))
    assert (got.out_dir, got.pilot_gate) == (want("pilot"), want("g.json"))
    assert load_config(None).out_dir == Path(os.path.realpath("runs/stage1/pilot"))  # the default too
    assert load_config(None, mode="scale", shard="1/2").out_dir == Path(os.path.realpath("runs/stage1/shard-1-of-2"))
    s = sft_config({"model": "tiny-random", "dataset": typed(form, "d"), "output_dir": typed(form, "o"),
                    "eval_set": typed(form, "e.jsonl"), "smoke": True})
    assert (s.dataset, s.output_dir, s.eval_set) == (want("d"), want("o"), want("e.jsonl"))
    d = dpo_config({"model": "tiny-random", "sft_run": typed(form, "sft"), "pairs": typed(form, "pairs"),
                    "output_dir": typed(form, "dpo"), "smoke": True})
    assert (d.sft_run, d.pairs, d.output_dir) == (want("sft"), want("pairs"), want("dpo"))
    pc = PairsConfig(model="m", sft_run=typed(form, "sft"), stage1_data=typed(form, "m"),
                     instructions=typed(form, "i.jsonl"), out_dir=typed(form, "p"))
    assert (pc.sft_run, pc.stage1_data, pc.instructions, pc.out_dir) == (want("sft"), want("m"), want("i.jsonl"), want("p"))
    assert Stage1Config(run_dir=typed(form, "s1")).run_dir == want("s1")
    assert Stage1Config().run_dir == Path(os.path.realpath("runs/stage1"))
    assert Stage2Config().run_dir.is_absolute() and Stage2Config().stage1_gate.is_absolute()


@pytest.mark.spec("OPS-01")
def test_every_path_option_of_every_command_is_made_absolute(workspace):
    """A table over the command line: each option naming a file or folder comes out absolute."""
    rows = [
        (["generate", "--out", "x", "--pilot-gate", "g.json"], ["out_dir", "pilot_gate"]),
        (["merge", "a", "./b", "--out", "../m"], ["shards", "out"]),
        (["gate", "pilot", "r", "--out", "o.json"], ["run_dir", "out"]),
        (["gate", "scale", "r"], ["run_dir"]),
        (["gate", "final", "--eval", "e", "--out", "o.json"], ["eval_dir", "out"]),
        (["gate", "gap", "--eval", "e", "--out", "o.json"], ["eval_dir", "out"]),
        (["train", "--dataset", "d", "--out", "o", "--eval-set", "e.jsonl"], ["dataset", "output_dir", "eval_set"]),
        (["train-dpo", "--pairs", "p", "--sft-run", "s", "--out", "o", "--eval-set", "e"],
         ["pairs", "sft_run", "output_dir", "eval_set"]),
        (["pairs", "--sft-run", "s", "--stage1-data", "d", "--instructions", "i", "--out", "o", "--eval-set", "e"],
         ["sft_run", "stage1_data", "instructions", "out_dir", "eval_set"]),
        (["evaluate", "--model", "m", "--adapter", "a", "--eval-set", "e", "--out", "o"], ["adapter", "eval_set", "out"]),
        (["launch", "generate", "--procs", "1", "--out", "o", "--merge-out", "m"], ["out", "merge_out"]),
        (["tiny-model", "t"], ["out_dir"]),
    ]
    for argv, names in rows:
        args = build_parser().parse_args(argv)
        for name in names:
            values = getattr(args, name)
            for v in values if isinstance(values, list) else [values]:
                assert os.path.isabs(v), (argv, name, v)
