"""Generation throughput of the embedded model on one GPU, per stop matcher, batch size and decode backend.

    python gpu_tests/gen_speed.py OUT_DIR [MODEL] [BACKENDS]

Greedy, evaluation-style: the 400 held-out prompts (PR-01 frame), 96 new tokens, stopping at
the first blank line, in bf16. The reference is the path before any change: transformers'
``StopStringCriteria``, eager decoding, batch 64. Then the token-text stop matcher
(``stopping.py``) and each decode backend (``decode_backends.py``) at batch 64 and 400, with
every row compared token for token with eager decoding at the same batch size (batch size
alone changes the last bits of bf16 logits, so that is the fair comparison). A compiled
backend's first call includes its compilation; it is timed apart from the second, warm call.
Then sampled demonstration-frame responses (the data path) with eager and the fastest
backend. A cProfile of the eager run and a torch-profiler table of the fastest backend's run
show where the host and the GPU time go. Writes ``gen_speed.json``, ``gen_speed_profile.txt``
and ``gen_speed_gpu_profile.txt`` into OUT_DIR.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

from cai_bootstrap import prompts as P
from cai_bootstrap import stopping
from cai_bootstrap.decoding import BLANK_LINE
from cai_bootstrap.evaluation.evalset import load_eval_set
from cai_bootstrap.loader import load_base_model
from cai_bootstrap.model_sources import resolve_model


def timed(lm, texts, **kw) -> tuple[list, dict]:
    torch.cuda.synchronize()
    t = time.time()
    gens = lm.generate(texts, progress=False, **kw)
    torch.cuda.synchronize()
    dt = time.time() - t
    toks = sum(g.n_tokens for g in gens)
    return gens, {"seconds": round(dt, 2), "tokens": toks, "tokens_per_s": round(toks / dt, 1), "rows": len(texts),
                  "hit_limit": sum(g.hit_limit for g in gens)}


def same_rows(a, b) -> int:
    return sum(x.token_ids == y.token_ids for x, y in zip(a, b))


def first_divergence(a, b) -> list[int]:
    """Token position where each differing row first differs (how late a near-tie flipped)."""
    out = []
    for x, y in zip(a, b):
        if x.token_ids != y.token_ids:
            out.append(next((i for i, (p, q) in enumerate(zip(x.token_ids, y.token_ids)) if p != q),
                            min(len(x.token_ids), len(y.token_ids))))
    return out


def main(out_dir: str, model: str = "gemma-3-270m", backends: str = "static,inductor") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = resolve_model(model)
    lm = load_base_model(r.source, profile=r.profile, device="cuda", dtype="bfloat16")
    items = load_eval_set()
    greedy = [P.render_response_prompt(x["instruction"]) for x in items]
    kw = dict(max_new_tokens=96, do_sample=False, stop_strings=(BLANK_LINE,))
    res: dict = {"model": model, "device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "prompts": len(greedy),
                 "torch": torch.__version__, "greedy": {}, "compile_first_call": {}, "sampled": {}}
    import transformers

    res["transformers"] = transformers.__version__

    def save() -> None:  # after every measurement: a run cut short by its time limit keeps what it measured
        (out / "gen_speed.json").write_text(json.dumps(res, indent=2))
    lm.token_texts()  # built once per model (about a second); not part of any run below
    timed(lm, greedy[:64], batch_size=64, **kw)  # warm-up
    real = stopping.fast_path_applies
    stopping.fast_path_applies = lambda stops: False
    _, res["greedy"]["before_stopstringcriteria_eager_b64"] = timed(lm, greedy, batch_size=64, **kw)
    stopping.fast_path_applies = real
    save()
    ref: dict[int, list] = {}
    for bs in (64, 400):
        prof = cProfile.Profile() if bs == 400 else None
        if prof:
            prof.enable()
        ref[bs], res["greedy"][f"tokentext_eager_b{bs}"] = timed(lm, greedy, batch_size=bs, **kw)
        if prof:
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            (out / "gen_speed_profile.txt").write_text(s.getvalue())
    best = ("eager", res["greedy"]["tokentext_eager_b400"]["tokens_per_s"], 400)
    for name in [b for b in backends.split(",") if b]:
        lm.use_decode_backend(name)
        for bs in (64, 400):
            key = f"tokentext_{name}_b{bs}"
            try:
                first, res["compile_first_call"][key] = timed(lm, greedy, batch_size=bs, **kw)
                gens, res["greedy"][key] = timed(lm, greedy, batch_size=bs, **kw)
            except Exception as e:  # a backend that cannot run here is a result too
                res["greedy"][key] = {"error": f"{type(e).__name__}: {str(e)[:600]}"}
                break
            res["greedy"][key]["rows_equal_to_eager"] = same_rows(gens, ref[bs])
            res["greedy"][key]["first_divergence_positions"] = sorted(first_divergence(gens, ref[bs]))
            res["greedy"][key]["rows_equal_first_vs_second_call"] = same_rows(gens, first)
            save()
            if res["greedy"][key]["tokens_per_s"] > best[1]:
                best = (name, res["greedy"][key]["tokens_per_s"], bs)
        torch._dynamo.reset()  # each backend compiles from scratch
    res["fastest"] = {"backend": best[0], "batch_size": best[2], "tokens_per_s": best[1],
                      "speedup_vs_before": round(best[1] / res["greedy"]["before_stopstringcriteria_eager_b64"]["tokens_per_s"], 2)}
    lm.use_decode_backend(best[0])
    timed(lm, greedy, batch_size=best[2], **kw)  # recompile after the reset, outside the profile
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tp:
        timed(lm, greedy, batch_size=best[2], **kw)
    (out / "gen_speed_gpu_profile.txt").write_text(tp.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    demos = [P.build_demonstration_prompt(x["instruction"], seed=0, item_id=x["id"], k=4).text for x in items]
    skw = dict(max_new_tokens=80, do_sample=True, temperature=0.4, top_p=0.9, top_k=50, repetition_penalty=1.1,
               stop_strings=(BLANK_LINE,), seed=0)
    for name in dict.fromkeys(("eager", best[0])):
        lm.use_decode_backend(name)
        for bs in (64, 400):
            if name != "eager":
                timed(lm, demos, batch_size=bs, **skw)  # the first call compiles
            _, res["sampled"][f"demonstrations_{name}_b{bs}"] = timed(lm, demos, batch_size=bs, **skw)
            save()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:4])
