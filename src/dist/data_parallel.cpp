#include "dist/data_parallel.h"

#include <algorithm>

#include "dist/tensor_parallel.h"

namespace nh {

namespace {

// Segments start on 64-element boundaries (128 bytes in bf16), so vector loads stay aligned.
constexpr int64_t kAlign = 64;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

int grads_ready_stage(const std::string& name, int layers) {
  if (name.starts_with("layers.")) {
    const size_t dot = name.find('.', 7);
    return std::stoi(name.substr(7, dot - 7));
  }
  if (name.starts_with("embeddings.")) return -1;
  return layers;  // the final norm and an untied LM head
}

DataParallel::DataParallel(Model& model, Communicator& group, bool distributed_optimizer,
                           int64_t bucket_elements)
    : model_(model), group_(group), distributed_optimizer_(distributed_optimizer) {
  const int layers = int(model.config().layers.size());
  for (const auto& t : model.trainable())
    segments_.push_back({t.name, 0, t.param.numel(), grads_ready_stage(t.name, layers), t.decay});
  // Backward order: the stages finish from `layers` down to -1.
  std::stable_sort(segments_.begin(), segments_.end(),
                   [](const Segment& a, const Segment& b) { return a.stage > b.stage; });
  const int64_t ranks = group.size();
  int64_t offset = 0, bucket_begin = 0;
  for (size_t i = 0; i < segments_.size(); ++i) {
    segments_[i].offset = offset;
    offset = round_up(offset + segments_[i].numel, kAlign);
    const bool last = i + 1 == segments_.size();
    if (last || offset - bucket_begin >= bucket_elements) {
      offset = bucket_begin + round_up(offset - bucket_begin, kAlign * ranks);
      buckets_.push_back({bucket_begin, offset, segments_[i].stage, false});
      bucket_begin = offset;
    }
  }
  std::vector<std::pair<std::string, int64_t>> offsets;
  for (const auto& s : segments_) offsets.emplace_back(s.name, s.offset);
  std::tie(params_, grads_) = model.make_contiguous(offsets, offset);
  group_.broadcast(params_, 0);
  model_.set_grads_ready_hook([this](int stage) { on_grads_ready(stage); });
}

DataParallel::~DataParallel() { model_.set_grads_ready_hook(nullptr); }

Tensor DataParallel::shard(const Tensor& flat, const Bucket& b) const {
  const int64_t part = (b.end - b.begin) / group_.size();
  const int64_t begin = b.begin + part * group_.rank();
  return flat.slice0(begin, begin + part);
}

std::vector<OptimizerRange> DataParallel::optimizer_ranges() const {
  std::vector<OptimizerRange> ranges;
  for (const Segment& s : segments_) {
    if (!distributed_optimizer_) {
      ranges.push_back({s.name, params_.slice0(s.offset, s.offset + s.numel),
                        grads_.slice0(s.offset, s.offset + s.numel), 0, s.decay, s.numel,
                        tp_replicated(model_, s.name)});
      continue;
    }
    for (const Bucket& b : buckets_) {
      const int64_t part = (b.end - b.begin) / group_.size();
      const int64_t mine = b.begin + part * group_.rank();
      const int64_t a = std::max(s.offset, mine), e = std::min(s.offset + s.numel, mine + part);
      if (a < e)
        ranges.push_back({s.name, params_.slice0(a, e), grads_.slice0(a, e), a - s.offset, s.decay,
                          s.numel, tp_replicated(model_, s.name)});
    }
  }
  return ranges;
}

void DataParallel::on_grads_ready(int stage) {
  if (!reducing_) return;
  for (Bucket& b : buckets_)
    if (!b.started && b.ready_stage >= stage) reduce(b);
}

void DataParallel::reduce(Bucket& b) {
  b.started = true;
  Tensor grads = grads_.slice0(b.begin, b.end);
  if (distributed_optimizer_) {
    Tensor mine = shard(grads_, b);
    group_.reduce_scatter(grads, mine, Completion::Later);
  } else {
    group_.all_reduce(grads, ReduceOp::Sum, Completion::Later);
  }
}

void DataParallel::finish_gradient_reduction() {
  for (Bucket& b : buckets_)
    if (!b.started) reduce(b);
  group_.wait();
  for (Bucket& b : buckets_) b.started = false;
  reducing_ = false;
}

void DataParallel::gather_parameters() {
  if (!distributed_optimizer_) return;
  for (const Bucket& b : buckets_) {
    Tensor all = params_.slice0(b.begin, b.end);
    group_.all_gather(shard(params_, b), all, Completion::Later);
  }
  group_.wait();
}

}  // namespace nh
