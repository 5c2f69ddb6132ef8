// Model inference with state: the inference state's layout, prefill, and decode steps, which on
// the GPU are captured once per padded batch size and replayed as CUDA graphs.
#include <algorithm>
#include <set>
#include <string>

#include "core/cuda_graph.h"
#include "model/model.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace nh {

// A captured decode step and the buffers it was captured on: a step copies its inputs into
// ids/rows/positions/lengths, replays the graph and reads logits.
struct DecodeGraph {
  Tensor ids, rows, positions, lengths, logits;
  CudaGraph graph;
};

namespace {

Tensor i32(const std::vector<int32_t>& v, Device dev) {
  return Tensor::from(v, {int64_t(v.size())}).to(dev);
}

// Batch sizes a step is padded to on the GPU, so a few graphs serve every batch.
int64_t padded_batch(int64_t b) {
  int64_t p = 1;
  while (p < b) p *= 2;
  return p;
}

}  // namespace

InferenceState Model::new_inference_state(int64_t rows, int64_t capacity, int64_t kv_positions,
                                          int64_t page_size) const {
  const ModelConfig& c = config_;
  if (rows < 1) throw Error("inference state", "rows", "at least 1", std::to_string(rows));
  if (capacity < 1)
    throw Error("inference state", "capacity", "at least 1 position", std::to_string(capacity));
  if (page_size < 1)
    throw Error("inference state", "page size", "at least 1", std::to_string(page_size));
  if (kv_positions < 0)
    throw Error("inference state", "KV positions", "at least 0 (0: every row to capacity)",
                std::to_string(kv_positions));
  const DType dt = dtype();
  const Device dev = device();
  InferenceState s;
  s.capacity = capacity;
  s.lengths.assign(size_t(rows), 0);
  const bool attention =
      std::find(c.layers.begin(), c.layers.end(), LayerKind::Attention) != c.layers.end();
  const int64_t row_pages = pages_for(capacity, page_size);
  const int64_t pages = kv_positions > 0 ? pages_for(kv_positions, page_size) : rows * row_pages;
  if (attention) {
    s.page_size = page_size;
    s.pages.resize(size_t(rows));
    for (int64_t p = pages; p-- > 0;) s.free_pages.push_back(int32_t(p));
    s.block_table = Tensor::zeros({rows, row_pages}, DType::I32, dev);
  }
  for (LayerKind kind : c.layers) {
    LayerCache lc;
    if (kind == LayerKind::Mamba) {
      lc.conv_state = Tensor::zeros({rows, c.conv_dim(), c.conv_kernel - 1}, dt, dev);
      lc.ssm_state = Tensor::zeros({rows, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size},
                                   dt == DType::F64 ? DType::F64 : DType::F32, dev);
    } else if (kind == LayerKind::Attention) {
      lc.k = Tensor::zeros({pages, page_size, c.num_key_value_heads, c.head_dim}, dt, dev);
      lc.v = Tensor::zeros({pages, page_size, c.num_key_value_heads, c.head_dim}, dt, dev);
    }
    s.layers.push_back(std::move(lc));
  }
  return s;
}

void Model::prefill(const Tensor& ids, InferenceState& state, int64_t row, Tensor& last_logits) {
  const int64_t s = ids.numel(), d = config_.hidden_size;
  if (row < 0 || row >= state.rows() || state.lengths[size_t(row)] != 0)
    throw Error("prefill", "row", "an empty row of the inference state", std::to_string(row));
  if (s < 1 || s > state.capacity)
    throw Error("prompt", "length", "1 to " + std::to_string(state.capacity) + " tokens",
                std::to_string(s));
  if (state.page_size > 0 && state.pages[size_t(row)].empty() &&
      !state.reserve(row, state.capacity))
    throw Error("prefill", "KV pages",
                std::to_string(state.capacity) + " positions free in the inference state",
                std::to_string(int64_t(state.free_pages.size()) * state.page_size));
  if (state.reserved(row) < s)
    throw Error("prefill", "reserved positions", "at least the prompt's " + std::to_string(s),
                std::to_string(state.reserved(row)));
  const Device dev = device();
  CacheSlots slots{i32(std::vector<int32_t>(size_t(s), int32_t(row)), dev), Tensor(), Tensor(),
                   state.block_table, state.page_size};
  std::vector<int32_t> positions(static_cast<size_t>(s));
  for (int64_t i = 0; i < s; ++i) positions[size_t(i)] = int32_t(i);
  slots.positions = i32(positions, dev);
  const Batch batch{1, s, Tensor()};
  Tensor h = Tensor::empty({s, d}, dtype(), dev), normed = Tensor::empty({s, d}, dtype(), dev);
  embedding_forward(ids.reshape({1, s}).to(dev), weights_.params.at("embeddings.weight"), h);
  for (size_t l = 0; l < mixers_.size(); ++l) {
    norm(l, h, normed);
    Tensor out = Tensor::empty({s, d}, dtype(), dev);
    mixers_[l]->prefill(normed, batch, state.layers[l], slots, row, out);
    add_inplace(h, out);
  }
  Tensor last = h.slice0(s - 1, s), last_normed = Tensor::empty({1, d}, dtype(), dev);
  norm(mixers_.size(), last, last_normed);
  Tensor logits = last_logits.reshape({1, config_.vocab_size});
  head_logits(last_normed, Tensor(), logits);
  state.lengths[size_t(row)] = s;
}

void Model::decode_step(const Tensor& ids, InferenceState& state, const CacheSlots& slots,
                        Tensor& logits) {
  const int64_t b = ids.numel(), d = config_.hidden_size;
  const Device dev = device();
  Tensor h = Tensor::empty({b, d}, dtype(), dev), normed = Tensor::empty({b, d}, dtype(), dev);
  embedding_forward(ids, weights_.params.at("embeddings.weight"), h, /*ids_checked=*/true);
  norm(0, h, normed);
  Tensor out = Tensor::empty({b, d}, dtype(), dev);
  Tensor rstd = Tensor::empty({b}, stats_dtype(dtype()), dev);
  for (size_t l = 0; l < mixers_.size(); ++l) {
    mixers_[l]->decode(normed, state.layers[l], slots, out);
    // The residual add and the next layer's pre-norm (the final norm after the last) at once.
    add_rmsnorm_forward(h, out, norm_weight(l + 1), config_.layer_norm_epsilon, normed, rstd);
  }
  linear_forward(normed, head_weight(), Tensor(), logits);
}

DecodeGraph& Model::decode_graph(InferenceState& state, int64_t padded) {
  std::shared_ptr<DecodeGraph>& slot = state.graphs[padded];
  if (slot) return *slot;
  const Device dev = device();
  auto g = std::make_shared<DecodeGraph>();
  g->ids = Tensor::zeros({padded}, DType::I64, dev);
  g->rows = i32(std::vector<int32_t>(size_t(padded), -1), dev);
  g->positions = Tensor::zeros({padded}, DType::I32, dev);
  g->lengths = Tensor::zeros({padded}, DType::I32, dev);
  g->logits = Tensor::empty({padded, config_.vocab_size}, dtype(), dev);
  const CacheSlots slots{g->rows, g->positions, g->lengths, state.block_table, state.page_size};
  const auto step = [&] { decode_step(g->ids, state, slots, g->logits); };
  // Once outside the capture, on padding entries only (they touch no state), so that every
  // kernel is loaded and every lazily sized workspace exists before capturing.
  step();
  g->graph = CudaGraph(step);
  slot = g;
  return *slot;
}

void Model::decode(const Tensor& ids, const std::vector<int64_t>& rows, InferenceState& state,
                   Tensor& logits) {
  const int64_t b = int64_t(rows.size()), vocab = config_.vocab_size;
  if (b < 1 || ids.numel() != b)
    throw Error("decode", "ids", std::to_string(b) + " tokens (one per row)",
                std::to_string(ids.numel()));
  if (ids.dtype() != DType::I64 || ids.device() != Device::CPU)
    throw Error("decode", "ids", "I64 on the host",
                std::string(dtype_name(ids.dtype())) +
                    (ids.device() == Device::CPU ? " on the host" : " on the GPU"));
  std::vector<int64_t> id(ids.data<int64_t>(), ids.data<int64_t>() + b);
  std::vector<int32_t> row32, positions, lengths;
  std::set<int64_t> seen;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = rows[size_t(i)];
    if (id[size_t(i)] < 0 || id[size_t(i)] >= vocab)
      throw Error("decode", "ids[" + std::to_string(i) + "]",
                  "an id in [0, " + std::to_string(vocab) + ")", std::to_string(id[size_t(i)]));
    if (r < 0 || r >= state.rows() || !seen.insert(r).second || state.lengths[size_t(r)] == 0)
      throw Error("decode", "rows[" + std::to_string(i) + "]",
                  "a distinct prefilled row of the inference state", std::to_string(r));
    const int64_t n = state.lengths[size_t(r)];
    if (n >= state.reserved(r))
      throw Error("generation", "length",
                  "at most " + std::to_string(state.reserved(r)) +
                      " positions (prompt + new tokens)",
                  "row " + std::to_string(r) + " is full");
    row32.push_back(int32_t(r));
    positions.push_back(int32_t(n));
    lengths.push_back(int32_t(n + 1));
  }
  const Device dev = device();
  const bool graphs = dev == Device::CUDA && state.use_graphs &&
                      std::all_of(mixers_.begin(), mixers_.end(),
                                  [](const auto& m) { return m->decode_capturable(); });
  if (graphs) {
    const int64_t padded = padded_batch(b);
    id.resize(size_t(padded), 0);
    row32.resize(size_t(padded), -1);
    positions.resize(size_t(padded), 0);
    lengths.resize(size_t(padded), 0);
    DecodeGraph& g = decode_graph(state, padded);
    g.ids.copy_from(Tensor::from(id, {padded}));
    g.rows.copy_from(Tensor::from(row32, {padded}));
    g.positions.copy_from(Tensor::from(positions, {padded}));
    g.lengths.copy_from(Tensor::from(lengths, {padded}));
    g.graph.launch();
    logits.copy_from(g.logits.slice0(0, b));
  } else {
    const CacheSlots slots{i32(row32, dev), i32(positions, dev), i32(lengths, dev),
                           state.block_table, state.page_size};
    Tensor out = Tensor::empty({b, vocab}, dtype(), dev);
    decode_step(Tensor::from(id, {b}).to(dev), state, slots, out);
    logits.copy_from(out);
  }
  for (int64_t r : rows) ++state.lengths[size_t(r)];
}

void Model::decode(const Tensor& ids, InferenceState& state, Tensor& logits) {
  std::vector<int64_t> rows(size_t(state.rows()));
  for (size_t r = 0; r < rows.size(); ++r) rows[r] = int64_t(r);
  decode(ids, rows, state, logits);
}

}  // namespace nh
