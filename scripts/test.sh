#!/usr/bin/env bash
# Builds clipserve and runs the whole test suite:
#   1. the release preset (build/): every unit, integration and interop test (CTest);
#   2. the asan preset (build-asan/, clang + ASan + UBSan, leak checks on): every
#      unit and integration test, the model, the engine and the server end to end
#      included (not the interop tests), built without direct calls to oneDNN (the
#      LibTorch fallbacks the CUDA image runs);
#   3. the tsan preset (build-tsan/, clang + ThreadSanitizer): every unit and
#      integration test (batcher, engine, caches, the gRPC service, the server end to
#      end), not the interop tests;
#   4. the fuzz preset (build-fuzz/, clang + ASan/UBSan): each libFuzzer target for
#      CLIPSERVE_FUZZ_SECONDS (default 30), seeded from ../shared and tests/fuzz.
# Installs missing Debian packages first. Extra arguments go to the release ctest
# (for example: scripts/test.sh -L unit, or -R Tokenizer). CLIPSERVE_SKIP_ASAN=1 skips
# step 2, CLIPSERVE_SKIP_TSAN=1 step 3, CLIPSERVE_SKIP_FUZZ=1 step 4.
#
# Each tree's generated model fixtures (630 MB; every ctest run that needs them writes
# them afresh) are deleted once its tests pass, so that the four trees fit on a
# smaller disk: a CI machine once ran out of space in the second.
set -euo pipefail
cd "$(dirname "$0")/.."

drop_fixtures() { rm -rf "$1/tests/fixtures"; }

bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release
ctest --preset release "$@"
drop_fixtures build

if [ "${CLIPSERVE_SKIP_ASAN:-0}" != 1 ]; then
  cmake --preset asan
  cmake --build --preset asan
  ctest --preset asan
  drop_fixtures build-asan
fi

if [ "${CLIPSERVE_SKIP_TSAN:-0}" != 1 ]; then
  cmake --preset tsan
  cmake --build --preset tsan
  ctest --preset tsan
  drop_fixtures build-tsan
fi

if [ "${CLIPSERVE_SKIP_FUZZ:-0}" != 1 ]; then
  cmake --preset fuzz -DCLIPSERVE_FUZZ_SECONDS="${CLIPSERVE_FUZZ_SECONDS:-30}"
  cmake --build --preset fuzz
  ctest --preset fuzz
fi
