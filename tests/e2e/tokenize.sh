#!/usr/bin/env bash
# `nemotronh tokenize` gives the ids and decoded texts of the reference cases of
# tests/data/tokenizer/*/cases.jsonl (made with the `tokenizers` library), in JSONL and plain
# mode, with and without special tokens; a bad record is an error naming its line (exit 2).
set -uo pipefail
nemotronh=$1 source_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

check() {  # check NAME: compares $tmp/got with $tmp/want (which must not be empty)
  if [ -s "$tmp/want" ] && cmp -s "$tmp/got" "$tmp/want"; then
    passed=$((passed + 1))
  else
    echo "FAIL $1"; diff "$tmp/got" "$tmp/want" | head -5; failed=$((failed + 1))
  fi
}

# extract CASES FIELD > file: one line per case, as the CLI reads or writes it. Plain-mode
# inputs keep only the cases that are one line of text.
extract() {
  python3 - "$@" <<'PY'
import base64, json, sys
cases, field = sys.argv[1], sys.argv[2]
out = sys.stdout.buffer
for line in open(cases, encoding="utf-8"):
    c = json.loads(line)
    raw = base64.b64decode(c["b64"]) if "b64" in c else c["text"].encode()
    plain = b"\n" not in raw and b"\r" not in raw
    if field == "plain_text":
        if plain: out.write(raw + b"\n")
    elif field == "plain_ids":
        if plain: out.write(json.dumps(c["ids"], separators=(",", ":")).encode() + b"\n")
    elif field == "jsonl_text":
        if "b64" not in c: out.write(json.dumps({"text": c["text"]}).encode() + b"\n")
    elif field in ("ids", "ids_no_special"):
        if "b64" not in c: out.write(json.dumps(c[field], separators=(",", ":")).encode() + b"\n")
    elif field == "all_ids":
        out.write(json.dumps(c["ids"]).encode() + b"\n")
    elif field in ("decoded", "decoded_skip_special"):
        out.write(json.dumps({"text": c[field]}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
PY
}

for dir in "$source_dir"/tests/data/tokenizer/*/; do
  name=$(basename "$dir")
  cases=$dir/cases.jsonl
  extract "$cases" jsonl_text >"$tmp/in.jsonl"
  extract "$cases" ids >"$tmp/want"
  "$nemotronh" tokenize --tokenizer "$dir" --jsonl <"$tmp/in.jsonl" >"$tmp/got"
  check "$name jsonl"
  extract "$cases" ids_no_special >"$tmp/want"
  "$nemotronh" tokenize --tokenizer "$dir" --jsonl --no-special-tokens --batch-lines 7 \
    <"$tmp/in.jsonl" >"$tmp/got"
  check "$name jsonl --no-special-tokens"
  extract "$cases" plain_text >"$tmp/in.txt"
  extract "$cases" plain_ids >"$tmp/want"
  "$nemotronh" tokenize --tokenizer "$dir/tokenizer.json" <"$tmp/in.txt" >"$tmp/got"
  check "$name plain"
  extract "$cases" all_ids >"$tmp/ids.jsonl"
  extract "$cases" decoded >"$tmp/want"
  "$nemotronh" tokenize --tokenizer "$dir" --decode --jsonl <"$tmp/ids.jsonl" >"$tmp/got"
  check "$name decode"
  extract "$cases" decoded_skip_special >"$tmp/want"
  "$nemotronh" tokenize --tokenizer "$dir" --decode --jsonl --no-special-tokens \
    <"$tmp/ids.jsonl" >"$tmp/got"
  check "$name decode --no-special-tokens"
done

dir=$source_dir/tests/data/tokenizer/bytelevel_gpt4
printf '{"text": "a"}\n{"text": "b"}\n{"txt": "c"}\n' >"$tmp/bad.jsonl"
"$nemotronh" tokenize --tokenizer "$dir" --jsonl <"$tmp/bad.jsonl" >"$tmp/got" 2>"$tmp/err"
rc=$?
if [ $rc -eq 2 ] && grep -q "line 3" "$tmp/err" && [ "$(wc -l <"$tmp/err")" -eq 1 ]; then
  passed=$((passed + 1))
else
  echo "FAIL bad record: exit $rc, stderr: $(cat "$tmp/err")"; failed=$((failed + 1))
fi
printf '[1, 2]\n[3, "x"]\n' | "$nemotronh" tokenize --tokenizer "$dir" --decode >/dev/null 2>"$tmp/err"
rc=$?
if [ $rc -eq 2 ] && grep -q "line 2" "$tmp/err"; then
  passed=$((passed + 1))
else
  echo "FAIL bad ids: exit $rc, stderr: $(cat "$tmp/err")"; failed=$((failed + 1))
fi

# Random texts from a fixed seed against the library itself, when it is installed.
if python3 -c "import tokenizers" 2>/dev/null; then
  for dir in "$source_dir"/tests/data/tokenizer/*/; do
    if python3 - "$nemotronh" "$dir" <<'PY'; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
import json, random, subprocess, sys
from tokenizers import Tokenizer
binary, d = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(d + "/tokenizer.json")
rng = random.Random(5)
atoms = list("abcdeXYZ0123456789 .,;:!?'\"-_()[]<>/\\#$%&*+=|~") + [
    "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u180e", "\u0085", "\u200b", "e\u0301",
    "\u0301", "ß", "İ", "Σ", "ﬁ", "²", "Ⅻ", "ＡＢ", "中文", "ひらがな", "\u1100\u1161\u11a8", "Привет",
    "مرحبا", "हिन्दी", "👍🏽", "👨\u200d👩\u200d👧", "\ufffd", "▁", "Ġ", "<0x41>", "<|endoftext|>",
    "<|im_start|>", "<s>", "</s>", "<unk>", "[MASK]", "<sep>", "hello", "New York", "<tool>", "'s", "'LL",
    "123456", "\x00", "\x7f", "the", "tokenizer"]
texts = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 25))) for _ in range(400)]
inp = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
got = subprocess.run([binary, "tokenize", "--tokenizer", d, "--jsonl"], input=inp,
                     capture_output=True, check=True).stdout.decode().split("\n")[:-1]
bad = [t for t, g in zip(texts, got) if json.loads(g) != tok.encode(t).ids]
ids = "".join(json.dumps(tok.encode(t).ids) + "\n" for t in texts).encode()
dec = subprocess.run([binary, "tokenize", "--tokenizer", d, "--jsonl", "--decode"], input=ids,
                     capture_output=True, check=True).stdout.decode().split("\n")[:-1]
bad += [t for t, g in zip(texts, dec) if json.loads(g)["text"] != tok.decode(tok.encode(t).ids, skip_special_tokens=False)]
for t in bad[:3]:
    print("FAIL random text", d, json.dumps(t))
sys.exit(1 if bad else 0)
PY
  done
else
  echo "tokenizers is not installed: random texts against the library skipped"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
