#!/usr/bin/env bash
# Packs the CUDA build's programs with the shared libraries they need beyond the C/C++ runtime
# and the CUDA toolkit, so they run on a GPU machine that has the driver and toolkit but not
# this project's build dependencies:
#   bash scripts/gpu_bundle.sh [BUILD_DIR] [OUT_DIR]     (defaults: build-cuda, gpu-bundle)
#   on the GPU machine: OUT_DIR/run.sh tests/nemotronh-test-ops
# OUT_DIR.tar.xz holds the same, compressed (about 9 MB instead of 64).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
out=${2:-gpu-bundle}
rm -rf "$out"
mkdir -p "$out/lib" "$out/tests"
cp "$build/nemotronh" "$out/"
cp "$build/tests/nemotronh-test-ops" "$build/tests/nemotronh-test-nccl" "$out/tests/"
cp "$build/bench/nemotronh-bench" "$build/bench/nemotronh-bench-step" \
  "$build/bench/nemotronh-bench-generate" "$build/bench/nemotronh-bench-gemv" "$out/"
for bin in "$out/nemotronh" "$out/tests/nemotronh-test-ops" "$out/tests/nemotronh-test-nccl" "$out/nemotronh-bench" "$out/nemotronh-bench-step" \
  "$out/nemotronh-bench-generate" "$out/nemotronh-bench-gemv"; do
  strip "$bin"
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case $(basename "$lib") in
      libc.so* | libm.so* | libstdc++* | libgcc_s* | libdl* | libpthread* | librt* | ld-linux*) ;;
      libcuda.so* | libcudart* | libcublas* | libnccl*) ;;  # from the GPU machine's driver and toolkit
      *) cp -L "$lib" "$out/lib/" ;;
    esac
  done
done
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a bundled program with the bundled libraries and the machine's CUDA toolkit.
here=$(cd "$(dirname "$0")" && pwd)
cuda=${CUDA_HOME:-/usr/local/cuda}
# NCCL: the toolkit's, or else the one PyTorch installs (the nvidia-nccl wheel).
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' \
  2>/dev/null || true)
export LD_LIBRARY_PATH="$here/lib:$cuda/lib64:${nccl:+$nccl:}${LD_LIBRARY_PATH:-}"
exec "$here/$1" "${@:2}"
RUN
chmod +x "$out/run.sh"
# The compressed form, for transfers with a size limit (tar -xJf on the GPU machine).
tar -cJf "$out.tar.xz" "$out"
du -sh "$out" "$out.tar.xz"
