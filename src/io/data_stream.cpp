#include "io/data_stream.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"

namespace nh {

namespace {

constexpr int64_t kIgnore = -100;
constexpr int kStateVersion = 1;
const char* const kPartNames[3] = {"train", "validation", "test"};

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// One row of a micro-batch being written.
struct RowView {
  int64_t* ids;
  int64_t* targets;
  int32_t* seq_idx;
};

// Tokens [begin, end) of `doc` at row position `pos`, as the row's document `seg`. A token's
// target is the next token when that lies in the same range and its mask trains it, so the
// last token of a document, and of a row, has none.
void put_segment(const Document& doc, int64_t begin, int64_t end, int32_t seg, RowView row,
                 int64_t pos) {
  for (int64_t t = begin; t < end; ++t, ++pos) {
    row.ids[pos] = doc.tokens[size_t(t)];
    row.seq_idx[pos] = seg;
    const bool trained = t + 1 < end && (doc.mask.empty() || doc.mask[size_t(t + 1)]);
    row.targets[pos] = trained ? doc.tokens[size_t(t + 1)] : kIgnore;
  }
}

// A position in a source's document sequence: document `index` of epoch `epoch`'s order.
struct Position {
  int64_t epoch = 0, index = 0;
  bool operator==(const Position&) const = default;
};

// One source of the stream: its documents in the split part, a fresh shuffle per epoch, and
// its own packer (Megatron packs each dataset on its own; the blend then picks rows).
class SourceStream {
 public:
  SourceStream(const DataStreamConfig& cfg, size_t which, std::string label,
               std::vector<int64_t> docs)
      : cfg_(cfg),
        src_(cfg.sources[which]),
        which_(which),
        label_(std::move(label)),
        docs_(std::move(docs)) {}

  int64_t num_documents() const { return int64_t(docs_.size()); }
  int64_t rows() const { return rows_; }

  void next_row(RowView row) {
    if (cfg_.packing == Packing::Pretrain)
      next_pretrain_row(row);
    else
      next_sft_row(row);
    ++rows_;
  }

  nlohmann::json state() const {
    const Position& p = cfg_.packing == Packing::Pretrain ? pos_ : window_start_;
    nlohmann::json s = {{"name", src_.documents->name()},
                        {"documents", docs_.size()},
                        {"rows", rows_},
                        {"epoch", p.epoch},
                        {"index", p.index}};
    if (cfg_.packing == Packing::Pretrain)
      s["offset"] = offset_;
    else
      s["window_rows"] = window_taken_;
    return s;
  }

  void restore(const nlohmann::json& s, const std::string& where) {
    const auto count = [&](const char* key, int64_t lo, int64_t hi) {
      const auto it = s.find(key);
      if (it == s.end() || !it->is_number_integer())
        throw Error(where, key, "an integer", it == s.end() ? "nothing" : it->dump());
      const int64_t v = it->get<int64_t>();
      if (v < lo || v > hi)
        throw Error(where, key,
                    "a value in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]",
                    std::to_string(v));
      return v;
    };
    const int64_t n = num_documents(), big = std::numeric_limits<int64_t>::max();
    count("documents", n, n);
    rows_ = count("rows", 0, big);
    const Position p{count("epoch", 0, big), count("index", 0, n - 1)};
    if (cfg_.packing == Packing::Pretrain) {
      pos_ = p;
      offset_ = count("offset", 0, int64_t(fetch_at(p).tokens.size()) - 1);
    } else {
      window_start_ = p;
      build_window();
      window_taken_ = count("window_rows", 0, int64_t(window_.size()));
    }
  }

 private:
  // The source document at a position, after a shuffle of the part's documents seeded by
  // (seed, source, epoch), so every epoch has its own order.
  int64_t document_at(Position p) {
    if (p.epoch != order_epoch_) {
      order_ = docs_;
      Rng rng(splitmix(splitmix(splitmix(cfg_.seed) ^ which_) ^ uint64_t(p.epoch)));
      for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.next() % i]);
      order_epoch_ = p.epoch;
    }
    return order_[size_t(p.index)];
  }

  Position next(Position p) const {
    return ++p.index == num_documents() ? Position{p.epoch + 1, 0} : p;
  }

  // The document at a position, checked, with EOD appended when asked and (SFT) cut to the
  // row length.
  Document fetch_at(Position p) {
    const int64_t d = document_at(p);
    Document doc = src_.documents->document(d);
    for (const int32_t id : doc.tokens) {
      if (id < 0 || id >= cfg_.vocab_size)
        throw Error(label_ + ": document " + std::to_string(d), "token id",
                    "a value in [0, " + std::to_string(cfg_.vocab_size) + ") (the vocabulary)",
                    std::to_string(id));
    }
    if (src_.append_eod) {
      if (!doc.mask.empty()) doc.mask.push_back(1);
      doc.tokens.push_back(cfg_.eod_id);
    }
    if (cfg_.packing == Packing::Sft && int64_t(doc.tokens.size()) > cfg_.seq_length) {
      doc.tokens.resize(size_t(cfg_.seq_length));
      if (!doc.mask.empty()) doc.mask.resize(size_t(cfg_.seq_length));
    }
    return doc;
  }

  const Document& current() {
    if (!cached_ || cached_pos_ != pos_) {
      cached_doc_ = fetch_at(pos_);
      cached_pos_ = pos_;
      cached_ = true;
    }
    return cached_doc_;
  }

  // Documents one after another; the part of a document that does not fit continues at the
  // start of the next row, where it is a new document (seq_idx 0) for the model's state.
  void next_pretrain_row(RowView row) {
    int32_t seg = 0;
    for (int64_t filled = 0; filled < cfg_.seq_length; ++seg) {
      const Document& doc = current();
      const int64_t len = int64_t(doc.tokens.size());
      const int64_t n = std::min(len - offset_, cfg_.seq_length - filled);
      put_segment(doc, offset_, offset_ + n, seg, row, filled);
      filled += n;
      offset_ += n;
      if (offset_ == len) {
        pos_ = next(pos_);
        offset_ = 0;
      }
    }
  }

  // The next pack_window examples from window_start_, first-fit into rows in example order:
  // each goes into the first row opened so far with room for it, else opens a new row.
  void build_window() {
    window_.clear();
    std::vector<int64_t> used;
    Position p = window_start_;
    for (int64_t k = 0; k < cfg_.pack_window; ++k, p = next(p)) {
      Document doc = fetch_at(p);
      const int64_t len = int64_t(doc.tokens.size());
      size_t bin = 0;
      while (bin < used.size() && used[bin] + len > cfg_.seq_length) ++bin;
      if (bin == used.size()) {
        window_.emplace_back();
        used.push_back(0);
      }
      window_[bin].push_back(std::move(doc));
      used[bin] += len;
    }
    window_end_ = p;
    window_taken_ = 0;
  }

  void next_sft_row(RowView row) {
    if (window_.empty()) build_window();
    if (window_taken_ == int64_t(window_.size())) {
      window_start_ = window_end_;
      build_window();
    }
    const std::vector<Document>& bin = window_[size_t(window_taken_++)];
    int64_t filled = 0;
    int32_t seg = 0;
    for (const Document& doc : bin) {
      put_segment(doc, 0, int64_t(doc.tokens.size()), seg++, row, filled);
      filled += int64_t(doc.tokens.size());
    }
    for (; filled < cfg_.seq_length; ++filled) {
      row.ids[filled] = cfg_.pad_id;
      row.targets[filled] = kIgnore;
      row.seq_idx[filled] = seg;
    }
  }

  const DataStreamConfig& cfg_;
  const StreamSource& src_;
  uint64_t which_;
  std::string label_;
  std::vector<int64_t> docs_;  // the part's usable documents, ascending
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  int64_t rows_ = 0;
  // Pretraining: the next token is token offset_ of the document at pos_.
  Position pos_;
  int64_t offset_ = 0;
  bool cached_ = false;
  Position cached_pos_;
  Document cached_doc_;
  // SFT: rows packed from the window of examples starting at window_start_.
  Position window_start_, window_end_;
  std::vector<std::vector<Document>> window_;
  int64_t window_taken_ = 0;
};

const char* packing_name(Packing p) { return p == Packing::Pretrain ? "pretrain" : "sft"; }

}  // namespace

std::vector<double> parse_split(const std::string& split) {
  std::vector<double> parts;
  std::stringstream ss(split);
  std::string item;
  const auto bad = [&] {
    return Error("data split", "\"" + split + "\"",
                 "1 to 3 comma-separated non-negative sizes with a positive sum (\"98,2\")",
                 "something else");
  };
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      throw bad();
    }
    if (item.find_first_not_of(" \t", used) != std::string::npos || !std::isfinite(v) || v < 0)
      throw bad();
    parts.push_back(v);
  }
  double sum = 0;
  for (double v : parts) sum += v;
  if (parts.empty() || parts.size() > 3 || !(sum > 0)) throw bad();
  for (double& v : parts) v /= sum;
  parts.resize(3, 0.0);
  return parts;
}

struct DataStream::Impl {
  DataStreamConfig cfg;
  std::vector<SourceStream> sources;
  std::vector<SourceStats> stats;
  int64_t rows = 0;

  // Megatron's blending: the source whose realised share of rows would fall furthest below
  // its weight; ties go to the lower index. Depends only on the row counts, so it needs no
  // state of its own.
  size_t choose() const {
    size_t best = 0;
    double best_gap = -1e300;
    for (size_t j = 0; j < sources.size(); ++j) {
      const double gap = stats[j].weight * double(rows + 1) - double(sources[j].rows());
      if (gap > best_gap) {
        best_gap = gap;
        best = j;
      }
    }
    return best;
  }

  void check_config() const {
    const std::string where = "data stream";
    if (cfg.sources.empty()) throw Error(where, "sources", "at least one source", "none");
    if (cfg.seq_length < 1)
      throw Error(where, "seq_length", ">= 1", std::to_string(cfg.seq_length));
    if (cfg.vocab_size < 1)
      throw Error(where, "vocab_size", ">= 1", std::to_string(cfg.vocab_size));
    if (cfg.split_part < 0 || cfg.split_part > 2)
      throw Error(where, "split_part", "0 (train), 1 (validation) or 2 (test)",
                  std::to_string(cfg.split_part));
    if (cfg.pack_window < 1)
      throw Error(where, "pack_window", ">= 1", std::to_string(cfg.pack_window));
    const bool eod = std::any_of(cfg.sources.begin(), cfg.sources.end(),
                                 [](const StreamSource& s) { return s.append_eod; });
    if (eod && (cfg.eod_id < 0 || cfg.eod_id >= cfg.vocab_size))
      throw Error(where, "eod_id", "a token id in [0, " + std::to_string(cfg.vocab_size) + ")",
                  std::to_string(cfg.eod_id));
    if (cfg.packing == Packing::Sft && (cfg.pad_id < 0 || cfg.pad_id >= cfg.vocab_size))
      throw Error(where, "pad_id", "a token id in [0, " + std::to_string(cfg.vocab_size) + ")",
                  std::to_string(cfg.pad_id));
  }

  // Whether a truncated example still has a target: a trained token at positions
  // [1, seq_length) (the first token is never a target). A long prompt can leave none.
  bool trains_within_row(const Document& doc) const {
    if (doc.mask.empty()) return cfg.seq_length > 1;
    const auto end = doc.mask.begin() + std::min<int64_t>(cfg.seq_length, int64_t(doc.mask.size()));
    return std::any_of(doc.mask.begin() + 1, end, [](uint8_t m) { return m != 0; });
  }

  static std::string label(const DataStreamConfig& cfg, size_t j) {
    const auto& d = cfg.sources[j].documents;
    return "data source " + std::to_string(j) + " (" + (d ? d->name() : "none") + ")";
  }

  // The usable documents of source j in the split part: its contiguous range of document
  // indices (Megatron's split), less empty, untrained and (SFT, Drop) overlong documents.
  std::vector<int64_t> index_source(size_t j, const std::vector<double>& split,
                                    SourceStats& st) const {
    const DocumentSource& src = *cfg.sources[j].documents;
    const int64_t n = src.num_documents();
    double cum = 0;
    for (int k = 0; k < cfg.split_part; ++k) cum += split[size_t(k)];
    const int64_t begin = std::llround(cum * double(n));
    const int64_t end =
        cfg.split_part == 2 ? n : std::llround((cum + split[size_t(cfg.split_part)]) * double(n));
    const int64_t eod = cfg.sources[j].append_eod ? 1 : 0;
    std::vector<int64_t> docs;
    for (int64_t d = begin; d < end; ++d) {
      const int64_t len = src.document_length(d);
      if (len == 0) {
        ++st.empty_documents;
      } else if (src.trained_tokens(d) == 0) {
        ++st.untrained_documents;
      } else if (cfg.packing == Packing::Sft && len + eod > cfg.seq_length) {
        ++st.long_examples;
        if (cfg.long_examples == LongExamples::Drop) continue;
        if (trains_within_row(src.document(d)))
          docs.push_back(d);
        else
          ++st.untrained_documents;
      } else {
        docs.push_back(d);
      }
    }
    if (docs.empty())
      throw Error(
          label(cfg, j),
          std::string("split \"") + cfg.split + "\" " + kPartNames[cfg.split_part] + " part",
          "at least one usable document",
          "none (" + std::to_string(end - begin) + " documents in the part, " +
              std::to_string(st.empty_documents) + " empty, " +
              std::to_string(st.untrained_documents) + " with nothing trained, " +
              std::to_string(st.long_examples) + " too long and dropped)");
    return docs;
  }
};

DataStream::DataStream(DataStreamConfig config) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.cfg = std::move(config);
  m.check_config();
  const std::vector<double> split = parse_split(m.cfg.split);
  double total = 0;
  for (size_t j = 0; j < m.cfg.sources.size(); ++j) {
    const StreamSource& s = m.cfg.sources[j];
    if (!s.documents) throw Error(Impl::label(m.cfg, j), "documents", "a source", "none");
    if (!(s.weight > 0) || !std::isfinite(s.weight))
      throw Error(Impl::label(m.cfg, j), "weight", "a finite number > 0", std::to_string(s.weight));
    total += s.weight;
  }
  for (size_t j = 0; j < m.cfg.sources.size(); ++j) {
    SourceStats st;
    st.name = m.cfg.sources[j].documents->name();
    st.weight = m.cfg.sources[j].weight / total;
    std::vector<int64_t> docs = m.index_source(j, split, st);
    st.documents = int64_t(docs.size());
    m.stats.push_back(st);
    m.sources.emplace_back(m.cfg, j, Impl::label(m.cfg, j), std::move(docs));
  }
}

DataStream::~DataStream() = default;
DataStream::DataStream(DataStream&&) noexcept = default;

MicroBatch DataStream::next_batch(int64_t batch_rows) {
  Impl& m = *impl_;
  if (batch_rows < 1) throw Error("data stream", "batch_rows", ">= 1", std::to_string(batch_rows));
  const int64_t s = m.cfg.seq_length;
  MicroBatch b{Tensor::empty({batch_rows, s}, DType::I64),
               Tensor::empty({batch_rows, s}, DType::I64),
               Tensor::empty({batch_rows, s}, DType::I32)};
  for (int64_t r = 0; r < batch_rows; ++r) {
    const size_t j = m.choose();
    m.sources[j].next_row({b.ids.data<int64_t>() + r * s, b.targets.data<int64_t>() + r * s,
                           b.seq_idx.data<int32_t>() + r * s});
    ++m.rows;
  }
  return b;
}

nlohmann::json DataStream::state() const {
  const Impl& m = *impl_;
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& s : m.sources) sources.push_back(s.state());
  return {{"version", kStateVersion},
          {"packing", packing_name(m.cfg.packing)},
          {"seq_length", m.cfg.seq_length},
          {"seed", m.cfg.seed},
          {"split", m.cfg.split},
          {"split_part", m.cfg.split_part},
          {"pack_window", m.cfg.pack_window},
          {"rows", m.rows},
          {"sources", sources}};
}

void DataStream::restore(const nlohmann::json& state) {
  Impl& m = *impl_;
  const std::string where = "data stream state";
  if (!state.is_object()) throw Error(where, "state", "a JSON object", state.type_name());
  const auto expect = [&](const char* key, const nlohmann::json& want) {
    const auto it = state.find(key);
    if (it == state.end() || *it != want)
      throw Error(where, key, want.dump() + " (this stream's config)",
                  it == state.end() ? "nothing" : it->dump());
  };
  expect("version", kStateVersion);
  expect("packing", packing_name(m.cfg.packing));
  expect("seq_length", m.cfg.seq_length);
  expect("seed", m.cfg.seed);
  expect("split", m.cfg.split);
  expect("split_part", m.cfg.split_part);
  expect("pack_window", m.cfg.pack_window);
  const auto sources = state.find("sources");
  if (sources == state.end() || !sources->is_array() || sources->size() != m.sources.size())
    throw Error(where, "sources", std::to_string(m.sources.size()) + " source states",
                sources == state.end() ? "nothing" : sources->dump());
  // Restored into copies, so a bad state leaves the stream as it was.
  std::vector<SourceStream> restored = m.sources;
  int64_t rows = 0;
  for (size_t j = 0; j < restored.size(); ++j) {
    restored[j].restore((*sources)[j], where + ": sources[" + std::to_string(j) + "]");
    rows += restored[j].rows();
  }
  expect("rows", rows);
  m.sources.swap(restored);
  m.rows = rows;
}

const std::vector<SourceStats>& DataStream::stats() const { return impl_->stats; }

std::string DataStream::summary() const {
  const Impl& m = *impl_;
  std::ostringstream out;
  out << "data stream: " << kPartNames[m.cfg.split_part] << " part of split \"" << m.cfg.split
      << "\", " << packing_name(m.cfg.packing) << " packing, rows of " << m.cfg.seq_length
      << " tokens, seed " << m.cfg.seed;
  for (const auto& s : m.stats) {
    out << "\n  " << s.name << ": weight " << s.weight << ", " << s.documents << " documents";
    if (s.empty_documents) out << ", " << s.empty_documents << " empty skipped";
    if (s.untrained_documents)
      out << ", " << s.untrained_documents << " with nothing trained skipped";
    if (s.long_examples)
      out << ", " << s.long_examples << " longer than a row "
          << (m.cfg.long_examples == LongExamples::Truncate ? "truncated" : "dropped");
  }
  return out.str();
}

}  // namespace nh
