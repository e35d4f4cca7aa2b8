"""Train the same data with the same SFT settings on backend hf (peft LoRA, or bitsandbytes QLoRA
with ``COMPARE_QUANTIZATION=nf4``) and on backend unsloth, and compare speed, peak memory and loss.

    python gpu_tests/unsloth_compare.py OUT_DIR [--steps 80] [--rows 320]   # on the GPU machine
    python gpu_tests/unsloth_compare.py OUT_DIR --dry-run                   # CPU: tiny model, hf only, 2 steps

Each backend trains in its own subprocess: unsloth patches transformers and trl when it is
imported, so a run in the same process as the hf one would not measure the hf path. The child
for unsloth gets ``UNSLOTH_PYTHONPATH`` prepended to its PYTHONPATH (unsloth_on_device.sh
points it at a site holding unsloth, trl 1.15 and transformers 5.17, which unsloth pins; the
main path keeps trl 1.16 and transformers 5.23). A failed unsloth run is recorded, with the
package, version and error text, and the hf run is still reported.

Why below the data gate: ``run_training`` starts with the data gate, which needs a finished
generation run (session manifest, QC summary, expectation suites). What is compared here is the
trainer, so each child runs the steps of ``run_training`` after the gate with the project's own
functions (``plan_run``, ``resolve_model``, ``load_base_model``, ``encode_records``, ``wrap_lora``,
``build_trainer``, ``verify_trainer_batches``) on a fixed synthetic set; the labels are masked and
verified exactly as in a real run.

Settings: ``sft_default.yaml`` with the Stage-1 GPU overrides (``stage1_gemma_gpu.yaml``: batch
16 x 1, no gradient checkpointing, quantization none) and ``smoke: true`` with ``max_steps`` so
the run fits a few minutes. ``COMPARE_QUANTIZATION=nf4`` compares 4-bit QLoRA instead, for models
that pass the load sentinels in 4 bits (Gemma-3-270m does not: docs/KNOWN_BUGS_AND_FIXES.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

BACKENDS = ("hf", "unsloth")
RESULT_NAME = "unsloth_compare.json"
DEFAULT_STEPS = 80
DEFAULT_ROWS = 320  # 80 steps x 16 rows = 1,280 rows drawn: four passes over the set
LOGGING_STEPS = 5
DRY_RUN_STEPS = 2
GPU_MODEL = "gemma-3-270m"
CPU_MODEL = "tiny-random"
STAGE1_GPU_CONFIG = "src/cai_bootstrap/configs/stage1_gemma_gpu.yaml"
VERSION_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
                    "unsloth", "unsloth_zoo", "triton", "xformers", "torchao")
REPO = Path(__file__).resolve().parents[1]

# -- data -------------------------------------------------------------------------------------------

_TOPICS = ("a sourdough starter", "a bicycle chain", "compound interest", "photosynthesis", "a job interview",
           "a vegetable garden", "binary search", "a rainy weekend", "the water cycle", "a team meeting",
           "a first marathon", "a houseplant", "a budget spreadsheet", "a museum visit", "a lost passport",
           "a tide pool", "a wedding toast", "a leaking tap", "a night sky", "a book club")
_TASKS = (
    ("Explain {t} to a twelve-year-old in three sentences.",
     "Think of {t} as something you can learn step by step. First, notice what it needs to work well. "
     "Then practise a little each day, and you will understand {t} better than most adults."),
    ("Give two practical tips about {t}.",
     "1. Start small: spend ten minutes on {t} before making bigger plans.\n"
     "2. Write down what worked, so the next attempt at {t} goes faster."),
    ("Write a short, friendly note to a neighbour about {t}.",
     "Hi! I wanted to let you know about {t}. If you have a moment this week, I would love to hear "
     "what you think. Thanks, and have a lovely day."),
    ("List three questions a beginner might ask about {t}.",
     "- What is the first thing to know about {t}?\n- How long does it take to get comfortable with {t}?\n"
     "- What mistakes do people usually make with {t}?"),
    ("Summarise why {t} matters, in one sentence.",
     "{T} matters because small, steady attention to it saves time and trouble later."),
)


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """A fixed, plausible instruction/response set: same n and seed, same rows in the same order."""
    if n < 1:
        raise ValueError(f"--rows must be at least 1, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        ask, answer = rng.choice(_TASKS)
        rows.append({"id": f"synthetic-{i:05d}", "instruction": ask.format(t=topic),
                     "response": answer.format(t=topic, T=topic[0].upper() + topic[1:])})
    return rows


# -- settings ---------------------------------------------------------------------------------------


def compare_overrides(backend: str, steps: int, out: Path, *, dry_run: bool, stage1_overrides: dict,
                      quantization: str = "none") -> dict:
    """The SFT config overrides of one arm; the two arms differ in ``backend`` and ``output_dir`` only."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    o = {k: v for k, v in stage1_overrides.items() if k != "quantization"}
    o.update(model=CPU_MODEL if dry_run else GPU_MODEL, dataset=str(out / "unused-dataset"),
             output_dir=str(out / f"run-{backend}"), backend=backend, smoke=True, max_steps=steps,
             logging_steps=1 if dry_run else LOGGING_STEPS, save_steps=10 * steps, save_total_limit=1,
             quantization="none" if dry_run else quantization, device="cpu" if dry_run else "cuda",
             run_sentinels=not dry_run)
    if dry_run:
        o.update(per_device_batch_size=2, gradient_accumulation_steps=1, gradient_checkpointing=False)
    return o


def _stage1_overrides() -> dict:
    from cai_bootstrap.stage1 import load_stage1_config

    return dict(load_stage1_config(REPO / STAGE1_GPU_CONFIG).sft_overrides)


# -- summary (pure) ---------------------------------------------------------------------------------


def summarise(results: dict[str, dict]) -> dict:
    """Per-backend figures side by side, and unsloth relative to hf where both finished."""
    out: dict = {"backends": {}, "comparison": None}
    for name, r in results.items():
        if r.get("status") != "ok":
            out["backends"][name] = {k: r.get(k) for k in ("status", "error", "package", "package_version", "versions")}
            continue
        losses = [e for e in r["loss_history"] if e.get("loss") is not None]
        out["backends"][name] = {
            "status": "ok",
            "tokens_per_second": round(r["tokens"] / r["train_seconds"], 1) if r["train_seconds"] > 0 else None,
            "peak_gpu_memory_gb": r.get("peak_gpu_memory_gb"),
            "train_seconds": r["train_seconds"],
            "wall_seconds": r["wall_seconds"],
            "global_step": r["global_step"],
            "tokens": r["tokens"],
            "loss_history": [{"step": e["step"], "loss": e["loss"]} for e in losses],
            "final_loss": losses[-1]["loss"] if losses else None,
            "versions": r.get("versions"),
        }
    a, b = out["backends"].get("hf", {}), out["backends"].get("unsloth", {})
    if a.get("status") == "ok" and b.get("status") == "ok":
        def ratio(k):
            return round(b[k] / a[k], 3) if a.get(k) and b.get(k) is not None else None

        out["comparison"] = {
            "unsloth_over_hf_tokens_per_second": ratio("tokens_per_second"),
            "unsloth_over_hf_peak_memory": ratio("peak_gpu_memory_gb"),
            "final_loss_difference": (round(b["final_loss"] - a["final_loss"], 4)
                                      if a["final_loss"] is not None and b["final_loss"] is not None else None),
        }
    return out


def versions() -> dict:
    from cai_bootstrap.provenance import dist_version

    return {p: dist_version(p) for p in VERSION_PACKAGES}


def failure_record(exc: BaseException) -> dict:
    """Which package failed (for an import error, the module that was missing), its version, the error."""
    import importlib.metadata as md

    pkg = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    chain = []  # the exception and its causes, innermost last: the project re-raises unsloth's errors as its own
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    frames = [f for e in chain for f in traceback.extract_tb(e.__traceback__)]
    if not pkg:  # the innermost frame inside an installed package names it
        for frame in reversed(frames):
            parts = Path(frame.filename).parts
            if "site-packages" in parts or any(p.startswith("site") for p in parts[:-1]):
                idx = max(i for i, p in enumerate(parts[:-1]) if "site" in p)
                pkg = parts[idx + 1] if idx + 1 < len(parts) - 1 else None
                if pkg:
                    break
    top = (pkg or "").split(".")[0] or None
    try:
        ver = md.version(top) if top else None
    except md.PackageNotFoundError:
        ver = None
    return {"status": "failed", "package": top, "package_version": ver,
            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}


# -- one arm (child process) ------------------------------------------------------------------------


def train_arm(backend: str, steps: int, rows: int, out: Path, dry_run: bool) -> dict:
    t0 = time.time()
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers and trl, which it patches)
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.model_sources import resolve_model
    from cai_bootstrap.sft.config import default_config_path, load_config
    from cai_bootstrap.sft.masking import encode_records
    from cai_bootstrap.sft.preflight import probe_device
    from cai_bootstrap.sft.train import CHECKPOINT_DIR, build_trainer, loss_history, plan_run, verify_trainer_batches, wrap_lora

    import torch
    from transformers import set_seed

    cfg = load_config(default_config_path(), compare_overrides(backend, steps, out, dry_run=dry_run,
                                                               stage1_overrides=_stage1_overrides(),
                                                               quantization=os.environ.get("COMPARE_QUANTIZATION", "none")))
    plan = plan_run(cfg, probe_device())
    resolved = resolve_model(cfg.model, profile=cfg.profile)
    lm = load_base_model(resolved.source, profile=cfg.profile or resolved.profile, dtype=plan.dtype,
                         quantization=plan.load_quantization, device=plan.device, run_sentinels=cfg.run_sentinels)
    encoded = encode_records(lm, synthetic_records(rows, cfg.seed), cfg.max_length)
    set_seed(cfg.seed)
    model = wrap_lora(lm, cfg, plan)
    trainer = build_trainer(model, lm, encoded, cfg, plan, Path(cfg.output_dir) / CHECKPOINT_DIR)
    rows_checked = verify_trainer_batches(trainer, encoded.examples, lm.pad_token_id, max_batches=4)
    if plan.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t_train = time.time()
    trainer.train()
    if plan.cuda:
        torch.cuda.synchronize()
    train_seconds = time.time() - t_train
    state = trainer.state
    return {
        "status": "ok",
        "backend": backend,
        "plan": plan.to_dict(),
        "hyperparameters": cfg.hyperparameters(),
        "model": {"spec": cfg.model, "source": resolved.source, "provenance": lm.provenance},
        "examples": len(encoded.examples),
        "batch_rows_verified": rows_checked,
        "global_step": int(state.global_step),
        "tokens": int(getattr(state, "num_input_tokens_seen", 0) or 0),
        "train_seconds": round(train_seconds, 3),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if plan.cuda else None,
        "loss_history": loss_history(state),
        "wall_seconds": round(time.time() - t0, 3),
        "versions": versions(),
    }


def _child(args) -> int:
    out = Path(args.out)
    try:
        result = train_arm(args.child, args.steps, args.rows, out, args.dry_run)
    except BaseException as e:  # noqa: BLE001  (the parent reports it; a crash here would lose the text)
        result = {**failure_record(e), "backend": args.child, "versions": versions()}
    Path(args.result).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["status"] == "ok" else 1


# -- parent -----------------------------------------------------------------------------------------


def run_arm(backend: str, args, timeout: float | None) -> dict:
    """One backend in a fresh interpreter; whatever happens there comes back as a dict."""
    out = Path(args.out)
    result_file = out / f"arm-{backend}.json"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    extra = os.environ.get("UNSLOTH_PYTHONPATH") if backend == "unsloth" else None
    paths = [p for p in (extra, str(REPO / "src"), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--child", backend, "--result", str(result_file),
           "--steps", str(args.steps), "--rows", str(args.rows)] + (["--dry-run"] if args.dry_run else [])
    log = out / f"arm-{backend}.log"
    try:
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if result_file.is_file():
        return json.loads(result_file.read_text(encoding="utf-8"))
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.is_file() else ""
    return {"status": "failed", "backend": backend, "package": None, "package_version": None,
            "error": f"child exited with {rc} before writing a result", "log_tail": tail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder; unsloth_compare.json is written there")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per backend")
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="synthetic training rows")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, from: " + ", ".join(BACKENDS))
    ap.add_argument("--arm-timeout", type=float, default=None, help="seconds per backend before it counts as failed")
    ap.add_argument("--dry-run", action="store_true", help=f"CPU plumbing check: {CPU_MODEL}, backend hf, {DRY_RUN_STEPS} steps")
    ap.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}")
    if args.dry_run:
        backends, args.steps, args.rows = ["hf"], DRY_RUN_STEPS, min(args.rows, 16)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.child:
        return _child(args)
    results = {b: run_arm(b, args, args.arm_timeout) for b in backends}
    report = {"settings": {"steps": args.steps, "rows": args.rows, "dry_run": args.dry_run,
                           "model": CPU_MODEL if args.dry_run else GPU_MODEL,
                           "logging_steps": 1 if args.dry_run else LOGGING_STEPS},
              **summarise(results), "raw": results}
    text = json.dumps(report, indent=2)
    (Path(args.out) / RESULT_NAME).write_text(text, encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("settings", "backends", "comparison")}, indent=2))
    return 0 if results.get("hf", {}).get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
