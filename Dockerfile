# clipserve container image (CPU).
#
#   docker build -t clipserve .
#   docker run -p 50051:50051 clipserve                      # demo model
#   docker run -p 50051:50051 -v /models:/models:ro clipserve --model=/models/ViT-B-32.pt
#
# The build stage installs the toolchain through scripts/install-deps.sh (the same path
# CI takes) and builds the two binaries (the tests need ../shared, outside the build
# context, so CI runs them instead); the runtime stage holds
# only the binaries and the shared libraries they need, and runs as a non-root user.

FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake --preset release -DCLIPSERVE_BUILD_BENCHMARKS=OFF \
 && cmake --build --preset release --target clip_server clip_client \
 && mkdir -p /out/lib \
 && for b in build/bin/clip_server build/bin/clip_client; do \
      ldd "$b" | awk '/=> \//{print $3}' | xargs -r -I{} cp -Lu {} /out/lib/; \
    done \
 && cp build/bin/clip_server build/bin/clip_client /out/

FROM debian:bookworm-slim
RUN groupadd --system clipserve && useradd --system --gid clipserve --no-create-home clipserve
COPY --from=build /out/lib/ /usr/local/lib/clipserve/
COPY --from=build /out/clip_server /out/clip_client /usr/local/bin/
RUN echo /usr/local/lib/clipserve > /etc/ld.so.conf.d/clipserve.conf && ldconfig
USER clipserve
# gRPC; HTTP /metrics, /healthz, /readyz (--metrics_port)
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["clip_client", "--target=localhost:50051", "--deadline_ms=2000", "health"]
ENTRYPOINT ["clip_server", "--host=0.0.0.0", "--port=50051"]
