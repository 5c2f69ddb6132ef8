#include "train/data_sources.h"

#include <map>

#include "core/error.h"

namespace nh {

DataStreamConfig stream_config(const Recipe& r, const Tokenizer& tokenizer, int64_t vocab_size,
                               int split_part) {
  if (r.data.empty()) throw Error("recipe", "data", "at least one data source", "none");
  const BatchEncoder encode = tokenizer_encoder(tokenizer);
  // Sources are read once per process and shared by the train and validation streams.
  static std::map<std::string, std::shared_ptr<const DocumentSource>> cache;
  DataStreamConfig c;
  bool all_chat = true;
  for (const auto& spec : r.data) {
    const std::string key = spec.type + ":" + spec.text_key + ":" + r.chat_template + ":" +
                            (r.train_on_all_turns ? "all" : "") + ":" + spec.path;
    auto& source = cache[key];
    if (!source) {
      if (spec.type == "megatron") {
        source = open_indexed_dataset(spec.path);
      } else if (spec.type == "text") {
        source = load_text_jsonl(spec.path, encode, spec.text_key);
      } else if (spec.type == "chat") {
        ChatTemplate tmpl = chat_template_by_name(r.chat_template);
        tmpl.train_all = r.train_on_all_turns;
        source = load_chat_jsonl(spec.path, tmpl, encode);
      } else {
        throw Error("recipe", "data.type", "megatron, text or chat", spec.type);
      }
    }
    all_chat = all_chat && spec.type == "chat";
    // Megatron datasets made with --append-eod already end documents with EOD.
    c.sources.push_back({source, spec.weight, r.append_eod && spec.type == "text"});
  }
  c.seq_length = r.seq_length;
  c.vocab_size = vocab_size;
  const auto eod = tokenizer.eos_id();
  c.eod_id = eod ? *eod : -1;
  c.pad_id = c.eod_id >= 0 ? c.eod_id : 0;
  c.packing = all_chat ? Packing::Sft : Packing::Pretrain;
  if (!r.sample_packing) c.pack_window = 1;  // each example alone in its row
  c.split = r.split;
  c.split_part = split_part;
  c.seed = r.seed;
  return c;
}

}  // namespace nh
