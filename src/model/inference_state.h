// What decoding keeps per sequence between steps (SPEC §2, §3): for each Mamba layer the last
// K-1 convolution inputs and the fp32 SSM state, fixed in size whatever the context length; for
// each attention layer the keys and values of every position so far, in pages of `page_size`
// positions drawn from one pool that every row shares (a row holds only the pages its request
// reserved, so memory follows the requests' lengths, not rows × the longest context).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace nh {

struct LayerCache {
  Tensor conv_state;  // Mamba: [R, conv_dim, K-1], the activations' dtype
  Tensor ssm_state;   // Mamba: [R, H, P, N], F32 (F64 for F64 models)
  Tensor k, v;        // attention: [pages, page_size, Hkv, head_dim], shared by all rows
};

// Where the tokens of a step live in the state, on the model's device: token b belongs to state
// row rows[b] (-1: a padding entry, which reads and writes no state) at position positions[b];
// lengths[b] = positions[b] + 1 (0 for padding) is what a decoded token attends to. Position p of
// row r lives in slot p % page_size of page block_table[r, p / page_size].
struct CacheSlots {
  Tensor rows;         // I32 [B]
  Tensor positions;    // I32 [B]
  Tensor lengths;      // I32 [B]
  Tensor block_table;  // I32 [R, max_pages]
  int64_t page_size = 0;
};

constexpr int64_t kDefaultPageSize = 64;

// Pages of `page_size` positions that hold `positions`.
inline int64_t pages_for(int64_t positions, int64_t page_size) {
  return (positions + page_size - 1) / page_size;
}

struct DecodeGraph;  // a captured decode step (model/decode.cpp)

struct InferenceState {
  int64_t capacity = 0;          // positions a row may reach (prompt + new tokens)
  int64_t page_size = 0;         // positions per KV page
  std::vector<int64_t> lengths;  // positions filled so far, per row
  std::vector<std::vector<int32_t>> pages;  // per row: its reserved KV pages, in position order
  std::vector<int32_t> free_pages;          // pages no row holds
  Tensor block_table;                       // I32 [R, max_pages] on the device: `pages` mirrored
  std::vector<LayerCache> layers;
  bool use_graphs = true;  // replay decode steps from CUDA graphs where the model allows
  std::map<int64_t, std::shared_ptr<DecodeGraph>> graphs;  // by padded batch size

  int64_t rows() const { return int64_t(lengths.size()); }
  // KV pages a reservation of `positions` takes (0 when the model has no attention layer).
  int64_t pages_needed(int64_t positions) const {
    return page_size > 0 ? pages_for(positions, page_size) : 0;
  }
  // Positions row r may reach with the pages it holds (capacity when the model has no
  // attention layer).
  int64_t reserved(int64_t r) const;
  // Reserves pages for `positions` positions of empty row r; false (and nothing taken) when the
  // pool has too few free pages. An Error when r is not empty or positions exceeds capacity.
  bool reserve(int64_t r, int64_t positions);
  // Empties row r and returns its pages to the pool.
  void release(int64_t r);
  // Bytes held by the caches.
  int64_t bytes() const;
};

}  // namespace nh
