"""Stage-2 preference training (PO-03): gate the pairs, load the Stage-1 model, train, record.

Same order as SFT (:mod:`cai_bootstrap.sft.train`), same helpers: the config is range
checked when read; the pairs pass the SFT data gate with the pairs' files, suite, QC and
schema (:data:`~cai_bootstrap.preference.gate.PAIRS_GATE`) and the SFT-06 leakage check
against the eval set; the Stage-1 run's adapter is checked against its training
manifest; all before any model loads. Device and quantization come from
:func:`cai_bootstrap.sft.train.plan_run` (QLoRA on CUDA, plain LoRA on CPU).

Reference and policy. The reference is the Stage-1 model: base weights through the
clean loader plus the Stage-1 adapter. The policy *continues* that adapter rather than
stacking a fresh one: trl's DPOTrainer, handed a PEFT model whose adapter is trainable,
copies it into a frozen ``ref`` adapter and computes reference log-probs through it, so
policy and reference share one set of base weights (one model in GPU memory, which is
what lets QLoRA fit) and the reference is exactly the Stage-1 model, with no merge of an
adapter into 4-bit weights and the rounding that would bring. At step 0 the policy
equals the reference, as DPO assumes. A fresh adapter on top would need the Stage-1
adapter merged into the base first, which nf4 weights do not allow without changing them.

Labels. Each pair is tokenized by :func:`cai_bootstrap.sft.masking.encode_example` (the
loader's encode path, BOS per profile) into two verified examples that share their prompt
tokens; trl gets them pre-tokenized and does no tokenization of its own. Its collator
marks completions with ``completion_mask``; the labels it trains on are ``input_ids``
where that mask is 0 set to -100, and every batch of the trainer's own dataloader is
re-checked against the verified examples: prompt masked, response tokens and one EOS
trained (SFT-02/03 for both sides of a pair).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cai_bootstrap.io_utils import atomic_write_json
from cai_bootstrap.preference.config import DPORunConfig
from cai_bootstrap.sft.masking import IGNORE_INDEX, MaskingError, TrainingExample, completion_text, encode_example, verify_collated
from cai_bootstrap.sft.train import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    MANIFEST_NAME,
    SUCCESS_MARKER,
    RunPlan,
    TrainingResult,
    TrainingSetupError,
    _write_gate_manifest,
    loss_history,
    plan_run,
    trainer_arguments,
)

GATE_MANIFEST_NAME = "gate_dpo_data.json"
RUN_CONFIG_NAME = "run_config.json"
REFERENCE_ADAPTER = "ref"
SCRIPT_NAME = "cai_bootstrap.preference.train_dpo"


@dataclass(frozen=True)
class PreferenceExample:
    """One pair as token ids: a shared prompt, then each side's response tokens and its EOS."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen: TrainingExample
    rejected: TrainingExample
    pair_id: str = ""

    def row(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "chosen_ids": self.chosen_ids, "rejected_ids": self.rejected_ids}


@dataclass
class EncodedPairs:
    examples: list[PreferenceExample]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> pair ids

    def summary(self) -> dict:
        return {"pairs": len(self.examples), "dropped": {k: len(v) for k, v in sorted(self.dropped.items())},
                "dropped_ids": {k: v[:50] for k, v in sorted(self.dropped.items())},
                "boundary_merges": sum(e.chosen.boundary_merge or e.rejected.boundary_merge for e in self.examples),
                "label_tokens": sum(len(e.chosen_ids) + len(e.rejected_ids) for e in self.examples)}


def split_example(ex: TrainingExample) -> tuple[list[int], list[int]]:
    """(prompt tokens, trained tokens) of a verified example: the split its labels define."""
    return list(ex.input_ids[: ex.response_start]), list(ex.input_ids[ex.response_start :])


def pair_examples(chosen: TrainingExample, rejected: TrainingExample, pair_id: str = "") -> PreferenceExample:
    """Join two verified examples of one prompt; they must agree on every prompt token."""
    p_c, c_ids = split_example(chosen)
    p_r, r_ids = split_example(rejected)
    if p_c != p_r:
        raise MaskingError(f"pair {pair_id}: chosen and rejected tokenize the prompt differently "
                           f"({len(p_c)} vs {len(p_r)} prompt tokens); a response merges with the prompt's last token")
    return PreferenceExample(p_c, c_ids, r_ids, chosen, rejected, pair_id)


def encode_pair(lm, rec: Mapping[str, Any]) -> PreferenceExample:
    """A pair record through the loader's encode path: its stored PR-01 prompt, then ``" " + answer``."""
    prompt = rec["prompt"]
    chosen = encode_example(lm, prompt, completion_text(rec["chosen"]))
    rejected = encode_example(lm, prompt, completion_text(rec["rejected"]))
    return pair_examples(chosen, rejected, str(rec.get("id", "")))


def encode_pairs(lm, records: Sequence[Mapping[str, Any]], max_length: int) -> EncodedPairs:
    """Every pair, or dropped with a reason: a side longer than ``max_length`` is dropped, never truncated."""
    out = EncodedPairs([])
    for rec in records:
        ex = encode_pair(lm, rec)
        if max(len(ex.chosen.input_ids), len(ex.rejected.input_ids)) > max_length:
            out.dropped.setdefault("too_long", []).append(ex.pair_id)
            continue
        out.examples.append(ex)
    if not out.examples:
        raise MaskingError(f"no pair fits max_length {max_length}; raise max_length or check the pairs")
    return out


def labels_from_completion_mask(batch: Mapping[str, Any]):
    """The labels trl's DPO loss uses: input ids, -100 wherever the completion mask is 0."""
    return batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)


def verify_preference_batch(batch: Mapping[str, Any], examples: Iterable[PreferenceExample], pad_id: int) -> int:
    """Each row of a collated DPO batch (chosen rows, then rejected rows) against its verified example."""
    lookup: dict[tuple, TrainingExample] = {}
    # A side's token ids -> the pairs it belongs to (one chosen answer can head several pairs).
    chosen_of: dict[tuple, set[int]] = {}
    rejected_of: dict[tuple, set[int]] = {}
    for k, ex in enumerate(examples):
        lookup[tuple(ex.chosen.input_ids)] = ex.chosen
        lookup[tuple(ex.rejected.input_ids)] = ex.rejected
        chosen_of.setdefault(tuple(ex.chosen.input_ids), set()).add(k)
        rejected_of.setdefault(tuple(ex.rejected.input_ids), set()).add(k)
    if "completion_mask" not in batch:
        raise MaskingError("the collated batch has no completion_mask; the trained positions cannot be told")
    view = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels_from_completion_mask(batch)}
    rows = verify_collated(view, lookup, pad_id)
    # Per-row labels are not enough: a swap of sides (or of rejected rows between pairs) would train
    # toward the worse answer with every row's labels still right.
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    n = ids.shape[0] // 2
    if ids.shape[0] != 2 * n:
        raise MaskingError(f"a DPO batch holds chosen rows then rejected rows; got an odd number of rows ({ids.shape[0]})")
    for i in range(n):
        c, r = tuple(ids[i][mask[i]].tolist()), tuple(ids[i + n][mask[i + n]].tolist())
        if not chosen_of.get(c, set()) & rejected_of.get(r, set()):
            raise MaskingError(f"batch rows {i} and {i + n} are not the chosen and rejected sides of one pair")
    return rows


def verify_trainer_batches(trainer, encoded: EncodedPairs, pad_id: int) -> int:
    return sum(verify_preference_batch(b, encoded.examples, pad_id) for b in trainer.get_train_dataloader())


# -- trainers ------------------------------------------------------------------------------------------


def build_dpo_trainer(model, lm, encoded: EncodedPairs, cfg: DPORunConfig, plan: RunPlan, checkpoint_dir: Path, callbacks=()):
    """trl's DPOTrainer on pre-tokenized pairs; the reference is the frozen copy of the Stage-1 adapter."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes the verified token ids as they are: trl's own tokenization would bypass the clean loader's encode path."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"{dataset_name} dataset must be pre-tokenized; lacks {sorted(missing)}")
            return dataset

    args = DPOConfig(**trainer_arguments(cfg, plan, checkpoint_dir), beta=cfg.beta, loss_type=[cfg.loss_type],
                     precompute_ref_log_probs=False)
    ds = Dataset.from_list([ex.row() for ex in encoded.examples])
    return PretokenizedDPOTrainer(model=model, args=args, train_dataset=ds, processing_class=lm.tokenizer, callbacks=list(callbacks))


def _text_rows(encoded: EncodedPairs, records: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    return [{"prompt": records[ex.pair_id]["prompt"], "chosen": completion_text(records[ex.pair_id]["chosen"]),
             "rejected": completion_text(records[ex.pair_id]["rejected"])} for ex in encoded.examples]


def build_orpo_trainer(model, lm, encoded, cfg, plan, checkpoint_dir, callbacks=(), records=None):
    """trl's ORPOTrainer (reference-free: odds-ratio term weighted by beta, plus the SFT loss on chosen)."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(**trainer_arguments(cfg, plan, checkpoint_dir), beta=cfg.beta, max_completion_length=None)
    return ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_text_rows(encoded, records)),
                       processing_class=lm.tokenizer, callbacks=list(callbacks))


def build_simpo_trainer(model, lm, encoded, cfg, plan, checkpoint_dir, callbacks=(), records=None):
    """trl's CPOTrainer with the SimPO loss (length-normalised, reference-free, target margin simpo_gamma)."""
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**trainer_arguments(cfg, plan, checkpoint_dir), beta=cfg.beta, loss_type="simpo", cpo_alpha=0.0,
                     simpo_gamma=cfg.simpo_gamma, max_completion_length=None)
    return CPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_text_rows(encoded, records)),
                      processing_class=lm.tokenizer, callbacks=list(callbacks))


def build_trainer(method: str, model, lm, encoded, cfg, plan, checkpoint_dir, callbacks=(), records=None):
    """The trainer of ``method``; an unknown name fails with the known ones."""
    if method == "dpo":
        return build_dpo_trainer(model, lm, encoded, cfg, plan, checkpoint_dir, callbacks)
    builders: dict[str, Callable] = {"orpo": build_orpo_trainer, "simpo": build_simpo_trainer}
    if method not in builders:
        raise TrainingSetupError(f"unknown method {method!r}; known: dpo, {', '.join(builders)}")
    return builders[method](model, lm, encoded, cfg, plan, checkpoint_dir, callbacks, records)


# -- the Stage-1 model ----------------------------------------------------------------------------------


def check_sft_run(sft_run: str | Path, base_source: str | Path | None = None) -> dict:
    """The finished Stage-1 run: its success marker, its adapter unchanged since its manifest (PV-05/07), and,
    given ``base_source``, the base weights it was trained on."""
    from cai_bootstrap.integrity import IntegrityError, check_adapter_base
    from cai_bootstrap.provenance import InputIntegrityError, verify_inputs

    run = Path(sft_run)
    if not (run / SUCCESS_MARKER).is_file():
        raise TrainingSetupError(f"{run} is not a finished Stage-1 SFT run (no {SUCCESS_MARKER}); train Stage 1 first "
                                 "(cai-bootstrap train) and pass its output_dir as sft_run")
    try:
        verified = verify_inputs(run / MANIFEST_NAME, required=[f"{ADAPTER_DIR}/adapter_config.json"])
    except (InputIntegrityError, FileNotFoundError, ValueError) as e:
        raise TrainingSetupError(f"Stage-1 adapter refused: {e}") from None
    if base_source is not None:
        try:
            check_adapter_base(run / MANIFEST_NAME, base_source)
        except IntegrityError as e:
            raise TrainingSetupError(f"Stage-1 adapter refused: {e}") from None
    adapter = run / ADAPTER_DIR
    lora = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    return {"run_dir": str(run.resolve()), "adapter_path": str(adapter.resolve()),
            "training_manifest": str((run / MANIFEST_NAME).resolve()),
            "files": {k: _sha(p) for k, p in sorted(verified.items()) if k.startswith(ADAPTER_DIR + "/")},
            "lora": {"r": lora.get("r"), "alpha": lora.get("lora_alpha"), "dropout": lora.get("lora_dropout"),
                     "target_modules": lora.get("target_modules")}}


def load_stage1_policy(source: str, cfg: DPORunConfig, plan: RunPlan, adapter_path: str | Path):
    """Base model through the clean loader, then the Stage-1 adapter, trainable (QLoRA-prepared on CUDA)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    from cai_bootstrap.evaluation.runner import free_model
    from cai_bootstrap.loader import load_base_model

    lm = load_base_model(source, profile=cfg.profile, dtype=plan.dtype, quantization=plan.load_quantization,
                         device=plan.device, run_sentinels=cfg.run_sentinels)
    try:
        if plan.load_quantization == "nf4":
            lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=plan.gradient_checkpointing,
                                                       gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.model = PeftModel.from_pretrained(lm.model, str(adapter_path), is_trainable=True)
    except BaseException:
        free_model(lm)
        raise
    if lm.tokenizer.pad_token_id != lm.pad_token_id:
        lm.tokenizer.pad_token = lm.tokenizer.convert_ids_to_tokens(lm.pad_token_id)
    return lm


def load_dpo_model(base_source: str | Path, dpo_run: str | Path, **load_kwargs: Any):
    """The Stage-2 model for inference: base weights through the clean loader plus the DPO run's adapter.

    The policy continued the Stage-1 adapter (see the module docstring), so the saved
    adapter *replaces* Stage 1's on the same base weights; nothing is stacked or merged.
    The run is checked like a Stage-1 run first: finished, adapter unchanged since its manifest.
    """
    from cai_bootstrap.evaluation.runner import load_trained_model

    return load_trained_model(base_source, check_sft_run(dpo_run)["adapter_path"], **load_kwargs)


# -- the run ---------------------------------------------------------------------------------------------


def _gate_inputs(run_dir: Path) -> dict[str, Path]:
    from cai_bootstrap.preference.run_dir import MANIFEST_FILE
    from cai_bootstrap.preference.schema import PAIR_QC_FILE, PAIRS_FILE

    return {"session_manifest": run_dir / MANIFEST_FILE, "pairs": run_dir / PAIRS_FILE, "pair_qc_summary": run_dir / PAIR_QC_FILE}


def check_before_load(cfg: DPORunConfig, *, device_info: Mapping[str, Any] | None = None, validator=None) -> dict:
    """Everything that can refuse the run without weights: plan, pairs gate, leakage, Stage-1 run, output dir."""
    from cai_bootstrap.preference.gate import PAIRS_GATE
    from cai_bootstrap.sft.data_gate import DataGateError, EvalLeakageError, check_dataset_gate, check_no_leakage, load_eval_instructions
    from cai_bootstrap.sft.preflight import probe_device

    out = Path(cfg.output_dir)
    plan = plan_run(cfg, dict(device_info) if device_info is not None else probe_device())
    if (out / SUCCESS_MARKER).exists() or (out / CHECKPOINT_DIR).is_dir():
        raise TrainingSetupError(f"{out} already holds a (possibly unfinished) run; choose a new output_dir "
                                 "(preference runs do not resume)")
    try:
        gate = check_dataset_gate(cfg.pairs, validator=validator, spec=PAIRS_GATE)
        leakage = check_no_leakage(gate.records, load_eval_instructions(cfg.eval_set), threshold=cfg.near_duplicate_threshold)
    except (DataGateError, EvalLeakageError) as e:
        try:
            rd = Path(cfg.pairs).parent if Path(cfg.pairs).is_file() else Path(cfg.pairs)
            _write_gate_manifest(out, False, {}, str(e), _gate_inputs(rd), {"error": type(e).__name__},
                                 gate="dpo_data", clause="PO-03/SFT-01/SFT-06", name=GATE_MANIFEST_NAME)
        except OSError:
            pass
        raise
    from cai_bootstrap.model_sources import resolve_model

    sft = check_sft_run(cfg.sft_run, resolve_model(cfg.model, profile=cfg.profile).source)
    if cfg.stage1_gate is not None:
        from cai_bootstrap.gates import GateError, read_gate_manifest

        try:
            read_gate_manifest(cfg.stage1_gate)  # recorded in the lineage after training: unreadable is refused now
        except GateError as e:
            raise TrainingSetupError(f"stage1_gate: {e}") from None
    return {"plan": plan, "gate": gate, "leakage": leakage, "sft": sft}


def run_dpo(cfg: DPORunConfig, *, callbacks: Iterable[Any] = (), device_info: Mapping[str, Any] | None = None,
            validator=None, verify_batches: bool = True) -> TrainingResult:
    """One preference run from a validated config; see the module docstring for the order of steps."""
    from cai_bootstrap.model_sources import resolve_model

    t_start = time.time()
    out = Path(cfg.output_dir)
    from cai_bootstrap.run_lock import run_lock
    from cai_bootstrap.safe_paths import publish_dir

    from cai_bootstrap.safe_paths import refuse_overlap, refuse_unknown_entries

    # Before the lock, whose file would otherwise land in an input folder.
    pairs = Path(cfg.pairs).parent if Path(cfg.pairs).is_file() else cfg.pairs  # a run's file stands for its run
    refuse_overlap(out, {"pairs run": pairs, "Stage-1 SFT run": cfg.sft_run, "eval set": cfg.eval_set}, option="output_dir")
    refuse_unknown_entries(out, (SUCCESS_MARKER, MANIFEST_NAME, RUN_CONFIG_NAME, GATE_MANIFEST_NAME, ADAPTER_DIR,
                                 CHECKPOINT_DIR, REFERENCE_ADAPTER), option="output_dir")
    # OPS-06: one writer per output folder, held from the checks to the success marker.
    with run_lock(out, "train-dpo"):
        pre = check_before_load(cfg, device_info=device_info, validator=validator)
        plan, gate, leakage, sft = pre["plan"], pre["gate"], pre["leakage"], pre["sft"]
        out.mkdir(parents=True, exist_ok=True)
        _write_gate_manifest(out, True, {**gate.checks, "leakage": f"no overlap with {leakage['eval_items']} eval items"}, None,
                             _gate_inputs(gate.run_dir), {"data_gate": gate.to_dict(), "leakage": leakage},
                             gate="dpo_data", clause="PO-03/SFT-01/SFT-06", name=GATE_MANIFEST_NAME)
        atomic_write_json(out / RUN_CONFIG_NAME, {"config": json.loads(cfg.model_dump_json())})

        resolved = resolve_model(cfg.model, profile=cfg.profile)
        from transformers import set_seed

        set_seed(cfg.seed)
        lm = load_stage1_policy(resolved.source, cfg, plan, sft["adapter_path"])
        encoded = encode_pairs(lm, gate.records, cfg.max_length)
        by_id = {str(r["id"]): r for r in gate.records}
        trainer = build_trainer(cfg.method, lm.model, lm, encoded, cfg, plan, out / CHECKPOINT_DIR, callbacks, by_id)
        rows = verify_trainer_batches(trainer, encoded, lm.pad_token_id) if (verify_batches and cfg.method == "dpo") else 0

        import torch

        t_train = time.time()
        trainer.train()
        train_seconds = time.time() - t_train
        state = trainer.state
        adapter_dir = out / ADAPTER_DIR
        # Only the policy: the frozen reference copy is the Stage-1 adapter, already on disk.
        with publish_dir(adapter_dir) as tmp:  # a crash leaves no half-written adapter under the real name
            trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
        adapter_files = sorted(p for p in adapter_dir.rglob("*") if p.is_file())
        manifest = _training_manifest(cfg=cfg, plan=plan, out=out, gate=gate, leakage=leakage, sft=sft, lm=lm, encoded=encoded,
                                      adapter_files=adapter_files, state=state, stats={
                                          "global_step": int(state.global_step),
                                          "train_seconds_this_process": round(train_seconds, 3),
                                          "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if plan.cuda else None,
                                          "batch_rows_verified": rows,
                                          "wall_seconds": round(time.time() - t_start, 3)})
        manifest["lineage"] = _lineage(cfg, out, manifest, sft)
        del trainer
        lm.release()

        from cai_bootstrap.provenance import git_info, write_manifest

        manifest_path = write_manifest(out / MANIFEST_NAME, manifest)
        marker = atomic_write_json(out / SUCCESS_MARKER, {
            "adapter_path": str(adapter_dir.resolve()), "git_sha": git_info()["commit"], "git_dirty": git_info()["dirty"],
            "training_manifest": str(manifest_path.resolve()), "global_step": int(state.global_step),
            "finished_at": manifest["created_at"]})
        return TrainingResult(out, adapter_dir, manifest_path, marker, int(state.global_step), manifest)


def _sha(path: Path) -> str:
    from cai_bootstrap.io_utils import sha256_file

    return sha256_file(path)


def _lineage(cfg: DPORunConfig, out: Path, manifest: dict, sft: dict) -> dict:
    """ST-03: the Stage-1 model's lineage, continued by (Stage-1 final gate ->) pairs -> pairs gate -> this adapter."""
    from cai_bootstrap.gates import read_gate_manifest
    from cai_bootstrap.stages.lineage import build_lineage

    sft_manifest = json.loads(Path(sft["training_manifest"]).read_text(encoding="utf-8"))
    # A Stage-1 manifest written before lineage existed still records everything the block needs.
    parent = sft_manifest.get("lineage") or build_lineage(sft_manifest, stage=1, method="sft")
    gates = [(1, read_gate_manifest(cfg.stage1_gate))] if cfg.stage1_gate else []
    gates.append((2, read_gate_manifest(out / GATE_MANIFEST_NAME)))
    return build_lineage(manifest, stage=2, method=cfg.method, gates=gates, parent=parent, started_from=sft["files"])


def _training_manifest(*, cfg, plan, out, gate, leakage, sft, lm, encoded, adapter_files, state, stats) -> dict:
    """PV-03 for a preference run: the pairs, the Stage-1 reference it started from, the objective, the adapter hashes."""
    from cai_bootstrap.provenance import TRAINING_MANIFEST, artifact_manifest, environment, file_entry

    checkpoints = sorted((p for p in (out / CHECKPOINT_DIR).glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[-1]))
    inputs = [{"role": "pairs", **file_entry(gate.dataset_path, out)},
              {"role": "pair_qc_summary", **file_entry(gate.qc_summary_path, out)},
              {"role": "session_manifest", **file_entry(gate.manifest_path, out)},
              {"role": "sft_training_manifest", **file_entry(sft["training_manifest"], out)}]
    hp = {**cfg.hyperparameters(), "lora": {**sft["lora"], "source": "continued from the Stage-1 adapter"}}
    return artifact_manifest(TRAINING_MANIFEST, adapter_files, base_dir=out, inputs=inputs, extra={
        "stage": 2,
        "script_name": SCRIPT_NAME,
        "dataset": {"path": str(gate.dataset_path.resolve()), "sha256": gate.dataset_sha256, "records": len(gate.records),
                    "run_dir": str(gate.run_dir.resolve()), "kind": "preference_pairs"},
        "qc_summary": {"path": str(gate.qc_summary_path.resolve()), "sha256": _sha(gate.qc_summary_path)},
        "session_manifest": {"path": str(gate.manifest_path.resolve()), "sha256": _sha(gate.manifest_path)},
        "hyperparameters": hp,
        "reference_model": {"kind": "stage1_sft" if cfg.uses_reference else "none (reference-free objective)",
                            "base": cfg.model, "adapter": sft if cfg.uses_reference else None,
                            "implementation": f"frozen copy of the Stage-1 adapter ({REFERENCE_ADAPTER!r})" if cfg.uses_reference else None},
        "policy": {"init": "Stage-1 adapter, continued", "adapter": sft["adapter_path"]},
        "quantization": plan.quantization,
        "compute_dtype": "bfloat16" if plan.bf16 else "float32",
        "backend": plan.backend,
        "device": plan.device,
        "adapter_path": ADAPTER_DIR,
        "checkpoints": [p.relative_to(out).as_posix() for p in checkpoints],
        "success_marker": SUCCESS_MARKER,
        "eval_summary": None,
        "model": {"spec": cfg.model, "profile": lm.profile.name},
        "loader_provenance": lm.provenance,
        "data_gate": gate.to_dict(),
        "leakage_check": leakage,
        "masking": {"rule": "prompt masked; response tokens and one EOS trained, both sides of each pair", **encoded.summary()},
        "loss_history": loss_history(state),
        "reward_history": [{k: v for k, v in e.items() if k.startswith("rewards/") or k == "step"} for e in state.log_history
                           if any(k.startswith("rewards/") for k in e)],
        "train_stats": stats,
        "environment": environment(),
    })
