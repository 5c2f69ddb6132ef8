// The training data stream: documents from one or more sources, blended by weight the
// Megatron way, split into train/validation/test by document, shuffled per epoch from a
// seed, and packed into micro-batches of rows of seq_length tokens:
//   ids I64 [B, S], targets I64 [B, S] (aligned: the target of position t; -100 = no loss),
//   seq_idx I32 [B, S] (the document of each token within its row, 0 at the row start).
// The whole stream is a function of its config; state()/restore() resume it at the exact
// row. docs/DATA.md ("Training data stream") explains the choices.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/document_source.h"

namespace nh {

// Pretrain: documents one after another, a document longer than the rest of a row continuing
// at the start of the next row. Sft: whole examples first-fit packed into rows, then padding.
enum class Packing { Pretrain, Sft };
// SFT examples longer than seq_length: cut to seq_length, or left out.
enum class LongExamples { Truncate, Drop };

struct StreamSource {
  std::shared_ptr<const DocumentSource> documents;
  double weight = 1.0;  // > 0; weights are normalised over the sources
  // End each document with eod_id (trained: the model learns to end a document). Off for
  // Megatron datasets whose documents already end with EOD, and usually for chat examples.
  bool append_eod = true;
};

struct DataStreamConfig {
  std::vector<StreamSource> sources;
  int64_t seq_length = 0;
  int64_t vocab_size = 0;  // a token id outside [0, vocab_size) is an Error
  int32_t eod_id = -1;     // needed when a source appends EOD
  int32_t pad_id = 0;      // SFT padding
  Packing packing = Packing::Pretrain;
  // Megatron's split string: relative sizes of train, validation and test ("98,2",
  // "969,30,1", "0.9,0.1"), applied to each source's documents as contiguous ranges.
  std::string split = "100,0,0";
  int split_part = 0;  // 0 train, 1 validation, 2 test
  uint64_t seed = 1234;
  LongExamples long_examples = LongExamples::Truncate;
  int64_t pack_window = 256;  // SFT: examples first-fit packed together
};

struct MicroBatch {
  Tensor ids, targets, seq_idx;
};

// What the stream made of one source when it was built.
struct SourceStats {
  std::string name;
  double weight = 0;                // normalised
  int64_t documents = 0;            // in the split part and used
  int64_t empty_documents = 0;      // no tokens: skipped
  int64_t untrained_documents = 0;  // tokens but none the mask trains: skipped
  int64_t long_examples = 0;        // SFT: longer than seq_length (truncated or dropped)
};

// Relative sizes of a split string, normalised to sum 1 and padded to three parts; anything
// but one to three non-negative numbers with a positive sum is an Error.
std::vector<double> parse_split(const std::string& split);

class DataStream {
 public:
  // Checks the config (weights > 0, ids in range, a non-empty split part for every source)
  // and indexes the sources; Errors name the source entry and the field.
  explicit DataStream(DataStreamConfig config);
  ~DataStream();
  DataStream(DataStream&&) noexcept;

  // The next batch_rows rows, each from the source the blend picks for it. Reads the
  // documents it needs; a token id outside the vocabulary is an Error naming the source and
  // the document.
  MicroBatch next_batch(int64_t batch_rows);

  // Where the stream is: the rows each source has given and its position (epoch, document,
  // token offset or SFT packing window). Restoring it into a stream built from the same
  // config gives the same rows from there on; a state of another config is an Error.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

  const std::vector<SourceStats>& stats() const;
  // One line per source: name, weight, documents, skipped and long examples.
  std::string summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nh
