#include "infer/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>

#include "core/error.h"

namespace nh {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const std::vector<int32_t> kNone;

SamplingParams greedy() {
  SamplingParams p;
  p.temperature = 0;
  return p;
}

int32_t pick(const SamplingParams& p, const std::vector<float>& logits,
             const std::vector<int32_t>& prompt = {}, const std::vector<int32_t>& generated = {}) {
  Sampler s(p, int64_t(logits.size()));
  return s.sample(logits.data(), prompt, generated).token;
}

// log_softmax(x)[t] in double, the hand computation the logprobs are checked against.
double log_softmax(const std::vector<double>& x, int32_t t) {
  double z = 0;
  for (double v : x) z += std::exp(v);
  return x[size_t(t)] - std::log(z);
}

// softmax(logits / temperature) restricted to `kept` and renormalised.
std::vector<double> expected_distribution(const std::vector<float>& logits, double temperature,
                                          const std::set<int32_t>& kept) {
  std::vector<double> p(logits.size(), 0.0);
  double z = 0;
  for (int32_t t : kept) z += p[size_t(t)] = std::exp(logits[size_t(t)] / temperature);
  for (double& v : p) v /= z;
  return p;
}

std::vector<double> frequencies(const SamplingParams& params, const std::vector<float>& logits,
                                int draws) {
  Sampler s(params, int64_t(logits.size()));
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[size_t(s.sample(logits.data(), kNone, kNone).token)] += 1;
  for (double& v : f) v /= draws;
  return f;
}

TEST(Sampler, GreedyPicksTheArgmaxWithTiesToTheLowestId) {
  EXPECT_EQ(pick(greedy(), {0.1f, 2.0f, -1.0f, 1.999f}), 1);
  EXPECT_EQ(pick(greedy(), {1.0f, 3.0f, 3.0f, 0.0f}), 1);
  EXPECT_EQ(pick(greedy(), {kNegInf, kNegInf, -5.0f}), 2);
}

TEST(Sampler, TopK1IsGreedyForAnyTemperature) {
  Rng rng(3);
  for (double temperature : {0.05, 1.0, 7.0, 1e4}) {
    std::vector<float> logits(64);
    for (float& x : logits) x = float(rng.normal());
    const int32_t argmax = pick(greedy(), logits);
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = 1;
    p.seed = uint64_t(temperature * 100);
    Sampler s(p, 64);
    for (int i = 0; i < 200; ++i)
      EXPECT_EQ(s.sample(logits.data(), kNone, kNone).token, argmax) << temperature;
  }
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  const std::vector<float> logits = {0.3f, 0.1f, 0.0f, -0.2f, 0.25f, 0.05f, -0.1f, 0.2f};
  auto run = [&](uint64_t seed) {
    SamplingParams p;
    p.seed = seed;
    p.top_p = 0.95;
    Sampler s(p, 8);
    std::vector<int32_t> tokens;
    for (int i = 0; i < 300; ++i) tokens.push_back(s.sample(logits.data(), kNone, tokens).token);
    return tokens;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

// 20000 draws: a frequency's standard deviation is at most 0.0036; 0.015 is over 4 of them.
// Truncated tokens must never be drawn.
void expect_distribution(const SamplingParams& params, const std::vector<float>& logits,
                         const std::set<int32_t>& kept) {
  const std::vector<double> f = frequencies(params, logits, 20000);
  const std::vector<double> p = expected_distribution(logits, params.temperature, kept);
  for (size_t t = 0; t < logits.size(); ++t) {
    if (kept.count(int32_t(t)))
      EXPECT_NEAR(f[t], p[t], 0.015) << "token " << t;
    else
      EXPECT_EQ(f[t], 0.0) << "token " << t;
  }
}

// Probabilities by hand for these logits (in the comments of each case).
const std::vector<float> kLogits = {2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -1.0f};

TEST(Sampler, TemperatureAloneSamplesTheSoftmax) {
  for (double temperature : {0.7, 1.0, 2.5}) {
    SamplingParams p;
    p.temperature = temperature;
    p.seed = 11;
    expect_distribution(p, kLogits, {0, 1, 2, 3, 4, 5});
  }
}

TEST(Sampler, TopKKeepsTheKLargest) {
  SamplingParams p;
  p.temperature = 2.0;
  p.top_k = 3;
  p.seed = 12;
  expect_distribution(p, kLogits, {0, 1, 2});
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  // T = 1: p = .420 .255 .154 .094 .057 .021; the mass before token 3 is .829 >= 0.8.
  SamplingParams p;
  p.top_p = 0.8;
  p.seed = 13;
  expect_distribution(p, kLogits, {0, 1, 2});
}

TEST(Sampler, TopPIsAppliedToTheDistributionRenormalisedAfterTopK) {
  // T = 1.5 over all six: p = .334 .239 .171 .123 .088 .045; mass before token 4 is .867 < .9.
  SamplingParams p;
  p.temperature = 1.5;
  p.top_p = 0.9;
  p.seed = 14;
  expect_distribution(p, kLogits, {0, 1, 2, 3, 4});
  // After top-5: p = .350 .250 .179 .129 .092; mass before token 4 is .908 >= .9.
  p.top_k = 5;
  expect_distribution(p, kLogits, {0, 1, 2, 3});
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheTop) {
  // T = 1: p / p_max = exp(x - 2) = 1 .607 .368 .223 .135 .050.
  SamplingParams p;
  p.min_p = 0.2;
  p.seed = 15;
  expect_distribution(p, kLogits, {0, 1, 2, 3});
  // T = 2: exp((x - 2) / 2) = 1 .779 .607 .472 .368 .223.
  p.temperature = 2.0;
  p.min_p = 0.4;
  expect_distribution(p, kLogits, {0, 1, 2, 3});
}

TEST(Sampler, TopKTopPAndMinPTogether) {
  // T = 1.5, top-5 then top-0.9 keep 0..3 (above); exp((x - 2) / 1.5) for token 3 is .368.
  SamplingParams p;
  p.temperature = 1.5;
  p.top_k = 5;
  p.top_p = 0.9;
  p.min_p = 0.4;
  p.seed = 16;
  expect_distribution(p, kLogits, {0, 1, 2});
}

TEST(Sampler, TopKKeepsTiesWithTheKthLogit) {
  SamplingParams p;
  p.top_k = 2;
  p.seed = 17;
  expect_distribution(p, {1.0f, 0.0f, 1.0f, 1.0f}, {0, 2, 3});
}

TEST(Sampler, NegativeInfinityIsNeverDrawn) {
  SamplingParams p;
  p.seed = 18;
  expect_distribution(p, {kNegInf, 0.5f, kNegInf, 0.0f}, {1, 3});
  p.top_p = 0.5;  // p = .622 .378: the first reaches 0.5 alone
  expect_distribution(p, {kNegInf, 0.5f, kNegInf, 0.0f}, {1});
}

TEST(Sampler, TopKOnALargeVocabularyStaysInTheKLargest) {
  Rng rng(5);
  std::vector<float> logits(5000);
  for (float& x : logits) x = float(rng.normal());
  std::vector<float> sorted(logits);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  SamplingParams p;
  p.temperature = 50.0;  // nearly uniform over the ten
  p.top_k = 10;
  p.seed = 19;
  Sampler s(p, 5000);
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s.sample(logits.data(), kNone, kNone).token;
    EXPECT_GE(logits[size_t(t)], sorted[9]);
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 10u);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingParams p = greedy();
  p.repetition_penalty = 1.5;
  // 3.0 / 1.5 = 2.0 < 2.5.
  EXPECT_EQ(pick(greedy(), {3.0f, 2.5f}, {}, {0}), 0);
  EXPECT_EQ(pick(p, {3.0f, 2.5f}, {}, {0}), 1);
  // The prompt counts too.
  EXPECT_EQ(pick(p, {3.0f, 2.5f}, {0}, {}), 1);
  // -1.0 * 1.5 = -1.5 < -1.2 (dividing would have made it -0.67 and kept token 0).
  EXPECT_EQ(pick(p, {-1.0f, -1.2f}, {}, {0}), 1);
  // A penalty below 1 encourages repetition.
  p.repetition_penalty = 0.5;
  EXPECT_EQ(pick(p, {1.0f, 1.9f}, {0}, {}), 0);
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountGeneratedTokensOnly) {
  SamplingParams p = greedy();
  p.frequency_penalty = 0.3;
  EXPECT_EQ(pick(p, {1.0f, 0.9f}, {0, 0, 0}, {}), 0);  // the prompt does not count
  EXPECT_EQ(pick(p, {1.0f, 0.9f}, {}, {0}), 1);        // 1.0 - 0.3 = 0.7
  EXPECT_EQ(pick(p, {1.0f, 0.3f}, {}, {0, 0}), 0);     // 1.0 - 0.6 = 0.4 > 0.3
  EXPECT_EQ(pick(p, {1.0f, 0.5f}, {}, {0, 0}), 1);     // 0.4 < 0.5
  p.frequency_penalty = 0;
  p.presence_penalty = 0.3;
  EXPECT_EQ(pick(p, {1.0f, 0.5f}, {}, {0, 0, 0}), 0);  // once, whatever the count: 0.7
  EXPECT_EQ(pick(p, {1.0f, 0.75f}, {}, {0, 0, 0}), 1);
}

// Every draw's logprob is log_softmax(processed)[token]; 300 draws at a high enough
// temperature see every token of these small vocabularies.
void expect_processed_logits(SamplingParams p, const std::vector<float>& logits,
                             const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& generated,
                             const std::vector<double>& processed) {
  p.logprobs = true;
  Sampler s(p, int64_t(logits.size()));
  std::set<int32_t> seen;
  for (int i = 0; i < 300; ++i) {
    const Sampler::Choice c = s.sample(logits.data(), prompt, generated);
    EXPECT_NEAR(c.logprob, log_softmax(processed, c.token), 1e-12) << "token " << c.token;
    seen.insert(c.token);
  }
  EXPECT_EQ(seen.size(), logits.size());
}

TEST(Sampler, PenaltiesChangeTheLogitsExactlyAsTheRulesSay) {
  const std::vector<float> logits = {2.0f, 1.0f, -1.0f, 0.5f};
  SamplingParams p;
  p.repetition_penalty = 2.0;
  // Each distinct token once, however often it occurs: 2/2, -1*2.
  expect_processed_logits(p, logits, {0, 2}, {0, 0, 2}, {1.0, 1.0, -2.0, 0.5});
  p.repetition_penalty = 1.0;
  p.frequency_penalty = 0.3;
  p.presence_penalty = 0.1;
  // 2 - 3*0.3 - 0.1, 1 - 0.3 - 0.1; token 3 only in the prompt.
  expect_processed_logits(p, logits, {3}, {0, 1, 0, 0}, {1.0, 0.6, -1.0, 0.5});
  // The repetition penalty first, then the others: (2 / 2) - 0.5, not (2 - 0.5) / 2.
  p.repetition_penalty = 2.0;
  p.frequency_penalty = 0.5;
  p.presence_penalty = 0;
  expect_processed_logits(p, logits, {}, {0}, {0.5, 1.0, -1.0, 0.5});
  // The temperature after the penalties.
  p.temperature = 2.0;
  expect_processed_logits(p, logits, {}, {0}, {0.25, 0.5, -0.5, 0.25});
}

TEST(Sampler, LogprobIsTheLogSoftmaxBeforeTruncation) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  SamplingParams p = greedy();
  p.logprobs = true;
  Sampler g(p, 3);
  const Sampler::Choice c = g.sample(logits.data(), kNone, kNone);
  EXPECT_EQ(c.token, 2);
  // 3 - log(e + e^2 + e^3).
  EXPECT_NEAR(c.logprob, -0.40760596444438, 1e-12);

  // After the temperature, before top-k: 6 - log(e^2 + e^4 + e^6), not 0.
  p.temperature = 0.5;
  p.top_k = 1;
  Sampler t(p, 3);
  const Sampler::Choice d = t.sample(logits.data(), kNone, kNone);
  EXPECT_EQ(d.token, 2);
  EXPECT_NEAR(d.logprob, -0.14293162849990, 1e-12);

  p.logprobs = false;
  Sampler n(p, 3);
  EXPECT_TRUE(std::isnan(n.sample(logits.data(), kNone, kNone).logprob));
}

void expect_invalid(void (*change)(SamplingParams&), const std::string& field) {
  SamplingParams p;
  change(p);
  try {
    p.validate("request");
    FAIL() << field << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("request: " + field + ": expected ", 0), 0u) << e.what();
  }
  EXPECT_THROW(Sampler(p, 10), Error) << field;
}

TEST(Sampler, ValidationNamesTheField) {
  SamplingParams ok;
  EXPECT_NO_THROW(ok.validate("request"));
  expect_invalid([](SamplingParams& p) { p.temperature = -0.1; }, "temperature");
  expect_invalid([](SamplingParams& p) { p.temperature = std::nan(""); }, "temperature");
  expect_invalid([](SamplingParams& p) { p.temperature = INFINITY; }, "temperature");
  expect_invalid([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  expect_invalid([](SamplingParams& p) { p.top_p = 0.0; }, "top_p");
  expect_invalid([](SamplingParams& p) { p.top_p = 1.01; }, "top_p");
  expect_invalid([](SamplingParams& p) { p.top_p = std::nan(""); }, "top_p");
  expect_invalid([](SamplingParams& p) { p.min_p = -0.01; }, "min_p");
  expect_invalid([](SamplingParams& p) { p.min_p = 1.5; }, "min_p");
  expect_invalid([](SamplingParams& p) { p.repetition_penalty = 0.0; }, "repetition_penalty");
  expect_invalid([](SamplingParams& p) { p.repetition_penalty = INFINITY; }, "repetition_penalty");
  expect_invalid([](SamplingParams& p) { p.frequency_penalty = std::nan(""); },
                 "frequency_penalty");
  expect_invalid([](SamplingParams& p) { p.presence_penalty = -INFINITY; }, "presence_penalty");
}

TEST(Sampler, BadVocabularyTokenIdsAndLogitsAreErrors) {
  EXPECT_THROW(Sampler(SamplingParams(), 0), Error);
  Sampler s(SamplingParams(), 3);
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  EXPECT_THROW(s.sample(logits.data(), {3}, kNone), Error);
  EXPECT_THROW(s.sample(logits.data(), kNone, {-1}), Error);
  const std::vector<float> nan = {0.0f, std::nanf(""), 1.0f};
  EXPECT_THROW(s.sample(nan.data(), kNone, kNone), Error);
  const std::vector<float> pos_inf = {0.0f, INFINITY, 1.0f};
  EXPECT_THROW(s.sample(pos_inf.data(), kNone, kNone), Error);
  const std::vector<float> all_banned = {kNegInf, kNegInf, kNegInf};
  EXPECT_THROW(s.sample(all_banned.data(), kNone, kNone), Error);
}

}  // namespace
}  // namespace nh
