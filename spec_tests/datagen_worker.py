"""A data-generation run in its own process, so a test can SIGKILL it mid-phase (DG-06).

Usage: python -m spec_tests.datagen_worker MODEL_DIR CONFIG_JSON SLEEP_SECONDS THREADS

CONFIG_JSON holds ``load_config`` overrides (dotted keys). The scripted generator sleeps
before every generate call, which keeps each phase open long enough to be killed in.
Sentinels are skipped at load: a killed run's provenance never reaches the artifacts,
which the resumed run writes from its own model.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    model_dir, config_json, sleep, threads = argv
    import torch

    from cai_bootstrap.datagen.config import load_config
    from cai_bootstrap.datagen.pipeline import run_generation
    from cai_bootstrap.loader import load_base_model

    from spec_tests.scripted_lm import ScriptedLM

    # Same thread count as the test process, so float reductions (critic scores) match bit for bit.
    torch.set_num_threads(int(threads))
    cfg = load_config(None, **json.loads(config_json))
    lm = load_base_model(model_dir, device="cpu", run_sentinels=False)
    print("loaded", flush=True)
    run_generation(cfg, lm=ScriptedLM(lm, sleep=float(sleep)))
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
