#!/usr/bin/env bash
# The bundled nemotronh (scripts/gpu_bundle.sh) as one executable path, for scripts that take
# the program as an argument: NH_TEST_DEVICE=cuda bash tests/e2e/serve.sh scripts/bundle_nemotronh.sh .
exec "$(dirname "$0")/../gpu-bundle/run.sh" nemotronh "$@"
