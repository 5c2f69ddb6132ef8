// Assertions the op tests share: element-wise closeness, and errors that name the op and the
// argument at fault.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/error.h"
#include "core/tensor.h"

namespace nh::test {

inline void expect_near_all(const Tensor& got, const Tensor& want, double tol,
                            const std::string& what = "") {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_NEAR(read_float(got, i), read_float(want, i), tol) << what << " element " << i;
}

// `call` throws an nh::Error whose message names `op` and `arg`.
inline void expect_error(const std::function<void()>& call, const std::string& op,
                         const std::string& arg) {
  try {
    call();
    ADD_FAILURE() << op << ": no error for a bad " << arg;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(op), std::string::npos) << msg;
    EXPECT_NE(msg.find(arg), std::string::npos) << msg;
  }
}

}  // namespace nh::test
