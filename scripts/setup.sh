#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root): install, build, then run the engine on its
# built-in default: initialise a tiny hybrid model, describe it, and check the engine against
# transformers on a reference case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
python3 -m pip install -q -r tools/requirements.txt || echo "note: Python tools not installed"
bash scripts/build.sh
./build/nemotronh init --preset tiny-hybrid --out build/tiny-hybrid --seed 1
./build/nemotronh info --model build/tiny-hybrid
./build/nemotronh verify --model tests/data/reference/dense_hybrid \
  --reference tests/data/reference/dense_hybrid/reference.safetensors
