#!/usr/bin/env bash
# `nemotronh serve` over HTTP with curl (and the openai client when it imports): health and
# models, completions and chat completions with and without streaming, 8 concurrent streams,
# a client that leaves mid-stream, 400/404/429/503 errors in OpenAI's shape, and a graceful
# SIGTERM (in-flight requests finish, exit code 0).
# NH_TEST_DEVICE=cuda runs the model on the GPU (default cpu).
set -uo pipefail
nemotronh=$1 source_dir=$2
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

# A tiny model with a tokenizer: the first run's byte-level tokenizer, a model sized for it.
model=$tmp/tiny
bash "$source_dir/tests/e2e/make_text_model.sh" "$nemotronh" "$model" "$tmp/first"

# start NAME ARGS...: runs the server on a free port; sets $url and $pid once it listens.
start() {
  local name=$1
  shift
  "$nemotronh" serve --model "$model" --model-name tiny --port 0 --device "${NH_TEST_DEVICE:-cpu}" "$@" \
    > "$tmp/$name.out" 2> "$tmp/$name.err" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do
    url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$tmp/$name.out")
    [ -n "$url" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "server $name did not start: $(cat "$tmp/$name.err")"
  exit 1
}
post() {  # post PATH JSON [curl args...]: the body, then the status on the last line
  curl -s --max-time 120 -w '\n%{http_code}' -H 'Content-Type: application/json' \
    -d "$2" "${@:3}" "$url$1"
}
# check_stream FILE OBJECT: a complete SSE stream of OBJECT chunks; prints text and finish.
check_stream() {
  python3 - "$1" "$2" <<'PY'
import json, sys
events = [e for e in open(sys.argv[1], encoding="utf-8", errors="replace").read().split("\n\n") if e]
assert events and events[-1] == "data: [DONE]", events[-3:]
text, finish = "", None
for e in events[:-1]:
    assert e.startswith("data: "), e
    c = json.loads(e[6:])
    assert c["object"] == sys.argv[2] and c["model"] == "tiny" and c["id"], c
    if not c["choices"]:
        continue
    ch = c["choices"][0]
    text += ch.get("text", "") or ch.get("delta", {}).get("content", "") or ""
    finish = ch["finish_reason"] or finish
assert finish in ("stop", "length"), finish
print(json.dumps({"text": text, "finish": finish}))
PY
}
# expect_error NAME STATUS OUTPUT: the status, and a body in OpenAI's error shape.
expect_error() {
  local status=${3##*$'\n'} body=${3%$'\n'*}
  [ "$status" = "$2" ] && python3 -c '
import json, sys
e = json.loads(sys.argv[1])["error"]
assert e["message"] and e["type"] and "param" in e and "code" in e, e
' "$body" && ok || fail "$1: status $status, body $body"
}

start main --max-batch 8 --max-context 8192 --max-tokens-limit 8000
[ "$(curl -s --max-time 10 "$url/health")" = '{"status":"ok"}' ] && ok || fail "health"
curl -s --max-time 10 "$url/v1/models" | python3 -c '
import json, sys
m = json.load(sys.stdin)
assert m["object"] == "list" and m["data"][0]["id"] == "tiny" and m["data"][0]["object"] == "model", m
' && ok || fail "models"

# Completions: greedy text is reproducible and the stream says the same.
req='{"model": "tiny", "prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": true}'
out=$(post /v1/completions "$req")
[ "${out##*$'\n'}" = 200 ] && python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and r["model"] == "tiny", r
c = r["choices"][0]
assert c["index"] == 0 and c["finish_reason"] == "length" and isinstance(c["text"], str), r
assert r["usage"]["completion_tokens"] == 12 and r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 12, r
' "${out%$'\n'*}" && ok || fail "completion: $out"
text=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["choices"][0]["text"])' "${out%$'\n'*}")
curl -sN --max-time 120 -d "${req%\}}, \"stream\": true}" "$url/v1/completions" > "$tmp/stream.txt"
got=$(check_stream "$tmp/stream.txt" text_completion) &&
  [ "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["text"])' "$got")" = "$text" ] &&
  ok || fail "streamed completion: $got vs $text"

# Chat completions, whole and streamed (the stream opens with the assistant's role).
chat='{"model": "tiny", "max_tokens": 10, "temperature": 0,
       "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}'
out=$(post /v1/chat/completions "$chat")
[ "${out##*$'\n'}" = 200 ] && python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-"), r
c = r["choices"][0]
assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str), r
assert c["finish_reason"] in ("stop", "length") and r["usage"]["completion_tokens"] <= 10, r
' "${out%$'\n'*}" && ok || fail "chat completion: $out"
curl -sN --max-time 120 -d "${chat%\}}, \"stream\": true}" "$url/v1/chat/completions" > "$tmp/chat.txt"
check_stream "$tmp/chat.txt" chat.completion.chunk > /dev/null &&
  head -c 400 "$tmp/chat.txt" | grep -q '"delta":{"role":"assistant"' &&
  ok || fail "streamed chat: $(head -c 600 "$tmp/chat.txt")"

# 8 streams at once, each to its [DONE].
clients=()
for i in $(seq 8); do
  curl -sN --max-time 120 -d "{\"prompt\": \"Stream $i\", \"max_tokens\": 200, \"seed\": $i, \"stream\": true}" \
    "$url/v1/completions" > "$tmp/concurrent$i.txt" &
  clients+=($!)
done
wait "${clients[@]}"
all=1
for i in $(seq 8); do check_stream "$tmp/concurrent$i.txt" text_completion > /dev/null || all=0; done
[ $all = 1 ] && ok || fail "8 concurrent streams"

# A client that leaves mid-stream: its request is cancelled, and the server goes on serving.
curl -sN --max-time 0.3 -d '{"prompt": "long", "max_tokens": 8000, "ignore_eos": true, "stream": true}' \
  "$url/v1/completions" > /dev/null
[ $? = 28 ] && ok || fail "the long stream should have been cut by --max-time"
for _ in $(seq 100); do grep -q "client disconnected" "$tmp/main.err" && break; sleep 0.1; done
grep -q "client disconnected: cancelled" "$tmp/main.err" && ok || fail "disconnect not seen: $(cat "$tmp/main.err")"
out=$(post /v1/completions "$req")
[ "${out##*$'\n'}" = 200 ] && ok || fail "request after a disconnect: $out"

expect_error "bad JSON" 400 "$(post /v1/completions '{"prompt": ')"
expect_error "bad field" 400 "$(post /v1/completions '{"prompt": "x", "temperature": "hot"}')"
expect_error "max_tokens above the limit" 400 "$(post /v1/completions '{"prompt": "x", "max_tokens": 9000}')"
expect_error "unknown path" 404 "$(curl -s --max-time 10 -w '\n%{http_code}' "$url/v1/nothing")"

# The openai client, when it is installed.
if python3 -c "import openai" 2>/dev/null; then
  python3 - "$url" <<'PY' && ok || fail "openai client"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0,
                              extra_body={"ignore_eos": True})
assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5, r
chunks = list(client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, stream=True))
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]
PY
else
  echo "skip: the openai Python package does not import"
fi

# SIGTERM with a request in flight: it finishes, new requests get 503, the exit code is 0.
curl -sN --max-time 120 -d '{"prompt": "last", "max_tokens": 2000, "ignore_eos": true, "stream": true}' \
  "$url/v1/completions" > "$tmp/last.txt" &
last=$!
for _ in $(seq 100); do [ -s "$tmp/last.txt" ] && break; sleep 0.05; done
kill -TERM "$pid"
sleep 0.1
expect_error "while shutting down" 503 "$(curl -s --max-time 10 -w '\n%{http_code}' "$url/health")"
wait "$last"
got=$(check_stream "$tmp/last.txt" text_completion) && [[ $got == *'"finish": "length"'* ]] &&
  ok || fail "in-flight request during shutdown: $got"
wait "$pid"
rc=$?
[ $rc = 0 ] && ok || fail "exit code after SIGTERM: $rc ($(tail -3 "$tmp/main.err"))"

# A full queue: one row busy, one request waiting, the next refused with 429; a request larger
# than the whole KV cache is refused with 400.
start queue --max-batch 1 --max-queue 1 --max-context 16384 --max-tokens-limit 16000 \
  --kv-cache-tokens 8000
expect_error "larger than the KV cache" 400 "$(post /v1/completions '{"prompt": "x", "max_tokens": 9000}')"
curl -sN --max-time 120 -d '{"prompt": "busy", "max_tokens": 7900, "ignore_eos": true, "stream": true}' \
  "$url/v1/completions" > "$tmp/busy.txt" &
busy=$!
for _ in $(seq 100); do [ -s "$tmp/busy.txt" ] && break; sleep 0.05; done
post /v1/completions '{"prompt": "waiting", "max_tokens": 4}' > "$tmp/waiting.txt" &
waiting=$!
sleep 0.5
expect_error "full queue" 429 "$(post /v1/completions '{"prompt": "refused", "max_tokens": 4}')"
kill "$busy"  # leaves: its row goes to the waiting request
wait "$waiting"
[ "$(tail -n1 "$tmp/waiting.txt")" = 200 ] && ok || fail "the waiting request: $(cat "$tmp/waiting.txt")"
kill -TERM "$pid"
wait "$pid"
rc=$?
[ $rc = 0 ] && ok || fail "exit code after SIGTERM (queue server): $rc"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
