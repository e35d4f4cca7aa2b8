"""Training throughput and peak memory, LoRA against QLoRA, on the real training path.

Choosing between LoRA and QLoRA (and sizing max_length and batch) needs numbers from the
machine at hand: QLoRA trades speed for memory, and how much depends on the GPU and the
model. This runs a few optimizer steps of each mode through the same code the training
command uses (clean loader, label building, LoRA wrap, trl trainer) on synthetic
records, and reports training tokens per second (after a warm-up step, saves excluded)
and peak GPU memory. QLoRA needs CUDA; on a CPU machine only LoRA is measured.

    python -m cai_bootstrap.bench_train --model tiny-random --steps 20 --seq-len 256
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from cai_bootstrap.io_utils import atomic_write_json

DEFAULT_OUT = Path("artifacts") / "bench" / "train.json"
_FILLER = ("the quick brown fox jumps over a lazy dog while seven small birds sing near an old stone bridge").split()


def synthetic_records(n: int, approx_tokens: int, seed: int = 0) -> list[dict]:
    """Plain-text instruction/response pairs of varied length (about ``approx_tokens`` each at most)."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = max(4, int(approx_tokens * rng.uniform(0.4, 0.8)))
        response = " ".join(rng.choice(_FILLER) for _ in range(words)) + "."
        out.append({"instruction": f"Describe scene number {i} in plain words.", "response": response})
    return out


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """(time, tokens seen) at every optimizer step; the first step is warm-up."""

        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), int(getattr(state, "num_input_tokens_seen", 0) or 0)))

    return StepTimer()


def bench_mode(source: str, profile: str | None, mode: str, *, steps: int, seq_len: int, batch: int, seed: int = 0) -> dict:
    """One mode ('lora' or 'qlora'): load, wrap, train ``steps`` steps, measure, free everything."""
    import torch

    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.sft.config import config_from_dict
    from cai_bootstrap.sft.masking import encode_records
    from cai_bootstrap.sft.train import RunPlan, build_trainer, loss_history, wrap_lora

    cuda = torch.cuda.is_available()
    if mode == "qlora" and not cuda:
        return {"mode": mode, "skipped": "QLoRA (4-bit nf4) needs CUDA"}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cfg = config_from_dict({
            "model": source, "dataset": tmp, "output_dir": tmp, "smoke": True, "run_sentinels": False,
            "max_steps": steps, "epochs": 1, "per_device_batch_size": batch, "gradient_accumulation_steps": 1,
            "max_length": seq_len, "save_steps": steps * 10, "save_total_limit": 1, "logging_steps": max(1, steps // 4),
            "seed": seed, "quantization": "nf4" if mode == "qlora" else "none",
        })
        plan = RunPlan(cuda=cuda, device="cuda" if cuda else "cpu", backend="hf",
                       load_quantization="nf4" if mode == "qlora" else None,
                       quantization="nf4" if mode == "qlora" else "none",
                       dtype="bfloat16" if cuda else "float32", bf16=cuda, gradient_checkpointing=cuda)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        lm = load_base_model(source, profile=profile, dtype=plan.dtype, quantization=plan.load_quantization,
                             device=plan.device, run_sentinels=False)
        load_s = time.perf_counter() - t0
        weights_gb = torch.cuda.memory_allocated() / 1024**3 if cuda else None
        encoded = encode_records(lm, synthetic_records(max(64, steps * batch), seq_len, seed), seq_len)
        from transformers import set_seed

        set_seed(seed)
        model = wrap_lora(lm, cfg, plan)
        timer = _step_timer()
        trainer = build_trainer(model, lm, encoded, cfg, plan, Path(tmp) / "ckpt", callbacks=[timer])
        trainer.train()
        marks = timer.marks
        (t_a, k_a), (t_b, k_b) = (marks[0], marks[-1]) if len(marks) > 1 else ((t0, 0), marks[-1])
        result = {
            "mode": mode,
            "quantization": plan.quantization,
            "compute_dtype": plan.dtype,
            "steps": len(marks),
            "batch": batch,
            "max_length": seq_len,
            "load_seconds": round(load_s, 2),
            "tokens_per_second": round((k_b - k_a) / (t_b - t_a), 1) if t_b > t_a else None,
            "seconds_per_step": round((t_b - t_a) / max(1, len(marks) - 1), 4),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
            "weights_gpu_memory_gb": round(weights_gb, 3) if weights_gb is not None else None,
            "final_loss": (loss_history(trainer.state) or [{}])[-1].get("loss"),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        del trainer, model
        lm.release()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return result


def bench_training(model: str = "tiny-random", *, modes: Sequence[str] = ("lora", "qlora"), steps: int = 20,
                   seq_len: int = 256, batch: int = 2, seed: int = 0, profile: str | None = None) -> dict:
    """Every mode in turn (never two models resident), with the environment they ran in."""
    from cai_bootstrap.model_sources import resolve_model
    from cai_bootstrap.provenance import environment, git_info, utc_now

    resolved = resolve_model(model, profile=profile)
    results = [bench_mode(resolved.source, profile or resolved.profile, m, steps=steps, seq_len=seq_len, batch=batch, seed=seed)
               for m in modes]
    return {"benchmark": "training", "model": model, "source": resolved.source, "created_at": utc_now(),
            "git_commit": git_info()["commit"], "environment": environment(), "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cai_bootstrap.bench_train", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-random", help="built-in name, folder, .gguf file or hub id")
    p.add_argument("--profile")
    p.add_argument("--modes", default="lora,qlora", help="comma-separated: lora, qlora")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("lora", "qlora")]
    if unknown or not modes:
        p.error(f"unknown modes {unknown}; choose from lora, qlora")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    report = bench_training(args.model, modes=modes, steps=args.steps, seq_len=args.seq_len, batch=args.batch, profile=args.profile)
    atomic_write_json(args.out, report)
    for r in report["results"]:
        print(json.dumps(r))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
