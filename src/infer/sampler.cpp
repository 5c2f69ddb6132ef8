#include "infer/sampler.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>

#include "core/error.h"

namespace nh {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string format_double(double x) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, res.ptr);
}

void need(bool ok, const std::string& where, const std::string& field, const std::string& expected,
          double found) {
  if (!ok) throw Error(where, field, expected, format_double(found));
}

void check_ids(const std::vector<int32_t>& ids, int64_t vocab_size, const std::string& name) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= vocab_size)
      throw Error("sampler", name + "[" + std::to_string(i) + "]",
                  "a token id in [0, " + std::to_string(vocab_size) + ")", std::to_string(ids[i]));
}

}  // namespace

void SamplingParams::validate(const std::string& where) const {
  need(std::isfinite(temperature) && temperature >= 0, where, "temperature",
       "a finite number >= 0 (0 = greedy)", temperature);
  if (top_k < 0) throw Error(where, "top_k", "an integer >= 0 (0 = off)", std::to_string(top_k));
  need(top_p > 0 && top_p <= 1, where, "top_p", "a number in (0, 1]", top_p);
  need(min_p >= 0 && min_p <= 1, where, "min_p", "a number in [0, 1]", min_p);
  need(std::isfinite(repetition_penalty) && repetition_penalty > 0, where, "repetition_penalty",
       "a finite number > 0", repetition_penalty);
  need(std::isfinite(frequency_penalty), where, "frequency_penalty", "a finite number",
       frequency_penalty);
  need(std::isfinite(presence_penalty), where, "presence_penalty", "a finite number",
       presence_penalty);
}

Sampler::Sampler(SamplingParams params, int64_t vocab_size)
    : params_(params), vocab_size_(vocab_size), rng_(params.seed) {
  params_.validate("sampler");
  if (vocab_size <= 0 || vocab_size > int64_t(std::numeric_limits<int32_t>::max()) + 1)
    throw Error("sampler", "vocab_size", "a number of tokens in [1, 2^31]",
                std::to_string(vocab_size));
}

void Sampler::apply_penalties(std::vector<double>& l, const std::vector<int32_t>& prompt,
                              const std::vector<int32_t>& generated) const {
  const double rep = params_.repetition_penalty;
  if (rep != 1.0) {
    std::vector<int32_t> seen(prompt);
    seen.insert(seen.end(), generated.begin(), generated.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t t : seen) {
      double& x = l[size_t(t)];
      x = x > 0 ? x / rep : x * rep;
    }
  }
  const double freq = params_.frequency_penalty, pres = params_.presence_penalty;
  if (freq != 0.0 || pres != 0.0) {
    std::vector<int32_t> g(generated);
    std::sort(g.begin(), g.end());
    for (size_t i = 0; i < g.size();) {
      size_t j = i;
      while (j < g.size() && g[j] == g[i]) ++j;
      l[size_t(g[i])] -= freq * double(j - i) + pres;
      i = j;
    }
  }
}

std::vector<int32_t> Sampler::truncate(const std::vector<double>& s) const {
  const int64_t v = vocab_size_;
  double kth = -kInf;  // top-k threshold: everything finite when top-k is off
  if (params_.top_k > 0 && params_.top_k < v) {
    std::vector<double> sorted(s);
    std::nth_element(sorted.begin(), sorted.begin() + (params_.top_k - 1), sorted.end(),
                     std::greater<double>());
    kth = sorted[size_t(params_.top_k - 1)];
  }
  std::vector<int32_t> keep;
  for (int64_t i = 0; i < v; ++i)
    if (s[size_t(i)] > -kInf && s[size_t(i)] >= kth) keep.push_back(int32_t(i));

  if (params_.top_p < 1.0) {
    std::sort(keep.begin(), keep.end(), [&](int32_t a, int32_t b) {
      return s[size_t(a)] > s[size_t(b)] || (s[size_t(a)] == s[size_t(b)] && a < b);
    });
    double z = 0;
    for (int32_t t : keep) z += std::exp(s[size_t(t)]);
    // Keep tokens while the mass of the more probable ones is below top_p (the first always).
    double before = 0;
    size_t n = 0;
    while (n < keep.size() && before < params_.top_p * z) before += std::exp(s[size_t(keep[n++])]);
    keep.resize(n);
  }
  if (params_.min_p > 0.0) {
    // The most probable token survives top-k and top-p, and its shifted logit is 0, so its
    // probability is 1 relative to itself: the threshold is exp(s) >= min_p.
    std::erase_if(keep, [&](int32_t t) { return std::exp(s[size_t(t)]) < params_.min_p; });
  }
  return keep;
}

Sampler::Choice Sampler::sample(const float* logits, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& generated) {
  const size_t v = size_t(vocab_size_);
  check_ids(prompt, vocab_size_, "prompt");
  check_ids(generated, vocab_size_, "generated");
  std::vector<double> l(logits, logits + v);
  for (size_t i = 0; i < v; ++i)
    if (std::isnan(l[i]) || l[i] == kInf)
      throw Error("sampler", "logits[" + std::to_string(i) + "]", "a finite number or -inf",
                  format_double(l[i]));
  apply_penalties(l, prompt, generated);

  // The first maximum is the greedy choice (ties to the lowest id).
  const size_t best = size_t(std::max_element(l.begin(), l.end()) - l.begin());
  const double top = l[best];
  if (top == -kInf) throw Error("sampler", "logits", "at least one finite logit", "all -inf");
  if (!std::isfinite(top))
    throw Error("sampler", "penalised logits", "finite values",
                format_double(top) + " (the penalties overflow these logits)");

  // Shift by the maximum before dividing by the temperature: the softmax is the same and a
  // tiny temperature cannot overflow. The largest shifted logit is 0.
  const double temperature = params_.temperature > 0 ? params_.temperature : 1.0;
  for (double& x : l) x = (x - top) / temperature;
  auto logprob_of = [&](int32_t t) {
    if (!params_.logprobs) return std::numeric_limits<double>::quiet_NaN();
    double z = 0;
    for (double x : l) z += std::exp(x);
    return l[size_t(t)] - std::log(z);
  };
  if (params_.temperature == 0) return {int32_t(best), logprob_of(int32_t(best))};

  const std::vector<int32_t> keep = truncate(l);
  std::vector<double> w(keep.size());
  double z = 0;
  for (size_t i = 0; i < keep.size(); ++i) z += w[i] = std::exp(l[size_t(keep[i])]);
  double u = rng_.uniform() * z;
  size_t pick = 0;
  while (pick + 1 < keep.size() && (u -= w[pick]) >= 0) ++pick;
  // Rounding can leave u >= 0 at the last token; a weight that underflowed to 0 is not drawn.
  while (w[pick] == 0) --pick;
  return {keep[pick], logprob_of(keep[pick])};
}

}  // namespace nh
