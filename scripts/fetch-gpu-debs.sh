#!/usr/bin/env bash
# Downloads, on a Debian bookworm machine with access to Debian's archive, the .deb
# files that scripts/gpu-check.sh builds clipserve against on a GPU machine without
# network access: gRPC, Protobuf, Abseil, glog and the other libraries of
# scripts/install-deps.sh, with the libraries they need, but not the toolchain, the
# C library, LibTorch or Python (the GPU machine brings those: its CUDA build of
# PyTorch carries the LibTorch that clipserve links).
#
#   scripts/fetch-gpu-debs.sh [DIR]      # default third_party/gpu-debs (git-ignored)
#
# Uses `apt-get download` (no root needed once `apt-get update` has run). The folder
# then travels to the GPU machine with the source tree. So does
# third_party/gpu-shared, a copy of the tests' shared material (../shared/images and
# ../shared/clip, or $CLIPSERVE_SHARED_DIR) made here too: the *_CUDA tests read real
# images from it, and ../shared does not travel with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-third_party/gpu-debs}

# What clipserve's CMake finds (scripts/install-deps.sh, minus toolchain, LibTorch
# and Python).
wanted=(
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  golang-github-gogo-googleapis-dev libssl-dev
  libabsl-dev libgoogle-glog-dev libgflags-dev libre2-dev zlib1g-dev
  libgoogle-perftools-dev nlohmann-json3-dev libcpp-httplib-dev libcli11-dev
  prometheus-cpp-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev
  libgtest-dev libgmock-dev libbenchmark-dev pkgconf
)
# Left out of the dependency closure: the C and C++ runtimes and kernel headers (the
# GPU machine's own, at least as new), the alternative libunwind versions, and the
# HTTP/Kerberos stack that only prometheus-cpp's unused push client needs.
skip='^(libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libcrypt.*|libgcc-s1|gcc-.*-base|libstdc\+\+6|libunwind-[0-9]+(-dev)?|libnsl.*|libtirpc.*|rpcsvc-proto|libcurl.*|libgnutls.*|libkrb5.*|libk5crypto.*|libgssapi.*|libkeyutils.*|libcom-err.*|libldap.*|libsasl2.*|librtmp.*|libssh2.*|libpsl.*|libnghttp2.*|libidn2.*|libunistring.*|libnettle.*|libhogweed.*|libgmp.*|libp11-kit.*|libtasn1.*|libffi.*|libdb5.*|libprometheus-cpp-push.*|libprometheus-cpp-pull.*|civetweb|libcivetweb.*)$'

# Stale package lists name versions the archive has replaced (404): refresh them
# first where this user may.
if [ "$(id -u)" = 0 ]; then apt-get update -qq || true; fi
mapfile -t closure < <(
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "${wanted[@]}" |
    grep -v '^[ <]' | sort -u | grep -Ev "$skip")
if [ ${#closure[@]} -eq 0 ]; then
  echo "fetch-gpu-debs: apt-cache found nothing; run apt-get update first" >&2
  exit 1
fi

mkdir -p "$dir"
rm -f "$dir"/*.deb
(cd "$dir" && apt-get download -q "${closure[@]}") || {
  echo "fetch-gpu-debs: download failed; if the archive answered 404, run" \
    "apt-get update (as root) and try again" >&2
  exit 1
}
printf '%s\n' "${closure[@]}" > "$dir/PACKAGES"
echo "fetch-gpu-debs: ${#closure[@]} packages, $(du -sh "$dir" | cut -f1), in $dir"

shared=${CLIPSERVE_SHARED_DIR:-../shared}
if [ -d "$shared/images" ] && [ -d "$shared/clip" ]; then
  rm -rf third_party/gpu-shared
  mkdir -p third_party/gpu-shared
  cp -r "$shared/images" "$shared/clip" third_party/gpu-shared/
  echo "fetch-gpu-debs: test material, $(du -sh third_party/gpu-shared | cut -f1)," \
    "in third_party/gpu-shared"
else
  echo "fetch-gpu-debs: no $shared/images and $shared/clip to copy; the *_CUDA tests" \
    "that read images will fail on the GPU machine" >&2
fi
