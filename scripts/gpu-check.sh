#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, a CUDA build of PyTorch and no
# network, builds clip_server against that PyTorch's LibTorch, runs the *_CUDA tests,
# checks GPU embeddings against CPU fp32, and writes a benchmark table.
#
#   scripts/fetch-gpu-debs.sh          # beforehand, on a Debian machine with its archive
#                                      # (carry third_party/gpu-debs and gpu-shared)
#   scripts/gpu-check.sh [OUT_DIR [ARCHIVE_DIR]]   # on the GPU machine
#
# OUT_DIR defaults to build-gpu/report. With ARCHIVE_DIR (the device tool's $OUT, which
# brings back only a few files), the script leaves there, however it ends (a failed
# step, a timeout's SIGTERM), gpu-report.tgz with every log, and table.md itself:
#
#   timeout 540 bash scripts/gpu-check.sh build-gpu/report "$OUT"
#
# gRPC, Protobuf, Abseil, glog and the other libraries come from the .deb files in
# third_party/gpu-debs (or $CLIPSERVE_GPU_DEBS), unpacked with `dpkg -x` into a private
# prefix (build-gpu/prefix); nothing is installed on the machine. LibTorch is the one
# inside `python3 -c 'import torch'` ($PYTHON, default python3), which must be a CUDA
# build that sees a GPU. Needs cmake, ninja, a C++17 compiler and nvcc (LibTorch's
# CMake config looks for the CUDA toolkit).
#
# Writes OUT_DIR/table.md (the benchmark table; copied to bench/gpu_results.md,
# bench/make_report.py puts it in docs/PERFORMANCE.md) and the logs beside it. A failed
# or skipped *_CUDA test, benchmark or served run is noted and the rest still runs (a
# device run is scarce); the script then exits non-zero, listing what failed. Only
# the build steps stop it. Sized to finish within 8 minutes on a 16-core machine with
# an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(mkdir -p "${1:-build-gpu/report}" && cd "${1:-build-gpu/report}" && pwd)
archive=${2:-}
debs=${CLIPSERVE_GPU_DEBS:-third_party/gpu-debs}
# The tests' shared material (fetch-gpu-debs.sh copies it beside the .deb files).
export CLIPSERVE_SHARED_DIR=${CLIPSERVE_SHARED_DIR:-$root/third_party/gpu-shared}
python=${PYTHON:-python3}
build=$root/build-gpu/build
prefix=$root/build-gpu/prefix
jobs=$(nproc)
started=$SECONDS
step() { echo "== $(( SECONDS - started ))s: $*" | tee -a "$out/steps.txt"; }
: >"$out/steps.txt"
failures=()
failed() { echo "gpu-check: FAILED: $*" | tee -a "$out/steps.txt"; failures+=("$*"); }
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true; server_pid=; fi
}
finish() {
  stop_server
  if [ -n "$archive" ]; then
    mkdir -p "$archive"
    tar -czf "$archive/gpu-report.tgz" -C "$(dirname "$out")" "$(basename "$out")" || true
    cp "$out/table.md" "$out/steps.txt" "$archive/" 2>/dev/null || true
  fi
}
trap finish EXIT
trap 'echo "gpu-check: stopped by a signal" | tee -a "$out/steps.txt"; exit 143' TERM INT

step "LibTorch from $python"
"$python" - <<'EOF' | tee "$out/torch.txt"
import torch
assert torch.cuda.is_available(), "this PyTorch sees no CUDA device"
# Debian's gRPC, Abseil and Protobuf use the C++11 std::string ABI.
assert torch._C._GLIBCXX_USE_CXX11_ABI, "this PyTorch uses the old C++ ABI"
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >>"$out/torch.txt" 2>&1 || true
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')

shopt -s nullglob
deb_files=("$debs"/*.deb)
if [ ${#deb_files[@]} = 0 ]; then
  echo "gpu-check: no .deb files in $debs; run scripts/fetch-gpu-debs.sh first" >&2
  exit 1
fi
if [ ! -d "$CLIPSERVE_SHARED_DIR/images" ]; then
  echo "gpu-check: no test images in $CLIPSERVE_SHARED_DIR; run" \
    "scripts/fetch-gpu-debs.sh first and carry third_party/gpu-shared" >&2
  exit 1
fi
step "unpacking ${#deb_files[@]} .deb files into $prefix"
rm -rf "$prefix"
mkdir -p "$prefix"
for deb in "${deb_files[@]}"; do dpkg -x "$deb" "$prefix"; done
# Absolute symbolic links in the packages point into the real /usr: re-aim them.
find "$prefix" -type l -lname '/*' | while read -r link; do
  ln -sfn "$prefix$(readlink "$link")" "$link"
done
arch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
libdir=$prefix/usr/lib/$arch
# Debian's glog config names its module folder (FindUnwind.cmake) by absolute path.
glog_modules=$libdir/cmake/glog/glog-modules.cmake
if [ -f "$glog_modules" ]; then
  sed -i "s|\"/usr/share/glog/cmake\"|\"$prefix/usr/share/glog/cmake\"|" "$glog_modules"
fi
# protoc and the tests load the packages' libraries (some still live under /lib).
export LD_LIBRARY_PATH=$libdir:$prefix/lib/$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_LIBDIR=$libdir/pkgconfig:$prefix/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$prefix
pkg_config=$(command -v pkg-config || echo "$prefix/usr/bin/pkgconf")

step "configuring (LibTorch in $torch_prefix)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# LibTorch's CMake config looks for nvcc; the toolkit is often installed off the PATH
# (/usr/local/cuda, a versioned /usr/local/cuda-X.Y, or the Python environment's bin).
if ! command -v nvcc >/dev/null; then
  for dir in /usr/local/cuda/bin /usr/local/cuda-*/bin \
    "$(dirname "$(command -v "$python")")"; do
    if [ -x "$dir/nvcc" ]; then export PATH=$PATH:$dir; break; fi
  done
fi
nvcc=$(command -v nvcc || true)
if [ -z "$nvcc" ]; then
  echo "gpu-check: no nvcc found (LibTorch's CMake config needs the CUDA toolkit)" >&2
  exit 1
fi
"$nvcc" --version | tail -2 >>"$out/torch.txt"
cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
# cuDNN from pip (nvidia-cudnn-*) is where torch's FindCUDNN does not look.
cudnn=$("$python" -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' \
  2>/dev/null || true)
if [ -n "$cudnn" ] && [ -d "$cudnn/include" ]; then
  export CUDNN_ROOT=$cudnn CUDNN_INCLUDE_DIR=$cudnn/include CUDNN_LIB_DIR=$cudnn/lib
  for lib in "$cudnn"/lib/libcudnn.so*; do export CUDNN_LIBRARY=$lib; break; done
fi
# Debian keeps a few headers in the multiarch folder (jconfig.h, openssl's
# configuration.h), which the Find modules do not add: without it the build fails, or
# takes the host's own jconfig.h (Ubuntu's libjpeg-turbo8 says version 80, the
# unpacked libjpeg is 62, and every JPEG decode then fails at run time).
arch_include="-isystem $prefix/usr/include/$arch"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
  -DCMAKE_C_FLAGS="$arch_include" -DCMAKE_CXX_FLAGS="$arch_include" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DCUDAToolkit_ROOT="$cuda_root" \
  -DPKG_CONFIG_EXECUTABLE="$pkg_config" -DOPENSSL_ROOT_DIR="$prefix/usr" \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
  -DGOOGLEAPIS_DIR="$prefix/usr/share/gocode/src/github.com/gogo/googleapis" \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
grep 'clipserve: LibTorch' "$out/configure.log" || true
grep -q 'CUDA support ON' "$out/configure.log" || {
  echo "gpu-check: CMake did not find a CUDA LibTorch"; exit 1; }

step "building with $jobs jobs"
cmake --build "$build" -j "$jobs" --target clip_server clip_client device_test \
  clip_model_test metrics_test embedding_engine_test device_image_preprocessor_test \
  model_benchmark image_benchmark \
  >"$out/build.log" 2>&1 || {
  grep -E -B2 -A12 'error:|FAILED:' "$out/build.log" | head -80; exit 1; }

step "the *_CUDA tests"
status=0
for t in device_test clip_model_test metrics_test embedding_engine_test \
  device_image_preprocessor_test; do
  "$build/tests/$t" --gtest_filter='*_CUDA' >"$out/$t.log" 2>&1 || status=1
  grep -E '^\[ +(OK|FAILED|SKIPPED) +\]' "$out/$t.log" || true
  # A GPU is there (checked above): a *_CUDA test that skips is a failure here.
  if grep -qE '^\[ +SKIPPED +\]' "$out/$t.log"; then status=1; fi
done
[ $status = 0 ] || failed "a *_CUDA test failed or skipped (logs in $out)"

step "model benchmark on the GPU (from tensors already on the device)"
"$build/bin/model_benchmark" --benchmark_filter='Cuda' --benchmark_min_time=0.5 \
  --benchmark_format=json >"$out/model_benchmark.json" 2>"$out/model_benchmark.log" ||
  failed "model_benchmark (see model_benchmark.log)"

step "JPEG decode, with and without preprocessing, on one CPU core"
"$build/bin/image_benchmark" --benchmark_filter='BM_Decode(AndPreprocess)?Jpeg640x480$' \
  --benchmark_format=json >"$out/image_benchmark.json" 2>"$out/image_benchmark.log" ||
  failed "image_benchmark (see image_benchmark.log)"

step "end to end: clip_server --device=cuda, clip_client bench"
port=50151
e2e() {  # precision [modalities] [label server-flags...]: a fresh server, then bench
  local precision=$1 modalities=${2:-image text} label=${3:-$1}
  shift; shift || true; shift || true
  "$build/bin/clip_server" --host=127.0.0.1 --port=$port --metrics_port=-1 \
    --model=demo:ViT-B-32 --device=cuda --precision="$precision" --max_batch_size=256 \
    --max_queue_size=8192 --preprocess_threads="$jobs" --text_cache_mb=0 "$@" \
    >"$out/server-$label.log" 2>&1 &
  server_pid=$!
  local ready=0
  for _ in $(seq 300); do
    if "$build/bin/clip_client" --target 127.0.0.1:$port health >/dev/null 2>&1; then
      ready=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break  # it died starting
    sleep 0.2
  done
  if [ $ready = 0 ]; then
    tail -20 "$out/server-$label.log"
    stop_server
    failed "clip_server --device=cuda ($label) did not become healthy"
    return 0
  fi
  for modality in $modalities; do
    "$build/bin/clip_client" --target 127.0.0.1:$port bench --modality "$modality" \
      -c 64 -k 16 --duration 10s --json >"$out/e2e-$label-$modality.json" ||
      failed "bench $label $modality: every request failed"
  done
  stop_server
}
e2e fp16
e2e bf16
# Images resized on the GPU: the CPUs only decode.
e2e fp16 image fp16-resize-on-gpu --resize_on_device

step "writing $out/table.md"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$python" - "$out" "$commit" <<'EOF' || failed "writing table.md"
import datetime, json, os, sys
out, commit = sys.argv[1], sys.argv[2]
models = {"0": "ViT-B-32", "3": "ViT-L-14"}


def load(name):
    """A results file, or None where its step failed (shown as failed in the table)."""
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rate(value):
    return f"{value:,.0f}" if isinstance(value, (int, float)) else "failed"


where = "; ".join(line.strip() for line in open(os.path.join(out, "torch.txt"))
                  if line.strip())
rows = [f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at {commit}: {where}.",
        "", "| what | precision | batch | items/s |", "|---|---|---|---|"]
for b in (load("model_benchmark.json") or {"benchmarks": []})["benchmarks"]:
    args = dict(p.split(":") for p in b["name"].split("/")[1:] if ":" in p)
    precision = "fp16" if args.get("fp16") == "1" else "bf16"
    if b["name"].startswith("BM_ImageTowerCuda"):
        what = f"{models.get(args.get('model'), '?')} images, in process from GPU tensors"
    else:
        what = f"text tower, {args.get('tokens', '?')} tokens, in process"
    rows.append(f"| {what} | {precision} | {args.get('batch', '?')} "
                f"| {rate(b.get('items_per_second'))} |")
for label, modality, what in (
        ("fp16", "image", "ViT-B-32 served, 640x480 JPEG in"),
        ("fp16", "text", "ViT-B-32 served, captions"),
        ("bf16", "image", "ViT-B-32 served, 640x480 JPEG in"),
        ("bf16", "text", "ViT-B-32 served, captions"),
        ("fp16-resize-on-gpu", "image",
         "ViT-B-32 served, 640x480 JPEG in, resized on the GPU (--resize_on_device)")):
    d = load(f"e2e-{label}-{modality}.json")
    errors = sum(d.get("errors", {}).values()) if d else 0
    note = f" ({errors} failed requests)" if errors else ""
    rows.append(f"| {what} (c=64, 16 per request){note} | {label[:4]} | dynamic "
                f"| {rate(d.get('items_per_s') if d else None)} |")
for b in (load("image_benchmark.json") or {"benchmarks": []})["benchmarks"]:
    what = ("JPEG 640x480 decode + preprocess" if "AndPreprocess" in b["name"]
            else "JPEG 640x480 decode only (what --resize_on_device leaves the CPU)")
    rows.append(f"| {what}, one CPU core | - | 1 | {rate(b.get('items_per_second'))} |")
open(os.path.join(out, "table.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
if [ ${#failures[@]} != 0 ]; then
  step "done, with ${#failures[@]} failure(s):"
  printf '  %s\n' "${failures[@]}" | tee -a "$out/steps.txt"
  exit 1
fi
step "done: copy $out/table.md to bench/gpu_results.md for docs/PERFORMANCE.md"
