// nemotronh-bench: times the CUDA backend's ops, layers and whole training step at the shapes of
// a model (Nemotron-H-8B by default), for the side-by-side table with tools/peer_bench.py.
//
//   nemotronh-bench [--model nemotron-h-8b] [--pattern M-M-M-M*-] [--seq 8192]
//                   [--ssd-seqs 2048,8192,32768] [--only gemm,ssd,...] [--samples 10]
//                   [--warmup 3]
//
// One JSON line per measurement: {"bench": "op", "name", "T", "ms" (median of the samples,
// CUDA events on the ops' stream), "ms_min", "flops", "bytes", "peak_gib", "peak_total_gib"}.
// flops and bytes are the work the op has to do and the bytes it has to move at least (bf16
// activations): the table's roofline fractions come from them. peak_gib is the most device
// memory the op held beyond what existed before it, peak_total_gib the most held by tensors in
// all (the model, its gradients and optimizer state included). The first line describes the device
// (its copy bandwidth and dense bf16 peak). Groups (--only): gemm, ssd, conv, attention, norm,
// lm_head, adamw, layer, step.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "bench_model.h"
#include "core/cuda_memory.h"
#include "core/device_select.h"
#include "core/kernel_versions.h"
#include "cuda_bench.h"
#include "ops/attention.h"
#include "ops/causal_conv1d.h"
#include "ops/gated_rmsnorm.h"
#include "ops/linear.h"
#include "ops/lm_head_loss.h"
#include "ops/rmsnorm.h"
#include "ops/ssd.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace nh {
namespace {

struct Options {
  std::string model = "nemotron-h-8b", pattern = "M-M-M-M*-";
  int64_t seq = 8192;
  std::vector<int64_t> ssd_seqs{2048, 8192, 32768};
  std::vector<std::string> only;
  int samples = 10, warmup = 3;
  uint64_t seed = 1;
};

constexpr DType kAct = DType::BF16;
constexpr double kBf16 = 2;  // bytes per activation

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o) {}

  bool wants(const std::string& group) const {
    return o_.only.empty() || std::find(o_.only.begin(), o_.only.end(), group) != o_.only.end();
  }

  // Times `work` and prints its line; `fields` adds the case's shape.
  void time(const std::string& name, int64_t tokens, double flops, double bytes,
            const std::function<void()>& work, nlohmann::ordered_json fields = {}) {
    cuda_synchronize();
    const int64_t before = device_memory_stats().current;
    reset_device_memory_peak();
    const std::vector<double> ms = event_times_ms(work, o_.samples, o_.warmup);
    const int64_t peak_total = device_memory_stats().peak, peak = peak_total - before;
    nlohmann::ordered_json j = {{"bench", "op"},
                                {"impl", "nemotronh"},
                                {"name", name},
                                {"T", tokens},
                                {"ms", ms[ms.size() / 2]},
                                {"ms_min", ms.front()},
                                {"flops", flops},
                                {"bytes", bytes},
                                {"peak_gib", gib(peak)},
                                {"peak_total_gib", gib(peak_total)}};
    for (auto& [k, v] : fields.items()) j[k] = v;
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }

 private:
  const Options& o_;
};

// The linear layers of the model's kinds: name, K (in), N (out).
struct GemmShape {
  std::string name;
  int64_t k, n;
};

std::vector<GemmShape> gemm_shapes(const ModelConfig& c) {
  const int64_t d = c.hidden_size, d_inner = c.mamba_num_heads * c.mamba_head_dim;
  const int64_t in_proj = 2 * d_inner + 2 * c.n_groups * c.ssm_state_size + c.mamba_num_heads;
  return {{"mamba.in_proj", d, in_proj},
          {"mamba.out_proj", d_inner, d},
          {"attention.q_proj", d, c.num_attention_heads * c.head_dim},
          {"attention.kv_proj", d, c.num_key_value_heads * c.head_dim},
          {"attention.o_proj", c.num_attention_heads * c.head_dim, d},
          {"mlp.up_proj", d, c.intermediate_size},
          {"mlp.down_proj", c.intermediate_size, d},
          {"lm_head", d, c.vocab_size}};
}

// Calls f(name) once per kernel version of `op` in the playground (core/kernel_versions.h) with
// NH_KERNELS selecting it: name is `row` for its default version, row_version for the others
// (ssd_tiles, attention_simt, …), so the versions come out side by side.
void for_each_version(const std::string& op, const std::string& row,
                      const std::function<void(const std::string&)>& f) {
  const std::vector<std::string> versions = kernel_versions(op);
  for (size_t i = 0; i < versions.size(); ++i) {
    const KernelVersionScope scope(op, versions[i]);
    f(i == 0 ? row : row + "_" + versions[i]);
  }
}

void bench_gemms(Bench& b, const ModelConfig& c, int64_t t) {
  for (const GemmShape& g : gemm_shapes(c)) {
    const Tensor x = random_gpu({t, g.k}, kAct, 1), w = random_gpu({g.n, g.k}, kAct, 2, 0.02);
    const Tensor dy = random_gpu({t, g.n}, kAct, 3);
    Tensor y = Tensor::empty({t, g.n}, kAct, Device::CUDA), none;
    Tensor dx = Tensor::empty({t, g.k}, kAct, Device::CUDA);
    Tensor dw = Tensor::zeros({g.n, g.k}, kAct, Device::CUDA);
    const double mkn = double(t) * double(g.k) * double(g.n);
    const nlohmann::ordered_json shape = {{"K", g.k}, {"N", g.n}};
    b.time(
        "gemm." + g.name + ".fwd", t, 2 * mkn, kBf16 * double(t * g.k + g.n * g.k + t * g.n),
        [&] { linear_forward(x, w, none, y); }, shape);
    b.time(
        "gemm." + g.name + ".bwd", t, 4 * mkn, kBf16 * double(2 * (t * g.k + g.n * g.k + t * g.n)),
        [&] { linear_backward(x, w, dy, dx, dw, none); }, shape);
  }
}

void bench_ssd(Bench& b, const ModelConfig& c, int64_t t) {
  const int64_t h = c.mamba_num_heads, p = c.mamba_head_dim, g = c.n_groups, n = c.ssm_state_size;
  const int64_t q = c.chunk_size, chunks = (t + q - 1) / q;
  const Tensor x = random_gpu({1, t, h, p}, kAct, 1), bm = random_gpu({1, t, g, n}, kAct, 2);
  const Tensor cm = random_gpu({1, t, g, n}, kAct, 3), dy = random_gpu({1, t, h, p}, kAct, 4);
  // dt after softplus (about 0.01–0.3) and A = −exp(A_log) with A_log in [0, log 16].
  const Tensor dt = random_gpu({1, t, h}, kAct, 5, 0.05, 0.1);
  const Tensor a = random_gpu({h}, kAct, 6, 2, -5), d = random_gpu({h}, kAct, 7);
  Tensor y = Tensor::empty({1, t, h, p}, kAct, Device::CUDA), none;
  Tensor dx = Tensor::empty(x.shape(), kAct, Device::CUDA),
         ddt = Tensor::empty(dt.shape(), kAct, Device::CUDA);
  Tensor dbm = Tensor::empty(bm.shape(), kAct, Device::CUDA),
         dcm = Tensor::empty(cm.shape(), kAct, Device::CUDA);
  Tensor da = Tensor::zeros({h}, kAct, Device::CUDA), dd = Tensor::zeros({h}, kAct, Device::CUDA);
  // Matrix work of the chunked algorithm: C·Bᵀ per group, then per head the intra-chunk product
  // with x, the chunk's state and the state's contribution to y. The backward does about twice.
  const double flops =
      double(chunks) * double(g * 2 * q * q * n + h * (2 * q * q * p + 4 * q * n * p));
  const double io = kBf16 * double(t) * double(2 * h * p + 2 * g * n + h);
  const nlohmann::ordered_json shape = {{"H", h}, {"P", p}, {"G", g}, {"N", n}, {"chunk", q}};
  // "ssd" is what the model runs (the fused kernels at these shapes), "ssd_tiles" the tile
  // kernels they replaced, side by side.
  for_each_version("ssd", "ssd", [&](const std::string& kernels) {
    b.time(
        kernels + ".fwd", t, flops, io,
        [&] { ssd_forward(x, dt, a, bm, cm, d, q, none, none, y, none); }, shape);
    b.time(
        kernels + ".fwd_bwd", t, 3 * flops,
        io + kBf16 * double(t) * double(3 * h * p + 2 * g * n + h),
        [&] {
          ssd_forward(x, dt, a, bm, cm, d, q, none, none, y, none);
          ssd_backward(x, dt, a, bm, cm, d, q, none, none, dy, dx, ddt, da, dbm, dcm, dd, none);
        },
        shape);
  });
}

void bench_conv(Bench& b, const ModelConfig& c, int64_t t) {
  const int64_t ch = c.mamba_num_heads * c.mamba_head_dim + 2 * c.n_groups * c.ssm_state_size;
  const Tensor x = random_gpu({1, t, ch}, kAct, 1), dy = random_gpu({1, t, ch}, kAct, 2);
  const Tensor w = random_gpu({ch, c.conv_kernel}, kAct, 3, 0.3), bias = random_gpu({ch}, kAct, 4);
  Tensor y = Tensor::empty(x.shape(), kAct, Device::CUDA),
         dx = Tensor::empty(x.shape(), kAct, Device::CUDA);
  Tensor dw = Tensor::zeros(w.shape(), kAct, Device::CUDA),
         db = Tensor::zeros({ch}, kAct, Device::CUDA), none;
  const double flops = 2.0 * double(t * ch * c.conv_kernel), io = kBf16 * double(2 * t * ch);
  b.time("conv1d.fwd", t, flops, io, [&] { causal_conv1d_forward(x, w, bias, none, y); },
         {{"channels", ch}});
  b.time("conv1d.fwd_bwd", t, 3 * flops, io + kBf16 * double(3 * t * ch),
         [&] {
           causal_conv1d_forward(x, w, bias, none, y);
           causal_conv1d_backward(x, w, bias, none, dy, dx, dw, db);
         },
         {{"channels", ch}});
}

void bench_attention(Bench& b, const ModelConfig& c, int64_t t) {
  const int64_t h = c.num_attention_heads, kv = c.num_key_value_heads, hd = c.head_dim;
  const Tensor q = random_gpu({1, t, h, hd}, kAct, 1), k = random_gpu({1, t, kv, hd}, kAct, 2);
  const Tensor v = random_gpu({1, t, kv, hd}, kAct, 3), dout = random_gpu({1, t, h, hd}, kAct, 4);
  Tensor out = Tensor::empty(q.shape(), kAct, Device::CUDA), none;
  Tensor lse = Tensor::empty({1, h, t}, DType::F32, Device::CUDA);
  Tensor dq = Tensor::empty(q.shape(), kAct, Device::CUDA),
         dk = Tensor::empty(k.shape(), kAct, Device::CUDA);
  Tensor dv = Tensor::empty(v.shape(), kAct, Device::CUDA);
  const double scale = 1.0 / std::sqrt(double(hd));
  // Causal: half of the 4·T²·H·d of Q·Kᵀ and P·V; the backward does 2.5 times the forward.
  const double flops = 2.0 * double(t) * double(t) * double(h * hd);
  const double io = kBf16 * double(t * (2 * h + 2 * kv) * hd);
  const nlohmann::ordered_json shape = {{"heads", h}, {"kv_heads", kv}, {"head_dim", hd}};
  for_each_version("attention", "attention", [&](const std::string& name) {
    b.time(
        name + ".fwd", t, flops, io, [&] { attention_forward(q, k, v, none, scale, out, lse); },
        shape);
    b.time(
        name + ".fwd_bwd", t, 3.5 * flops, 3 * io,
        [&] {
          attention_forward(q, k, v, none, scale, out, lse);
          attention_backward(q, k, v, none, scale, out, lse, dout, dq, dk, dv);
        },
        shape);
  });
}

void bench_norms(Bench& b, const ModelConfig& c, int64_t t) {
  const int64_t d = c.hidden_size, d_inner = c.mamba_num_heads * c.mamba_head_dim;
  {
    const Tensor x = random_gpu({t, d}, kAct, 1), w = random_gpu({d}, kAct, 2, 0.1, 1);
    const Tensor dy = random_gpu({t, d}, kAct, 3);
    Tensor y = Tensor::empty({t, d}, kAct, Device::CUDA),
           dx = Tensor::empty({t, d}, kAct, Device::CUDA);
    Tensor rstd = Tensor::empty({t}, DType::F32, Device::CUDA),
           dw = Tensor::zeros({d}, kAct, Device::CUDA);
    for_each_version("rmsnorm", "rmsnorm", [&](const std::string& name) {
      b.time(name + ".fwd_bwd", t, 0, kBf16 * double(5 * t * d), [&] {
        rmsnorm_forward(x, w, c.layer_norm_epsilon, y, rstd);
        rmsnorm_backward(x, w, rstd, dy, dx, dw);
      });
    });
  }
  const Tensor x = random_gpu({t, d_inner}, kAct, 1), z = random_gpu({t, d_inner}, kAct, 2);
  const Tensor w = random_gpu({d_inner}, kAct, 3, 0.1, 1), dy = random_gpu({t, d_inner}, kAct, 4);
  Tensor y = Tensor::empty({t, d_inner}, kAct, Device::CUDA),
         dx = Tensor::empty({t, d_inner}, kAct, Device::CUDA);
  Tensor dz = Tensor::empty({t, d_inner}, kAct, Device::CUDA),
         dw = Tensor::zeros({d_inner}, kAct, Device::CUDA);
  Tensor rstd = Tensor::empty({t, c.n_groups}, DType::F32, Device::CUDA);
  for_each_version("gated_rmsnorm", "gated_rmsnorm", [&](const std::string& name) {
    b.time(name + ".fwd_bwd", t, 0, kBf16 * double(8 * t * d_inner), [&] {
      gated_rmsnorm_forward(x, z, w, c.n_groups, c.layer_norm_epsilon, y, rstd);
      gated_rmsnorm_backward(x, z, w, c.n_groups, rstd, dy, dx, dz, dw);
    });
  });
}

void bench_lm_head(Bench& b, const ModelConfig& c, int64_t t) {
  const int64_t d = c.hidden_size, v = c.vocab_size;
  const Tensor h = random_gpu({t, d}, kAct, 1), w = random_gpu({v, d}, kAct, 2, 0.02);
  Rng rng(3);
  const Tensor labels = random_token_ids({t}, v, rng).to(Device::CUDA);
  Tensor dh = Tensor::empty({t, d}, kAct, Device::CUDA),
         dw = Tensor::zeros({v, d}, kAct, Device::CUDA);
  const double tvd = double(t) * double(v) * double(d);
  // What training runs: loss and gradients in one pass (every label here is counted, so the
  // mean's scale 1/T is known before it).
  for_each_version("lm_head_loss", "lm_head_ce", [&](const std::string& name) {
    b.time(name + ".fwd_bwd", t, 6 * tvd, kBf16 * double(2 * t * d + 2 * v * d),
           [&] { lm_head_loss_forward_backward(h, w, labels, 1.0 / double(t), dh, dw); },
           {{"vocab", v}});
  });
}

// Mixer forward and forward + backward of the first layer of each kind in the model.
void bench_layers(Bench& b, Model& model, int64_t t) {
  const ModelConfig& c = model.config();
  const Tensor u = random_gpu({t, c.hidden_size}, kAct, 1),
               dout = random_gpu({t, c.hidden_size}, kAct, 2, 0.01);
  Tensor out = Tensor::empty(u.shape(), kAct, Device::CUDA),
         du = Tensor::empty(u.shape(), kAct, Device::CUDA);
  const Batch batch{1, t, Tensor()};
  const std::map<LayerKind, const char*> layer_names = {{LayerKind::Mamba, "mamba"},
                                                        {LayerKind::Attention, "attention"},
                                                        {LayerKind::Mlp, "mlp"},
                                                        {LayerKind::Moe, "moe"}};
  std::set<LayerKind> seen;
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const LayerKind kind = c.layers[l];
    if (!seen.insert(kind).second) continue;
    const std::string prefix = "layers." + std::to_string(l) + ".mixer.";
    const std::unique_ptr<Mixer> mixer =
        make_mixer(kind, c, LayerParams(model.params(), model.grads(), prefix));
    int64_t params = 0;
    for (const auto& name : model.params().names())
      if (name.starts_with(prefix)) params += model.params().at(name).numel();
    const ModelConfig one = with_layer_pattern(c, std::string(1, layer_char(kind)), "layer");
    // Matrix work of one layer: the model's per-token flops without its LM head and embedding.
    const double fwd_flops =
        (model_flops_per_token(one, t) - 6.0 * double(c.vocab_size * c.hidden_size)) / 3 *
        double(t);
    const std::string name = std::string("layer.") + layer_names.at(kind);
    const nlohmann::ordered_json fields = {{"params", params}};
    b.time(
        name + ".fwd", t, fwd_flops, kBf16 * double(params + 2 * t * c.hidden_size),
        [&] {
          mixer->forward(u, batch, out);
          mixer->release();
        },
        fields);
    b.time(
        name + ".fwd_bwd", t, 3 * fwd_flops, kBf16 * double(3 * params + 4 * t * c.hidden_size),
        [&] {
          mixer->forward(u, batch, out);
          mixer->backward(dout, du);
        },
        fields);
  }
}

constexpr const char* kGroups[] = {"gemm",    "ssd",   "conv",  "attention", "norm",
                                   "lm_head", "adamw", "layer", "step"};

int run(const Options& o) {
  for (const std::string& g : o.only)
    if (std::find(std::begin(kGroups), std::end(kGroups), g) == std::end(kGroups))
      throw Error("--only", "group",
                  "gemm, ssd, conv, attention, norm, lm_head, adamw, layer or step", g);
  if (!cuda_available()) throw Error("no CUDA GPU is visible");
  Bench b(o);
  nlohmann::ordered_json dev = {{"bench", "device"},
                                {"impl", "nemotronh"},
                                {"device", cuda_device_name()},
                                {"copy_GBps", copy_bandwidth() / 1e9},
                                {"peak_bf16_tflops", gpu_bf16_peak_flops() / 1e12}};
  std::printf("%s\n", dev.dump().c_str());
  const ModelConfig c = bench_config(o.model, o.pattern);
  if (b.wants("gemm")) bench_gemms(b, c, o.seq);
  if (b.wants("ssd"))
    for (int64_t t : o.ssd_seqs) bench_ssd(b, c, t);
  if (b.wants("conv")) bench_conv(b, c, o.seq);
  if (b.wants("attention")) bench_attention(b, c, o.seq);
  if (b.wants("norm")) bench_norms(b, c, o.seq);
  if (b.wants("lm_head")) bench_lm_head(b, c, o.seq);
  if (!b.wants("layer") && !b.wants("adamw") && !b.wants("step")) return 0;

  Model model = bench_model(o.model, o.pattern, kAct, o.seed);
  ParamSet full = model.params();  // the fp32 values the masters start from
  model.to(Device::CUDA, kAct);
  Optimizer opt(model, OptimizerSettings{}, &full);
  full = ParamSet();
  if (b.wants("layer")) bench_layers(b, model, o.seq);
  int64_t params = 0;
  for (const auto& name : model.params().names()) params += model.params().at(name).numel();
  // AdamW with fp32 masters: read the bf16 gradient twice (norm, update), read and write the
  // master and both moments, write the bf16 parameter.
  int64_t step = 0;
  if (b.wants("adamw"))
    for_each_version("adamw", "adamw", [&](const std::string& name) {
      b.time(name + ".step", 0, 0, double(params) * (2 * 2 + 3 * 4 * 2 + 2),
             [&] { opt.step(1.0, 1e-5, ++step); }, {{"params", params}});
    });
  if (b.wants("step")) {
    Rng rng(o.seed);
    const Tensor ids = random_token_ids({1, o.seq}, c.vocab_size, rng).to(Device::CUDA);
    const Tensor targets = random_token_ids({1, o.seq}, c.vocab_size, rng).to(Device::CUDA);
    const double flops = model_flops_per_token(c, o.seq) * double(o.seq);
    b.time("step." + c.pattern(), o.seq, flops, 0,
           [&] {
             model.zero_grads();
             Tensor none;
             model.head_gradients_in_next_forward(1.0);  // as the trainer
             const LossSum l = model.forward(ids, targets, Tensor(), none);
             model.backward(1.0);
             opt.step(1.0 / double(l.count), 1e-5, ++step);
           },
           {{"params", params}});
  }
  return 0;
}

}  // namespace
}  // namespace nh

int main(int argc, char** argv) {
  nh::Options o;
  CLI::App app{"Times the CUDA backend's ops, layers and training step at a model's shapes"};
  app.add_option("--model", o.model, "preset, config.json or HF directory")->capture_default_str();
  app.add_option("--pattern", o.pattern, "layers of the model for layer and step times")
      ->capture_default_str();
  app.add_option("--seq", o.seq, "tokens (one row)")->capture_default_str();
  app.add_option("--ssd-seqs", o.ssd_seqs, "sequence lengths of the SSD times")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--only", o.only, "groups: gemm,ssd,conv,attention,norm,lm_head,adamw,layer,step")
      ->delimiter(',');
  app.add_option("--samples", o.samples, "timed calls (the median is printed)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed calls first")->capture_default_str();
  app.add_option("--seed", o.seed, "random seed of the model")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    return nh::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemotronh-bench: %s\n", e.what());
    return 2;
  }
}
