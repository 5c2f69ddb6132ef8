#!/usr/bin/env bash
# The side-by-side table of docs/PERFORMANCE.md, on a GPU machine, from a bundle made by
# scripts/gpu_bundle.sh and the peer stack assembled as ../shared/peer/README describes:
#   bash scripts/perf_side_by_side.sh [BUNDLE] [PEER] [OUT]     (gpu-bundle, .peer, perf-results)
# Times our ops, layers and the 8B-width slice's training step (nemotronh-bench), then the
# peer's at the same shapes (tools/peer_bench.py), one after the other on the same GPU, and
# writes OUT/ours.jsonl, OUT/peer.jsonl and OUT/table.md (tools/perf_table.py); with
# WRITE_DOC=1 the table replaces the side-by-side section of docs/PERFORMANCE.md.
# Extra arguments for both benchmarks go in BENCH_ARGS (e.g. "--only ssd,attention").
# If PEER holds causal-conv1d's sources without a built extension, it is built first (sm_90,
# a few minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu-bundle}
peer=$(cd "${2:-.peer}" && pwd)
out=${3:-perf-results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
if ! ls "$peer"/src/cc/causal_conv1d_cuda*.so > /dev/null 2>&1; then
  (cd "$peer/src/cc" && MAX_JOBS=16 python3 ../../build_cc.py build_ext --inplace \
    > "$out/peer_build.log" 2>&1) &
  build=$!
fi
# shellcheck disable=SC2086
"$bundle/run.sh" nemotronh-bench ${BENCH_ARGS:-} > "$out/ours.jsonl" 2> "$out/ours.err" ||
  echo "nemotronh-bench failed: see $out/ours.err"
[ -n "${build:-}" ] && wait "$build"
# shellcheck disable=SC2086
PYTHONPATH="$peer:$peer/src:$peer/src/cc:${PYTHONPATH:-}" python3 tools/peer_bench.py \
  ${BENCH_ARGS:-} > "$out/peer.jsonl" 2> "$out/peer.err" || echo "peer_bench failed: see $out/peer.err"
title="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date +%F)"
python3 tools/perf_table.py "$out/ours.jsonl" "$out/peer.jsonl" --title "$title" > "$out/table.md"
if [ "${WRITE_DOC:-0}" = 1 ]; then
  python3 tools/perf_table.py "$out/ours.jsonl" "$out/peer.jsonl" --title "$title" \
    --write docs/PERFORMANCE.md
fi
cat "$out/table.md"
