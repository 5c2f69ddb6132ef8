// nh::Error: the one error type for bad input and failed operations.
// It names where the problem is (a file, a field) and what was expected and
// found; the CLI prints what() as one line and exits with code 2.
#pragma once

#include <stdexcept>
#include <string>

namespace nh {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  // "<where>: <field>: expected <expected>, found <found>"
  Error(const std::string& where, const std::string& field, const std::string& expected,
        const std::string& found)
      : std::runtime_error(where + ": " + field + ": expected " + expected + ", found " + found) {}
};

// Internal invariant check that is not about user input: also an Error, so a
// broken invariant still ends in one line rather than an abort.
#define NH_CHECK(cond, msg)                                                                 \
  do {                                                                                      \
    if (!(cond)) throw ::nh::Error(std::string(__FILE__) + ":" + std::to_string(__LINE__) + \
                                   ": " + (msg));                                           \
  } while (0)

}  // namespace nh
