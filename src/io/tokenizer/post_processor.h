// Post-processors of tokenizer.json ("post_processor"), applied when special tokens are
// asked for: TemplateProcessing (its "single" template), RobertaProcessing and
// BertProcessing (cls ... sep), ByteLevel (no change to ids) and Sequence. Only single
// sequences are encoded, so pair templates are read but not used.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids) const = 0;
};

// The post-processor described by `value` (null gives nullptr); unsupported types are an Error.
std::unique_ptr<PostProcessor> parse_post_processor(const json& value, const JsonPath& at);

}  // namespace nh::tok
