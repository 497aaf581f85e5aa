#!/usr/bin/env bash
# CI's smoke test of the benchmarks: each binary and script runs for a moment and the
# report generator turns their output into a report, failing on any benchmark that
# found its own result wrong (SkipWithError). Numbers are not checked: a
# benchmark is not a timed test. Usage: bench/smoke-test.sh BIN_DIR
set -euo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
GB=(--benchmark_min_time=0.01 --benchmark_format=json)
"$BIN/tokenizer_benchmark" "${GB[@]}" >"$OUT/tokenizer.json"
"$BIN/image_benchmark" "${GB[@]}" --benchmark_filter=640x480 >"$OUT/image.json"
"$BIN/batcher_benchmark" "${GB[@]}" --benchmark_filter=items:8/workers:1 >"$OUT/batcher.json"
"$BIN/kernel_benchmark" "${GB[@]}" >"$OUT/kernel.json"
"$BIN/model_benchmark" "${GB[@]}" \
  --benchmark_filter='BM_(ImageTower/model:0/batch:1/bf16:1|TextTower/model:0/batch:1/bf16:1/tokens:20)' \
  >"$OUT/model.json"
/usr/bin/python3 "$HERE/python_baseline.py" --models ViT-B-32 --batch 2 --runs 1 \
  --precisions bf16 >"$OUT/python.jsonl"
/usr/bin/python3 "$HERE/request_memory.py" --server "$BIN/clip_server" \
  --model=demo:ViT-B-32 --calls 3 --images 1 --side 64 --limits 0,64 \
  >"$OUT/request_memory.md"
/usr/bin/python3 "$HERE/make_report.py" --results "$OUT" --out_dir "$OUT/report"
for f in PERFORMANCE.md performance.png; do
  test -s "$OUT/report/$f" || { echo "no $f"; exit 1; }
done
grep -q "BM_ImageTower" "$OUT/model.json"
grep -q "BM_Softmax" "$OUT/kernel.json"
grep -q "BM_QuickGelu" "$OUT/kernel.json"
grep -q "BM_Linear" "$OUT/kernel.json"
grep -q '"items_per_s"' "$OUT/python.jsonl"
grep -q '^| 64 | .* | 3 | 0 | 0 |' "$OUT/request_memory.md"
echo "benchmarks ran; report written"
