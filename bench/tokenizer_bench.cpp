// nemotronh-bench-tokenizer TOKENIZER TEXT_FILE [THREADS]: encodes every line of TEXT_FILE
// (with special tokens) one after another on one thread, then all at once with encode_batch
// on THREADS threads (default: all cores), and prints MB/s and tokens/s of each.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void report(const char* what, double bytes, double tokens, double s) {
  std::printf("%-28s %8.2f MB/s %12.0f tokens/s  (%.0f tokens in %.3f s)\n", what, bytes / 1e6 / s,
              tokens / s, tokens, s);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER TEXT_FILE [THREADS]\n", argv[0]);
    return 2;
  }
  try {
    const nh::Tokenizer tok = nh::Tokenizer::load(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) throw nh::Error(argv[2], "file", "a readable text file", "cannot open it");
    std::vector<std::string> lines;
    double bytes = 0;
    for (std::string line; std::getline(in, line);) {
      bytes += static_cast<double>(line.size());
      lines.push_back(std::move(line));
    }
    const int threads = argc > 3 ? std::atoi(argv[3]) : 0;

    auto start = std::chrono::steady_clock::now();
    double tokens = 0;
    for (const std::string& l : lines) tokens += static_cast<double>(tok.encode(l).size());
    report("nemotronh 1 thread", bytes, tokens, seconds_since(start));

    start = std::chrono::steady_clock::now();
    const auto batch = tok.encode_batch(lines, true, threads);
    double batch_tokens = 0;
    for (const auto& ids : batch) batch_tokens += static_cast<double>(ids.size());
    report("nemotronh encode_batch", bytes, batch_tokens, seconds_since(start));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
