// Reading a whole file, with the error every command gives for one it cannot read.
#pragma once

#include <string>

namespace nh {

// The bytes of the file at `path`. An nh::Error names path, `field` and `expected` when the
// file cannot be opened (found "none") or reading it fails (found "a read error").
std::string read_text_file(const std::string& path, const std::string& field = "file",
                           const std::string& expected = "a readable file");

}  // namespace nh
