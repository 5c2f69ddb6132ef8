#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, from a bundle made by scripts/gpu_bundle.sh:
#   bash scripts/gpu_checks.sh [BUNDLE] [OUT]        (defaults: gpu-bundle, gpu-results)
# 1. the op harness and the whole-model GPU tests (nemotronh-test-ops),
# 2. nemotronh verify --device cuda on every reference case, in bf16 and in fp32,
# 3. the built-in first run trained on the GPU,
# 4. LoRA/QLoRA from the command line (tests/e2e/lora.sh) on the GPU.
# Each step's output and time go to OUT/; the exit status is nonzero when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu-bundle}
out=${2:-gpu-results}
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: runs it, logs its output and wall time
  local name=$1
  shift
  local start=$SECONDS
  "$@" > "$out/$name.txt" 2>&1 || { status=1; echo "FAILED: $name (see $out/$name.txt)"; }
  echo "$name: $((SECONDS - start)) s" | tee -a "$out/times.txt"
}
step ops "$bundle/run.sh" tests/nemotronh-test-ops
verify_all() {
  local failed=0
  for dir in tests/data/reference/*/; do
    for dtype in bf16 fp32; do
      echo "== $(basename "$dir") $dtype"
      "$bundle/run.sh" nemotronh verify --device cuda --dtype "$dtype" --model "$dir" \
        --reference "$dir/reference.safetensors" || failed=1
      # bf16 moves a routing decision or two of the MoE cases' adapted models (docs/DEVELOPING.md):
      # their LoRA references are checked in fp32.
      if [ -d "$dir/lora" ] && ! { [ "$dtype" = bf16 ] && grep -q '"moe"' "$dir/config.json"; }; then
        echo "== $(basename "$dir") lora $dtype"
        "$bundle/run.sh" nemotronh verify --device cuda --dtype "$dtype" --model "$dir" \
          --adapter "$dir/lora" --reference "$dir/lora/reference.safetensors" || failed=1
      fi
    done
  done
  return $failed
}
step verify verify_all
step first_run "$bundle/run.sh" nemotronh train --out "$out/first-run"
# The LoRA/QLoRA command-line test on the GPU (tests/e2e/lora.sh) through a wrapper program.
printf '#!/usr/bin/env bash\nexec %s/run.sh nemotronh "$@"\n' "$(realpath "$bundle")" > "$out/nh"
chmod +x "$out/nh"
step lora env NH_TEST_DEVICE=cuda bash tests/e2e/lora.sh "$out/nh" "$PWD"
grep -E "passed|FAILED" "$out/ops.txt" | tail -3
grep -E "^==|tensors within|FAIL" "$out/verify.txt"
tail -2 "$out/first_run.txt"
tail -1 "$out/lora.txt"
exit $status
