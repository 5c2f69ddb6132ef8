#include "io/text_file.h"

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace nh {

std::string read_text_file(const std::string& path, const std::string& field,
                           const std::string& expected) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, field, expected, "none");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(path, field, expected, "a read error");
  return text.str();
}

}  // namespace nh
