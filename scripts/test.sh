#!/usr/bin/env bash
# Builds nemotronh and runs the whole CPU test suite, then each fuzzer briefly.
# FUZZ_SECONDS (default 30) sets how long each fuzzer runs; 0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
(cd build && ctest --output-on-failure -j"$(nproc)" -LE cuda)
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
