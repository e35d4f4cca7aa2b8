"""A Stage-1 SFT run: gate, check, load, label, train, and leave a manifest behind.

The order is the point. Everything that can be checked without weights is checked
before the model loads (config ranges, data gate, eval leakage, preflight), so a bad
run fails in seconds. Labels are built by :mod:`.masking` and every example is
re-verified as it comes out of the trainer's own dataloader and collator, so the
labels the model trains on are exactly the ones the tests check. The trainer is trl's ``SFTTrainer`` fed a pre-tokenized
dataset with explicit labels, which it uses as is.

On CUDA the base model is loaded 4-bit nf4 with bf16 compute through the clean
loader, prepared with ``prepare_model_for_kbit_training`` and wrapped with LoRA
(QLoRA). Without CUDA it falls back to plain LoRA in fp32 and says so in the manifest.

A run is resumable: checkpoints go to ``output_dir/checkpoints``; a rerun with the same
configuration and data continues from the last complete one (a checkpoint cut short by a
crash is removed, see :mod:`.checkpoints`), and a rerun with different ones is
refused rather than silently mixing two runs. Success is ``TRAINING_SUCCESS``, written
last, after the adapter and the training manifest (PV-03).

The same command runs data-parallel under ``accelerate launch`` or torchrun (OPS-05,
:mod:`.distributed`): every process checks the data and trains its share of each batch;
only the main process holds the run lock and writes the run's files.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cai_bootstrap.io_utils import atomic_write_json
from cai_bootstrap.sft.config import SFTRunConfig
from cai_bootstrap.sft.distributed import ProcessLayout, process_layout, trainer_layout
from cai_bootstrap.sft.masking import EncodedDataset, TrainingExample, verify_collated

SUCCESS_MARKER = "TRAINING_SUCCESS"
MANIFEST_NAME = "training_manifest.json"
RUN_CONFIG_NAME = "run_config.json"
GATE_MANIFEST_NAME = "gate_sft_data.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
QUANT_CPU_FALLBACK = "none (cpu fallback)"


class TrainingSetupError(RuntimeError):
    """The run cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class RunPlan:
    """What the configuration means on this machine."""

    cuda: bool
    device: str
    backend: str
    load_quantization: str | None  # passed to the loader
    quantization: str  # recorded: "nf4", "none", or "none (cpu fallback)"
    dtype: str
    bf16: bool
    gradient_checkpointing: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainingResult:
    output_dir: Path
    adapter_dir: Path
    manifest_path: Path
    marker_path: Path
    global_step: int
    manifest: dict = field(repr=False)  # empty on the other processes of a data-parallel run
    main_process: bool = True  # the process that wrote the files (OPS-05)


def plan_run(cfg: SFTRunConfig, info: Mapping[str, Any]) -> RunPlan:
    """Decide device, quantization and backend; refuse impossible combinations before any load."""
    cuda = bool(info.get("cuda_available")) and cfg.device != "cpu"
    if cfg.backend == "unsloth":
        if not cuda:
            raise TrainingSetupError("backend: unsloth needs a CUDA GPU; use backend: hf on this machine")
        if importlib.util.find_spec("unsloth") is None:
            raise TrainingSetupError("backend: unsloth is not installed: pip install 'cai-bootstrap[unsloth]', or use backend: hf")
    if not cuda:
        return RunPlan(
            cuda=False,
            device="cpu",
            backend=cfg.backend,
            load_quantization=None,
            quantization=QUANT_CPU_FALLBACK if cfg.quantization == "nf4" else "none",
            dtype="float32",
            bf16=False,
            gradient_checkpointing=False,
        )
    if cfg.quantization == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingSetupError("quantization: nf4 needs bitsandbytes: pip install 'cai-bootstrap[gpu]' (or quantization: none)")
    return RunPlan(
        cuda=True,
        device="cuda",
        backend=cfg.backend,
        load_quantization="nf4" if cfg.quantization == "nf4" else None,
        quantization=cfg.quantization,
        dtype="bfloat16",
        bf16=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


# -- model ------------------------------------------------------------------------------------------


def wrap_lora(lm, cfg: SFTRunConfig, plan: RunPlan):
    """LoRA on the loaded base model (QLoRA when it was loaded 4-bit)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = lm.model
    if plan.backend == "unsloth":  # unsloth prepares 4-bit models itself
        return _unsloth_lora(model, cfg, plan)
    if plan.load_quantization == "nf4":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _unsloth_lora(model, cfg: SFTRunConfig, plan: RunPlan):
    """Unsloth's LoRA kernels on the model the clean loader produced (loading stays in the loader)."""
    try:
        from unsloth import FastLanguageModel
    except ImportError as e:
        raise TrainingSetupError(f"backend: unsloth failed to import ({e}); use backend: hf") from e
    try:
        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            # As configured: unsloth takes 'all-linear' itself, and None fails inside it ("'NoneType' object is not iterable").
            target_modules=cfg.lora.target_modules,
            bias="none",
            use_gradient_checkpointing="unsloth" if plan.gradient_checkpointing else False,
            random_state=cfg.seed,
            max_seq_length=cfg.max_length,
        )
    except Exception as e:  # unsloth supports a fixed list of architectures
        raise TrainingSetupError(f"backend: unsloth cannot wrap this model ({type(e).__name__}: {e}); use backend: hf") from e


# -- trainer ----------------------------------------------------------------------------------------


def trainer_arguments(cfg, plan: RunPlan, checkpoint_dir: Path) -> dict:
    """The trainer arguments SFT and preference training share: schedule, precision, checkpoints, seeds."""
    return dict(
        output_dir=str(checkpoint_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        optim=cfg.optimizer,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        max_length=cfg.max_length,
        bf16=plan.bf16,
        fp16=False,
        use_cpu=not plan.cuda,
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_num_workers=0,
    )


def build_trainer(model, lm, encoded: EncodedDataset, cfg: SFTRunConfig, plan: RunPlan, checkpoint_dir: Path, callbacks=()):
    """trl's SFTTrainer over pre-tokenized examples whose ``labels`` it uses unchanged."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list([{"input_ids": ex.input_ids, "labels": ex.labels} for ex in encoded.examples])
    args = SFTConfig(
        **trainer_arguments(cfg, plan, checkpoint_dir),
        weight_decay=cfg.weight_decay,
        packing=False,
        completion_only_loss=True,
        save_total_limit=cfg.save_total_limit,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
        # The profile's EOS, so the trainer does not "align" the model to the tokenizer's own
        # default (for Qwen that is the chat end-of-turn token).
        eos_token=lm.tokenizer.convert_ids_to_tokens(lm.eos_token_id),
    )
    if lm.tokenizer.pad_token_id != lm.pad_token_id:
        lm.tokenizer.pad_token = lm.tokenizer.convert_ids_to_tokens(lm.pad_token_id)
    return SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=lm.tokenizer, callbacks=list(callbacks))


def verify_trainer_batches(trainer, examples: Sequence[TrainingExample], pad_id: int, max_batches: int | None = None) -> int:
    """Draw batches from the trainer's own dataloader and check every row against its verified example."""
    lookup = {tuple(ex.input_ids): ex for ex in examples}
    n = 0
    for b, batch in enumerate(trainer.get_train_dataloader()):
        if max_batches is not None and b >= max_batches:
            break
        n += verify_collated(batch, lookup, pad_id)
    return n


# -- run bookkeeping --------------------------------------------------------------------------------


def _fingerprint(cfg: SFTRunConfig, dataset_sha: str, model_source: str, plan: RunPlan, world_size: int = 1) -> dict:
    """What must not change between an interrupted run and its resumption (the process count
    too: it changes the batch the optimizer sees and which rows each step draws)."""
    hp = cfg.hyperparameters(world_size)
    hp.pop("out_of_range", None)
    return {
        "dataset_sha256": dataset_sha,
        "model_source": model_source,
        "profile": cfg.profile,
        "hyperparameters": hp,
        "backend": plan.backend,
        "quantization": plan.quantization,
        "dtype": plan.dtype,
    }


# Everything a training run writes into its output_dir.
OUTPUT_ENTRIES = (SUCCESS_MARKER, MANIFEST_NAME, RUN_CONFIG_NAME, GATE_MANIFEST_NAME, ADAPTER_DIR, CHECKPOINT_DIR)


def check_output_dir(cfg) -> None:
    """output_dir is not the dataset (or inside it, or around it) and holds nothing this command did not write."""
    from cai_bootstrap.safe_paths import refuse_overlap, refuse_unknown_entries

    dataset = Path(cfg.dataset).parent if Path(cfg.dataset).is_file() else cfg.dataset  # a run's file stands for its run
    refuse_overlap(cfg.output_dir, {"dataset": dataset, "eval set": cfg.eval_set}, option="output_dir")
    refuse_unknown_entries(cfg.output_dir, OUTPUT_ENTRIES, option="output_dir")


def _check_resumable(out: Path, fingerprint: dict, *, writer: bool = True) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuse a different run in the same folder.

    Only the ``writer`` (the main process) sets incomplete checkpoints aside; the other ranks
    reach the same answer by reading."""
    import sys

    from cai_bootstrap.safe_paths import refuse_foreign
    from cai_bootstrap.sft.checkpoints import scan_checkpoints

    if (out / SUCCESS_MARKER).exists():
        raise TrainingSetupError(f"{out} already holds a finished run ({SUCCESS_MARKER}); choose a new output_dir")
    ckpt_dir = out / CHECKPOINT_DIR
    last, incomplete = scan_checkpoints(ckpt_dir)
    stored = out / RUN_CONFIG_NAME
    if stored.is_file():
        previous = json.loads(stored.read_text(encoding="utf-8")).get("fingerprint")
        if previous != fingerprint:
            diff = sorted(k for k in set(previous or {}) | set(fingerprint) if (previous or {}).get(k) != fingerprint.get(k))
            raise TrainingSetupError(
                f"{out} holds a run with a different configuration or dataset (differs in: {', '.join(diff)}); "
                "resuming would mix two runs. Use a new output_dir, or restore the original configuration."
            )
    elif last is not None or incomplete:
        raise TrainingSetupError(f"{out} holds checkpoints of unknown origin (no {RUN_CONFIG_NAME}); use a new output_dir")
    else:
        # OPS-06: the adapter and manifest a run writes are replaced only in a folder this project made.
        found = [n for n in (ADAPTER_DIR, MANIFEST_NAME) if (out / n).exists()]
        if found:
            refuse_foreign(out, f"holds {', '.join(found)} but no {RUN_CONFIG_NAME}", option="output_dir")
    # A checkpoint cut short by a crash is this run's own; it would fail every resume (OPS-06).
    # Moved aside, never deleted: a checkpoint judged incomplete by mistake can be put back by hand.
    for folder, why in (incomplete.items() if writer else ()):
        from cai_bootstrap.provenance import utc_now

        aside = folder.with_name(f".{folder.name}.incomplete-{utc_now().replace(':', '')}")
        print(f"train: setting aside incomplete checkpoint {folder} as {aside.name} ({why}); resuming from "
              f"{last.name if last else 'the start'}", file=sys.stderr)
        folder.rename(aside)
    return last


def _write_gate_manifest(out: Path, passed: bool, checks: Mapping[str, str], failure: str | None, inputs: Mapping[str, Path], values: dict,
                         *, gate: str = "sft_data", clause: str = "SFT-01/SFT-06", name: str = GATE_MANIFEST_NAME) -> None:
    """GT-05: the data gate's decision, with the hashes of what it read."""
    from cai_bootstrap.gates import Check, GateDecision, write_gate_manifest

    check_rows = tuple(Check(k, True, v) for k, v in checks.items())
    if failure is not None:
        check_rows += (Check("failed", False, failure),)
    decision = GateDecision(
        gate=gate,
        clause=clause,
        thresholds={"qc": "thresholds_passed must be true", "leakage": "no exact, normalized or ROUGE-L > threshold match"},
        values=values,
        checks=check_rows,
    )
    write_gate_manifest(decision, out / name, inputs={k: v for k, v in inputs.items() if Path(v).is_file()})


def _gate_inputs(run_dir: Path) -> dict[str, Path]:
    from cai_bootstrap.sft.data_gate import DATASET_FILE, MANIFEST_FILE, QC_FILE

    return {"session_manifest": run_dir / MANIFEST_FILE, "dataset": run_dir / DATASET_FILE, "qc_summary": run_dir / QC_FILE}


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


# -- the run ----------------------------------------------------------------------------------------


def run_training(
    cfg: SFTRunConfig,
    *,
    callbacks: Iterable[Any] = (),
    device_info: Mapping[str, Any] | None = None,
    validator=None,
    verify_batches: bool = True,
) -> TrainingResult:
    """One SFT run from a validated config; see the module docstring for the order of steps."""
    import contextlib

    from cai_bootstrap.run_lock import run_lock

    layout = process_layout()
    check_output_dir(cfg)
    # OPS-06: one writer per output directory; in a data-parallel run that is the main process (OPS-05).
    with run_lock(cfg.output_dir, "train") if layout.is_main else contextlib.nullcontext():
        return _run_training(cfg, callbacks=callbacks, device_info=device_info, validator=validator,
                             verify_batches=verify_batches, layout=layout)


def _run_training(cfg: SFTRunConfig, *, callbacks, device_info, validator, verify_batches,
                  layout: ProcessLayout) -> TrainingResult:
    from cai_bootstrap.model_sources import resolve_model
    from cai_bootstrap.sft.data_gate import (
        DataGateError,
        EvalLeakageError,
        check_dataset_gate,
        check_no_leakage,
        load_eval_instructions,
    )
    from cai_bootstrap.sft.preflight import estimate_training_memory_gb, probe_device, read_model_config, run_preflight

    t_start = time.time()
    out = Path(cfg.output_dir)
    info = dict(device_info) if device_info is not None else probe_device(layout.local_rank)
    plan = plan_run(cfg, info)
    if plan.backend == "unsloth":
        import unsloth  # noqa: F401  (must patch transformers before its trainer and model classes are used)

    # Data first: the cheapest failures, and the ones that matter most (SFT-01, SFT-06).
    run_dir = Path(cfg.dataset)
    try:
        gate = check_dataset_gate(run_dir, validator=validator)
        eval_items = load_eval_instructions(cfg.eval_set)
        leakage = check_no_leakage(gate.records, eval_items, threshold=cfg.near_duplicate_threshold)
    except (DataGateError, EvalLeakageError) as e:
        if not layout.is_main:
            raise
        try:
            rd = run_dir.parent if run_dir.is_file() else run_dir
            _write_gate_manifest(out, False, {}, str(e), _gate_inputs(rd), {"error": type(e).__name__})
        except OSError:
            pass  # the refusal itself is what matters; an unwritable output_dir is reported on its own
        raise

    resolved = resolve_model(cfg.model, profile=cfg.profile)
    if Path(resolved.source).is_dir():
        from cai_bootstrap.integrity import check_model_folder

        # Before preflight creates output_dir; missing weights are the loader's to report.
        check_model_folder(resolved.source, require_weights=False)
    model_config = read_model_config(resolved.source)
    estimate = None
    if model_config is not None and plan.cuda:
        estimate = estimate_training_memory_gb(
            model_config,
            quantization=plan.load_quantization or "bf16",
            seq_len=cfg.max_length,
            batch=cfg.per_device_batch_size,
            lora_r=cfg.lora.r,
            gradient_checkpointing=plan.gradient_checkpointing,
        )
    preflight = run_preflight(
        info,
        output_root=out,
        required_gb=estimate["total_gb"] * cfg.memory_headroom if estimate else None,
        estimate=estimate,
        need_bf16=plan.bf16,
        require_cuda=cfg.device == "cuda",
    ).raise_if_failed()

    fingerprint = _fingerprint(cfg, gate.dataset_sha256, resolved.source, plan, layout.world_size)
    resume_from = _check_resumable(out, fingerprint, writer=layout.is_main)
    if layout.is_main:
        _write_gate_manifest(out, True, {**gate.checks, "leakage": f"no overlap with {leakage['eval_items']} eval items"},
                             None, _gate_inputs(gate.run_dir), {"data_gate": gate.to_dict(), "leakage": leakage})
        atomic_write_json(out / RUN_CONFIG_NAME, {"config": json.loads(cfg.model_dump_json()), "fingerprint": fingerprint})

    # Model (through the clean loader only), labels, trainer.
    from cai_bootstrap.loader import load_base_model

    lm = load_base_model(
        resolved.source,
        profile=cfg.profile or resolved.profile,
        dtype=plan.dtype,
        quantization=plan.load_quantization,
        # Each data-parallel process trains on its own GPU (the launcher's LOCAL_RANK).
        device=f"cuda:{layout.local_rank}" if plan.cuda and layout.distributed else plan.device,
        run_sentinels=cfg.run_sentinels,
    )
    from cai_bootstrap.sft.masking import encode_records

    encoded = encode_records(lm, gate.records, cfg.max_length)
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA initialisation is random: same seed, same run
    model = wrap_lora(lm, cfg, plan)
    trainer = build_trainer(model, lm, encoded, cfg, plan, out / CHECKPOINT_DIR, callbacks)
    process_group = trainer_layout(layout, trainer)
    rows_checked = verify_trainer_batches(trainer, encoded.examples, lm.pad_token_id) if verify_batches else 0

    import torch

    if plan.cuda:
        torch.cuda.reset_peak_memory_stats()
    tokens_before = 0
    if resume_from is not None:
        state_file = resume_from / "trainer_state.json"
        if state_file.is_file():
            tokens_before = int(json.loads(state_file.read_text()).get("num_input_tokens_seen", 0) or 0)
    t_train = time.time()
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.time() - t_train
    state = trainer.state
    tokens_this_process = int(getattr(state, "num_input_tokens_seen", 0) or 0) - tokens_before

    if not layout.is_main:  # the main process writes the adapter, manifest and marker
        del trainer, model
        lm.release()
        return TrainingResult(out, out / ADAPTER_DIR, out / MANIFEST_NAME, out / SUCCESS_MARKER, int(state.global_step),
                              {}, main_process=False)
    adapter_dir = out / ADAPTER_DIR
    from cai_bootstrap.safe_paths import publish_dir

    with publish_dir(adapter_dir) as tmp:  # a crash leaves no half-written adapter under the real name
        trainer.model.save_pretrained(str(tmp))
    adapter_files = sorted(p for p in adapter_dir.rglob("*") if p.is_file())

    manifest = _training_manifest(
        cfg=cfg,
        plan=plan,
        out=out,
        gate=gate,
        leakage=leakage,
        lm=lm,
        encoded=encoded,
        preflight=preflight.to_dict(),
        adapter_files=adapter_files,
        state=state,
        resume_from=resume_from,
        distributed={**layout.batch(cfg.per_device_batch_size, cfg.gradient_accumulation_steps), **process_group,
                     "writer": "main process (rank 0)",
                     "batch_rows_verified": "by each process over its own share; train_stats has the main process's count"},
        stats={
            "global_step": int(state.global_step),
            "epochs_completed": float(state.epoch or 0.0),
            "train_seconds_this_process": round(train_seconds, 3),
            "train_runtime_metric": train_output.metrics.get("train_runtime"),
            "tokens_this_process": tokens_this_process,
            "tokens_per_second": round(tokens_this_process / train_seconds, 2) if train_seconds > 0 else None,
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if plan.cuda else None,
            "batch_rows_verified": rows_checked,
            "wall_seconds": round(time.time() - t_start, 3),
        },
    )
    from cai_bootstrap.gates import read_gate_manifest
    from cai_bootstrap.stages.lineage import build_lineage

    # ST-03: base weights -> dataset -> data gate -> adapter, as this manifest records them.
    manifest["lineage"] = build_lineage(manifest, stage=1, method="sft", gates=[(1, read_gate_manifest(out / GATE_MANIFEST_NAME))])
    # Free the weights before returning (EV-07: the next phase loads its own model).
    del trainer, model
    lm.release()

    from cai_bootstrap.provenance import git_info, write_manifest

    manifest_path = write_manifest(out / MANIFEST_NAME, manifest)
    marker = atomic_write_json(
        out / SUCCESS_MARKER,
        {
            "adapter_path": str(adapter_dir.resolve()),
            "git_sha": git_info()["commit"],
            "git_dirty": git_info()["dirty"],
            "training_manifest": str(manifest_path.resolve()),
            "global_step": int(state.global_step),
            "finished_at": manifest["created_at"],
        },
    )
    return TrainingResult(out, adapter_dir, manifest_path, marker, int(state.global_step), manifest)


def _sha(path: Path) -> str:
    from cai_bootstrap.io_utils import sha256_file

    return sha256_file(path)


def loss_history(state) -> list[dict]:
    return [
        {"step": e.get("step"), "epoch": e.get("epoch"), "loss": e["loss"], "learning_rate": e.get("learning_rate")}
        for e in state.log_history
        if "loss" in e
    ]


def _training_manifest(*, cfg, plan, out, gate, leakage, lm, encoded, preflight, adapter_files, state, resume_from,
                       distributed, stats) -> dict:
    """PV-03, plus the hashes of the adapter (PV-05) so evaluation can refuse a changed one."""
    from cai_bootstrap.provenance import TRAINING_MANIFEST, artifact_manifest, environment, file_entry

    ckpt_root = out / CHECKPOINT_DIR
    checkpoints = sorted((p for p in ckpt_root.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    inputs = [
        {"role": "dataset", **file_entry(gate.dataset_path, out)},
        {"role": "qc_summary", **file_entry(gate.qc_summary_path, out)},
        {"role": "session_manifest", **file_entry(gate.manifest_path, out)},
    ]
    hp = cfg.hyperparameters(distributed["world_size"])
    return artifact_manifest(
        TRAINING_MANIFEST,
        adapter_files,
        base_dir=out,
        inputs=inputs,
        extra={
            "dataset": {"path": str(gate.dataset_path.resolve()), "sha256": gate.dataset_sha256,
                        "records": len(gate.records), "run_dir": str(gate.run_dir.resolve())},
            "qc_summary": {"path": str(gate.qc_summary_path.resolve()), "sha256": _sha(gate.qc_summary_path)},
            "session_manifest": {"path": str(gate.manifest_path.resolve()), "sha256": _sha(gate.manifest_path)},
            "hyperparameters": hp,
            "quantization": plan.quantization,
            "compute_dtype": "bfloat16" if plan.bf16 else "float32",
            "backend": plan.backend,
            "device": plan.device,
            "distributed": distributed,
            "adapter_path": _rel(out / ADAPTER_DIR, out),
            "checkpoints": [_rel(p, out) for p in checkpoints],
            "resumed_from": _rel(resume_from, out) if resume_from else None,
            "success_marker": SUCCESS_MARKER,
            "eval_summary": None,
            "model": {"spec": cfg.model, "profile": lm.profile.name},
            "loader_provenance": lm.provenance,
            "data_gate": gate.to_dict(),
            "leakage_check": leakage,
            "masking": {"rule": "straddling boundary token counts as response", **encoded.summary()},
            "preflight": preflight,
            "loss_history": loss_history(state),
            "train_stats": stats,
            "environment": environment(),
        },
    )
