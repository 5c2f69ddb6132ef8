#!/usr/bin/env bash
# Bad input gives one line on stderr naming the file and field, exit code 2, and no output
# directory left behind.
set -uo pipefail
nemotronh=$1 source_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect_error NAME WORDS... -- ARGS...: runs nemotronh ARGS, wants exit 2, one stderr line
# containing every WORD.
expect_error() {
  local name=$1
  shift
  local words=()
  while [ "$1" != "--" ]; do words+=("$1"); shift; done
  shift
  "$nemotronh" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ $rc -ne 2 ] || [ "$lines" -ne 1 ]; then
    echo "FAIL $name: exit $rc, $lines stderr lines:"; cat "$tmp/err"; failures=$((failures + 1)); return
  fi
  for w in "${words[@]}"; do
    if ! grep -qF -- "$w" "$tmp/err"; then
      echo "FAIL $name: '$w' not in: $(cat "$tmp/err")"; failures=$((failures + 1)); return
    fi
  done
  echo "ok   $name: $(cat "$tmp/err")"
}

ref=$source_dir/tests/data/reference/dense_hybrid
copy_case() { rm -rf "$tmp/m"; cp -r "$ref" "$tmp/m"; }

expect_error missing-dir "$tmp/nope" -- info --model "$tmp/nope"

copy_case; rm "$tmp/m/model.safetensors"
expect_error missing-weights "model.safetensors" -- verify --model "$tmp/m" --reference "$ref/reference.safetensors"

copy_case; head -c 100 "$ref/model.safetensors" >"$tmp/m/model.safetensors"
expect_error truncated-weights "$tmp/m/model.safetensors" -- verify --model "$tmp/m" --reference "$ref/reference.safetensors"

copy_case; head -c 5 "$ref/model.safetensors" >"$tmp/m/model.safetensors"
expect_error tiny-file "$tmp/m/model.safetensors" -- verify --model "$tmp/m" --reference "$ref/reference.safetensors"

copy_case; sed -i 's/"linear_attention"/"linear_attentionX"/' "$tmp/m/config.json"
expect_error unknown-layer-name "config.json" "linear_attentionX" -- info --model "$tmp/m"

copy_case; python3 - "$tmp/m/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); del c["layers_block_type"]; c["hybrid_override_pattern"] = "M-Q*"
json.dump(c, open(sys.argv[1], "w"))
PY
expect_error unknown-layer-char "config.json" "Q" -- info --model "$tmp/m"

copy_case; sed -i 's/"num_key_value_heads": 2/"num_key_value_heads": 3/' "$tmp/m/config.json"
expect_error heads-not-dividing "num_key_value_heads" -- info --model "$tmp/m"

copy_case; sed -i 's/"n_groups": 2/"n_groups": 3/' "$tmp/m/config.json"
expect_error groups-not-dividing "n_groups" -- info --model "$tmp/m"

copy_case; echo '{"model_type": "nemotron_h", "vocab_size": ' >"$tmp/m/config.json"
expect_error truncated-config "config.json" -- info --model "$tmp/m"

cp -r "$source_dir/tests/data/reference/moe_hybrid" "$tmp/moe"
sed -i 's/"n_group": 4/"n_group": 3/' "$tmp/moe/config.json"
expect_error experts-not-dividing "n_group" -- info --model "$tmp/moe"

copy_case
expect_error wrong-reference "logits" -- verify --model "$tmp/m" --reference "$source_dir/tests/data/reference/mamba2_tied/reference.safetensors"

expect_error unknown-preset "tiny-hybrid" -- init --preset no-such-model --out "$tmp/new"
[ -e "$tmp/new" ] && { echo "FAIL unknown-preset left $tmp/new behind"; failures=$((failures + 1)); }

echo "$((12 - failures)) passed, $failures failed"
[ $failures -eq 0 ]
