"""Greedy evaluation-style generation throughput on the GPU (tiny model): batched vs one at a time.

    python gpu_tests/gen_throughput.py OUT.json [MODEL]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from cai_bootstrap.evaluation.evalset import load_eval_set
from cai_bootstrap.loader import load_base_model
from cai_bootstrap.model_sources import resolve_model
from cai_bootstrap.prompts import render_response_prompt


def main(out: str, model: str = "tiny-random") -> None:
    r = resolve_model(model)
    lm = load_base_model(r.source, profile=r.profile, device="cuda", dtype="bfloat16")
    prompts = [render_response_prompt(x["instruction"]) for x in load_eval_set(limit=64)]
    res = {"model": model, "device": torch.cuda.get_device_name(0), "dtype": "bfloat16", "n_prompts": len(prompts), "max_new_tokens": 128}
    for bs in (1, 16, 64):
        torch.cuda.synchronize()
        t = time.time()
        gens = lm.generate(prompts, max_new_tokens=128, do_sample=False, batch_size=bs, progress=False)
        torch.cuda.synchronize()
        dt = time.time() - t
        toks = sum(g.n_tokens for g in gens)
        res[f"batch_{bs}"] = {"seconds": round(dt, 3), "tokens": toks, "tokens_per_s": round(toks / dt, 1)}
    again = lm.generate(prompts, max_new_tokens=128, do_sample=False, batch_size=16, progress=False)
    first = lm.generate(prompts, max_new_tokens=128, do_sample=False, batch_size=16, progress=False)
    res["greedy_reproducible"] = [g.token_ids for g in again] == [g.token_ids for g in first]
    print(json.dumps(res, indent=2))
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:3])
