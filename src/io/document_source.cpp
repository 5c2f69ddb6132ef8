#include "io/document_source.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "io/indexed_dataset.h"
#include "io/tokenizer.h"

namespace nh {

namespace {

struct JsonlRecord {
  nlohmann::json value;
  std::string where;  // "file:line"
};

// Every non-blank line of a JSONL file, parsed; a line that is not JSON is an Error naming it.
std::vector<JsonlRecord> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path, "file", "a readable JSONL file", std::strerror(errno));
  std::vector<JsonlRecord> records;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    try {
      records.push_back({nlohmann::json::parse(line), where});
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(where, "record", "a JSON object", std::string("invalid JSON (") + e.what() + ")");
    }
  }
  return records;
}

class IndexedDatasetSource : public DocumentSource {
 public:
  explicit IndexedDatasetSource(const std::string& prefix) : name_(prefix), data_(prefix) {}
  const std::string& name() const override { return name_; }
  int64_t num_documents() const override { return data_.num_documents(); }
  int64_t document_length(int64_t i) const override {
    const auto [begin, end] = data_.document(i);
    int64_t n = 0;
    for (int64_t s = begin; s < end; ++s) n += data_.sequence_length(s);
    return n;
  }
  Document document(int64_t i) const override {
    const auto [begin, end] = data_.document(i);
    Document doc;
    for (int64_t s = begin; s < end; ++s) {
      const std::vector<int32_t> ids = data_.get(s);
      doc.tokens.insert(doc.tokens.end(), ids.begin(), ids.end());
    }
    return doc;
  }

 private:
  std::string name_;
  IndexedDataset data_;
};

}  // namespace

InMemorySource::InMemorySource(std::string name, std::vector<Document> documents)
    : name_(std::move(name)), docs_(std::move(documents)) {
  trained_.reserve(docs_.size());
  for (size_t i = 0; i < docs_.size(); ++i) {
    const Document& d = docs_[i];
    if (d.mask.empty()) {
      trained_.push_back(int64_t(d.tokens.size()));
      continue;
    }
    if (d.mask.size() != d.tokens.size())
      throw Error(name_ + ": document " + std::to_string(i), "mask",
                  std::to_string(d.tokens.size()) + " entries (one per token)",
                  std::to_string(d.mask.size()));
    trained_.push_back(std::count_if(d.mask.begin(), d.mask.end(), [](uint8_t m) { return m; }));
  }
}

int64_t InMemorySource::document_length(int64_t i) const {
  return int64_t(docs_.at(size_t(i)).tokens.size());
}

int64_t InMemorySource::trained_tokens(int64_t i) const { return trained_.at(size_t(i)); }

Document InMemorySource::document(int64_t i) const { return docs_.at(size_t(i)); }

std::shared_ptr<DocumentSource> load_text_jsonl(const std::string& path, const BatchEncoder& encode,
                                                const std::string& key) {
  std::vector<std::string> texts;
  for (const auto& r : read_jsonl(path)) {
    if (!r.value.is_object()) throw Error(r.where, "record", "a JSON object", r.value.type_name());
    const auto it = r.value.find(key);
    if (it == r.value.end()) throw Error(r.where, key, "a string", "nothing");
    if (!it->is_string()) throw Error(r.where, key, "a string", it->type_name());
    texts.push_back(it->get<std::string>());
  }
  std::vector<std::vector<int32_t>> ids = encode(texts);
  NH_CHECK(ids.size() == texts.size(), "load_text_jsonl: encoder returned a different count");
  std::vector<Document> docs(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) docs[i].tokens = std::move(ids[i]);
  return std::make_shared<InMemorySource>(path, std::move(docs));
}

std::shared_ptr<DocumentSource> load_chat_jsonl(const std::string& path, const ChatTemplate& tmpl,
                                                const BatchEncoder& encode) {
  std::vector<std::vector<ChatPiece>> rendered;
  for (const auto& r : read_jsonl(path)) rendered.push_back(render_chat(r.value, tmpl, r.where));
  std::vector<Document> docs;
  for (auto& ex : tokenize_chats(rendered, encode))
    docs.push_back({std::move(ex.tokens), std::move(ex.mask)});
  return std::make_shared<InMemorySource>(path, std::move(docs));
}

std::shared_ptr<DocumentSource> open_indexed_dataset(const std::string& prefix) {
  return std::make_shared<IndexedDatasetSource>(prefix);
}

BatchEncoder tokenizer_encoder(const Tokenizer& tokenizer) {
  return [&tokenizer](const std::vector<std::string>& texts) {
    return tokenizer.encode_batch(texts, false);
  };
}

}  // namespace nh
