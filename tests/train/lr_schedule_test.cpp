#include "train/lr_schedule.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace nh {

TEST(LrSchedule, WarmupRisesLinearlyToThePeak) {
  LrSchedule s{"cosine", 1.0, 0.1, 4, 20};
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
}

TEST(LrSchedule, CosineAndLinearEndAtMinLr) {
  for (const char* kind : {"cosine", "linear"}) {
    LrSchedule s{kind, 1.0, 0.1, 2, 12};
    EXPECT_DOUBLE_EQ(s.at(2), 1.0) << kind;
    EXPECT_NEAR(s.at(7), 0.55, 1e-12) << kind;  // halfway: both schedules pass the midpoint
    EXPECT_DOUBLE_EQ(s.at(12), 0.1) << kind;
    EXPECT_DOUBLE_EQ(s.at(100), 0.1) << kind;
  }
}

TEST(LrSchedule, WsdHoldsThenDecaysInTheLastFraction) {
  LrSchedule s{"wsd", 1.0, 0.0, 0, 100, 0.2};
  EXPECT_DOUBLE_EQ(s.at(50), 1.0);
  EXPECT_DOUBLE_EQ(s.at(80), 1.0);
  EXPECT_NEAR(s.at(90), 0.5, 1e-12);
  EXPECT_NEAR(s.at(100), 0.0, 1e-12);
}

TEST(LrSchedule, ConstantAndUnknownKind) {
  EXPECT_DOUBLE_EQ((LrSchedule{"constant", 0.3, 0.0, 0, 10}).at(9), 0.3);
  EXPECT_THROW((LrSchedule{"exp", 0.3, 0.0, 0, 10}).at(9), Error);
}

}  // namespace nh
