#!/usr/bin/env bash
# LoRA and QLoRA from the command line: `train` with an adapter writes PEFT adapter checkpoints
# and resumes from them exactly, gradient checkpointing gives the same adapter with and
# without sample packing, `generate --adapter` gives the tokens of the model `merge`
# writes, a QLoRA run holds its base in NF4, peft reads what we write and computes the same
# (when torch and peft are installed), and bad settings are one line with exit code 2.
# NH_TEST_DEVICE=cuda runs on the GPU (default cpu).
set -uo pipefail
nemotronh=$1 source_dir=$2
device=${NH_TEST_DEVICE:-cpu}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

bash "$source_dir/tests/e2e/make_text_model.sh" "$nemotronh" "$tmp/base" "$tmp/first"
common=(--recipe "$source_dir/configs/recipes/tiny-lora.yaml" --set init_from="$tmp/base"
        --set data.0.path="$source_dir/configs/data/tiny-chats.jsonl" --set device="$device"
        --set max_steps=5 --set warmup_steps=1 --set eval_interval=0 --set sample_prompt=
        --set lora_target_linear=false
        --set "lora_target_modules=[in_proj,q_proj,k_proj,v_proj,o_proj,up_proj,down_proj]")
adapter_of() { echo "$1/checkpoints/step-0000000$2"; }

# A straight run with a checkpoint at step 3, and a run resumed from that checkpoint.
"$nemotronh" train "${common[@]}" --set out="$tmp/a" --set save_interval=3 --set keep_last=5 \
  > /dev/null 2>&1 || fail "lora train"
[ -f "$(adapter_of "$tmp/a" 5)/adapter_model.safetensors" ] && ok || fail "adapter checkpoint"
mkdir -p "$tmp/b/checkpoints"
cp -r "$(adapter_of "$tmp/a" 3)" "$tmp/b/checkpoints/"
echo step-00000003 > "$tmp/b/checkpoints/latest"
"$nemotronh" train "${common[@]}" --set out="$tmp/b" --resume > /dev/null 2>&1 || fail "resume"
cmp -s "$(adapter_of "$tmp/a" 5)/adapter_model.safetensors" \
       "$(adapter_of "$tmp/b" 5)/adapter_model.safetensors" && ok || fail "resumed adapter differs"

# Gradient checkpointing changes nothing but memory, with or without sample packing.
for packing in true false; do
  for ckpt in true false; do
    "$nemotronh" train "${common[@]}" --set out="$tmp/gc-$packing-$ckpt" --set max_steps=2 \
      --set sample_packing=$packing --set gradient_checkpointing=$ckpt > /dev/null 2>&1 ||
      fail "train with packing $packing, checkpointing $ckpt"
  done
  cmp -s "$(adapter_of "$tmp/gc-$packing-true" 2)/adapter_model.safetensors" \
         "$(adapter_of "$tmp/gc-$packing-false" 2)/adapter_model.safetensors" && ok ||
    fail "gradient checkpointing changed the adapter (sample_packing $packing)"
done

# The adapter applied at generation equals it merged into the weights.
prompt=$(printf '<|im_start|>user\nWhat is two plus three?<|im_end|>\n<|im_start|>assistant\n')
gen() { "$nemotronh" generate --prompt "$prompt" --max-new-tokens 10 --temperature 0 \
        --ignore-eos --output-ids --device "$device" --dtype fp32 "$@"; }
"$nemotronh" merge --model "$tmp/base" --adapter "$(adapter_of "$tmp/a" 5)" --out "$tmp/merged" \
  > /dev/null || fail "merge"
with=$(gen --model "$tmp/base" --adapter "$(adapter_of "$tmp/a" 5)")
merged=$(gen --model "$tmp/merged")
plain=$(gen --model "$tmp/base")
[ -n "$with" ] && [ "$with" = "$merged" ] && ok || fail "adapter vs merged: $with vs $merged"
[ "$with" != "$plain" ] && ok || fail "the adapter changed nothing: $with"

# QLoRA: the base in NF4, two steps, resumed exactly too.
"$nemotronh" train "${common[@]}" --set out="$tmp/q" --set adapter=qlora --set max_steps=2 \
  --set save_interval=1 --set keep_last=5 > "$tmp/q.log" 2>&1 || fail "qlora train"
grep -q "NF4 base" "$tmp/q.log" && ok || fail "qlora base: $(head -3 "$tmp/q.log")"
mkdir -p "$tmp/q2/checkpoints"
cp -r "$(adapter_of "$tmp/q" 1)" "$tmp/q2/checkpoints/"
echo step-00000001 > "$tmp/q2/checkpoints/latest"
"$nemotronh" train "${common[@]}" --set out="$tmp/q2" --set adapter=qlora --set max_steps=2 \
  --resume > /dev/null 2>&1 || fail "qlora resume"
cmp -s "$(adapter_of "$tmp/q" 2)/adapter_model.safetensors" \
       "$(adapter_of "$tmp/q2" 2)/adapter_model.safetensors" && ok || fail "resumed qlora differs"

# peft loads our adapter onto the transformers model and computes our logits and gradients.
if python3 -c "import torch, transformers, peft" 2>/dev/null; then
  python3 "$source_dir/tools/make_lora_reference.py" --base "$tmp/base" \
    --from-adapter "$(adapter_of "$tmp/a" 5)" > /dev/null 2>&1 || fail "peft reads the adapter"
  "$nemotronh" verify --model "$tmp/base" --adapter "$(adapter_of "$tmp/a" 5)" \
    --reference "$(adapter_of "$tmp/a" 5)/reference.safetensors" > "$tmp/verify.log" &&
    ok || fail "verify against peft: $(tail -3 "$tmp/verify.log")"
else
  echo "skipped: peft round trip (no torch/transformers/peft)"
fi

expect_exit2() {  # expect_exit2 NAME WORD ARGS...: exit code 2 and one line naming WORD
  "$nemotronh" "${@:3}" > /dev/null 2> "$tmp/err"
  local rc=$?
  [ $rc = 2 ] && [ "$(wc -l < "$tmp/err")" = 1 ] && grep -q -- "$2" "$tmp/err" && ok ||
    fail "$1 (exit $rc: $(cat "$tmp/err"))"
}
expect_exit2 "pattern matching nothing" "mlp_gate" train "${common[@]}" --set out="$tmp/x" \
  --set "lora_target_modules=[mlp_gate]"
expect_exit2 "rank above a dimension" "lora_r" train "${common[@]}" --set out="$tmp/x" \
  --set lora_r=100000
expect_exit2 "LoRA on the LM head" "lm_head" train "${common[@]}" --set out="$tmp/x" \
  --set "lora_target_modules=[lm_head]"
expect_exit2 "adapter for another base" "lora_A" merge \
  --model "$source_dir/tests/data/reference/dense_hybrid" --adapter "$(adapter_of "$tmp/a" 5)" \
  --out "$tmp/x"
expect_exit2 "merge over the base" "--out" merge --model "$tmp/base" \
  --adapter "$(adapter_of "$tmp/a" 5)" --out "$tmp/base"
expect_exit2 "not an adapter" "adapter_config.json" generate --model "$tmp/base" \
  --adapter "$tmp/base" --prompt hi --device "$device"
sed 's/"use_dora": false/"use_dora": true/' "$(adapter_of "$tmp/a" 5)/adapter_config.json" \
  > "$tmp/dora.json"
mkdir -p "$tmp/dora" && cp "$tmp/dora.json" "$tmp/dora/adapter_config.json" &&
  cp "$(adapter_of "$tmp/a" 5)/adapter_model.safetensors" "$tmp/dora/"
expect_exit2 "DoRA adapter" "use_dora" generate --model "$tmp/base" --adapter "$tmp/dora" \
  --prompt hi --device "$device"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
