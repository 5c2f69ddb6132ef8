#!/usr/bin/env bash
# A tiny model that speaks text, for the command-line tests that need a tokenizer:
#   bash make_text_model.sh NEMOTRONH OUT_DIR WORK_DIR
# the first run's byte-level tokenizer (trained for one step in WORK_DIR) beside a tiny-hybrid
# model sized for its 264-token vocabulary.
set -euo pipefail
nemotronh=$1 out=$2 work=$3
"$nemotronh" init --preset tiny-hybrid --out "$out" > /dev/null
python3 - "$out/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["vocab_size"] = 264
json.dump(c, open(sys.argv[1], "w"))
PY
"$nemotronh" init --config "$out/config.json" --out "$out" > /dev/null
"$nemotronh" train --out "$work" --set max_steps=1 --set warmup_steps=0 > /dev/null 2>&1
cp "$work/data/tokenizer.json" "$out/"
