#!/usr/bin/env bash
# bash gpu_tests/fetch_unsloth_wheels.sh     # run here (a machine with PyPI), from the repository root
# Downloads into .whl/u1..u3 (git-ignored) what the GPU image (Python 3.12, torch 2.11 cu130,
# transformers 5.17) lacks for the unsloth backend and its comparison (gpu_tests/unsloth_compare.py).
# One folder per transfer to the offline GPU machine, each under 60 MB: u1 bitsandbytes (42 MB, the hf 4-bit path needs it
# too), u2 unsloth + unsloth_zoo + trl 1.15 (32 MB), u3 what they need in their pinned ranges (22 MB):
# transformers 5.17.0 and datasets 4.8.5 (unsloth 2026.10.9 takes transformers <= 5.17 and
# datasets < 5; the image's /tmp/site holds 5.23 and 5.2 for the main path, so these go into a
# separate site, see unsloth_on_device.sh).
# Left out on purpose (unsloth imports each behind a guard and runs without it):
#   xformers 0.0.35   PyPI build for CUDA 12.8 torch; beside the image's cu130 torch it fails to load
#                     and unsloth falls back to PyTorch attention anyway.
#   torchao 0.18.0    compiled extensions for another torch; only fp8 / QAT / quantized saving use it.
#   torchvision       compiled against a specific torch build; only the vision/video helpers use it.
#   diffusers, tyro, hf_transfer, typer, rich, structlog, json5, click, wheel: declared, but not
#                     imported by `import unsloth` or by LoRA training (CLI, studio, downloads).
set -euo pipefail
ROOT=${DEST:-.whl}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
fetch() {
  local dest="$ROOT/$1"; shift
  mkdir -p "$dest"
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@"
}
fetch u1 bitsandbytes==0.50.2
fetch u2 unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 \
  cut_cross_entropy==25.1.1 einops==0.8.2 msgspec==0.23.0 nest_asyncio==1.6.0
fetch u3 transformers==5.17.0 datasets==4.8.5 sentencepiece==0.2.3 protobuf==7.36.2 pillow==13.0.0 \
  requests==2.34.2 urllib3==2.8.0 idna==3.20 charset_normalizer==3.5.3 certifi==2026.10.19.post1
du -sh "$ROOT"/u1 "$ROOT"/u2 "$ROOT"/u3
