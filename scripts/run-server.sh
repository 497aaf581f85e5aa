#!/usr/bin/env bash
# Builds clip_server (release preset, build/) and runs it in the foreground on its
# built-in default model. Installs missing Debian packages first. Arguments are passed
# to clip_server (see build/bin/clip_server --help), e.g. --port=50052
# --metrics_port=9091 for a second server beside the first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release --target clip_server clip_client
exec build/bin/clip_server "$@"
