#!/usr/bin/env bash
# nemotronh preprocess: JSONL in, a Megatron indexed dataset out. The dataset must hold the ids
# the Hugging Face `tokenizers` library gives each text (the tokenizer tests' cases.jsonl lists
# them as "ids_no_special"), read back by tools/read_megatron_dataset.py the way Megatron reads it
# (skipped without numpy). Bad records stop the run with exit 2 naming the file and line and leave
# no files behind, unless --skip-bad-records, which counts them.
# Usage: preprocess.sh NEMOTRONH SOURCE_DIR   (exit 77: no tokenizer test data to run on)
set -uo pipefail
nemotronh=$1 source_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0 passed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# A byte-level BPE tokenizer with an end-of-document token, and the texts with their ids.
data=$source_dir/tests/data/tokenizer
case_dir=$data/bytelevel_gpt4
if [ ! -f "$case_dir/cases.jsonl" ]; then
  case_dir=$(ls -d "$data"/*/ 2>/dev/null | while read -r d; do
    [ -f "$d/cases.jsonl" ] && [ -f "$d/tokenizer.json" ] && echo "${d%/}" && break; done)
fi
if [ -z "$case_dir" ] || [ ! -f "$case_dir/cases.jsonl" ]; then
  echo "skip: no tests/data/tokenizer/<name>/{tokenizer.json,cases.jsonl}"; exit 77
fi
cases=$case_dir/cases.jsonl
echo "tokenizer: $case_dir"
have_numpy=0
python3 -c "import numpy" 2>/dev/null && have_numpy=1

# expect_error NAME WORDS... -- ARGS...: nemotronh ARGS must exit 2 with one stderr line holding
# every WORD, and leave no file under $tmp/out* behind.
expect_error() {
  local name=$1
  shift
  local words=()
  while [ "$1" != "--" ]; do words+=("$1"); shift; done
  shift
  rm -rf "$tmp/out"; mkdir "$tmp/out"
  "$nemotronh" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
  local rc=$? lines
  lines=$(wc -l <"$tmp/stderr")
  if [ $rc -ne 2 ] || [ "$lines" -ne 1 ]; then
    fail "$name: exit $rc, $lines stderr lines: $(cat "$tmp/stderr")"; return
  fi
  for w in "${words[@]}"; do
    grep -qF -- "$w" "$tmp/stderr" || { fail "$name: '$w' not in: $(cat "$tmp/stderr")"; return; }
  done
  if [ -n "$(ls -A "$tmp/out")" ]; then fail "$name: left $(ls "$tmp/out")"; return; fi
  ok "$name: $(cat "$tmp/stderr")"
}

# --- a good run over two files: ids as the tokenizers library gives them, in input order ----
head -n 100 "$cases" >"$tmp/a.jsonl"
tail -n +101 "$cases" >"$tmp/b.jsonl"
echo >>"$tmp/a.jsonl"  # a blank line is skipped and counted
mkdir -p "$tmp/run1" "$tmp/run2"
if "$nemotronh" preprocess --input "$tmp/a.jsonl" "$tmp/b.jsonl" --tokenizer "$case_dir" \
  --output "$tmp/run1/ds" --append-eod >"$tmp/stdout" 2>"$tmp/stderr"; then
  ok "good run: $(tail -n 1 "$tmp/stdout")"
else
  fail "good run: $(cat "$tmp/stderr")"
fi
prefix=$tmp/run1/ds_text_document
[ -f "$prefix.bin" ] && [ -f "$prefix.idx" ] || fail "no $prefix.bin/.idx (Megatron's naming)"
grep -q "blank lines 1;" "$tmp/stdout" || fail "summary does not count the blank line: $(cat "$tmp/stdout")"

# `nemotronh tokenize` on the same records, when the engine has that command: a second opinion.
: >"$tmp/tokenize.out"
if "$nemotronh" tokenize --help >/dev/null 2>&1; then
  "$nemotronh" tokenize --tokenizer "$case_dir" --jsonl --no-special-tokens <"$cases" \
    >"$tmp/tokenize.out" 2>"$tmp/stderr" || fail "nemotronh tokenize: $(cat "$tmp/stderr")"
fi

if [ $have_numpy -eq 1 ]; then
  if python3 - "$source_dir/tools/read_megatron_dataset.py" "$prefix" "$cases" "$case_dir" \
    "$tmp/tokenize.out" <<'PY'
import json, os, subprocess, sys
reader, prefix, cases, case_dir, tokenized = sys.argv[1:]
got = json.loads(subprocess.check_output([sys.executable, reader, prefix]))
tok = json.load(open(os.path.join(case_dir, "tokenizer.json")))
ids = dict(tok["model"]["vocab"]); ids.update({a["content"]: a["id"] for a in tok["added_tokens"]})
# nh::Tokenizer::eos_id: tokenizer_config.json's eos_token, else the first of these that exists.
config = os.path.join(case_dir, "tokenizer_config.json")
eos = json.load(open(config)).get("eos_token") if os.path.exists(config) else None
if isinstance(eos, dict): eos = eos["content"]
eod = ids[eos] if eos else next(ids[n] for n in ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>") if n in ids)
want = [c["ids_no_special"] + [eod] for c in map(json.loads, open(cases)) if c["ids_no_special"]]
vocab = max(ids.values()) + 1
errors = []
if got["dtype"] != ("uint16" if vocab < 65500 else "int32"): errors.append("dtype " + got["dtype"])
if got["document_indices"] != list(range(len(want) + 1)): errors.append("document indices")
if len(got["sequences"]) != len(want): errors.append(f"{len(got['sequences'])} sequences, want {len(want)}")
for i, (g, w) in enumerate(zip(got["sequences"], want)):
    if g != w: errors.append(f"sequence {i}: {g[:12]}... want {w[:12]}..."); break
engine = [ids + [eod] for ids in map(json.loads, open(tokenized)) if ids]
if engine and engine != got["sequences"]: errors.append("differs from nemotronh tokenize")
print("; ".join(errors) or f"{len(want)} documents, {sum(map(len, want))} tokens as expected"
      + (", same as nemotronh tokenize" if engine else ""))
sys.exit(1 if errors else 0)
PY
  then ok "read back as Megatron would: ids of the tokenizers library + EOD"; else fail "read back"; fi
else
  echo "skip read-back: python3 cannot import numpy"
fi

"$nemotronh" preprocess --input "$tmp/a.jsonl" "$tmp/b.jsonl" --tokenizer "$case_dir" \
  --output "$tmp/run2/ds" --append-eod --workers 1 >/dev/null 2>&1
if cmp -s "$prefix.bin" "$tmp/run2/ds_text_document.bin" &&
  cmp -s "$prefix.idx" "$tmp/run2/ds_text_document.idx"; then
  ok "--workers 1 writes the same bytes"
else
  fail "--workers 1 output differs"
fi

mkdir -p "$tmp/key"
"$nemotronh" preprocess --input "$cases" --tokenizer "$case_dir/tokenizer.json" \
  --output "$tmp/key/ds" --json-key decoded_skip_special >/dev/null 2>"$tmp/stderr"
if [ -f "$tmp/key/ds_decoded_skip_special_document.idx" ]; then
  ok "--json-key names the output"; else fail "--json-key: $(cat "$tmp/stderr")"; fi

# --- bad records ------------------------------------------------------------------------
good='{"text": "hello world"}'
bad_lines=('{"text": "unterminated' $'{"text": "bad \xff byte"}' '{"text": 42}' '{"body": "x"}'
  '["text"]')
bad_words=("invalid string" "valid UTF-8" "expected a string" "no such field" "a JSON object")
for k in "${!bad_lines[@]}"; do
  printf '%s\n%s\n%s\n' "$good" "$good" "${bad_lines[$k]}" >"$tmp/bad$k.jsonl"
  expect_error "bad record $k" "$tmp/bad$k.jsonl:3" "${bad_words[$k]}" -- \
    preprocess --input "$tmp/bad$k.jsonl" --tokenizer "$case_dir" --output "$tmp/out/ds"
done

{ echo "$good"; printf '%s\n' "${bad_lines[@]}"; echo '{"text": ""}'; echo "$good"; } >"$tmp/mixed.jsonl"
rm -rf "$tmp/out"; mkdir "$tmp/out"
if "$nemotronh" preprocess --input "$tmp/mixed.jsonl" --tokenizer "$case_dir" --output "$tmp/out/ds" \
  --skip-bad-records >"$tmp/stdout" 2>"$tmp/stderr" &&
  grep -q "documents 2, " "$tmp/stdout" && grep -q "empty 1, bad records 5," "$tmp/stdout" &&
  [ "$(grep -c "skipped bad record: $tmp/mixed.jsonl:[2-6]:" "$tmp/stderr")" -eq 5 ]; then
  ok "--skip-bad-records: $(tail -n 1 "$tmp/stdout")"
else
  fail "--skip-bad-records: $(cat "$tmp/stdout" "$tmp/stderr")"
fi

# --- other failures ---------------------------------------------------------------------
expect_error missing-input "$tmp/nope.jsonl" -- \
  preprocess --input "$tmp/a.jsonl" "$tmp/nope.jsonl" --tokenizer "$case_dir" --output "$tmp/out/ds"
expect_error missing-tokenizer "$tmp/no-tokenizer" -- \
  preprocess --input "$tmp/a.jsonl" --tokenizer "$tmp/no-tokenizer" --output "$tmp/out/ds"
expect_error missing-output-dir "$tmp/out/no/dir/ds_text_document.bin" -- \
  preprocess --input "$tmp/a.jsonl" --tokenizer "$case_dir" --output "$tmp/out/no/dir/ds"
if [ -f "$data/subword_affixes/tokenizer.json" ]; then  # a tokenizer without an eos token
  expect_error eod-without-eos "end-of-document token" -- preprocess --input "$tmp/a.jsonl" \
    --tokenizer "$data/subword_affixes" --output "$tmp/out/ds" --append-eod
fi

echo "$passed passed, $failures failed"
[ $failures -eq 0 ]
