#!/usr/bin/env bash
# Configures and builds nemotronh in build/ (CUDA backend when nvcc is found: NH_CUDA=AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DNH_CUDA="${NH_CUDA:-AUTO}" >/dev/null
cmake --build build -j"$(nproc)"
