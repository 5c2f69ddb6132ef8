// The data stream a recipe describes: its `data` blend (Megatron indexed datasets, JSONL text,
// JSONL chat), split, packing and seed, for the train or validation part.
#pragma once

#include "io/data_stream.h"
#include "io/tokenizer.h"
#include "train/recipe.h"

namespace nh {

// split_part: 0 train, 1 validation. SFT packing when every source is chat data.
DataStreamConfig stream_config(const Recipe& recipe, const Tokenizer& tokenizer,
                               int64_t vocab_size, int split_part);

}  // namespace nh
