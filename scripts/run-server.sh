#!/usr/bin/env bash
# Builds clip_server (release preset, build/) and runs it in the foreground on its
# built-in default model. Installs missing Debian packages first. Arguments are passed
# to clip_server (see build/bin/clip_server --help), e.g. --port=50052
# --metrics_port=9091 for a second server beside the first. The server runs in the
# caller's folder, so relative paths in them (--model=..., --tls_cert=...) mean there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

(
  cd "$root"
  bash scripts/install-deps.sh
  cmake --preset release
  cmake --build --preset release --target clip_server clip_client
)
exec "$root/build/bin/clip_server" "$@"
