#!/usr/bin/env bash
# Real-size runs of the CUDA backend on one GPU, from a bundle made by scripts/gpu_bundle.sh:
#   bash scripts/gpu_real_size.sh [BUNDLE] [OUT] [SCRATCH]   (gpu-bundle, gpu-results, /tmp/nh)
# 1. Nemotron-H-8B's widths with the first 13 of its 52 layers (M-M-M-M*-M-M-: 6 Mamba,
#    1 attention, 6 MLP, the full pattern's proportions; 2.8 B parameters), trained 20 steps at
#    seq_length 8192 by `nemotronh train` (bf16, fp32 masters, AdamW) on the first run's corpus.
#    Full AdamW state of all 52 layers (16 bytes per parameter, 130 GB) does not fit one GPU.
# 2. The full 52-layer 8B written by `nemotronh init` (bf16 on disk), loaded and run forward +
#    backward at seq_length 8192 with every layer recomputed (no optimizer).
# 3. Step times of the 9-layer slice M-M-M-M*- at 8192 tokens, without recompute.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu-bundle}
out=${2:-gpu-results}
scratch=${3:-/tmp/nh}
mkdir -p "$out" "$scratch"
run() { "$bundle/run.sh" "$@"; }
timed() {  # timed NAME COMMAND...
  local name=$1 start=$SECONDS
  shift
  "$@" > "$out/$name.txt" 2>&1 || echo "FAILED: $name (see $out/$name.txt)"
  echo "$name: $((SECONDS - start)) s" | tee -a "$out/times.txt"
}
# The first run's corpus and byte-level tokenizer (and a tiny model trained on them).
[ -f "$scratch/first-run/data/corpus.jsonl" ] || run nemotronh train --out "$scratch/first-run" > /dev/null 2>&1
timed quarter_8b_train run nemotronh train --recipe configs/recipes/nemotron-h-8b-pretrain.yaml \
  --out "$scratch/quarter-8b" --set hybrid_override_pattern=M-M-M-M*-M-M- \
  --set global_batch_size=1 --set micro_batch_size=1 --set max_steps=20 --set warmup_steps=2 \
  --set eval_interval=0 --set save_interval=0 --set log_interval=1 --set split=100,0,0 \
  --set data.0.path="$scratch/first-run/data/corpus.jsonl" --set data.0.type=text \
  --set tokenizer="$scratch/first-run/data/tokenizer.json" --set device=cuda
cp "$scratch/quarter-8b/metrics.jsonl" "$out/quarter_8b_metrics.jsonl"
du -sh "$scratch/quarter-8b/checkpoints" >> "$out/quarter_8b_train.txt"
rm -rf "$scratch/quarter-8b"
timed full_8b_init run nemotronh init --preset nemotron-h-8b --out "$scratch/8b"
timed full_8b_step run nemotronh-bench-step --model "$scratch/8b" --seq 8192 --recompute all \
  --optimizer none --steps 3 --warmup 1
rm -rf "$scratch/8b"
timed slice_step run nemotronh-bench-step --model nemotron-h-8b --pattern M-M-M-M*- --seq 8192 \
  --steps 5 --warmup 2
tail -3 "$out/quarter_8b_train.txt"
cat "$out/full_8b_step.txt" "$out/slice_step.txt"
