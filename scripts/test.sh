#!/usr/bin/env bash
# Builds clipserve (release preset, build/) and runs the whole test suite with CTest.
# Installs missing Debian packages first. Extra arguments go to ctest
# (for example: scripts/test.sh -L unit, or -R Tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release
ctest --preset release "$@"
