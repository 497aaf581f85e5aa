#!/usr/bin/env bash
# Installs every Debian package clipserve needs to build, test and run.
# Idempotent: packages already present are skipped, and apt-get is not called at all
# when nothing is missing. Debian bookworm packages only; run as root or with sudo.
#
#   bash scripts/install-deps.sh [EXTRA_PACKAGE...]
#       the extra packages too, in the same apt-get call (the Dockerfile adds patchelf)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-14 clang-format
  libclang-rt-14-dev
  # RPC and messages; google/rpc/*.proto come from the gogo googleapis package
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  golang-github-gogo-googleapis-dev
  # core libraries
  libabsl-dev libgoogle-glog-dev libgflags-dev libre2-dev zlib1g-dev
  # tcmalloc: keeps freed activation memory instead of faulting it in every batch
  libgoogle-perftools-dev
  nlohmann-json3-dev libcpp-httplib-dev libcli11-dev
  # metrics registry and Prometheus text format (clipserve links only its core part)
  prometheus-cpp-dev
  # tensors; without libopenblas0-openmp Debian's LibTorch falls back to reference BLAS
  libtorch-dev libopenblas0-openmp
  # the headers of the oneDNN LibTorch links: int8 products call its matmul directly
  libdnnl-dev
  # images
  libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # reference pipelines and interop tests (always called as /usr/bin/python3)
  python3 python3-torch python3-torchvision python3-pil python3-numpy python3-grpcio
  python3-protobuf
  # bench/run-benchmarks.sh draws docs/performance.png
  python3-matplotlib
  # deployment manifest checks (tests/deploy/manifests_test.py)
  python3-yaml
  # the interop tests make their TLS certificates with the openssl command
  openssl
  # tests/interop/slow_reader_test.py drives HTTP/2 by hand, as no gRPC client can
  python3-h2
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} missing packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
