// The built-in first run of `nemotronh train` with no arguments: a tiny hybrid model and a
// corpus and tokenizer the program makes itself, so training works with no download.
#pragma once

#include <string>

#include "train/recipe.h"

namespace nh {

// Writes DIR/corpus.jsonl (generated English-like sentences and arithmetic, deterministic) and
// DIR/tokenizer.json (byte-level, no merges: 256 byte tokens and the ChatML/EOD specials), and
// DIR/model-config.json (tiny-hybrid with a 264-token vocabulary), and returns the recipe that
// trains it on them.
Recipe first_run_recipe(const std::string& dir);
// The byte-level tokenizer.json text of the first run.
std::string byte_level_tokenizer_json();

}  // namespace nh
