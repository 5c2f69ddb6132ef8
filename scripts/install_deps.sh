#!/usr/bin/env bash
# Installs what nemotronh needs to build and test on Debian 12 (run as root).
# The CUDA toolkit is not installed here: the CUDA backend is built when nvcc is found.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(build-essential cmake pkg-config git python3 python3-pip
  libopenblas-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libpcre2-dev libutf8proc-dev
  libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin clang libclang-rt-14-dev libcpp-httplib-dev curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The serve test (tests/e2e/serve.sh) drives the server with the openai client too.
if ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install -q openai 2>/dev/null ||
    python3 -m pip install -q --break-system-packages openai
fi
