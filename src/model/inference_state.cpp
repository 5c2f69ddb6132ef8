#include "model/inference_state.h"

#include <string>

#include "core/error.h"

namespace nh {

namespace {

bool has_pages(const InferenceState& s) { return s.page_size > 0; }

}  // namespace

int64_t InferenceState::reserved(int64_t r) const {
  return has_pages(*this) ? int64_t(pages.at(size_t(r)).size()) * page_size : capacity;
}

bool InferenceState::reserve(int64_t r, int64_t positions) {
  if (r < 0 || r >= rows() || lengths[size_t(r)] != 0)
    throw Error("inference state", "row", "an empty row", std::to_string(r));
  if (positions < 1 || positions > capacity)
    throw Error("inference state", "positions", "1 to " + std::to_string(capacity),
                std::to_string(positions));
  if (!has_pages(*this)) return true;
  std::vector<int32_t>& mine = pages[size_t(r)];
  const size_t want = size_t(pages_needed(positions));
  if (mine.size() >= want) return true;
  const size_t more = want - mine.size();
  if (free_pages.size() < more) return false;
  const size_t first = mine.size();
  mine.insert(mine.end(), free_pages.rbegin(), free_pages.rbegin() + ptrdiff_t(more));
  free_pages.resize(free_pages.size() - more);
  // Mirror the new entries into the device's block table (one small copy).
  Tensor entries = Tensor::from(std::vector<int32_t>(mine.begin() + ptrdiff_t(first), mine.end()),
                                {int64_t(more)});
  block_table.slice0(r, r + 1).reshape({block_table.size(1)}).slice0(int64_t(first), int64_t(want))
      .copy_from(entries);
  return true;
}

void InferenceState::release(int64_t r) {
  lengths.at(size_t(r)) = 0;
  if (!has_pages(*this)) return;
  std::vector<int32_t>& mine = pages[size_t(r)];
  free_pages.insert(free_pages.end(), mine.rbegin(), mine.rend());
  mine.clear();
}

int64_t InferenceState::bytes() const {
  int64_t n = 0;
  for (const auto& l : layers)
    for (const Tensor* t : {&l.conv_state, &l.ssm_state, &l.k, &l.v})
      if (t->defined()) n += int64_t(t->nbytes());
  return n;
}

}  // namespace nh
