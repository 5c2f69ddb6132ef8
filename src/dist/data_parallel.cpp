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
  if (name.starts_with("layers.")) return layer_of(name);
  if (name.starts_with("embeddings.")) return -1;
  return layers;  // the final norm and an untied LM head
}

namespace {

// The model's trainable tensor `name`: the adapter's when one is attached.
const Tensor& trainable_tensor(const Model& model, const std::string& name) {
  return model.has_adapter() ? model.adapter().params.at(name) : model.params().at(name);
}

}  // namespace

NormKind norm_kind(const Model& model, const std::string& name) {
  if (model.expert_parallel_group() && is_expert_weight(name)) return NormKind::Expert;
  if (model.tensor_parallel_group() && tp_split(model.full_config(), name).kind != TpSplit::Whole)
    return NormKind::TensorShard;
  return NormKind::Whole;
}

int64_t whole_numel(const Model& model, const std::string& name) {
  const int64_t n = trainable_tensor(model, name).numel();
  return norm_kind(model, name) == NormKind::Expert ? n * model.expert_parallel_group()->size() : n;
}

int64_t whole_offset(const Model& model, const std::string& name) {
  return norm_kind(model, name) == NormKind::Expert
             ? trainable_tensor(model, name).numel() * model.expert_parallel_group()->rank()
             : 0;
}

DataParallel::DataParallel(Model& model, Communicator& group, bool distributed_optimizer,
                           int64_t bucket_elements, Communicator* expert_group)
    : model_(model),
      group_(group),
      expert_group_(expert_group),
      distributed_optimizer_(distributed_optimizer) {
  const int layers = int(model.config().layers.size());
  for (const auto& t : model.trainable())
    segments_.push_back({t.name, 0, t.param.numel(), grads_ready_stage(t.name, layers), t.decay,
                         expert_group && norm_kind(model, t.name) == NormKind::Expert});
  // Backward order within each group of ranks: the stages finish from `layers` down to -1.
  std::stable_sort(segments_.begin(), segments_.end(), [](const Segment& a, const Segment& b) {
    return a.expert != b.expert ? b.expert : a.stage > b.stage;
  });
  int64_t offset = 0, bucket_begin = 0;
  for (size_t i = 0; i < segments_.size(); ++i) {
    segments_[i].offset = offset;
    offset = round_up(offset + segments_[i].numel, kAlign);
    const bool last = i + 1 == segments_.size() || segments_[i + 1].expert != segments_[i].expert;
    if (last || offset - bucket_begin >= bucket_elements) {
      Communicator* reducer = segments_[i].expert ? expert_group : &group;
      offset = bucket_begin + round_up(offset - bucket_begin, kAlign * reducer->size());
      buckets_.push_back({bucket_begin, offset, segments_[i].stage, false, reducer});
      bucket_begin = offset;
    }
  }
  std::vector<std::pair<std::string, int64_t>> offsets;
  for (const auto& s : segments_) offsets.emplace_back(s.name, s.offset);
  std::tie(params_, grads_) = model.make_contiguous(offsets, offset);
  for (const Bucket& b : buckets_) {
    Tensor part = params_.slice0(b.begin, b.end);
    b.group->broadcast(part, 0);
  }
  model_.set_grads_ready_hook([this](int stage) { on_grads_ready(stage); });
}

DataParallel::~DataParallel() { model_.set_grads_ready_hook(nullptr); }

std::pair<int64_t, int64_t> DataParallel::my_part(const Bucket& b) const {
  const int64_t part = (b.end - b.begin) / b.group->size();
  const int64_t begin = b.begin + part * b.group->rank();
  return {begin, begin + part};
}

Tensor DataParallel::shard(const Tensor& flat, const Bucket& b) const {
  const auto [begin, end] = my_part(b);
  return flat.slice0(begin, end);
}

std::vector<OptimizerRange> DataParallel::optimizer_ranges() const {
  std::vector<OptimizerRange> ranges;
  for (const Segment& s : segments_) {
    const NormKind kind = norm_kind(model_, s.name);
    const int64_t numel = whole_numel(model_, s.name), at = whole_offset(model_, s.name);
    if (!distributed_optimizer_) {
      ranges.push_back({s.name, params_.slice0(s.offset, s.offset + s.numel),
                        grads_.slice0(s.offset, s.offset + s.numel), 0, s.decay, numel, at, kind});
      continue;
    }
    for (const Bucket& b : buckets_) {
      const auto [begin, end] = my_part(b);
      const int64_t a = std::max(s.offset, begin), e = std::min(s.offset + s.numel, end);
      if (a < e)
        ranges.push_back({s.name, params_.slice0(a, e), grads_.slice0(a, e), a - s.offset, s.decay,
                          numel, at, kind});
    }
  }
  return ranges;
}

NormGroups DataParallel::norm_groups() const {
  Communicator* data = distributed_optimizer_ ? &group_ : nullptr;
  return {data, model_.tensor_parallel_group(), distributed_optimizer_ ? expert_group_ : nullptr,
          model_.expert_parallel_group()};
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
    b.group->reduce_scatter(grads, mine, Completion::Later);
  } else {
    b.group->all_reduce(grads, ReduceOp::Sum, Completion::Later);
  }
}

void DataParallel::finish_gradient_reduction() {
  for (Bucket& b : buckets_)
    if (!b.started) reduce(b);
  group_.wait();
  if (expert_group_) expert_group_->wait();
  for (Bucket& b : buckets_) b.started = false;
  reducing_ = false;
}

void DataParallel::gather_parameters() {
  if (!distributed_optimizer_) return;
  for (const Bucket& b : buckets_) {
    Tensor all = params_.slice0(b.begin, b.end);
    b.group->all_gather(shard(params_, b), all, Completion::Later);
  }
  group_.wait();
  if (expert_group_) expert_group_->wait();
}

}  // namespace nh
