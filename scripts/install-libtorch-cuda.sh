#!/usr/bin/env bash
# Installs what the CUDA variant of the Docker image builds against (Dockerfile,
# VARIANT=cuda): NVIDIA's CUDA toolkit from NVIDIA's Debian 12 apt repository, and the
# official CUDA LibTorch archive from download.pytorch.org, unpacked into /opt/libtorch.
# CMake then picks it over Debian's CPU LibTorch with -DTorch_DIR=/opt/libtorch/share/cmake/Torch.
#
# Needs network access to developer.download.nvidia.com and download.pytorch.org; it
# cannot run on a machine without it. Run as root (the Docker build stage does).
#
#   scripts/install-libtorch-cuda.sh LIBTORCH_URL [CUDA_PACKAGES]
set -euo pipefail

libtorch_url=${1:?usage: install-libtorch-cuda.sh LIBTORCH_URL [CUDA_PACKAGES]}
# LibTorch's CMake config looks for the CUDA toolkit (nvcc, headers, cuBLAS, NVTX...);
# the runtime libraries themselves ship inside the LibTorch archive.
cuda_packages=${2:-cuda-toolkit-12-6}

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl unzip

curl -fsSL -o /tmp/cuda-keyring.deb \
  https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
dpkg -i /tmp/cuda-keyring.deb
rm /tmp/cuda-keyring.deb
apt-get update -qq
# shellcheck disable=SC2086  # a space-separated package list
apt-get install -y -qq --no-install-recommends $cuda_packages

curl -fsSL -o /tmp/libtorch.zip "$libtorch_url"
unzip -q /tmp/libtorch.zip -d /opt
rm /tmp/libtorch.zip
test -f /opt/libtorch/share/cmake/Torch/TorchConfig.cmake
echo "install-libtorch-cuda: $(cat /opt/libtorch/build-version 2>/dev/null || echo LibTorch) in /opt/libtorch"
