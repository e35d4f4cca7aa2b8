"""Generation throughput of the embedded model on one GPU, before and after the stop-string and batch changes.

    python gpu_tests/gen_speed.py OUT_DIR [MODEL]

Greedy, evaluation-style: the 400 held-out prompts (PR-01 frame), 96 new tokens, stopping at
the first blank line, in bf16. Measured for transformers' ``StopStringCriteria`` (the path
before) and the token-text criterion (``stopping.py``), at batch 64 and larger, with the
outputs compared token for token; then sampled demonstration-frame responses (the data
path) at two batch sizes. A cProfile of one run lists where the host time goes. Writes
``gen_speed.json`` and ``gen_speed_profile.txt`` into OUT_DIR.
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


def main(out_dir: str, model: str = "gemma-3-270m") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = resolve_model(model)
    lm = load_base_model(r.source, profile=r.profile, device="cuda", dtype="bfloat16")
    items = load_eval_set()
    greedy = [P.render_response_prompt(x["instruction"]) for x in items]
    kw = dict(max_new_tokens=96, do_sample=False, stop_strings=(BLANK_LINE,))
    res: dict = {"model": model, "device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "prompts": len(greedy),
                 "greedy": {}, "sampled": {}}
    lm.token_texts()  # built once per model (about a second); not part of any run below
    timed(lm, greedy[:64], batch_size=64, **kw)  # warm-up
    real = stopping.fast_path_applies
    stopping.fast_path_applies = lambda stops: False
    before, res["greedy"]["stopstringcriteria_b64"] = timed(lm, greedy, batch_size=64, **kw)
    stopping.fast_path_applies = real
    prof = cProfile.Profile()
    prof.enable()
    after, res["greedy"]["tokentext_b64"] = timed(lm, greedy, batch_size=64, **kw)
    prof.disable()
    res["greedy"]["same_outputs_b64"] = [g.token_ids for g in before] == [g.token_ids for g in after]
    for bs in (128, 400):
        gens, res["greedy"][f"tokentext_b{bs}"] = timed(lm, greedy, batch_size=bs, **kw)
        same = sum(a.token_ids == b.token_ids for a, b in zip(gens, after))
        res["greedy"][f"tokentext_b{bs}"]["rows_equal_to_b64"] = same
    demos = [P.build_demonstration_prompt(x["instruction"], seed=0, item_id=x["id"], k=4).text for x in items]
    skw = dict(max_new_tokens=80, do_sample=True, temperature=0.4, top_p=0.9, top_k=50, repetition_penalty=1.1,
               stop_strings=(BLANK_LINE,), seed=0)
    for bs in (64, 400):
        _, res["sampled"][f"demonstrations_b{bs}"] = timed(lm, demos, batch_size=bs, **skw)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    (out / "gen_speed_profile.txt").write_text(s.getvalue())
    (out / "gen_speed.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:3])
