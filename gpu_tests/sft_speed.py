"""Where SFT time goes on the GPU: trl's SFTTrainer on a Gemma-3-270m-shaped model, several settings.

The weights are random (the shape, not the values, sets the speed), so this needs no model
download or conversion; the trainer arguments are the ones ``sft.train.build_trainer``
passes. Each setting trains a fixed number of optimizer steps of 16 examples on short
records like the Stage-1 data (instruction + short answer, 20-90 tokens) and reports
seconds per optimizer step after two warm-up steps; one setting is also run under the
torch profiler and its top operators are written out.

    python gpu_tests/sft_speed.py OUT_DIR
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import os

STEPS = int(os.environ.get("SPEED_STEPS", 12))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GEMMA_270M = dict(
    vocab_size=int(os.environ.get("SPEED_VOCAB", 262144)), hidden_size=640, intermediate_size=2048,
    num_hidden_layers=int(os.environ.get("SPEED_LAYERS", 18)), num_attention_heads=4,
    num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512, max_position_embeddings=32768,
    hidden_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=True,
)


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = rng.randint(12, 40)
        r = rng.randint(4, 50)
        ids = [2] + [rng.randint(10, GEMMA_270M["vocab_size"] - 1) for _ in range(p + r)] + [1]
        out.append({"input_ids": ids, "labels": [-100] * (p + 1) + ids[p + 1:]})
    return out


def build(model_cfg, per_device: int, accum: int, gc: bool, steps: int, out: str, fused: bool = True):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**model_cfg)).to(device=DEVICE, dtype=torch.bfloat16 if DEVICE == "cuda" else torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear",
                                             bias="none", task_type="CAUSAL_LM"))
    from tokenizers import Tokenizer, models
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}, unk_token="<unk>")),
                                  pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
    ds = Dataset.from_list(records(per_device * accum * steps))
    args = SFTConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=per_device, gradient_accumulation_steps=accum,
        learning_rate=2e-4, weight_decay=0.01, optim="adamw_torch", lr_scheduler_type="cosine", warmup_steps=0.03,
        max_length=1024, packing=False, completion_only_loss=True, bf16=DEVICE == "cuda", fp16=False, use_cpu=DEVICE != "cuda",
        gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        save_strategy="no", logging_steps=10, seed=0, data_seed=0, report_to="none",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=True, eos_token="<eos>",
    )
    cls = SFTTrainer if fused else PlainLossTrainer()
    return cls(model=model, args=args, train_dataset=ds, processing_class=tok)


def PlainLossTrainer():
    """trl's trainer with the model's own cross-entropy instead of the fused LM head (for comparison)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class Plain(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return Plain


class Marks:
    def __init__(self):
        from transformers import TrainerCallback

        marks = self.marks = []

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())

        self.cb = CB()


def run(setting: dict, steps: int, tmp: str) -> dict:
    m = Marks()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tr = build(GEMMA_270M, setting["per_device"], setting["accum"], setting["gc"], steps, tmp, setting.get("fused", True))
    tr.add_callback(m.cb)
    t0 = time.perf_counter()
    try:
        tr.train()
        ok = None
    except Exception as e:  # a setting that cannot run is a finding too
        ok = f"{type(e).__name__}: {e}"[:300]
    res = dict(setting)
    if len(m.marks) > 3:
        res["s_per_step"] = round((m.marks[-1] - m.marks[2]) / (len(m.marks) - 3), 4)
    res["steps_done"] = len(m.marks)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    res["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None
    res["error"] = ok
    del tr
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    print(json.dumps(res), flush=True)
    return res


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = [
        {"name": "current: 2x8, checkpointing", "per_device": 2, "accum": 8, "gc": True},
        {"name": "2x8, no checkpointing", "per_device": 2, "accum": 8, "gc": False},
        {"name": "16x1, no checkpointing", "per_device": 16, "accum": 1, "gc": False},
        {"name": "16x1, checkpointing", "per_device": 16, "accum": 1, "gc": True},
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in settings:
            results.append(run(s, STEPS, tmp))
        # the per-op picture of the current setting
        from torch.profiler import ProfilerActivity, profile

        tr = build(GEMMA_270M, 2, 8, True, 3, tmp)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])) as prof:
            tr.train()
        (out / "profile_current.txt").write_text(
            prof.key_averages().table(sort_by="cpu_time_total", row_limit=40) + "\n\n"
            + (prof.key_averages().table(sort_by="cuda_time_total", row_limit=25) if DEVICE == "cuda" else ""))
        del tr
        # the same without trl's fused LM head (last: it patches trl's module)
        results.append(run({"name": "2x8, checkpointing, no fused head", "per_device": 2, "accum": 8, "gc": True, "fused": False}, STEPS, tmp))
        results.append(run({"name": "16x1, no checkpointing, no fused head", "per_device": 16, "accum": 1, "gc": False, "fused": False}, STEPS, tmp))
    (out / "sft_speed.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
                                                    "results": results}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
