#!/usr/bin/env bash
# Tokenizer throughput, nemotronh against the `tokenizers` library, on the same ~10 MB text
# and the same tokenizer.json, in one run.
#   bench/tokenizer_bench.sh [BUILD_DIR] [TOKENIZER] [TEXT_FILE]
# BUILD_DIR defaults to build, TOKENIZER to tests/data/tokenizer/bytelevel_gpt4; TEXT_FILE is
# made (deterministically, from Python's own sources and docs plus multilingual lines) when
# missing. Both sides encode line by line on one thread (RAYON_NUM_THREADS=1,
# TOKENIZERS_PARALLELISM=false for the library), then as one batch on all cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
tokenizer=${2:-$root/tests/data/tokenizer/bytelevel_gpt4}
text=${3:-/tmp/nemotronh-tokenizer-bench.txt}

cmake --build "$build" -j2 --target nemotronh-bench-tokenizer >/dev/null

if [ ! -s "$text" ]; then
  python3 - "$text" "$root" <<'PY'
import glob, random, sys
sys.path.insert(0, sys.argv[2] + "/tools")
import make_tokenizer_reference as ref
parts = []
for f in ref.python_sources():
    with open(f, encoding="utf-8", errors="replace") as fh:
        parts.extend(fh.read().splitlines())
for t in ref.prose_topics():
    parts.extend(t.splitlines())
parts.extend(l.replace("\n", " ") for l in ref.multilingual_lines(3, 20000))
rng = random.Random(11)
out, size = [], 0
while size < 10_000_000:
    line = rng.choice(parts)
    out.append(line)
    size += len(line.encode()) + 1
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    fh.write("\n".join(out) + "\n")
PY
fi

echo "text: $text ($(wc -c <"$text") bytes, $(wc -l <"$text") lines); tokenizer: $tokenizer"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
ours=$("$build/bench/nemotronh-bench-tokenizer" "$tokenizer" "$text")
echo "$ours"
# The library's thread pool is sized when it is first used, so each setting is its own process.
library_bench() {
  python3 - "$tokenizer" "$text" "$1" <<'PY'
import os, sys, time
import tokenizers
file = sys.argv[1] + "/tokenizer.json" if os.path.isdir(sys.argv[1]) else sys.argv[1]
lines = open(sys.argv[2], encoding="utf-8", newline="").read().split("\n")[:-1]
size = sum(len(l.encode()) for l in lines)
tok = tokenizers.Tokenizer.from_file(file)
start = time.perf_counter()
n = sum(len(e.ids) for e in tok.encode_batch_fast(lines))
s = time.perf_counter() - start
print(f"{sys.argv[3]:<28} {size / 1e6 / s:8.2f} MB/s {n / s:12.0f} tokens/s  ({n} tokens in {s:.3f} s)")
PY
}
theirs=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false library_bench "tokenizers 1 thread")
echo "$theirs"
theirs_mt=$(RAYON_NUM_THREADS=$(nproc) TOKENIZERS_PARALLELISM=true library_bench "tokenizers encode_batch")
echo "$theirs_mt"
mbs() { awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "MB/s") print $i}'; }
ours1=$(echo "$ours" | head -1 | mbs)
oursb=$(echo "$ours" | tail -1 | mbs)
theirs1=$(echo "$theirs" | mbs)
theirsb=$(echo "$theirs_mt" | mbs)
awk -v a="$ours1" -v b="$theirs1" 'BEGIN { printf "ratio 1 thread (nemotronh / tokenizers): %.2fx\n", a / b }'
awk -v a="$oursb" -v b="$theirsb" 'BEGIN { printf "ratio all cores (nemotronh / tokenizers): %.2fx\n", a / b }'
