#!/usr/bin/env bash
# Data parallelism on the GPUs of one machine through NCCL, one process per GPU started with
# torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
#   bash scripts/gpu_distributed.sh [BUNDLE] [OUT]     (BUNDLE from scripts/gpu_bundle.sh)
# 0. The communicator tests through NCCL (tests/mpi/communicator_test.cpp as nemotronh-test-nccl).
# 1. Agreement: the first run's model in bf16 on 1 GPU and on 2 GPUs (data parallel, plain and
#    with the distributed optimizer, and tensor parallel) at the same global batch;
#    OUT/agreement.txt lists the losses.
# 2. Throughput: the 8B-width slice M-M-M-M*- at T = 8192 with two micro-batches of one sequence
#    per GPU and step, on 1 GPU and on 2 (data parallel, plain and distributed optimizer); and
#    tensor parallel over 2 GPUs with two micro-batches per step. OUT/throughput.txt gives
#    tokens/s per GPU (median over the steps after the first two), the scaling efficiency against
#    1 GPU and the peak memory per GPU.
set -euo pipefail
bundle=${1:-gpu-bundle}
out=${2:-dist-results}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off
port=29611

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

per_gpu 2 "$out/nccl-test" tests/nemotronh-test-nccl
grep -h "PASSED\|FAILED" "$out"/nccl-test.rank*.out | tee "$out/nccl-test.txt"

tiny=(--set device=cuda --set precision=bf16 --set max_steps=20 --set warmup_steps=2
  --set global_batch_size=8 --set micro_batch_size=2 --set eval_interval=0 --set log_interval=1
  --set sample_prompt=)
launch 1 "$out/tiny-1gpu" "${tiny[@]}"
launch 2 "$out/tiny-2gpu" "${tiny[@]}"
launch 2 "$out/tiny-2gpu-zero" "${tiny[@]}" --set use_distributed_optimizer=true
launch 2 "$out/tiny-2gpu-tp2" "${tiny[@]}" --set tensor_model_parallel_size=2
python3 - "$out" <<'PY' | tee "$out/agreement.txt"
import json, sys
out = sys.argv[1]
def losses(run):
    return [j["loss"] for j in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if "loss" in j]
ref = losses("tiny-1gpu")
for run in ("tiny-2gpu", "tiny-2gpu-zero", "tiny-2gpu-tp2"):
    got = losses(run)
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    print(f"{run}: {len(got)} steps, worst relative loss difference to 1 GPU {worst:.2e}")
print("1 GPU losses:", " ".join(f"{x:.4f}" for x in ref))
PY

slice=(--set device=cuda --set precision=bf16 --set model=nemotron-h-8b
  --set hybrid_override_pattern=M-M-M-M*- --set seq_length=8192 --set micro_batch_size=1
  --set max_steps=8 --set warmup_steps=1 --set eval_interval=0 --set log_interval=1
  --set sample_prompt= --set keep_last=1 --set lr=3e-4 --set min_lr=3e-5)
# Each run ends with a checkpoint of about 31 GB (bf16 weights, fp32 masters and moments): the
# script keeps its step timings and drops it.
launch 1 "$out/slice-1gpu" "${slice[@]}" --set global_batch_size=2
rm -rf "$out/slice-1gpu/checkpoints"
launch 2 "$out/slice-2gpu" "${slice[@]}" --set global_batch_size=4
rm -rf "$out/slice-2gpu/checkpoints"
launch 2 "$out/slice-2gpu-zero" "${slice[@]}" --set global_batch_size=4 \
  --set use_distributed_optimizer=true
rm -rf "$out/slice-2gpu-zero/checkpoints"
launch 2 "$out/slice-2gpu-tp2" "${slice[@]}" --set global_batch_size=2 \
  --set tensor_model_parallel_size=2
rm -rf "$out/slice-2gpu-tp2/checkpoints"
python3 - "$out" <<'PY' | tee "$out/throughput.txt"
import json, statistics, sys
out = sys.argv[1]
def run(name, gpus):
    steps = [j for j in map(json.loads, open(f"{out}/{name}/metrics.jsonl")) if "loss" in j]
    tps = statistics.median(j["tokens"] / j["seconds"] for j in steps[2:])
    mem = max(j.get("gpu_memory_peak_gib", 0) for j in steps)
    return tps / gpus, mem, statistics.median(j["seconds"] for j in steps[2:])
base, base_mem, base_s = run("slice-1gpu", 1)
print(f"slice-1gpu: {base:.0f} tokens/s per GPU, {base_s * 1e3:.0f} ms/step, peak {base_mem:.1f} GiB")
for name in ("slice-2gpu", "slice-2gpu-zero", "slice-2gpu-tp2"):
    per_gpu, mem, s = run(name, 2)
    print(f"{name}: {per_gpu:.0f} tokens/s per GPU, {s * 1e3:.0f} ms/step, "
          f"scaling efficiency {per_gpu / base:.1%}, peak {mem:.1f} GiB (rank 0)")
PY
