# syntax=docker/dockerfile:1
# clipserve container image: CPU (default) or CUDA.
#
#   docker build --build-context shared=../shared -t clipserve .
#   docker build --build-context shared=../shared --build-arg VARIANT=cuda \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04 -t clipserve:cuda .
#   docker run -p 50051:50051 clipserve                       # demo model
#   docker run -p 50051:50051 -v /models:/models:ro clipserve --model=/models/ViT-B-32.pt
#   docker run --gpus all -p 50051:50051 -v /models:/models:ro clipserve:cuda \
#     --device=cuda --model=/models/ViT-B-32.pt
#
# Build stage: Debian bookworm with the toolchain from scripts/install-deps.sh (the same
# path CI takes), everything built with the release preset, then the unit tests
# (ctest -L unit). The tests read the team's shared/ test data, which lives beside the
# checkout and so outside this build context: pass it as the named context `shared`
# (above), or skip the tests with --build-arg RUN_TESTS=0.
#
# VARIANT=cuda also installs NVIDIA's CUDA toolkit (NVIDIA's Debian 12 apt repository)
# and the official CUDA LibTorch archive (LIBTORCH_URL, download.pytorch.org) through
# scripts/install-libtorch-cuda.sh, and builds against that LibTorch instead of
# Debian's CPU one. This needs network access to developer.download.nvidia.com and
# download.pytorch.org during the build: it cannot be built on a machine without it.
#
# Runtime stage: only the two binaries and the shared libraries they load (glibc,
# libstdc++ and libgcc_s come from the runtime image), as uid 10001, on RUNTIME_IMAGE.
# The libraries go to /usr/local/lib/clipserve, which the two binaries name as their
# RPATH (set with patchelf; an RPATH, unlike a RUNPATH, also serves the libraries they
# load): the dynamic linker's cache is left alone, so every other program of the image
# keeps the image's own libraries (a bookworm libssl or libz registered there would
# shadow an Ubuntu base image's newer ones for all of them).
# The CUDA variant must name NVIDIA's CUDA base image for Ubuntu 24.04 there (the
# runtime stage refuses VARIANT=cuda on an image without CUDA): its glibc (2.39) is new
# enough for
# libraries built on bookworm (2.36), which NVIDIA's Ubuntu 22.04 images (2.35) are not;
# the "base" flavour suffices because the LibTorch archive bundles cuDNN, cuBLAS and the
# CUDA runtime. The NVIDIA driver comes from the host (NVIDIA Container Toolkit).
#
# The runtime base is a build argument rather than a stage picked by VARIANT
# (`FROM runtime-${VARIANT}`): podman/buildah skip stages they think unused before
# expanding such a FROM, and then fail to find it. As it is, the file builds with
# Docker (BuildKit) and podman alike (scripts/image-check.sh builds it with podman).

ARG VARIANT=cpu
ARG RUNTIME_IMAGE=debian:bookworm-slim
# The C/C++ runtime (glibc, libstdc++, libgcc_s), which the image copies from no stage:
# the runtime image's own serves the binaries.
ARG RUNTIME_LIBS='/(libc|libm|libmvec|libpthread|libdl|librt|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.so'

# Stand-in for the team's shared/ test data; `--build-context shared=../shared`
# replaces this stage. It holds one marker file so that copying it never fails.
FROM scratch AS shared
COPY README.md /no-shared-test-data/README.md

FROM debian:bookworm AS build
ARG VARIANT
ARG RUN_TESTS=1
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu126/libtorch-cxx11-abi-shared-with-deps-2.6.0%2Bcu126.zip
ARG CUDA_PACKAGES=cuda-toolkit-12-6
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-libtorch-cuda.sh scripts/
RUN bash scripts/install-deps.sh patchelf \
 && case "$VARIANT" in \
      cpu) ;; \
      cuda) bash scripts/install-libtorch-cuda.sh "$LIBTORCH_URL" "$CUDA_PACKAGES" ;; \
      *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN if [ "$VARIANT" = cuda ]; then \
      torch="-DTorch_DIR=/opt/libtorch/share/cmake/Torch -DCUDAToolkit_ROOT=/usr/local/cuda"; \
      export PATH="/usr/local/cuda/bin:$PATH"; \
    fi \
 && cmake --preset release -DCLIPSERVE_BUILD_BENCHMARKS=OFF ${torch:-} \
 && cmake --build --preset release

# /src/../shared is the tests' default shared-data folder.
COPY --from=shared / /shared/
RUN if [ "$RUN_TESTS" = 1 ]; then \
      if [ ! -d /shared/images ]; then \
        echo "no shared test data: build with --build-context shared=../shared" \
             "(or --build-arg RUN_TESTS=0 to skip the unit tests)" >&2; \
        exit 1; \
      fi; \
      CLIPSERVE_SHARED_DIR=/shared ctest --preset release -L unit --output-on-failure; \
    fi

# The binaries, and every shared library they load except the C/C++ runtime the base
# image already has (copying glibc would mix it with the image's ld.so). LibTorch's
# own folder is copied whole: it dlopens libraries (cuDNN engines, NVRTC) ldd misses.
# The binaries find them by their RPATH (see the top of this file).
ARG RUNTIME_LIBS
RUN mkdir -p /out/bin /out/lib \
 && cp build/bin/clip_server build/bin/clip_client /out/bin/ \
 && for b in /out/bin/*; do ldd "$b" | awk '/=> \//{print $3}'; done | sort -u \
    | grep -Ev "$RUNTIME_LIBS" | xargs -r cp -L -t /out/lib/ \
 && if [ -d /opt/libtorch/lib ]; then cp -L /opt/libtorch/lib/*.so* /out/lib/; fi \
 && patchelf --force-rpath --set-rpath /usr/local/lib/clipserve /out/bin/*

FROM ${RUNTIME_IMAGE}
ARG VARIANT
# Read by the NVIDIA Container Toolkit and CUDA only; inert in the CPU image.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_CACHE_PATH=/tmp/cuda-cache
# NVIDIA's CUDA images set CUDA_VERSION.
RUN if [ "$VARIANT" = cuda ] && [ -z "${CUDA_VERSION:-}" ]; then \
      echo "VARIANT=cuda needs a CUDA runtime image:" \
           "--build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04" >&2; \
      exit 1; \
    fi
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER
# (deploy/k8s/base/deployment.yaml runs as the same uid).
RUN groupadd --gid 10001 clipserve \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin clipserve
COPY --from=build /out/lib/ /usr/local/lib/clipserve/
COPY --from=build /out/bin/ /usr/local/bin/
# Fails the build if any library the binaries need is missing from this image, or
# comes from anywhere but the copied folder and the image's C/C++ runtime.
ARG RUNTIME_LIBS
RUN ! ldd /usr/local/bin/clip_server /usr/local/bin/clip_client | grep 'not found' \
 && ! ldd /usr/local/bin/clip_server /usr/local/bin/clip_client \
      | awk '/=> \//{print $3}' | grep -v '^/usr/local/lib/clipserve/' \
      | grep -Ev "$RUNTIME_LIBS"
USER 10001:10001
# 50051: gRPC (clipserve.v1 and grpc.health.v1). 9090: Prometheus /metrics and HTTP
# health (--metrics_port).
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
  CMD ["clip_client", "--target=localhost:50051", "--deadline_ms=2000", "health"]
ENTRYPOINT ["clip_server", "--host=0.0.0.0", "--port=50051"]
