#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, a CUDA build of PyTorch and no
# network, builds clip_server against that PyTorch's LibTorch, runs the *_CUDA tests,
# checks GPU embeddings against CPU fp32, and writes a benchmark table.
#
#   scripts/fetch-gpu-debs.sh          # beforehand, on a Debian machine with its archive
#                                      # (carry third_party/gpu-debs and gpu-shared)
#   scripts/gpu-check.sh [OUT_DIR]     # on the GPU machine; default build-gpu/report
#
# gRPC, Protobuf, Abseil, glog and the other libraries come from the .deb files in
# third_party/gpu-debs (or $CLIPSERVE_GPU_DEBS), unpacked with `dpkg -x` into a private
# prefix (build-gpu/prefix); nothing is installed on the machine. LibTorch is the one
# inside `python3 -c 'import torch'` ($PYTHON, default python3), which must be a CUDA
# build that sees a GPU. Needs cmake, ninja, a C++17 compiler and nvcc (LibTorch's
# CMake config looks for the CUDA toolkit).
#
# Writes OUT_DIR/table.md (the benchmark table; copied to bench/gpu_results.md,
# bench/make_report.py puts it in docs/PERFORMANCE.md) and the logs beside it. Exits
# non-zero when a step fails or a *_CUDA test fails or skips. Sized to finish within
# 8 minutes on a 16-core machine with an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(mkdir -p "${1:-build-gpu/report}" && cd "${1:-build-gpu/report}" && pwd)
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

step "LibTorch from $python"
"$python" - <<'EOF' | tee "$out/torch.txt"
import torch
assert torch.cuda.is_available(), "this PyTorch sees no CUDA device"
# Debian's gRPC, Abseil and Protobuf use the C++11 std::string ABI.
assert torch._C._GLIBCXX_USE_CXX11_ABI, "this PyTorch uses the old C++ ABI"
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0))
EOF
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
# protoc and the tests load the packages' libraries (some still live under /lib).
export LD_LIBRARY_PATH=$libdir:$prefix/lib/$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_LIBDIR=$libdir/pkgconfig:$prefix/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$prefix
pkg_config=$(command -v pkg-config || echo "$prefix/usr/bin/pkgconf")

step "configuring (LibTorch in $torch_prefix)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# LibTorch's CMake config looks for nvcc; the toolkit is often installed off the PATH.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=$PATH:/usr/local/cuda/bin
fi
# Debian keeps a few headers in the multiarch folder (jconfig.h, openssl's
# configuration.h), which the Find modules do not add: without it the build fails, or
# takes the host's own jconfig.h (Ubuntu's libjpeg-turbo8 says version 80, the
# unpacked libjpeg is 62, and every JPEG decode then fails at run time).
arch_include="-isystem $prefix/usr/include/$arch"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON \
  -DCMAKE_C_FLAGS="$arch_include" -DCMAKE_CXX_FLAGS="$arch_include" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" \
  -DPKG_CONFIG_EXECUTABLE="$pkg_config" -DOPENSSL_ROOT_DIR="$prefix/usr" \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
  -DGOOGLEAPIS_DIR="$prefix/usr/share/gocode/src/github.com/gogo/googleapis" \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
grep 'clipserve: LibTorch' "$out/configure.log"
grep -q 'CUDA support ON' "$out/configure.log" || {
  echo "gpu-check: CMake did not find a CUDA LibTorch"; exit 1; }

step "building with $jobs jobs"
cmake --build "$build" -j "$jobs" --target clip_server clip_client device_test \
  clip_model_test metrics_test embedding_engine_test device_image_preprocessor_test \
  model_benchmark image_benchmark \
  >"$out/build.log" 2>&1 || { grep -B2 -A10 'error' "$out/build.log" | head -60; exit 1; }

step "the *_CUDA tests"
status=0
for t in device_test clip_model_test metrics_test embedding_engine_test \
  device_image_preprocessor_test; do
  "$build/tests/$t" --gtest_filter='*_CUDA' >"$out/$t.log" 2>&1 || status=1
  grep -E '^\[ +(OK|FAILED|SKIPPED) +\]' "$out/$t.log" || true
  # A GPU is there (checked above): a *_CUDA test that skips is a failure here.
  if grep -qE '^\[ +SKIPPED +\]' "$out/$t.log"; then status=1; fi
done
[ $status = 0 ] || { echo "gpu-check: a *_CUDA test failed or skipped (logs in $out)"; exit 1; }

step "model benchmark on the GPU (from tensors already on the device)"
"$build/bin/model_benchmark" --benchmark_filter='Cuda' --benchmark_min_time=0.5 \
  --benchmark_format=json >"$out/model_benchmark.json" 2>"$out/model_benchmark.log"

step "JPEG decode, with and without preprocessing, on one CPU core"
"$build/bin/image_benchmark" --benchmark_filter='BM_Decode(AndPreprocess)?Jpeg640x480$' \
  --benchmark_format=json >"$out/image_benchmark.json" 2>/dev/null

step "end to end: clip_server --device=cuda, clip_client bench"
port=50151
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true; server_pid=; fi
}
trap stop_server EXIT
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
    sleep 0.2
  done
  if [ $ready = 0 ]; then
    echo "gpu-check: clip_server --device=cuda did not become healthy"
    tail -20 "$out/server-$label.log"; exit 1
  fi
  for modality in $modalities; do
    "$build/bin/clip_client" --target 127.0.0.1:$port bench --modality $modality \
      -c 64 -k 16 --duration 10s --json >"$out/e2e-$label-$modality.json"
  done
  stop_server
}
e2e fp16
e2e bf16
# Images resized on the GPU: the CPUs only decode.
e2e fp16 image fp16-resize-on-gpu --resize_on_device

step "writing $out/table.md"
"$python" - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
models = {"0": "ViT-B-32", "3": "ViT-L-14"}
rows = ["| what | precision | batch | items/s |", "|---|---|---|---|"]
for b in json.load(open(os.path.join(out, "model_benchmark.json")))["benchmarks"]:
    args = dict(p.split(":") for p in b["name"].split("/")[1:] if ":" in p)
    precision = "fp16" if args.get("fp16") == "1" else "bf16"
    if b["name"].startswith("BM_ImageTowerCuda"):
        what = f"{models[args['model']]} images, in process from GPU tensors"
    else:
        what = f"text tower, {args['tokens']} tokens, in process"
    rows.append(f"| {what} | {precision} | {args['batch']} | {b['items_per_second']:,.0f} |")
for precision in ("fp16", "bf16"):
    for modality in ("image", "text"):
        d = json.load(open(os.path.join(out, f"e2e-{precision}-{modality}.json")))
        what = ("ViT-B-32 served, 640x480 JPEG in" if modality == "image"
                else "ViT-B-32 served, captions")
        errors = sum(d["errors"].values())
        note = f" ({errors} failed requests)" if errors else ""
        rows.append(f"| {what} (c=64, 16 per request){note} | {precision} | dynamic "
                    f"| {d['items_per_s']:,.0f} |")
d = json.load(open(os.path.join(out, "e2e-fp16-resize-on-gpu-image.json")))
errors = sum(d["errors"].values())
note = f" ({errors} failed requests)" if errors else ""
rows.append(f"| ViT-B-32 served, 640x480 JPEG in, resized on the GPU "
            f"(--resize_on_device, c=64, 16 per request){note} | fp16 | dynamic "
            f"| {d['items_per_s']:,.0f} |")
for b in json.load(open(os.path.join(out, "image_benchmark.json")))["benchmarks"]:
    what = ("JPEG 640x480 decode + preprocess" if "AndPreprocess" in b["name"]
            else "JPEG 640x480 decode only (what --resize_on_device leaves the CPU)")
    rows.append(f"| {what}, one CPU core | - | 1 | {b['items_per_second']:,.0f} |")
open(os.path.join(out, "table.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
step "done: copy $out/table.md to bench/gpu_results.md for docs/PERFORMANCE.md"
