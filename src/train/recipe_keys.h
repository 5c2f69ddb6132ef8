// The keys a recipe has (train/recipe.h): each key and the Recipe member it fills, in the
// order recipe_to_yaml writes them; the Megatron/NeMo spellings of some; and the closest known
// key to offer for a typo. Shared by the recipe reader and writer (train/recipe.cpp).
#pragma once

#include <algorithm>
#include <array>
#include <limits>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "train/recipe.h"

namespace nh::recipe_keys {

// One recipe key and the member it fills. The table order is the order recipe_to_yaml writes.
using Member = std::variant<std::string Recipe::*, int64_t Recipe::*, uint64_t Recipe::*,
                            double Recipe::*, bool Recipe::*, std::vector<std::string> Recipe::*,
                            std::vector<DataSourceSpec> Recipe::*>;
struct Field {
  const char* key;
  Member member;
};

extern const std::array<Field, 55> kFields;

// Megatron/NeMo spellings and the key they stand for. A recipe gives at most one spelling of
// each key; --set of one spelling replaces the other.
struct Alias {
  const char* alias;
  const char* key;
};
extern const std::array<Alias, 6> kAliases;
// Megatron's "full"/"selective"; it adjusts `recompute` and has no member of its own.
inline constexpr const char* kGranularity = "recompute_granularity";

// Keys that apply only with an adapter (given without one they are an error, and a recipe
// without one is written without them).
extern const std::array<const char*, 10> kAdapterKeys;

// The field of canonical key `key`, or null.
const Field* find_field(std::string_view key);
// The key `name` stands for ("" when it is not a recipe key).
std::string canonical_key(std::string_view name);
// Every top-level spelling: the keys, their aliases and recompute_granularity.
std::vector<std::string_view> top_level_names();
size_t edit_distance(std::string_view a, std::string_view b);

// "a known key" plus the closest candidate when it is a plausible typo.
template <typename Names>
std::string known_key_text(std::string_view name, const Names& candidates, const char* what) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (std::string_view c : candidates) {
    const size_t d = edit_distance(name, c);
    if (d < best_d) best_d = d, best = std::string(c);
  }
  std::string text = std::string("a known ") + what + " key";
  if (best_d <= std::max<size_t>(2, name.size() / 4)) text += " (did you mean " + best + "?)";
  return text;
}

}  // namespace nh::recipe_keys
