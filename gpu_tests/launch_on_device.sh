#!/usr/bin/env bash
# bash gpu_tests/launch_on_device.sh     # on the GPU machine, from the repository root, after the installs
# The launcher end to end on one GPU (OPS-05): the two shards of a scale run made one after the other
# in one GPU (`generate --shard i/2`, then `merge`), and the same two shards as two processes sharing
# the GPU (`launch generate --gpus 1 --shards-per-gpu 2`), which merges by itself. Reports both wall
# times and whether the two merged datasets hold the same rows. The pilot gate the scale shards need
# comes from the Stage-1 chain run up to its pilot gate (stage1_on_device.sh installs the wheels).
# TARGET sets the scale target (two shards of half each); DECODE_BACKEND the generate decode backend.
set -uo pipefail
OUT=${OUT:-artifacts/gpu-launch}
mkdir -p "$OUT"
source gpu_tests/device_env.sh
CLI=(python3 -m cai_bootstrap.cli)
ROOT=${LAUNCH_ROOT:-/tmp/runs/launch}
S1=$ROOT/stage1
LOG="$OUT/launch.log"
mkdir -p "$ROOT"
python3 -m cai_bootstrap.stage1 --config src/cai_bootstrap/configs/stage1_gemma_gpu.yaml --run-dir "$S1" \
  --until pilot_gate --quiet > "$ROOT/stage1.log" 2>&1 || { tail -c 4000 "$ROOT/stage1.log"; exit 2; }
ARGS=(--config src/cai_bootstrap/configs/generate_gpu.yaml --model gemma-3-270m --mode scale --seed 0
      --target "${TARGET:-800}" --pilot-gate "$S1/gates/pilot_gate.json" --quiet)
[ -n "${DECODE_BACKEND:-}" ] && ARGS+=(--decode-backend "$DECODE_BACKEND")
t0=$(date +%s.%N)
for i in 0 1; do
  "${CLI[@]}" generate "${ARGS[@]}" --shard "$i/2" --out "$ROOT/one/shard-$i" >> "$LOG" 2>&1
  echo "one-process shard $i/2 exit status: $?" | tee -a "$LOG"
done
"${CLI[@]}" merge "$ROOT/one/shard-0" "$ROOT/one/shard-1" --out "$ROOT/one/merged" >> "$LOG" 2>&1
t1=$(date +%s.%N)
"${CLI[@]}" launch generate --gpus 1 --shards-per-gpu 2 --out "$ROOT/two" -- "${ARGS[@]}" >> "$LOG" 2>&1
echo "launch exit status: $?" | tee -a "$LOG"
t2=$(date +%s.%N)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$LOG"
python3 - "$ROOT" "$t0" "$t1" "$t2" > "$OUT/launch_summary.json" <<'EOF'
import json, sys
from pathlib import Path
root, t0, t1, t2 = Path(sys.argv[1]), *map(float, sys.argv[2:5])
def rows(p):
    f = p / "merged" / "dataset.jsonl"
    return [(r["instruction"], r["response"]) for r in map(json.loads, f.open())] if f.exists() else None
one, two = rows(root / "one"), rows(root / "two")
qc = lambda p: json.loads((p / "merged" / "qc_summary.json").read_text())["counts"] if (p / "merged" / "qc_summary.json").exists() else None
print(json.dumps({
    "one_process_after_the_other_s": round(t1 - t0, 1), "two_processes_one_gpu_s": round(t2 - t1, 1),
    "speedup": round((t1 - t0) / (t2 - t1), 2) if t2 > t1 else None,
    "merged_rows_one": None if one is None else len(one), "merged_rows_two": None if two is None else len(two),
    "merged_rows_equal": one == two if one is not None and two is not None else None,
    "merged_row_sets_equal": set(one) == set(two) if one is not None and two is not None else None,
    "qc_counts_one": qc(root / "one"), "qc_counts_two": qc(root / "two"),
}, indent=2))
EOF
cat "$OUT/launch_summary.json"
grep -v "it/s\]$" "$LOG" | tail -c 5000
