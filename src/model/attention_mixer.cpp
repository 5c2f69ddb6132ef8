#include "model/attention_mixer.h"

#include <cmath>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/paged_attention.h"

namespace nh {

AttentionMixer::AttentionMixer(const ModelConfig& c, const LayerParams& p)
    : heads_(c.num_attention_heads),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim),
      q_(p, "q_proj"),
      k_(p, "k_proj"),
      v_(p, "v_proj"),
      o_(p, "o_proj") {}

void AttentionMixer::forward(const Tensor& u, const Batch& batch, Tensor& out) {
  const int64_t b = batch.batch, s = batch.seq;
  const DType dt = u.dtype();
  const Device dev = u.device();
  batch_ = batch;
  u_ = u;
  q_out_ = Tensor::empty({b, s, heads_, head_dim_}, dt, dev);
  k_out_ = Tensor::empty({b, s, kv_heads_, head_dim_}, dt, dev);
  v_out_ = Tensor::empty({b, s, kv_heads_, head_dim_}, dt, dev);
  q_.forward(u, q_out_);
  k_.forward(u, k_out_);
  v_.forward(u, v_out_);
  o_in_ = Tensor::empty(q_out_.shape(), dt, dev);
  lse_ = Tensor::empty({b, heads_, s}, stats_dtype(dt), dev);
  attention_forward(q_out_, k_out_, v_out_, batch.seq_idx, 1.0 / std::sqrt(double(head_dim_)),
                    o_in_, lse_);
  o_.forward(o_in_.reshape({b * s, heads_ * head_dim_}), out);
}

void AttentionMixer::backward(const Tensor& dout, Tensor& du) {
  const DType dt = dout.dtype();
  const Device dev = dout.device();
  const Shape flat{batch_.tokens(), heads_ * head_dim_};
  Tensor do_in = Tensor::empty(o_in_.shape(), dt, dev);
  Tensor do_flat = do_in.reshape(flat);
  o_.backward(o_in_.reshape(flat), dout, do_flat);
  Tensor dq = Tensor::empty(q_out_.shape(), dt, dev), dk = Tensor::empty(k_out_.shape(), dt, dev),
         dv = Tensor::empty(v_out_.shape(), dt, dev);
  attention_backward(q_out_, k_out_, v_out_, batch_.seq_idx, 1.0 / std::sqrt(double(head_dim_)),
                     o_in_, lse_, do_in, dq, dk, dv);
  Tensor part = Tensor::empty(du.shape(), dt, dev);
  q_.backward(u_, dq, du);
  k_.backward(u_, dk, part);
  add_inplace(du, part);
  v_.backward(u_, dv, part);
  add_inplace(du, part);
  release();
}

void AttentionMixer::prefill(const Tensor& u, const Batch& batch, LayerCache& cache,
                             const CacheSlots& slots, int64_t, Tensor& out) {
  NH_CHECK(batch.batch == 1, "prefill runs one sequence");
  forward(u, batch, out);
  const Shape tokens{batch.seq, kv_heads_, head_dim_};
  kv_cache_write(k_out_.reshape(tokens), slots.block_table, slots.rows, slots.positions, cache.k);
  kv_cache_write(v_out_.reshape(tokens), slots.block_table, slots.rows, slots.positions, cache.v);
  release();
}

void AttentionMixer::decode(const Tensor& u, LayerCache& cache, const CacheSlots& slots,
                            Tensor& out) {
  const int64_t b = u.size(0);
  const DType dt = u.dtype();
  const Device dev = u.device();
  Tensor q = Tensor::empty({b, heads_, head_dim_}, dt, dev);
  Tensor k = Tensor::empty({b, kv_heads_, head_dim_}, dt, dev);
  Tensor v = Tensor::empty({b, kv_heads_, head_dim_}, dt, dev);
  q_.forward(u, q);
  k_.forward(u, k);
  v_.forward(u, v);
  kv_cache_write(k, slots.block_table, slots.rows, slots.positions, cache.k);
  kv_cache_write(v, slots.block_table, slots.rows, slots.positions, cache.v);
  Tensor o = Tensor::empty({b, heads_, head_dim_}, dt, dev);
  paged_attention_decode(q, cache.k, cache.v, slots.block_table, slots.rows, slots.lengths,
                         1.0 / std::sqrt(double(head_dim_)), o);
  o_.forward(o.reshape({b, heads_ * head_dim_}), out);
}

void AttentionMixer::release() { u_ = q_out_ = k_out_ = v_out_ = o_in_ = lse_ = Tensor(); }

}  // namespace nh
