"""Bad input never gives a traceback: one line naming the file or field and the fix, exit 2, nothing left behind.

Table-driven: each row builds its bad input in a fresh folder, runs the command as a
process (the entry point a user types), and checks the exit code, that stderr holds one error line (progress bars
aside) naming what is wrong and no traceback, and that the folder holds exactly the
files it held before (no empty ``work/``, no stray gate file, no ``.partial`` folder).
Every row fails before a model loads, so the table stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

NOT_UTF8 = b"stage1:\n  model: caf\xe9\n"


def _truncate(path: Path, keep: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _model_copy(tmp: Path, model: Path, name: str = "model") -> Path:
    dst = tmp / name
    shutil.copytree(model, dst)
    return dst


def _eval_item(**changes) -> dict:
    from cai_bootstrap.evaluation.evalset import load_eval_set

    return {**load_eval_set(limit=1)[0], **changes}


# -- row builders: (tmp, ctx) -> (argv, text the error line must contain) --------------------------------


def inspect_unknown_name(tmp, ctx):
    return ["inspect-model", "no-such-model"], "no-such-model"


def inspect_builtin_with_broken_cache(tmp, ctx):
    cache = tmp / "cache"
    shutil.copytree(ctx["builtin_cache"], cache)
    ctx["env"]["CAI_BOOTSTRAP_CACHE"] = str(cache)
    [weights] = cache.glob("models/*/model.safetensors")
    _truncate(weights)
    return ["inspect-model", "tiny-random"], "model.safetensors"


def inspect_bad_config(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    (model / "config.json").write_text("{not json")
    return ["inspect-model", str(model)], "config.json"


def inspect_truncated_weights(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    _truncate(model / "model.safetensors")
    return ["inspect-model", str(model)], "model.safetensors"


def inspect_missing_weights(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    (model / "model.safetensors").unlink()
    return ["inspect-model", str(model)], "no weights"


def evaluate_eval_set_is_a_folder(tmp, ctx):
    (tmp / "set").mkdir()
    return (["evaluate", "--model", str(ctx["model"]), "--base-only", "--eval-set", str(tmp / "set"),
             "--out", str(tmp / "eval")], "is a directory")


def evaluate_bad_model_config(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    (model / "config.json").write_text("[]")
    return ["evaluate", "--model", str(model), "--base-only", "--limit", "1", "--out", str(tmp / "eval")], "config.json"


def evaluate_huge_eval_item(tmp, ctx):
    path = tmp / "huge.jsonl"
    path.write_text(json.dumps(_eval_item(instruction="word " * 2_000_000)) + "\n")  # 10 MB
    return (["evaluate", "--model", str(ctx["model"]), "--base-only", "--eval-set", str(path), "--out", str(tmp / "eval")],
            "too long for the model")


def evaluate_eval_set_not_utf8(tmp, ctx):
    path = tmp / "latin1.jsonl"
    item = json.dumps(_eval_item(instruction="Name a caf\u00e9 drink."), ensure_ascii=False)
    path.write_bytes(item.encode("latin-1") + b"\n")
    return (["evaluate", "--model", str(ctx["model"]), "--base-only", "--eval-set", str(path), "--out", str(tmp / "eval")],
            "latin1.jsonl: not UTF-8")


def train_truncated_weights(tmp, ctx):
    from spec_tests.sft_support import make_generation_run

    model = _model_copy(tmp, ctx["model"])
    _truncate(model / "model.safetensors")
    data = make_generation_run(tmp / "data")
    return (["train", "--dataset", str(data), "--model", str(model), "--out", str(tmp / "sft"), "--smoke",
             "--max-steps", "1"], "model.safetensors")


def train_config_is_a_folder(tmp, ctx):
    (tmp / "conf").mkdir()
    return ["train", "--config", str(tmp / "conf"), "--check"], "is a directory"


def generate_config_not_utf8(tmp, ctx):
    path = tmp / "gen.yaml"
    path.write_bytes(b"generate:\n  seed: 1 # caf\xe9\n")
    return ["generate", "--config", str(path), "--model", "tiny-random", "--out", str(tmp / "run")], "gen.yaml: not UTF-8"


def generate_unknown_model(tmp, ctx):
    return ["generate", "--model", "no-such-model", "--mode", "pilot", "--out", str(tmp / "run")], "no-such-model"


def merge_shard_with_empty_dataset(tmp, ctx):
    from cai_bootstrap.provenance import add_generated_artifact, new_session_manifest, write_manifest
    from spec_tests.sft_support import make_generation_run

    shard = make_generation_run(tmp / "shard")
    (shard / "dataset.jsonl").write_text("")
    (shard / "rejects.jsonl").write_text("")
    manifest = new_session_manifest(planned_artifacts=[], extra={"config": {"shard": "0/1"}})
    for name in ("dataset.jsonl", "rejects.jsonl", "qc_summary.json"):
        add_generated_artifact(manifest, shard / name, shard)
    write_manifest(shard / "session_manifest.json", manifest)
    return ["merge", str(shard), "--out", str(tmp / "merged")], "dataset.jsonl holds no records"


def gate_final_out_is_a_folder(tmp, ctx):
    from spec_tests.integrity_support import pin_eval_outputs
    from spec_tests.test_gates_eval import summary

    pin_eval_outputs(tmp / "eval", summary=summary())
    (tmp / "gates").mkdir()
    return ["gate", "final", "--eval", str(tmp / "eval"), "--out", str(tmp / "gates")], "gates is a directory"


def gate_pilot_out_is_a_folder(tmp, ctx):
    from spec_tests.sft_support import make_generation_run

    run = make_generation_run(tmp / "run")
    (tmp / "gates").mkdir()
    return ["gate", "pilot", str(run), "--out", str(tmp / "gates")], "gates is a directory"


def stage1_config_not_utf8(tmp, ctx):
    path = tmp / "stage1.yaml"
    path.write_bytes(NOT_UTF8)
    return ["--config", str(path), "--run-dir", str(tmp / "run")], "stage1.yaml: not UTF-8"


def stage1_run_dir_unwritable(tmp, ctx):
    (tmp / "a-file").write_text("")
    return ["--run-dir", str(tmp / "a-file" / "run"), "--model", "no-such-model"], "a-file is a file"


def stage1_corrupt_phase_manifest(tmp, ctx):
    state = tmp / "run" / "stage1"
    state.mkdir(parents=True)
    (state / "preflight.json").write_text('{"status": "do')
    return ["--run-dir", str(tmp / "run"), "--model", "no-such-model"], "preflight.json is unreadable"


# -- rows found by a sweep of hostile and mistaken inputs ------------------------------------------------------


def inspect_pickle_weights(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 a pickle that would run code when loaded")
    return ["inspect-model", str(model)], "pickle"


def _config_field(tmp, ctx, **fields):
    model = _model_copy(tmp, ctx["model"])
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **fields}))
    return model


def inspect_huge_vocab(tmp, ctx):
    return ["inspect-model", str(_config_field(tmp, ctx, vocab_size=1e12))], "vocab_size"


def inspect_negative_hidden_size(tmp, ctx):
    return ["inspect-model", str(_config_field(tmp, ctx, hidden_size=-8))], "hidden_size"


def inspect_missing_tokenizer(tmp, ctx):
    model = _model_copy(tmp, ctx["model"])
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        if (model / name).exists():
            (model / name).unlink()
    return ["inspect-model", str(model)], "tokenizer"


def tiny_model_under_a_file(tmp, ctx):
    (tmp / "a-file").write_text("")
    return ["tiny-model", str(tmp / "a-file" / "tiny")], "a-file"


def tiny_model_negative_seed(tmp, ctx):
    return ["tiny-model", str(tmp / "tiny"), "--seed", "-1"], "seed"


def evaluate_unknown_dtype(tmp, ctx):
    return ["evaluate", "--model", str(ctx["model"]), "--base-only", "--dtype", "float7", "--out", str(tmp / "eval")], "float7"


def evaluate_unknown_device(tmp, ctx):
    return ["evaluate", "--model", str(ctx["model"]), "--base-only", "--device", "tpu9", "--out", str(tmp / "eval")], "tpu9"


def evaluate_unknown_item_type(tmp, ctx):
    path = tmp / "items.jsonl"
    path.write_text(json.dumps(_eval_item(type="nosuchtype")) + "\n")
    return (["evaluate", "--model", str(ctx["model"]), "--base-only", "--eval-set", str(path), "--out", str(tmp / "eval")],
            "unknown type 'nosuchtype'")


def evaluate_adapter_is_a_file(tmp, ctx):
    (tmp / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return (["evaluate", "--model", str(ctx["model"]), "--adapter", str(tmp / "passwd"), "--out", str(tmp / "eval")],
            "is a file, not an adapter folder")


def generate_seed_true(tmp, ctx):
    (tmp / "gen.yaml").write_text("generate:\n  seed: true\n")
    return ["generate", "--config", str(tmp / "gen.yaml"), "--model", "tiny-random", "--out", str(tmp / "run")], "seed"


def generate_empty_config(tmp, ctx):
    (tmp / "gen.yaml").write_text("# nothing yet\n")
    return ["generate", "--config", str(tmp / "gen.yaml"), "--out", str(tmp / "run")], "is empty"


def generate_alias_bomb(tmp, ctx):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    (tmp / "gen.yaml").write_text("\n".join(lines) + "\n")
    return ["generate", "--config", str(tmp / "gen.yaml"), "--out", str(tmp / "run")], "aliases"


def generate_offline_hub_id(tmp, ctx):
    ctx["env"].update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return ["generate", "--model", "no-org/no-model", "--target", "2", "--out", str(tmp / "run")], "no-org/no-model"


def gate_final_nan_min_lift(tmp, ctx):
    from spec_tests.integrity_support import make_eval_folder

    folder = make_eval_folder(tmp / "eval", {"arithmetic": [(False, True)] * 4})
    return ["gate", "final", "--eval", str(folder), "--min-lift", "nan"], "--min-lift"


def gate_scale_on_a_pilot(tmp, ctx):
    from spec_tests.sft_support import make_generation_run

    run = make_generation_run(tmp / "pilot", run_block={"mode": "pilot", "target": 100})
    return ["gate", "scale", str(run)], "pilot run"


def pairs_dict_id(tmp, ctx):
    from spec_tests.sft_support import make_generation_run

    (tmp / "ins.jsonl").write_text('{"id": {"a": 1}, "instruction": "Name a fruit."}\n')
    data = make_generation_run(tmp / "data")
    return (["pairs", "--model", "tiny-random", "--stage1-data", str(data), "--instructions", str(tmp / "ins.jsonl"),
             "--out", str(tmp / "pairs")], "'id' must be")


def pairs_nan_temperature(tmp, ctx):
    from spec_tests.sft_support import make_generation_run

    (tmp / "ins.jsonl").write_text('{"id": "a", "instruction": "Name a fruit."}\n')
    data = make_generation_run(tmp / "data")
    return (["pairs", "--model", "tiny-random", "--stage1-data", str(data), "--instructions", str(tmp / "ins.jsonl"),
             "--out", str(tmp / "pairs"), "--set", "temperature=.nan"], "temperature")


def launch_without_generate_arguments(tmp, ctx):
    return ["launch", "generate", "--procs", "1", "--out", str(tmp / "launch"), "--", "--shard", "0/2"], "--shard"


def stage1_generate_config_not_a_run_file(tmp, ctx):
    (tmp / "stage1.yaml").write_text("stage1:\n  model: tiny-random\n  generate_config: /etc/passwd\n")
    return ["--config", str(tmp / "stage1.yaml"), "--run-dir", str(tmp / "run")], "generate_config"


CLI = "cai-bootstrap"
STAGE1 = "stage1"
CASES = [
    (CLI, inspect_unknown_name),
    (CLI, inspect_builtin_with_broken_cache),
    (CLI, inspect_bad_config),
    (CLI, inspect_truncated_weights),
    (CLI, inspect_missing_weights),
    (CLI, evaluate_eval_set_is_a_folder),
    (CLI, evaluate_bad_model_config),
    (CLI, evaluate_huge_eval_item),
    (CLI, evaluate_eval_set_not_utf8),
    (CLI, train_truncated_weights),
    (CLI, train_config_is_a_folder),
    (CLI, generate_config_not_utf8),
    (CLI, generate_unknown_model),
    (CLI, merge_shard_with_empty_dataset),
    (CLI, gate_final_out_is_a_folder),
    (CLI, gate_pilot_out_is_a_folder),
    (STAGE1, stage1_config_not_utf8),
    (STAGE1, stage1_run_dir_unwritable),
    (STAGE1, stage1_corrupt_phase_manifest),
    (CLI, inspect_pickle_weights),
    (CLI, inspect_huge_vocab),
    (CLI, inspect_negative_hidden_size),
    (CLI, inspect_missing_tokenizer),
    (CLI, tiny_model_under_a_file),
    (CLI, tiny_model_negative_seed),
    (CLI, evaluate_unknown_dtype),
    (CLI, evaluate_unknown_device),
    (CLI, evaluate_unknown_item_type),
    (CLI, evaluate_adapter_is_a_file),
    (CLI, generate_seed_true),
    (CLI, generate_empty_config),
    (CLI, generate_alias_bomb),
    (CLI, generate_offline_hub_id),
    (CLI, gate_final_nan_min_lift),
    (CLI, gate_scale_on_a_pilot),
    (CLI, pairs_dict_id),
    (CLI, pairs_nan_temperature),
    (CLI, launch_without_generate_arguments),
    (STAGE1, stage1_generate_config_not_a_run_file),
]


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory):
    """A model cache holding the built-in tiny model, copied per row that breaks it."""
    from cai_bootstrap.model_sources import resolve_model

    cache = tmp_path_factory.mktemp("builtin-cache")
    resolve_model("tiny-random", cache=cache)
    return cache


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "") for p in folder.rglob("*")}


# Every row runs as a real process, through the entry point a user types, so what the process
# prints and returns is what is checked.
SUBPROCESS_ROWS = [build for _, build in CASES]


@pytest.mark.spec("PV-07")
@pytest.mark.parametrize("build", SUBPROCESS_ROWS, ids=lambda b: b.__name__)
def test_bad_input_in_a_real_process_gives_one_line_and_exit_2(build, tmp_path, tiny_model_dir, builtin_cache):
    import subprocess
    import sys

    entry = dict((b, e) for e, b in CASES)[build]
    case = tmp_path / "case"
    case.mkdir()
    env = {"CAI_BOOTSTRAP_CACHE": str(tmp_path / "model-cache")}
    argv, named = build(case, {"model": tiny_model_dir, "builtin_cache": builtin_cache, "env": env})
    before = _tree(case)
    src = str(Path(__file__).resolve().parent.parent / "src")
    module = "cai_bootstrap.cli" if entry == CLI else "cai_bootstrap.stage1"
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")})
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith(entry) and named in lines[0], proc.stderr
    assert len(lines[0]) < 2_000, "an error line echoes a bounded part of the input"
    assert _tree(case) == before, "the refused command left files behind"
    assert not any(".partial" in p for p in _tree(tmp_path))
