#include "model/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/rng.h"
#include "io/checkpoint.h"
#include "model/presets.h"
#include "support/temp_dir.h"

namespace nh {

namespace fs = std::filesystem;

namespace {

std::string reference_case(const std::string& name) {
  return std::string(NH_SOURCE_DIR) + "/tests/data/reference/" + name;
}

Tensor random_ids(int64_t b, int64_t s, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  Tensor ids = Tensor::empty({b, s}, DType::I64);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int64_t>()[i] = int64_t(rng.next() % vocab);
  return ids;
}

Tensor logits_of(Model& m, const Tensor& ids) {
  Tensor logits = Tensor::empty({ids.numel(), m.config().vocab_size}, DType::F32), none;
  m.forward(ids, none, none, logits);
  return logits;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Writes `dir`'s config and its weights, renamed and reshaped by `edit`, to `out`.
template <class Edit>
void rewrite_checkpoint(const std::string& dir, const std::string& out, Edit edit,
                        size_t shard_bytes = kDefaultMaxShardBytes) {
  WeightSet w(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& n : w.names()) tensors.emplace_back(n, w.get(n).clone());
  edit(tensors);
  fs::create_directories(out);
  write_weights(out, tensors, shard_bytes);
  fs::copy_file(dir + "/config.json", out + "/config.json");
}

}  // namespace

TEST(ModelCheckpoint, SaveThenLoadIsBitIdentical) {
  test::TempDir tmp;
  Model a = Model::load(reference_case("moe_hybrid"));
  a.save(tmp.path());
  Model b = Model::load(tmp.path());
  for (const auto& n : a.params().names()) EXPECT_TRUE(bit_identical(a.params().at(n), b.params().at(n))) << n;
  // The files themselves hold the same tensors as the original.
  WeightSet orig(reference_case("moe_hybrid")), saved(tmp.path());
  ASSERT_EQ(orig.names().size(), saved.names().size());
  for (const auto& n : orig.names()) {
    ASSERT_TRUE(saved.has(n)) << n;
    EXPECT_TRUE(bit_identical(orig.get(n), saved.get(n))) << n;
  }
}

TEST(ModelCheckpoint, FusedExpertsAndModelPrefixLoadToTheSameModel) {
  test::TempDir tmp;
  const std::string src = reference_case("moe_hybrid");
  rewrite_checkpoint(src, tmp.path(), [](auto& tensors) {
    // Per-expert [I, Din] matrices -> fused [E, I, Din] under `model.`.
    std::map<std::string, std::vector<Tensor>> fused;
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [name, t] : tensors) {
      const auto pos = name.find(".experts.");
      std::string n = "model." + name.substr(name.find('.') + 1);
      if (name == "lm_head.weight") n = name;
      if (pos == std::string::npos) {
        out.emplace_back(n, t);
        continue;
      }
      const std::string rest = name.substr(pos + 9);
      const std::string proj = rest.substr(rest.find('.') + 1, rest.rfind('.') - rest.find('.') - 1);
      fused["model." + name.substr(9, pos + 9 - 9) + proj].push_back(t);
    }
    for (auto& [name, list] : fused) {
      Tensor f = Tensor::empty({int64_t(list.size()), list[0].size(0), list[0].size(1)}, DType::F32);
      for (size_t j = 0; j < list.size(); ++j) {
        Tensor dst = f.slice0(int64_t(j), int64_t(j) + 1).reshape(list[j].shape());
        dst.copy_from(list[j]);
      }
      out.emplace_back(name, f);
    }
    tensors = out;
  });
  Model a = Model::load(src), b = Model::load(tmp.path());
  const Tensor ids = random_ids(2, 9, a.config().vocab_size, 5);
  EXPECT_TRUE(bit_identical(logits_of(a, ids), logits_of(b, ids)));
}

TEST(ModelCheckpoint, ShardedCheckpointLoadsLikeASingleFile) {
  test::TempDir tmp;
  const std::string src = reference_case("dense_hybrid");
  rewrite_checkpoint(src, tmp.path(), [](auto&) {}, 20000);
  ASSERT_TRUE(fs::exists(tmp / "model.safetensors.index.json"));
  Model a = Model::load(src), b = Model::load(tmp.path());
  const Tensor ids = random_ids(1, 7, a.config().vocab_size, 6);
  EXPECT_TRUE(bit_identical(logits_of(a, ids), logits_of(b, ids)));
}

TEST(ModelCheckpoint, MissingTensorIsAnErrorNamingIt) {
  test::TempDir tmp;
  rewrite_checkpoint(reference_case("dense_hybrid"), tmp.path(), [](auto& tensors) {
    std::erase_if(tensors, [](const auto& p) { return p.first == "backbone.layers.2.mixer.D"; });
  });
  try {
    Model::load(tmp.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backbone.layers.2.mixer.D"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(tmp.path()), std::string::npos) << e.what();
  }
}

TEST(ModelCheckpoint, WrongShapeIsAnErrorNamingTheTensor) {
  test::TempDir tmp;
  rewrite_checkpoint(reference_case("dense_hybrid"), tmp.path(), [](auto& tensors) {
    for (auto& [name, t] : tensors)
      if (name == "backbone.norm_f.weight") t = Tensor::zeros({t.numel() + 1}, t.dtype());
  });
  try {
    Model::load(tmp.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backbone.norm_f.weight"), std::string::npos) << e.what();
  }
}

TEST(ModelCheckpoint, TensorsTheModelDoesNotUseSurviveASave) {
  test::TempDir in, out;
  rewrite_checkpoint(reference_case("mamba2_tied"), in.path(), [](auto& tensors) {
    tensors.emplace_back("mtp.layers.0.norm.weight", Tensor::from(std::vector<float>{1, 2, 3}, {3}));
  });
  Model::load(in.path()).save(out.path());
  WeightSet saved(out.path());
  ASSERT_TRUE(saved.has("mtp.layers.0.norm.weight"));
  EXPECT_EQ(saved.get("mtp.layers.0.norm.weight").data<float>()[2], 3.f);
  EXPECT_FALSE(saved.has("lm_head.weight"));  // tied: written once, as the embedding
}

TEST(ModelInit, FollowsTheSpecInitialisation) {
  ModelConfig c = preset_config("tiny-hybrid");
  Model m = Model::init(c, 7, DType::F32);
  const std::string mamba = "layers.0.mixer.";
  ASSERT_EQ(c.layers[0], LayerKind::Mamba);
  const Tensor& a_log = m.params().at(mamba + "A_log");
  for (int64_t h = 0; h < a_log.numel(); ++h) EXPECT_FLOAT_EQ(a_log.data<float>()[h], std::log(float(h + 1)));
  for (int64_t h = 0; h < a_log.numel(); ++h) {
    EXPECT_EQ(m.params().at(mamba + "D").data<float>()[h], 1.f);
    // softplus(dt_bias) is the initial dt, within [time_step_min, time_step_max].
    const double dt = std::log1p(std::exp(double(m.params().at(mamba + "dt_bias").data<float>()[h])));
    EXPECT_GE(dt, c.time_step_min * 0.999);
    EXPECT_LE(dt, c.time_step_max * 1.001);
  }
  const Tensor& w = m.params().at(mamba + "in_proj.weight");
  double sum2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) sum2 += double(w.data<float>()[i]) * w.data<float>()[i];
  EXPECT_NEAR(std::sqrt(sum2 / double(w.numel())), c.initializer_range, 0.1 * c.initializer_range);
  // Same seed, same model; another seed, another model.
  Model again = Model::init(c, 7, DType::F32), other = Model::init(c, 8, DType::F32);
  EXPECT_TRUE(bit_identical(w, again.params().at(mamba + "in_proj.weight")));
  EXPECT_FALSE(bit_identical(w, other.params().at(mamba + "in_proj.weight")));
}

TEST(ModelInit, SavedBf16ModelLoadsBack) {
  test::TempDir tmp;
  Model m = Model::init(preset_config("tiny-moe"), 3, DType::BF16);
  m.save(tmp.path());
  EXPECT_EQ(WeightSet(tmp.path()).dtype("backbone.embeddings.weight"), DType::BF16);
  Model back = Model::load(tmp.path());
  const Tensor& w = m.params().at("embeddings.weight");
  EXPECT_TRUE(bit_identical(w.to(DType::BF16).to(DType::F32), back.params().at("embeddings.weight")));
}

// SPEC §2/§3: with document indices, a packed row computes exactly what its documents
// compute one by one (conv and SSM state restart, attention stays inside the document).
TEST(ModelPacking, PackedRowEqualsItsDocumentsRunSeparately) {
  for (const char* name : {"dense_hybrid", "moe_hybrid"}) {
    Model m = Model::load(reference_case(name), DType::F64);
    const int64_t v = m.config().vocab_size, lengths[] = {5, 1, 8};
    const Tensor row = random_ids(1, 14, v, 21), targets = random_ids(1, 14, v, 22);
    Tensor seq_idx = Tensor::empty({1, 14}, DType::I32);
    for (int64_t i = 0, doc = 0, end = lengths[0]; i < 14; ++i) {
      if (i == end) end += lengths[++doc];
      seq_idx.data<int32_t>()[i] = int32_t(doc);
    }
    Tensor packed_logits = Tensor::empty({14, v}, DType::F64);
    const LossSum packed = m.forward(row, targets, seq_idx, packed_logits);
    m.grads().fill_zero();
    m.backward(1.0);
    ParamSet packed_grads = m.grads().zeros_like(DType::F64);
    for (const auto& n : m.grads().names()) packed_grads.at(n).copy_from(m.grads().at(n));

    m.grads().fill_zero();
    double loss_sum = 0;
    for (int64_t begin = 0, d = 0; d < 3; begin += lengths[d++]) {
      const int64_t len = lengths[d];
      Tensor ids = row.reshape({14}).slice0(begin, begin + len).clone().reshape({1, len});
      Tensor tgt = targets.reshape({14}).slice0(begin, begin + len).clone().reshape({1, len});
      Tensor logits = Tensor::empty({len, v}, DType::F64), none;
      loss_sum += m.forward(ids, tgt, none, logits).sum;
      m.backward(1.0);
      for (int64_t i = 0; i < len * v; ++i)
        ASSERT_NEAR(logits.data<double>()[i], packed_logits.data<double>()[begin * v + i], 1e-12)
            << name << " document " << d;
    }
    EXPECT_NEAR(loss_sum, packed.sum, 1e-10) << name;
    for (const auto& n : m.grads().names())
      for (int64_t i = 0; i < m.grads().at(n).numel(); ++i)
        ASSERT_NEAR(m.grads().at(n).data<double>()[i], packed_grads.at(n).data<double>()[i], 1e-11)
            << name << " " << n << "[" << i << "]";
  }
}

// The whole model's backward against finite differences, in double, on every layer kind.
TEST(ModelGradients, MatchFiniteDifferencesInDouble) {
  for (const char* name : {"dense_hybrid", "latent_moe", "mamba2_bias_groups"}) {
    Model m = Model::load(reference_case(name), DType::F64);
    const Tensor ids = random_ids(2, 7, m.config().vocab_size, 11);
    Tensor targets = random_ids(2, 7, m.config().vocab_size, 12);
    targets.data<int64_t>()[3] = -100;
    Tensor none;
    auto loss = [&] {
      const LossSum l = m.forward(ids, targets, none, none);
      return l.sum / double(l.count);
    };
    const LossSum l = m.forward(ids, targets, none, none);
    m.grads().fill_zero();
    m.backward(1.0 / double(l.count));
    Rng pick(13);
    for (const auto& pname : m.grads().names()) {
      Tensor p = m.params().at(pname);
      const Tensor& g = m.grads().at(pname);
      for (int k = 0; k < 3; ++k) {
        const int64_t i = int64_t(pick.next() % uint64_t(p.numel()));
        double* x = p.data<double>() + i;
        const double keep = *x, eps = 1e-5;
        *x = keep + eps;
        const double up = loss();
        *x = keep - eps;
        const double down = loss();
        *x = keep;
        const double numeric = (up - down) / (2 * eps);
        // Routing can flip under a perturbation in MoE layers; the tolerance covers
        // central-difference error only, so a flip shows up as a failure to look at.
        EXPECT_NEAR(g.data<double>()[i], numeric, 1e-6 * (1 + std::fabs(numeric)))
            << name << " " << pname << "[" << i << "]";
      }
    }
  }
}

}  // namespace nh

namespace nh {

// Recomputation changes memory, never results; and it holds less at the peak.
TEST(ModelRecompute, GivesTheSameGradientsWithLessPeakMemory) {
  Model m = Model::load(std::string(NH_SOURCE_DIR) + "/tests/data/reference/moe_hybrid");
  const Tensor ids = Tensor::from(std::vector<int64_t>(2 * 64, 3), {2, 64});
  Tensor targets = ids.clone();
  for (int64_t i = 0; i < targets.numel(); ++i) targets.data<int64_t>()[i] = (i * 7) % 90;
  auto run = [&](const std::vector<LayerKind>& kinds) {
    m.set_recompute(kinds);
    m.grads().fill_zero();
    Tensor none;
    reset_host_memory_peak();
    const int64_t before = host_memory_stats().current;
    const LossSum l = m.forward(ids, targets, none, none);
    m.backward(1.0 / double(l.count));
    ParamSet g = m.grads().zeros_like(DType::F32);
    for (const auto& n : g.names()) g.at(n).copy_from(m.grads().at(n));
    return std::make_pair(std::move(g), host_memory_stats().peak - before);
  };
  auto [plain, plain_peak] = run({});
  auto [again, again_peak] =
      run({LayerKind::Mamba, LayerKind::Attention, LayerKind::Mlp, LayerKind::Moe});
  for (const auto& n : plain.names())
    EXPECT_EQ(std::memcmp(plain.at(n).raw(), again.at(n).raw(), plain.at(n).nbytes()), 0) << n;
  EXPECT_LT(again_peak, plain_peak);
}

}  // namespace nh
