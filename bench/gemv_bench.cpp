// nemotronh-bench-gemv: times the linear layer's products for few rows (decoding) on the GPU:
// the few-row kernels (ops/cuda/gemv.cuh, what cuda::linear_forward runs for up to
// kGemvMaxRows rows) against cuBLASLt (ops/cuda/gemm.cuh, what it runs for more) on the same
// operands. Prints one JSON line per shape, row count and path: the median time of a call, the
// bytes it reads and writes per second, and that over the device's copy bandwidth (read + write
// bytes per second of 1 GiB device-to-device copies, bench/bench_model.h, printed first as path
// "copy").
//
//   nemotronh-bench-gemv [--dtype bf16|fp32] [--rows 1,4,8] [--shapes 4096x18560,...]
//                        [--samples 20] [--warmup 3]
// A shape is KxN: x [rows, K], w [N, K], no bias.
//
// A sample replays a CUDA graph of calls that cycle through copies of w adding up to more than
// the L2 cache holds, so that w comes from memory as it does when decoding walks through the
// layers; CUDA events time the replay, and a call takes the replay's time over its calls.
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_model.h"
#include "core/cuda_graph.h"
#include "core/cuda_memory.h"
#include "core/device_select.h"
#include "core/rng.h"
#include "cuda_bench.h"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/gemv.cuh"
#include "ops/linear.h"

namespace nh {
namespace {

struct Options {
  std::string dtype = "bf16";
  std::vector<int64_t> rows{1, 4, 8};
  // An 8B model's decode projections and its LM head (K = hidden size 4096).
  std::vector<std::string> shapes{"4096x18560", "8192x4096",  "4096x4096",  "4096x1024",
                                  "4096x21504", "21504x4096", "4096x131072"};
  int samples = 20, warmup = 3;
};

// Bytes of w a graph walks through at least: many times an H100's or H200's L2 (50 MB).
constexpr int64_t kColdBytes = int64_t(512) << 20;
// Calls in a graph at least, so that the replay's own start is a small part of its time.
constexpr int64_t kMinCalls = 20;

// Median microseconds of the work a graph of `work` does, over `calls`.
double median_us(const std::function<void()>& work, int64_t calls, const Options& o) {
  const CudaGraph graph(work);
  // Graphs launch on the ops' stream, where the events are recorded.
  const std::vector<double> ms = event_times_ms([&] { graph.launch(); }, o.samples, o.warmup);
  return ms[ms.size() / 2] * 1e3 / double(calls);
}

int64_t parse_dim(const std::string& shape, const std::string& s) {
  try {
    size_t used = 0;
    const int64_t v = std::stoll(s, &used);
    if (used == s.size() && v > 0) return v;
  } catch (const std::exception&) {
  }
  throw Error("--shapes", "shape", "KxN with positive K and N", shape);
}

int run(const Options& o) {
  if (!cuda_available()) throw Error("no CUDA GPU is visible");
  const DType dtype = select_compute_dtype(o.dtype, Device::CUDA, "--dtype");
  const std::string device = cuda_device_name();
  const double copy = copy_bandwidth();
  auto print = [](const nlohmann::ordered_json& j) {
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  };
  print({{"bench", "gemv"}, {"device", device}, {"path", "copy"}, {"GB_per_s", copy / 1e9}});
  auto line = [&](nlohmann::ordered_json j) {
    const double bytes_per_s = j["bytes"].get<double>() / (j["us"].get<double>() * 1e-6);
    j["GB_per_s"] = bytes_per_s / 1e9;
    j["of_copy"] = bytes_per_s / copy;
    print(j);
  };
  const size_t es = dtype_size(dtype);
  for (const std::string& shape : o.shapes) {
    const size_t x_at = shape.find('x');
    if (x_at == std::string::npos) throw Error("--shapes", "shape", "KxN", shape);
    const int64_t k = parse_dim(shape, shape.substr(0, x_at));
    const int64_t n = parse_dim(shape, shape.substr(x_at + 1));
    const int64_t w_bytes = n * k * int64_t(es);
    const int64_t copies = std::max<int64_t>(1, (kColdBytes + w_bytes - 1) / w_bytes);
    const int64_t calls = copies * ((kMinCalls + copies - 1) / copies);
    std::vector<Tensor> ws;
    for (int64_t i = 0; i < copies; ++i) ws.push_back(random_gpu({n, k}, dtype, 100 + i));
    for (int64_t rows : o.rows) {
      if (rows < 1 || rows > cuda::kGemvMaxRows)
        throw Error("--rows", "value", "1 to " + std::to_string(cuda::kGemvMaxRows),
                    std::to_string(rows));
      const Tensor x = random_gpu({rows, k}, dtype, 1);
      Tensor y = Tensor::empty({rows, n}, dtype, Device::CUDA);
      const std::vector<std::pair<const char*, std::function<void(const Tensor&)>>> paths = {
          {"gemv", [&](const Tensor& w) { cuda::linear_forward(x, w, Tensor(), y); }},
          {"cublas",
           [&](const Tensor& w) {
             cuda::gemm(false, true, rows, n, k, 1.f, x.raw(), k, w.raw(), k, 0.f, y.raw(), n,
                        dtype);
           }},
      };
      for (const auto& [path, call] : paths) {
        call(ws[0]);  // outside the capture: cuBLASLt's first call picks and caches its kernel
        cuda_synchronize();
        const double us = median_us(
            [&] {
              for (int64_t i = 0; i < calls; ++i) call(ws[size_t(i % copies)]);
            },
            calls, o);
        line({{"bench", "gemv"},
              {"device", device},
              {"M", rows},
              {"K", k},
              {"N", n},
              {"dtype", dtype == DType::BF16 ? "bf16" : "fp32"},
              {"path", path},
              {"bytes", (n * k + rows * k + rows * n) * int64_t(es)},
              {"us", us}});
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace nh

int main(int argc, char** argv) {
  nh::Options o;
  CLI::App app{"Times the linear layer's few-row products on the GPU against cuBLASLt"};
  app.add_option("--dtype", o.dtype, "bf16 or fp32")->capture_default_str();
  app.add_option("--rows", o.rows, "rows of x, each at most 8")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--shapes", o.shapes, "KxN shapes of w")->delimiter(',')->capture_default_str();
  app.add_option("--samples", o.samples, "timed graph replays (the median is printed)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed replays first")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return nh::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemotronh-bench-gemv: %s\n", e.what());
    return 2;
  }
}
