#!/usr/bin/env bash
# `nemotronh generate` and `nemotronh chat` from the command line: greedy ids equal
# transformers' greedy continuation (tests/data/reference/*/greedy.safetensors), a seed makes
# sampling reproducible, the JSONL batch mode answers every line, a piped chat answers each
# message and honours /reset and /exit, and bad input is an error with exit code 2.
# NH_TEST_DEVICE=cuda runs the model on the GPU (default cpu).
set -uo pipefail
nemotronh=$1 source_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
case_dir=$source_dir/tests/data/reference/dense_hybrid

# The prompt and transformers' continuation, as comma-separated ids.
read -r prompt want < <(python3 - "$case_dir/greedy.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
def ids(name):
    e = head[name]; a, b = e["data_offsets"]
    assert e["dtype"] == "I64"
    return list(struct.unpack("<%dq" % ((b - a) // 8), raw[8 + n + a:8 + n + b]))
print(",".join(map(str, ids("prompt_ids"))), json.dumps(ids("greedy_ids"), separators=(",", ":")))
PY
)
# In fp32 as transformers ran it: on a tiny random model bf16 rounding can flip near-tied argmaxes.
got=$("$nemotronh" generate --model "$case_dir" --prompt-ids "$prompt" --max-new-tokens 8 \
      --temperature 0 --ignore-eos --output-ids --device "${NH_TEST_DEVICE:-cpu}" --dtype fp32)
[ "$got" = "$want" ] && ok || fail "greedy ids: got $got, want $want"

a=$("$nemotronh" generate --model "$case_dir" --prompt-ids "$prompt" --max-new-tokens 12 \
    --temperature 1.0 --top-k 20 --seed 7 --ignore-eos --output-ids --device "${NH_TEST_DEVICE:-cpu}")
b=$("$nemotronh" generate --model "$case_dir" --prompt-ids "$prompt" --max-new-tokens 12 \
    --temperature 1.0 --top-k 20 --seed 7 --ignore-eos --output-ids --device "${NH_TEST_DEVICE:-cpu}")
[ -n "$a" ] && [ "$a" = "$b" ] && ok || fail "same seed, same tokens: $a vs $b"

printf '{"prompt_ids": [1, 2, 3]}\n\n{"prompt_ids": [4, 5], "max_new_tokens": 3}\n' > "$tmp/batch.jsonl"
"$nemotronh" generate --model "$case_dir" --batch-file "$tmp/batch.jsonl" --max-new-tokens 5 \
  --temperature 0 --ignore-eos --device "${NH_TEST_DEVICE:-cpu}" --output "$tmp/out.jsonl"
python3 - "$tmp/out.jsonl" <<'PY' && ok || fail "batch output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["index"] for r in rows] == [0, 1], rows
assert len(rows[0]["ids"]) == 5 and len(rows[1]["ids"]) == 3, rows
assert all(r["finish_reason"] == "length" for r in rows), rows
PY

# Chat needs text: the first run's byte-level tokenizer with a model sized for it.
bash "$source_dir/tests/e2e/make_text_model.sh" "$nemotronh" "$tmp/chat-model" "$tmp/first"
out=$(printf 'hello\n/reset\nagain\n/exit\nnot read\n' |
      "$nemotronh" chat --model "$tmp/chat-model" --max-new-tokens 5 --temperature 0 --device "${NH_TEST_DEVICE:-cpu}")
[ "$(printf '%s\n' "$out" | grep -c 'conversation reset')" = 1 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 3 ] &&
  ok || fail "piped chat: $out"

expect_exit2() {  # expect_exit2 NAME ARGS...: the command fails with exit code 2 and one line
  "$nemotronh" "${@:2}" > /dev/null 2> "$tmp/err"
  local rc=$?
  [ $rc = 2 ] && grep -q "error:" "$tmp/err" && ok || fail "$1 (exit $rc: $(cat "$tmp/err"))"
}
expect_exit2 "no prompt" generate --model "$case_dir" --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "two prompts" generate --model "$case_dir" --prompt-ids 1 --prompt x --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "bad id" generate --model "$case_dir" --prompt-ids 1,x --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "id outside the vocabulary" generate --model "$case_dir" --prompt-ids 1,100000 --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "text without a tokenizer" generate --model "$case_dir" --prompt hi --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "bad top-p" generate --model "$case_dir" --prompt-ids 1 --top-p 0 --device "${NH_TEST_DEVICE:-cpu}"
printf '{"prompt_ids": [1]}\nnot json\n' > "$tmp/bad.jsonl"
expect_exit2 "bad batch line" generate --model "$case_dir" --batch-file "$tmp/bad.jsonl" --device "${NH_TEST_DEVICE:-cpu}"
expect_exit2 "missing model" generate --model "$tmp/none" --prompt-ids 1 --device "${NH_TEST_DEVICE:-cpu}"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
