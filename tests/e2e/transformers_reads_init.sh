#!/usr/bin/env bash
# A model that `nemotronh init` writes loads in transformers, and transformers' forward and
# backward on it agree with ours (`nemotronh verify`). Skipped (exit 77) without transformers.
set -euo pipefail
nemotronh=$1 source_dir=$2 preset=$3
python3 -c "import torch, transformers, safetensors" 2>/dev/null || exit 77
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$nemotronh" init --preset "$preset" --out "$tmp/model" --dtype fp32 --seed 5
python3 "$source_dir/tools/make_reference.py" --from-dir "$tmp/model" >/dev/null 2>&1
"$nemotronh" verify --model "$tmp/model" --reference "$tmp/model/reference.safetensors" | tail -1
