#!/usr/bin/env python3
"""Writes the tokenizer reference cases of tests/data/tokenizer/ with the `tokenizers` library.

Every case directory holds
  tokenizer.json  a tokenizer the C++ reader must reproduce
  cases.jsonl     one record per test text: {"text", "b64" (raw bytes, only when the text
                  is not valid UTF-8; "text" is then bytes.decode("utf-8", "replace")),
                  "ids", "ids_no_special", "decoded", "decoded_skip_special"}

Two tokenizers are trained on text found on this machine (Python's own sources and its
pydoc topics, which are stable) plus multilingual sentences written below:
  bytelevel_gpt4          byte-level BPE, GPT-4 split regex, NFC, chat special tokens, BOS
  metaspace_bytefallback  SentencePiece-style BPE: Metaspace (prepend first), byte fallback
The others are made by editing those JSON files by hand (no training), to cover the
remaining components: normalizers, pre-tokenizers, added-token flags, merge encodings.

Usage: python3 tools/make_tokenizer_reference.py [OUT_DIR]   (default tests/data/tokenizer)
"""
import base64
import copy
import glob
import json
import os
import random
import sys

from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

GPT4_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Größere Straßen führen über die Brücke nach Köln.",
    "L'été dernier, nous sommes allés à la plage près de Nice.",
    "¿Dónde está la biblioteca? ¡Está cerrada!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.",
    "我们今天去北京大学参观了图书馆。",
    "東京の天気は晴れですが、明日は雨が降るでしょう。",
    "ひらがなとカタカナと漢字を混ぜて書きます。",
    "한국어 문장은 띄어쓰기를 사용합니다.",
    "مرحبا بكم في عالم البرمجة باللغة العربية.",
    "שלום עולם, זה משפט בעברית.",
    "हिन्दी भाषा देवनागरी लिपि में लिखी जाती है।",
    "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "Tiếng Việt có nhiều dấu thanh điệu khác nhau.",
    "İstanbul'da ılık bir akşam; ŞEHİR ışıkları yanıyor.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷",
    "Math: ∀x ∈ ℝ, x² ≥ 0 and ∑ᵢ aᵢ = π ≈ 3.14159",
    "Full-width: ＡＢＣ　１２３ ｶﾀｶﾅ and ligatures ﬁ ﬂ, ½ ⅓ Ⅻ",
    "Combining: e\u0301 a\u0308 n\u0303 A\u030a \u212b \u2126 K\u212a",
    "Hangul jamo: \u1100\u1161\u11a8 \u1112\u1161\u11ab",
    "Prices: $1,234.56 €99 ¥1000 £3.50 — 50% off!",
    "Dates 2024-01-31, times 23:59:59, version v3.11.2, ip 192.168.0.1",
    "print(f\"{x!r:>10}\")  # a comment",
    "if (a && b || !c) { return a->b[i] << 2; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
]

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "hello world",
    " hello world",
    "hello world ",
    "hello  world",
    "hello     world      ",
    "\thello\tworld\t",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nendings\r\n",
    "trailing spaces   \n   leading spaces",
    "mixed \t \n \r\n whitespace \u00a0 nbsp \u3000 ideographic \u2028 separator",
    "I'm sure you'll see they've done what we'd said; it's HE'LL and DON'T.",
    "12345678901234567890 3.14159265358979 1e-10 0xDEADBEEF",
    "!!!??? ... --- ;;; ::: ((( ))) [[[ ]]] {{{ }}}",
    "a" * 300,
    "supercalifragilisticexpialidocious" * 10,
    "ab" * 150 + " " + "xyz" * 100,
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "text before<|endoftext|>text after",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|> <|endoftext|>",
    "  <|im_start|>  spaced  <|im_end|>  ",
    "<s>sentence piece</s> <unk> < s > </ s>",
    "<s><s></s>",
    "Hello [MASK] world <sep>  next   [MASK][MASK] <sep>",
    "hello hello, xhello hellox _hello hello_ (hello) Hello HELLO",
    "I live in New York, new york, NEW YORK and New  York.",
    "numbers 0 1 22 333 4444 55555 and ４２ and ²³ and ①②",
    "tool call: <tool>run</tool> <tool>  spaced  </tool>",
    "a-b c--d -e f- g—h",
    "control\x00chars\x01here\x7f and \u200b zero \ufeff width \u200d joiner",
    "\U0001F600\U0001F600\U0001F600 \U0001F9D1\u200D\U0001F4BB",
    "\u0301 lone combining at start, then a\u0301\u0302\u0303 stacked",
    "Ａ\u030a fullwidth with ring, ﬀ ﬃ ligatures, ㎏ ㍿ squares",
    "▁ literal metaspace ▁▁ and ▁x",
    "<0x41> looks like a byte token",
    "Ġ looks like a byte-level space and Ċ like newline",
]

INVALID_UTF8 = [
    b"abc\xffdef",
    b"\x80\x81\x82",
    b"truncated \xe2\x82",
    b"truncated four \xf0\x9f\x98",
    b"overlong \xc0\xaf and \xe0\x80\xaf",
    b"surrogate \xed\xa0\x80 half",
    b"too big \xf4\x90\x80\x80 and \xf5\x80",
    b"\xe2\x82\xac valid euro then \xe2\x28\xa1 invalid",
    b"mixed \xc3\xa9\xc3 end\xc3",
    b"<|endoftext|>\xfe<|im_end|>",
]


def python_sources():
    return sorted(glob.glob("/usr/lib/python3*/*.py"))


def prose_topics():
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)]


def multilingual_lines(seed, count):
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        k = rng.randint(1, 3)
        parts = [rng.choice(MULTILINGUAL) for _ in range(k)]
        sep = rng.choice([" ", "  ", "\t", " | ", "\n"])
        lines.append(sep.join(parts))
    return lines


def training_text():
    sources = python_sources()
    train_files = [f for i, f in enumerate(sources) if i % 10 != 0][:60]
    text = []
    for f in train_files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text.extend(fh.read().splitlines())
    topics = prose_topics()
    for t in topics[: len(topics) // 2]:
        text.extend(t.splitlines())
    text.extend(multilingual_lines(1, 3000))
    return text


def held_out_texts():
    rng = random.Random(7)
    texts = []
    sources = python_sources()
    held = [f for i, f in enumerate(sources) if i % 10 == 0]
    for f in held[:8]:
        with open(f, encoding="utf-8", errors="replace") as fh:
            lines = [l for l in fh.read().splitlines() if l.strip()]
        texts.extend(rng.sample(lines, min(8, len(lines))))
        start = rng.randrange(max(1, len(lines) - 6))
        texts.append("\n".join(lines[start:start + 6]) + "\n")
    topics = prose_topics()
    for t in rng.sample(topics[len(topics) // 2:], 10):
        paras = [p for p in t.split("\n\n") if p.strip()]
        texts.append(rng.choice(paras))
        texts.append(t[:400])
    texts.extend(multilingual_lines(2, 60))
    texts.extend(MULTILINGUAL)
    texts.extend(EDGE_CASES)
    return texts


def byte_tokens():
    return ["<0x%02X>" % b for b in range(256)]


def train_bytelevel(lines):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B:1",
        special_tokens=[("<|endoftext|>", bos)])
    return json.loads(tok.to_str())


def train_metaspace(lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0)
    ])
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=2500, special_tokens=specials + byte_tokens(),
                                  limit_alphabet=150, show_progress=False)
    tok.train_from_iterator(lines, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> <s> $B:1", special_tokens=[("<s>", bos), ("</s>", eos)])
    j = json.loads(tok.to_str())
    # SentencePiece keeps the byte pieces in the model vocabulary, not as added tokens.
    j["added_tokens"] = [t for t in j["added_tokens"] if t["content"] in specials]
    return j


def truncated_model(model, keep_merges):
    """The model with only its first merges and the tokens they and the alphabet need."""
    m = copy.deepcopy(model)
    merges = m["merges"][:keep_merges]
    pairs = [x.split(" ") if isinstance(x, str) else x for x in merges]
    needed = set()
    for a, b in pairs:
        needed.update((a, b, a + b))
    for tok, i in model["vocab"].items():
        if len(tok) == 1 or tok.startswith("<"):
            needed.add(tok)
    m["vocab"] = {t: i for t, i in model["vocab"].items() if t in needed}
    m["merges"] = merges
    return m


def added(content, id_, special, normalized, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def normalized_words(meta):
    """NFKC+Lowercase+Replace+Strip, WhitespaceSplit+Digits, ignore_merges, pair merges."""
    j = copy.deepcopy(meta)
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"},
        {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
        {"type": "Replace", "pattern": {"String": "’"}, "content": "'"},
        {"type": "Strip", "strip_left": True, "strip_right": True},
    ]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": True}]}
    j["model"]["ignore_merges"] = True
    j["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    n = max(j["model"]["vocab"].values()) + 1
    j["added_tokens"] += [
        added("[MASK]", n, True, False, lstrip=True),
        added("<sep>", n + 1, True, False, rstrip=True),
        added("hello", n + 2, False, True, single_word=True),
        added("New York", n + 3, False, False),
    ]
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "</s>", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "</s>", "type_id": 1}}],
        "special_tokens": {
            "<s>": {"id": "<s>", "ids": [meta["model"]["vocab"]["<s>"]], "tokens": ["<s>"]},
            "</s>": {"id": "</s>", "ids": [meta["model"]["vocab"]["</s>"]], "tokens": ["</s>"]},
        },
    }
    return j


def bytelevel_misc(gpt):
    """NFKD+StripAccents+Replace(String)+Prepend; Split/Punctuation/ByteLevel(use_regex)."""
    j = copy.deepcopy(gpt)
    j["model"] = truncated_model(gpt["model"], 1200)
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKD"}, {"type": "StripAccents"},
        {"type": "Replace", "pattern": {"String": "\t"}, "content": "    "},
        {"type": "Prepend", "prepend": ">"},
    ]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Punctuation", "behavior": "Contiguous"},
        {"type": "Split", "pattern": {"Regex": r"\d+"}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    ]}
    ids = {t["content"]: t["id"] for t in j["added_tokens"]}
    n = max(j["model"]["vocab"].values()) + 1
    j["added_tokens"].append(added("<tool>", n, False, True, lstrip=True, rstrip=True))
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {
             "<|im_start|>": {"id": "<|im_start|>", "ids": [ids["<|im_start|>"]],
                              "tokens": ["<|im_start|>"]},
             "<|im_end|>": {"id": "<|im_end|>", "ids": [ids["<|im_end|>"]],
                            "tokens": ["<|im_end|>"]}}},
    ]}
    return j


def whitespace_invert(gpt):
    """NFC+Lowercase, Whitespace then inverted/contiguous Splits, then ByteLevel mapping."""
    j = copy.deepcopy(gpt)
    j["model"] = truncated_model(gpt["model"], 800)
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Whitespace"},
        {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "Removed", "invert": True},
        {"type": "Split", "pattern": {"String": "e"}, "behavior": "Contiguous", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}
    j["post_processor"] = None
    return j


def metaspace_always(meta):
    """Metaspace prepend always without splitting: whole texts are one BPE word."""
    j = copy.deepcopy(meta)
    j["model"] = truncated_model(meta["model"], 1000)
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                          "split": False}
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                    "split": False}
    j["post_processor"] = None
    return j


def subword_affixes():
    """A tiny hand-made BPE with continuing_subword_prefix and end_of_word_suffix."""
    words = ["the", "then", "there", "hello", "help", "world", "word", "tokenizer", "token"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<unk>": 0}
    for c in letters:
        for t in (c, "##" + c, c + "</w>", "##" + c + "</w>"):
            vocab[t] = len(vocab)
    merges = []
    for w in words:
        syms = [w[0]] + ["##" + c for c in w[1:]]
        syms[-1] += "</w>"
        while len(syms) > 1:
            a, b = syms[0], syms[1]
            new = a + b[2:]
            if [a, b] not in merges:
                merges.append([a, b])
            vocab.setdefault(new, len(vocab))
            syms = [new] + syms[2:]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added("<unk>", 0, True, False)],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": {"type": "BPEDecoder", "suffix": "</w>"},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def cases(tok, texts):
    out = []
    for t in texts:
        if isinstance(t, bytes):
            text, b64 = t.decode("utf-8", errors="replace"), base64.b64encode(t).decode()
        else:
            text, b64 = t, None
        ids = tok.encode(text).ids
        rec = {"text": text}
        if b64 is not None:
            rec["b64"] = b64
        rec.update({
            "ids": ids,
            "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
        out.append(rec)
    return out


def write_case(out_dir, name, tokenizer_json, texts):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    text = json.dumps(tokenizer_json, ensure_ascii=False, indent=1)
    tok = Tokenizer.from_str(text)  # the library must accept what we hand-edited
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    recs = cases(tok, texts)
    with open(os.path.join(d, "cases.jsonl"), "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    size = os.path.getsize(os.path.join(d, "tokenizer.json"))
    print(f"{name}: {len(recs)} cases, tokenizer.json {size // 1024} KiB")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer"
    lines = training_text()
    texts = held_out_texts() + INVALID_UTF8
    gpt = train_bytelevel(lines)
    meta = train_metaspace(lines)
    write_case(out_dir, "bytelevel_gpt4", gpt, texts)
    write_case(out_dir, "metaspace_bytefallback", meta, texts)
    write_case(out_dir, "normalized_words", normalized_words(meta), texts)
    write_case(out_dir, "bytelevel_misc", bytelevel_misc(gpt), texts)
    write_case(out_dir, "whitespace_invert", whitespace_invert(gpt), texts)
    write_case(out_dir, "metaspace_always", metaspace_always(meta), texts)
    write_case(out_dir, "subword_affixes", subword_affixes(), texts)


if __name__ == "__main__":
    main()
