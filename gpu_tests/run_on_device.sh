#!/usr/bin/env bash
# bash gpu_tests/run_on_device.sh          # on the GPU machine, from the repository root, with .whl/ carried
# Installs the carried wheels (.whl/*.whl, see gpu_tests/fetch_wheels.sh) into /tmp/site, which survives
# between calls while the machine stays warm, then runs gpu_tests/ and writes into $OUT:
#   gpu_results.json (peak memory, tokens/sec, preflight, 4-bit loads), junit.xml, gpu_tests.log, env.txt.
# INSTALL_ONLY=1 installs and stops (for carrying a second batch of wheels in a later call).
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
source gpu_tests/device_env.sh
install_wheels "$SITE" .whl/*.whl || exit 3
export PYTHONPATH="$PYTHONPATH:$PWD"  # gpu_tests imports its own helpers
export GPU_RESULTS="$OUT/gpu_results.json"
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
  python3 - <<'PY'
import importlib
for name in ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "accelerate", "pydantic", "tokenizers", "pyarrow"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:  # report, do not stop: the tests say what they need
        print(name, "IMPORT FAILED:", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
[ "${INSTALL_ONLY:-0}" = "1" ] && exit 0
python3 -m pytest gpu_tests -v -s -p no:cacheprovider -W ignore::FutureWarning \
  --conformance-report "$OUT/conformance" --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/gpu_tests.log"
rc=${PIPESTATUS[0]}
echo "pytest exit status: $rc"
exit "$rc"
