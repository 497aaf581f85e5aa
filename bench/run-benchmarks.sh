#!/usr/bin/env bash
# Runs every clipserve benchmark on this machine and writes docs/PERFORMANCE.md and
# docs/performance.png from the results (kept in build/bench-results/).
#
#   bash bench/run-benchmarks.sh            full run (about 20 minutes on 2 cores)
#   SMOKE=1 bash bench/run-benchmarks.sh    a moment of each (about a minute), results
#                                           and report in build/bench-results-smoke/
#   STAGES="model" bash bench/run-benchmarks.sh
#       rerun only some stages (micro, model, python, e2e), keep the other results
#
# Benchmarks share the machine with nothing else: run it on an idle machine, and
# compare only numbers from the same run (the report does).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=${SMOKE:-0}
# Smoke runs keep results of their own: one repetition of each must never stand in for
# a full run's medians when STAGES= later reruns only some stages.
OUT=$ROOT/build/bench-results
[ "$SMOKE" = 1 ] && OUT=$ROOT/build/bench-results-smoke
mkdir -p "$OUT"
STAGES=${STAGES:-micro model python e2e}
stage() {  # runs stage $1 when asked, recording when it ran (the report lists them)
  [[ " $STAGES " == *" $1 "* ]] || return 1
  [ -f "$OUT/stages.txt" ] && grep -v "^$1 " "$OUT/stages.txt" >"$OUT/stages.tmp" || true
  touch "$OUT/stages.tmp"
  echo "$1 $(date -u '+%Y-%m-%d %H:%M UTC') $(git rev-parse --short HEAD)" >>"$OUT/stages.tmp"
  mv "$OUT/stages.tmp" "$OUT/stages.txt"
}

bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j2 --target clip_server clip_client tokenizer_benchmark \
  image_benchmark batcher_benchmark kernel_benchmark model_benchmark
BIN=$ROOT/build/bin

# Without AMX-BF16 or AVX512-BF16, LibTorch emulates bf16 (a ViT-B-32 image batch of
# 32 took 167 s there, against 1.8 s in fp32): such CPUs get fp32 rows only.
if grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
  BF16='[01]'; PY_PRECISIONS=(fp32 bf16)
else
  BF16=0; PY_PRECISIONS=(fp32)
  echo "note: this CPU has no AMX-BF16 or AVX512-BF16; measuring fp32 only"
fi
# OpenBLAS kernel families this CPU can run, weakest first: a kernel whose
# instructions the CPU lacks would die of SIGILL. Every fp32 row runs on the last, as
# clip_server (--blas_kernel=auto) and, for a fair baseline, Python do; OpenBLAS
# 0.3.21 would otherwise fall back to Prescott on CPUs it does not know.
CORES=(Prescott)
has() { for f in "$@"; do grep -qw "$f" /proc/cpuinfo || return 1; done; }
if has avx2 fma; then CORES+=(Haswell); fi
if has avx512f avx512bw avx512vl avx512dq; then CORES+=(SkylakeX); fi
export OPENBLAS_CORETYPE=${CORES[-1]}
if [ "$SMOKE" = 1 ]; then
  REPS=1; MIN_TIME=0.01; E2E_S=2s; PY_RUNS=1; PAIRED_ROUNDS=1
  MODEL_FILTER="BM_(Image|Text)Tower(Int8)?/model:0/batch:1/(bf16:$BF16|int8:1)/"
  PY_MODELS=(ViT-B-32); CONCURRENCY=(1 4)
else
  REPS=3; MIN_TIME=0.2; E2E_S=10s; PY_RUNS=3; PAIRED_ROUNDS=5
  # CUDA rows (CUDA builds only), int8 rows and the packed bf16 product have no bf16
  # arg.
  MODEL_FILTER="/bf16:$BF16|Cuda/|Int8/|BM_MatmulBf16Packed"
  PY_MODELS=(ViT-B-32 ViT-B-16 RN50); CONCURRENCY=(1 4 16 64)
fi
GB=(--benchmark_repetitions=$REPS --benchmark_min_time=$MIN_TIME
    --benchmark_format=json)

if stage micro; then
echo "== microbenchmarks"
"$BIN/tokenizer_benchmark" "${GB[@]}" >"$OUT/tokenizer.json"
"$BIN/image_benchmark" "${GB[@]}" >"$OUT/image.json"
"$BIN/batcher_benchmark" "${GB[@]}" >"$OUT/batcher.json"
"$BIN/kernel_benchmark" "${GB[@]}" >"$OUT/kernel.json"
fi

if stage model; then
echo "== model in process"
"$BIN/model_benchmark" "${GB[@]}" --benchmark_filter="$MODEL_FILTER" >"$OUT/model.json"
# fp32 on the kernels the CPU supports vs the 2004 kernels OpenBLAS falls back to
# (CORES, from the top).
rm -f "$OUT"/blas_*.json
for core in "${CORES[@]}"; do
  OPENBLAS_CORETYPE=$core "$BIN/model_benchmark" "${GB[@]}" \
    --benchmark_filter='BM_ImageTower/model:0/batch:32/bf16:0' \
    >"$OUT/blas_$core.json"
done
fi

if stage python; then
echo "== eager PyTorch baseline"
PY=(/usr/bin/python3 bench/python_baseline.py --runs "$PY_RUNS"
    --precisions "${PY_PRECISIONS[@]}")
"${PY[@]}" --models "${PY_MODELS[@]}" >"$OUT/python.jsonl"
"${PY[@]}" --models ViT-B-32 --towers text --text_tokens 20 >>"$OUT/python.jsonl"
# The same with clip_server's allocator, so that the comparison is not the allocator's.
TCMALLOC=$(ldd "$BIN/clip_server" | awk '/tcmalloc/ {print $3}')
if [ -n "$TCMALLOC" ]; then
  LD_PRELOAD=$TCMALLOC "${PY[@]}" --models ViT-B-32 --allocator tcmalloc \
    >>"$OUT/python.jsonl"
  LD_PRELOAD=$TCMALLOC "${PY[@]}" --models ViT-B-32 --towers text --text_tokens 20 \
    --allocator tcmalloc >>"$OUT/python.jsonl"
fi
fi

if stage e2e; then
echo "== end to end"
rm -f "$OUT/e2e.jsonl"
PORT=$((50000 + RANDOM % 10000))
METRICS_PORT=$((PORT + 1))
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi
}
trap stop_server EXIT
start_server() {  # flags... (the metrics endpoint on METRICS_PORT only with METRICS=1)
  local metrics=(--metrics_port=-1)
  [ "${METRICS:-0}" = 1 ] && metrics=(--metrics_host=127.0.0.1 --metrics_port=$METRICS_PORT)
  "$BIN/clip_server" --host=127.0.0.1 --port=$PORT "${metrics[@]}" \
    --model=demo:ViT-B-32 "$@" \
    >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    if "$BIN/clip_client" --target 127.0.0.1:$PORT health >/dev/null 2>&1; then return; fi
    sleep 0.2
  done
  echo "server did not start"; cat "$OUT/server.log"; exit 1
}
scrape_metrics() {  # file: the server's Prometheus metrics now (no file if that fails)
  /usr/bin/python3 -c "import sys, urllib.request as u; \
opener = u.build_opener(u.ProxyHandler({})); \
sys.stdout.write(opener.open(sys.argv[1], timeout=10).read().decode())" \
    "http://127.0.0.1:$METRICS_PORT/metrics" >"$1" || rm -f "$1"
}
rss_mb() { awk '/VmRSS/ {print $2 / 1024}' /proc/$SERVER_PID/status; }
bench() {  # label clip_client-bench-args... (--duration E2E_S unless -n is given)
  local label=$1; shift
  local length=(--duration "$E2E_S")
  case " $* " in *" -n "*) length=() ;; esac
  "$BIN/clip_client" --target 127.0.0.1:$PORT bench "${length[@]}" --json "$@" \
    >"$OUT/last.json"
  # RSS read once the run is over.
  /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
d['label']=sys.argv[2]; d['rss_mb']=float(sys.argv[3]); print(json.dumps(d))" \
    "$OUT/last.json" "$label" "$(rss_mb)" >>"$OUT/e2e.jsonl"
}
# The model's throughput: no text cache, so every caption reaches the model, and each
# made unique (a three-word suffix), since identical texts in one batch run once.
# Metrics on for the side-by-side rounds below.
METRICS=1 start_server --text_cache_mb=0
"$BIN/clip_client" --target 127.0.0.1:$PORT info --json >"$OUT/served_model.json"
for c in "${CONCURRENCY[@]}"; do
  bench served --modality image -c "$c"
  bench served --modality text -c "$c" --unique_texts
done
# The dynamic-batching targets side by side: in-process batch 1 and 32 of the served
# precision, then served images at concurrency 1 and 64, round after round, so each
# ratio compares runs seconds apart on this VM whose speed drifts over minutes (the
# report takes the median round). The server idles while the model benchmark runs.
PAIRED_BF16=$(/usr/bin/python3 -c "import json,sys; \
print(int(json.load(open(sys.argv[1])).get('precision') == 'bf16'))" "$OUT/served_model.json")
# The server's metrics before and after each concurrency-1 run split its latency into
# decoding and preprocessing, queue wait and the batch-1 model run.
rm -f "$OUT"/paired_model_*.json "$OUT"/paired_metrics_*.txt
for round in $(seq "$PAIRED_ROUNDS"); do
  "$BIN/model_benchmark" "${GB[@]}" \
    --benchmark_filter="BM_ImageTower/model:0/batch:(1|32)/bf16:$PAIRED_BF16/" \
    >"$OUT/paired_model_$round.json"
  scrape_metrics "$OUT/paired_metrics_${round}_before.txt"
  bench "paired$round" --modality image -c 1
  scrape_metrics "$OUT/paired_metrics_${round}_after.txt"
  bench "paired$round" --modality image -c 64
done
stop_server
# The same captions with the default text cache: repeats skip the model.
start_server
bench cached --modality text -c 16
stop_server
# int8 (--precision=int8), served the same way as the default precision above.
start_server --precision=int8 --text_cache_mb=0
for c in "${CONCURRENCY[@]}"; do
  bench served_int8 --modality image -c "$c"
  bench served_int8 --modality text -c "$c" --unique_texts
done
stop_server
# Memory: fp32 weights; 100,000 text requests (the built-in captions, so mostly cache
# hits: the request path at full speed), then images through the model; RSS after
# warm-up and after each phase.
start_server --precision=fp32
echo "{\"label\": \"rss_start\", \"rss_mb\": $(rss_mb)}" >>"$OUT/e2e.jsonl"
RSS_REQUESTS=100000
[ "$SMOKE" = 1 ] && RSS_REQUESTS=2000
bench rss --modality text -c 16 -n $RSS_REQUESTS
bench rss --modality image -c 16
echo "{\"label\": \"rss_end\", \"rss_mb\": $(rss_mb)}" >>"$OUT/e2e.jsonl"
stop_server
fi

echo "== report"
REPORT_DIR=$ROOT/docs
[ "$SMOKE" = 1 ] && REPORT_DIR=$OUT
/usr/bin/python3 bench/make_report.py --results "$OUT" --out_dir "$REPORT_DIR" \
  --command "bash bench/run-benchmarks.sh"
echo "wrote $REPORT_DIR/PERFORMANCE.md"
