// The inference state's KV page pool: reservations take whole pages from one pool, mirror them
// into the block table, fail without taking anything when the pool is short, and come back on
// release; a model without attention layers has no pages to count.
#include "model/inference_state.h"

#include <gtest/gtest.h>

#include <set>

#include "model/model.h"
#include "model/presets.h"

namespace nh {
namespace {

TEST(InferenceState, ReservesWholePagesFromOnePoolAndMirrorsThemInTheBlockTable) {
  Model m = Model::init(preset_config("tiny-hybrid"), 1, DType::F32);
  InferenceState s = m.new_inference_state(3, 10, 16, 4);  // 4 pages of 4 positions
  EXPECT_EQ(s.page_size, 4);
  EXPECT_EQ(s.free_pages.size(), 4u);
  EXPECT_EQ(s.block_table.shape(), (Shape{3, 3}));
  ASSERT_TRUE(s.reserve(0, 5));  // 2 pages
  EXPECT_EQ(s.reserved(0), 8);
  EXPECT_FALSE(s.reserve(1, 9)) << "3 pages asked, 2 free";
  EXPECT_TRUE(s.pages[1].empty());
  EXPECT_EQ(s.free_pages.size(), 2u);
  ASSERT_TRUE(s.reserve(1, 8));
  EXPECT_TRUE(s.free_pages.empty());
  std::set<int32_t> held;
  for (int64_t r : {0, 1})
    for (size_t i = 0; i < s.pages[size_t(r)].size(); ++i) {
      const int32_t p = s.pages[size_t(r)][i];
      EXPECT_TRUE(held.insert(p).second) << "page " << p << " held twice";
      EXPECT_EQ(s.block_table.data<int32_t>()[r * 3 + int64_t(i)], p);
    }
  EXPECT_EQ(held.size(), 4u);
  s.release(0);
  EXPECT_EQ(s.reserved(0), 0);
  EXPECT_EQ(s.free_pages.size(), 2u);
  EXPECT_TRUE(s.reserve(2, 7));
}

TEST(InferenceState, RefusesRowsThatAreNotEmptyAndPositionsBeyondCapacity) {
  Model m = Model::init(preset_config("tiny-hybrid"), 1, DType::F32);
  InferenceState s = m.new_inference_state(2, 10, 0, 4);
  EXPECT_THROW(s.reserve(0, 11), Error);
  EXPECT_THROW(s.reserve(0, 0), Error);
  EXPECT_THROW(s.reserve(2, 4), Error);
  s.lengths[1] = 3;
  EXPECT_THROW(s.reserve(1, 4), Error);
  EXPECT_THROW(m.new_inference_state(0, 10), Error);
  EXPECT_THROW(m.new_inference_state(1, 10, 0, 0), Error);
}

TEST(InferenceState, APureMambaModelHasNoPagesAndAlwaysHasRoom) {
  Model m = Model::init(preset_config("tiny-mamba2"), 1, DType::F32);
  InferenceState s = m.new_inference_state(2, 10, 4);
  EXPECT_EQ(s.page_size, 0);
  EXPECT_TRUE(s.reserve(0, 10));
  EXPECT_EQ(s.reserved(1), 10);
}

}  // namespace
}  // namespace nh
