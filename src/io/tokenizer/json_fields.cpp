#include "io/tokenizer/json_fields.h"

#include "core/error.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

JsonPath JsonPath::operator/(const std::string& key) const {
  return {file, path.empty() ? key : path + "." + key};
}

JsonPath JsonPath::operator[](size_t index) const {
  return {file, path + "[" + std::to_string(index) + "]"};
}

void JsonPath::fail(const std::string& expected, const std::string& found) const {
  throw Error(file, path.empty() ? "(top level)" : path, expected, found);
}

std::string describe(const json& value) {
  if (value.is_string()) {
    const std::string s = value.dump();
    return s.size() <= 60 ? s : s.substr(0, 57) + "...\"";
  }
  if (value.is_number() || value.is_boolean() || value.is_null()) return value.dump();
  return std::string("a JSON ") + value.type_name();
}

const json* optional(const json& obj, const std::string& key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

const json& require(const json& obj, const std::string& key, const JsonPath& at) {
  if (!obj.is_object()) at.fail("an object", describe(obj));
  const json* v = optional(obj, key);
  if (!v) (at / key).fail("a value", obj.contains(key) ? "null" : "nothing (missing)");
  return *v;
}

std::string get_string(const json& obj, const std::string& key, const JsonPath& at) {
  const json& v = require(obj, key, at);
  if (!v.is_string()) (at / key).fail("a string", describe(v));
  return v.get<std::string>();
}

bool get_bool(const json& obj, const std::string& key, bool fallback, const JsonPath& at) {
  const json* v = optional(obj, key);
  if (!v) return fallback;
  if (!v->is_boolean()) (at / key).fail("true or false", describe(*v));
  return v->get<bool>();
}

int64_t get_int(const json& obj, const std::string& key, const JsonPath& at) {
  const json& v = require(obj, key, at);
  if (!v.is_number_integer()) (at / key).fail("an integer", describe(v));
  return v.get<int64_t>();
}

uint32_t get_char(const json& obj, const std::string& key, const JsonPath& at) {
  const std::string s = get_string(obj, key, at);
  if (!is_valid_utf8(s) || s.empty() || utf8_length(s[0]) != s.size())
    (at / key).fail("a single character", describe(obj.at(key)));
  size_t i = 0;
  return next_code_point(s, i);
}

std::string get_type(const json& obj, const JsonPath& at) { return get_string(obj, "type", at); }

void unsupported(const JsonPath& at, const std::string& type, const std::string& supported) {
  (at / "type").fail("a supported type (" + supported + ")", "\"" + type + "\" (not supported)");
}

}  // namespace nh::tok
