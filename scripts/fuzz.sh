#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for N seconds
# (default 60) on its seed corpus. Crashes are written to build-fuzz/crashes/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNH_FUZZ=ON \
  -DNH_TESTS=OFF -DNH_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzzers
mkdir -p build-fuzz/crashes
for corpus in fuzz/corpus/*/; do
  name=$(basename "$corpus")
  work=build-fuzz/corpus-$name
  mkdir -p "$work"
  echo "fuzzing $name for ${seconds}s"
  "build-fuzz/fuzz/${name}_fuzz" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix=build-fuzz/crashes/"$name"- "$work" "$corpus" 2>&1 |
    grep -E "stat::number_of_executed_units|Done|ERROR|crash" || true
  test "${PIPESTATUS[0]}" -eq 0 || { echo "fuzzer $name found a failure"; exit 1; }
done
