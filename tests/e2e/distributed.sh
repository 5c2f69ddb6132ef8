#!/usr/bin/env bash
# `nemotronh train` on CPU ranks under mpiexec, against one process on the same recipe:
#   - data parallel over 2 ranks, plain and with the distributed optimizer, tensor parallel over
#     2 (with and without sequence parallelism), and both over 4 ranks, log the losses of the
#     single process;
#   - a checkpoint of 2 ranks with the distributed optimizer resumes in one process, and one of
#     a single process resumes on 4 ranks with the distributed optimizer, each continuing the
#     single process's losses;
#   - tensor-parallel checkpoints resume at their own tensor-parallel size and at another one
#     (2 ranks with the distributed optimizer onto 1 process, 1 process onto 2 ranks);
#   - a LoRA adapter with the distributed optimizer over 2 ranks logs the single process's
#     losses;
#   - expert parallelism over 2 ranks, and with the distributed optimizer over 4, log the
#     single process's losses on the MoE model, and resume across expert-parallel sizes;
#   - a world the recipe's batch does not divide, and layouts not built, stop before any work.
# Losses are compared at 1e-5 relative: the ranks add the same gradients in another order.
set -euo pipefail
bin=$1
src=$2
command -v mpiexec >/dev/null || { echo "no mpiexec: skipped"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
recipe=(--set max_steps=6 --set warmup_steps=1 --set global_batch_size=8 --set micro_batch_size=2
  --set seq_length=64 --set save_interval=3 --set keep_last=4 --set sample_prompt=)

train() {  # train RANKS OUT ARGS...
  local ranks=$1 out=$2
  shift 2
  if [ "$ranks" = 1 ]; then
    "$bin" train --out "$out" "${recipe[@]}" "$@" 2>"$out.log"
  else
    mpiexec -n "$ranks" "$bin" train --out "$out" "${recipe[@]}" "$@" 2>"$out.log"
  fi
}

same_losses() {  # same_losses RUN REFERENCE
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return {j["step"]: j["loss"] for j in map(json.loads, open(path)) if "loss" in j}
got, want = losses(sys.argv[1]), losses(sys.argv[2])
assert sorted(got) == sorted(want), f"{sys.argv[1]}: steps {sorted(got)}, expected {sorted(want)}"
for s in want:
    assert abs(got[s] - want[s]) <= 1e-5 * abs(want[s]), f"{sys.argv[1]} step {s}: {got[s]} vs {want[s]}"
print(f"{sys.argv[1]}: {len(want)} losses match")
PY
}

# Resumes a copy of RUN from its step-3 checkpoint.
from_step3() {  # from_step3 RUN COPY
  cp -r "$1" "$2"
  rm -rf "$2/checkpoints/step-00000006"
  echo step-00000003 >"$2/checkpoints/latest"
}

train 1 "$tmp/one"
train 2 "$tmp/dp2"
same_losses "$tmp/dp2" "$tmp/one"
train 2 "$tmp/zero2" --set use_distributed_optimizer=true --set ddp_bucket_size=20000
same_losses "$tmp/zero2" "$tmp/one"
ls "$tmp/zero2/checkpoints/step-00000003/training_state-00001-of-00002.safetensors" >/dev/null

train 2 "$tmp/tp2" --set tensor_model_parallel_size=2
same_losses "$tmp/tp2" "$tmp/one"
train 4 "$tmp/tp2-zero2" --set tensor_model_parallel_size=2 --set use_distributed_optimizer=true
same_losses "$tmp/tp2-zero2" "$tmp/one"
from_step3 "$tmp/tp2-zero2" "$tmp/tp2-zero2-again"
train 4 "$tmp/tp2-zero2-again" --resume --set tensor_model_parallel_size=2 \
  --set use_distributed_optimizer=true
same_losses "$tmp/tp2-zero2-again" "$tmp/one"
# Sequence parallel: the residual stream, norms and loss on each rank's half of the tokens.
train 2 "$tmp/tp2-sp" --set tensor_model_parallel_size=2 --set sequence_parallel=true
same_losses "$tmp/tp2-sp" "$tmp/one"
train 4 "$tmp/tp2-sp-zero2" --set tensor_model_parallel_size=2 --set sequence_parallel=true \
  --set use_distributed_optimizer=true
same_losses "$tmp/tp2-sp-zero2" "$tmp/one"
from_step3 "$tmp/tp2-sp-zero2" "$tmp/tp2-sp-zero2-on-1"
train 1 "$tmp/tp2-sp-zero2-on-1" --resume
same_losses "$tmp/tp2-sp-zero2-on-1" "$tmp/one"

# Tensor and data parallel without the distributed optimizer: only the first data-parallel rank
# writes its shard's state.
train 4 "$tmp/tp2-dp2" --set tensor_model_parallel_size=2
same_losses "$tmp/tp2-dp2" "$tmp/one"
from_step3 "$tmp/tp2-dp2" "$tmp/tp2-dp2-on-1"
train 1 "$tmp/tp2-dp2-on-1" --resume
same_losses "$tmp/tp2-dp2-on-1" "$tmp/one"

# Another tensor-parallel size: the optimizer state is split again.
from_step3 "$tmp/tp2-zero2" "$tmp/tp2-zero2-on-1"
train 1 "$tmp/tp2-zero2-on-1" --resume
same_losses "$tmp/tp2-zero2-on-1" "$tmp/one"
from_step3 "$tmp/one" "$tmp/one-on-tp2"
train 2 "$tmp/one-on-tp2" --resume --set tensor_model_parallel_size=2
same_losses "$tmp/one-on-tp2" "$tmp/one"

from_step3 "$tmp/zero2" "$tmp/zero2-on-1"
train 1 "$tmp/zero2-on-1" --resume
same_losses "$tmp/zero2-on-1" "$tmp/one"
from_step3 "$tmp/one" "$tmp/one-on-4"
train 4 "$tmp/one-on-4" --resume --set use_distributed_optimizer=true
same_losses "$tmp/one-on-4" "$tmp/one"
ls "$tmp/one-on-4/checkpoints/step-00000006/training_state-00003-of-00004.safetensors" >/dev/null

# A LoRA adapter on the single run's model, with the distributed optimizer over 2 ranks.
lora=(--set adapter=lora --set "init_from=$tmp/one/checkpoints/step-00000006" --set lora_dropout=0
  --set lora_target_linear=true)
train 1 "$tmp/lora-one" "${lora[@]}"
train 2 "$tmp/lora-zero2" "${lora[@]}" --set use_distributed_optimizer=true
same_losses "$tmp/lora-zero2" "$tmp/lora-one"

# Expert parallelism on the MoE preset, with the first run's vocabulary.
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["vocab_size"] = 264
json.dump(c, open(sys.argv[2], "w"))' "$src/configs/models/tiny-moe.json" "$tmp/moe.json"
moe=(--set "model=$tmp/moe.json")
train 1 "$tmp/moe-one" "${moe[@]}"
train 2 "$tmp/moe-ep2" "${moe[@]}" --set expert_model_parallel_size=2
same_losses "$tmp/moe-ep2" "$tmp/moe-one"
train 4 "$tmp/moe-ep2-zero" "${moe[@]}" --set expert_model_parallel_size=2 \
  --set use_distributed_optimizer=true
same_losses "$tmp/moe-ep2-zero" "$tmp/moe-one"
from_step3 "$tmp/moe-ep2-zero" "$tmp/moe-ep2-zero-on-1"
train 1 "$tmp/moe-ep2-zero-on-1" "${moe[@]}" --resume
same_losses "$tmp/moe-ep2-zero-on-1" "$tmp/moe-one"
from_step3 "$tmp/moe-one" "$tmp/moe-one-on-ep2"
train 2 "$tmp/moe-one-on-ep2" "${moe[@]}" --resume --set expert_model_parallel_size=2
same_losses "$tmp/moe-one-on-ep2" "$tmp/moe-one"

# Layouts that cannot run: one line naming the key, nothing trained.
expect_error() {  # expect_error KEY RANKS ARGS...
  local key=$1 ranks=$2
  shift 2
  if train "$ranks" "$tmp/bad" "$@"; then
    echo "no error for $key"
    exit 1
  fi
  grep -q "$key" "$tmp/bad.log" || { cat "$tmp/bad.log"; exit 1; }
  [ ! -e "$tmp/bad/checkpoints" ] || { echo "$key: a checkpoint was written"; exit 1; }
  rm -rf "$tmp/bad" "$tmp/bad.log"
}
expect_error global_batch_size 3
expect_error tensor_model_parallel_size 2 --set tensor_model_parallel_size=3
expect_error expert_model_parallel_size 2 "${moe[@]}" --set expert_model_parallel_size=4
echo "distributed: all checks passed"
