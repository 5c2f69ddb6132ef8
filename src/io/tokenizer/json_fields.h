// Reading the fields of tokenizer.json: every failure is an nh::Error naming the file and the
// field's path in it (e.g. "pre_tokenizer.pretokenizers[1].pattern"), what was expected and
// what was found.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace nh::tok {

using json = nlohmann::json;

// A position in the file: the file name and the path of a field inside it.
struct JsonPath {
  std::string file;
  std::string path;

  JsonPath operator/(const std::string& key) const;
  JsonPath operator[](size_t index) const;
  [[noreturn]] void fail(const std::string& expected, const std::string& found) const;
};

// A short description of a JSON value for error messages: its type, or the value when short.
std::string describe(const json& value);

// The member `key` of object `obj` (at `at`); missing or null is an error.
const json& require(const json& obj, const std::string& key, const JsonPath& at);
// The member `key`, or nullptr when missing or null.
const json* optional(const json& obj, const std::string& key);
std::string get_string(const json& obj, const std::string& key, const JsonPath& at);
bool get_bool(const json& obj, const std::string& key, bool fallback, const JsonPath& at);
int64_t get_int(const json& obj, const std::string& key, const JsonPath& at);
// A string member of exactly one code point (Metaspace's replacement, Strip's content).
uint32_t get_char(const json& obj, const std::string& key, const JsonPath& at);
// `obj` must be an object with a string "type"; returns it.
std::string get_type(const json& obj, const JsonPath& at);
// The error for a component type this reader does not implement.
[[noreturn]] void unsupported(const JsonPath& at, const std::string& type,
                              const std::string& supported);

}  // namespace nh::tok
