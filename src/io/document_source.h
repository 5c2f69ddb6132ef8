// Where the data stream reads documents from: a numbered list of token-id documents, each
// optionally with a loss mask (SFT). Tests feed documents from memory; files come through
// the loaders below (JSONL text and chat records, Megatron indexed datasets).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/chat_format.h"

namespace nh {

struct Document {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // empty: every token trained; else one 0/1 per token
};

class DocumentSource {
 public:
  virtual ~DocumentSource() = default;
  // The file or dataset prefix, for messages.
  virtual const std::string& name() const = 0;
  virtual int64_t num_documents() const = 0;
  // Tokens in document i, known without reading them.
  virtual int64_t document_length(int64_t i) const = 0;
  // Tokens of document i the mask trains (all of them when there is no mask).
  virtual int64_t trained_tokens(int64_t i) const { return document_length(i); }
  virtual Document document(int64_t i) const = 0;
};

// Documents held in memory. A mask, when given, has one entry per token (else an Error
// naming the source and the document).
class InMemorySource : public DocumentSource {
 public:
  InMemorySource(std::string name, std::vector<Document> documents);
  const std::string& name() const override { return name_; }
  int64_t num_documents() const override { return int64_t(docs_.size()); }
  int64_t document_length(int64_t i) const override;
  int64_t trained_tokens(int64_t i) const override;
  Document document(int64_t i) const override;

 private:
  std::string name_;
  std::vector<Document> docs_;
  std::vector<int64_t> trained_;
};

// A JSONL file of {"<key>": "some text", ...} records, one document each, tokenized up
// front. Blank lines are skipped; a line that is not a JSON object or lacks a string <key>
// is an Error naming the file, the line and the field.
std::shared_ptr<DocumentSource> load_text_jsonl(const std::string& path, const BatchEncoder& encode,
                                                const std::string& key = "text");

// A JSONL file of chat records (chat_format.h), one SFT example each with its loss mask,
// tokenized up front. Errors name the file, the line and the field.
std::shared_ptr<DocumentSource> load_chat_jsonl(const std::string& path, const ChatTemplate& tmpl,
                                                const BatchEncoder& encode);

// A Megatron indexed dataset PREFIX.bin/PREFIX.idx (indexed_dataset.h). Document d is its
// sequences back to back (one sequence per document unless the dataset was made with
// sentence splitting), read on demand from the mapped files.
std::shared_ptr<DocumentSource> open_indexed_dataset(const std::string& prefix);

class Tokenizer;
// The tokenizer as a BatchEncoder: encode_batch(texts, add_special_tokens = false) on all
// cores. The tokenizer must outlive the encoder.
BatchEncoder tokenizer_encoder(const Tokenizer& tokenizer);

}  // namespace nh
