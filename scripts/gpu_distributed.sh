#!/usr/bin/env bash
# Data, tensor and expert parallelism on the GPUs of one machine through NCCL, one process per
# GPU started with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
#   bash scripts/gpu_distributed.sh [BUNDLE] [OUT]     (BUNDLE from scripts/gpu_bundle.sh)
# 0. The communicator tests through NCCL (tests/mpi/communicator_test.cpp as nemotronh-test-nccl).
# 1. Agreement: the first run's model in bf16 on 1 GPU and on 2 GPUs (data parallel, plain and
#    with the distributed optimizer, and tensor parallel with and without sequence parallelism)
#    at the same global batch;
#    OUT/agreement.txt lists the losses.
# 2. Throughput: the 8B-width slice M-M-M-M*- at T = 8192 with two micro-batches of one sequence
#    per GPU and step, on 1 GPU and on 2 (data parallel, plain and distributed optimizer).
#    OUT/throughput.txt gives tokens/s per GPU (median over the steps after the first two), the
#    scaling efficiency against 1 GPU and the peak memory per GPU.
# 3. Experts: the tiny MoE model on 1 GPU and with expert parallelism over 2 (agreement), and a
#    slice of Nemotron 3 Nano 30B-A3B (`MEM*E`: two MoE layers of 128 experts) on 1 GPU and
#    with EP = 2 (throughput), written to OUT/moe.txt.
# 4. Tensor parallel: the same slice over 2 GPUs, without and with sequence parallelism, against
#    1 GPU on the same batch; OUT/tp.txt.
# PARTS (default "nccl agreement slice tp moe") picks the parts to run.
set -euo pipefail
bundle=${1:-gpu-bundle}
out=${2:-dist-results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off
port=29611
parts=" ${PARTS:-nccl agreement slice tp moe} "
want() { [[ "$parts" == *" $1 "* ]]; }

# per_gpu GPUS LOG PROGRAM ARGS...: one process per GPU; fails when any rank fails.
per_gpu() {
  local n=$1 log=$2 pids=() rc=0
  shift 2
  port=$((port + 2))
  for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$bundle/run.sh" "$@" >"$log.rank$r.out" 2>"$log.rank$r.log" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  [ "$rc" = 0 ] || { tail -5 "$log".rank*.log "$log".rank*.out; return "$rc"; }
}

# launch GPUS RUN_DIR ARGS...: `nemotronh train` once per GPU.
launch() {
  local n=$1 dir=$2
  shift 2
  per_gpu "$n" "$dir" nemotronh train --out "$dir" "$@"
}

if want nccl; then
  per_gpu 2 "$out/nccl-test" tests/nemotronh-test-nccl
  grep -h "PASSED\|FAILED" "$out"/nccl-test.rank*.out | tee "$out/nccl-test.txt"
fi

# timed GPUS RUN ARGS...: a throughput run; each ends with a checkpoint (31 GB for the 8B-width
# slice: bf16 weights, fp32 masters and moments), dropped once written.
timed() {
  launch "$@"
  rm -rf "$2/checkpoints"
}

tiny=(--set device=cuda --set precision=bf16 --set max_steps=20 --set warmup_steps=2
  --set global_batch_size=8 --set micro_batch_size=2 --set eval_interval=0 --set log_interval=1
  --set sample_prompt=)
if want agreement; then
  launch 1 "$out/tiny-1gpu" "${tiny[@]}"
  launch 2 "$out/tiny-2gpu" "${tiny[@]}"
  launch 2 "$out/tiny-2gpu-zero" "${tiny[@]}" --set use_distributed_optimizer=true
  launch 2 "$out/tiny-2gpu-tp2" "${tiny[@]}" --set tensor_model_parallel_size=2
  launch 2 "$out/tiny-2gpu-tp2-sp" "${tiny[@]}" --set tensor_model_parallel_size=2 \
    --set sequence_parallel=true
  python3 tools/dist_summary.py agreement "$out" tiny-1gpu tiny-2gpu tiny-2gpu-zero \
    tiny-2gpu-tp2 tiny-2gpu-tp2-sp | tee "$out/agreement.txt"
fi

slice=(--set device=cuda --set precision=bf16 --set model=nemotron-h-8b
  --set hybrid_override_pattern=M-M-M-M*- --set seq_length=8192 --set micro_batch_size=1
  --set max_steps=8 --set warmup_steps=1 --set eval_interval=0 --set log_interval=1
  --set sample_prompt= --set keep_last=1 --set lr=3e-4 --set min_lr=3e-5)
if want slice || want tp; then
  timed 1 "$out/slice-1gpu" "${slice[@]}" --set global_batch_size=2
fi
if want slice; then
  timed 2 "$out/slice-2gpu" "${slice[@]}" --set global_batch_size=4
  timed 2 "$out/slice-2gpu-zero" "${slice[@]}" --set global_batch_size=4 \
    --set use_distributed_optimizer=true
  python3 tools/dist_summary.py throughput "$out" slice-1gpu slice-2gpu slice-2gpu-zero |
    tee "$out/throughput.txt"
fi
if want tp; then
  timed 2 "$out/slice-2gpu-tp2" "${slice[@]}" --set global_batch_size=2 \
    --set tensor_model_parallel_size=2
  timed 2 "$out/slice-2gpu-tp2-sp" "${slice[@]}" --set global_batch_size=2 \
    --set tensor_model_parallel_size=2 --set sequence_parallel=true
  python3 tools/dist_summary.py throughput "$out" slice-1gpu slice-2gpu-tp2 slice-2gpu-tp2-sp |
    tee "$out/tp.txt"
fi

if want moe; then
  python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["vocab_size"] = 264
json.dump(c, open(sys.argv[2], "w"))' configs/models/tiny-moe.json "$out/tiny-moe.json"
  launch 1 "$out/moe-tiny-1gpu" "${tiny[@]}" --set model="$out/tiny-moe.json"
  launch 2 "$out/moe-tiny-ep2" "${tiny[@]}" --set model="$out/tiny-moe.json" \
    --set expert_model_parallel_size=2
  moe=("${slice[@]}" --set model=nemotron-3-nano-30b-a3b --set hybrid_override_pattern='MEM*E')
  timed 1 "$out/moe-slice-1gpu" "${moe[@]}" --set global_batch_size=2
  timed 2 "$out/moe-slice-ep2" "${moe[@]}" --set global_batch_size=4 \
    --set expert_model_parallel_size=2
  {
    python3 tools/dist_summary.py agreement "$out" moe-tiny-1gpu moe-tiny-ep2
    python3 tools/dist_summary.py throughput "$out" moe-slice-1gpu moe-slice-ep2
  } | tee "$out/moe.txt"
fi
