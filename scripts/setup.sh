#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root): install, build, then run the built-in first run:
# train a tiny hybrid Mamba/attention model on a generated corpus on the CPU (about two
# minutes), then check the engine against transformers on a reference case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
python3 -m pip install -q -r tools/requirements.txt || echo "note: Python tools not installed"
bash scripts/build.sh
./build/nemotronh train
./build/nemotronh verify --model tests/data/reference/dense_hybrid \
  --reference tests/data/reference/dense_hybrid/reference.safetensors
