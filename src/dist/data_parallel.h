// Data-parallel training over a group of ranks, the way Megatron-LM's distributed data parallel
// does it. The trainable parameters and their gradients move into flat buffers (one each) laid
// out last layers first and cut into buckets of about `bucket_elements`. During the backward of
// a step's last micro-batch, each bucket's gradients are reduced as soon as the layers in it are
// done, on the communicator's stream, beside the rest of the backward.
//   - Without the distributed optimizer every bucket is all-reduced and every rank updates the
//     whole model (identical updates on identical sums).
//   - With it (ZeRO-1) every bucket is reduce-scattered: rank r keeps the sum of its 1/N of each
//     bucket, holds fp32 masters and moments for that part only, updates it, and the updated
//     parameters are all-gathered.
// Gradients are reduced as sums in the model's dtype; the trainer scales them by 1/tokens of the
// whole global batch.
#pragma once

#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace nh {

class DataParallel {
 public:
  // Megatron's default bucket: 40 M parameters.
  static constexpr int64_t kDefaultBucketElements = 40'000'000;

  // Lays out `model` (placed on its device already) and makes every rank's parameters equal to
  // rank 0's. Under expert parallelism the experts' gradients are reduced over `expert_group`
  // instead: the data-parallel ranks that hold the same experts. The model must outlive this
  // object.
  DataParallel(Model& model, Communicator& group, bool distributed_optimizer,
               int64_t bucket_elements = kDefaultBucketElements,
               Communicator* expert_group = nullptr);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Communicator& group() { return group_; }
  bool distributed_optimizer() const { return distributed_optimizer_; }
  // What this rank's optimizer updates, and the groups its gradient norm is summed over.
  std::vector<OptimizerRange> optimizer_ranges() const;
  NormGroups norm_groups() const;

  // Before each micro-batch's backward: whether it is this rank's last of the step (the one
  // whose backward reduces the gradients).
  void set_last_micro_batch(bool last) { reducing_ = last; }
  // After that backward: starts what is not started yet and waits for every reduction.
  void finish_gradient_reduction();
  // After the optimizer step, under the distributed optimizer: every rank gets every rank's
  // updated parameters.
  void gather_parameters();

  size_t buckets() const { return buckets_.size(); }

 private:
  struct Segment {
    std::string name;
    int64_t offset, numel;
    int stage;  // Model::set_grads_ready_hook's number of the step that finishes it
    bool decay;
    bool expert;  // reduced over the expert group
  };
  struct Bucket {
    int64_t begin, end;  // elements of the flat buffers; the length divides by the group size
    int ready_stage;     // done once the backward has finished this stage
    bool started;
    Communicator* group;  // the ranks that reduce it
  };
  void on_grads_ready(int stage);
  void reduce(Bucket& b);
  // This rank's elements [begin, end) of bucket b (of the flat buffers), and their view in flat.
  std::pair<int64_t, int64_t> my_part(const Bucket& b) const;
  Tensor shard(const Tensor& flat, const Bucket& b) const;

  Model& model_;
  Communicator& group_;
  Communicator* expert_group_;
  bool distributed_optimizer_;
  std::vector<Segment> segments_;
  std::vector<Bucket> buckets_;
  Tensor params_, grads_;  // the flat buffers
  bool reducing_ = false;
};

// The backward stage after which parameter `name`'s gradient is final (Model's hook numbering).
int grads_ready_stage(const std::string& name, int layers);

// How `model` holds its trainable tensor `name` across ranks: its kind for the gradient norm, the
// whole tensor's elements, and where this rank's part starts in it.
NormKind norm_kind(const Model& model, const std::string& name);
int64_t whole_numel(const Model& model, const std::string& name);
int64_t whole_offset(const Model& model, const std::string& name);

}  // namespace nh
