#!/usr/bin/env bash
# Builds nemotronh and runs the whole CPU test suite, then each fuzzer briefly.
# FUZZ_SECONDS (default 30) sets how long each fuzzer runs; 0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd build && ctest --output-on-failure -j"$(nproc)" -LE cuda) | tee "$log"
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
# The suite's result as the last line, after the fuzzers' output.
sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\)/\2 \1/p' "$log" |
  awk '{print $1 - $2 " passed, " $2 " failed"}'
