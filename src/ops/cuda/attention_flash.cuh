// The tensor-core attention kernels (attention_flash.cu) that ops/cuda/attention.cu runs for bf16
// inputs whose head dim they cover; the fp32 and odd-head-dim cases keep the CUDA-core kernels.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>

namespace nh::cuda {

struct AttnDims {
  int batch, seqlen, q_heads, kv_heads, head_dim;
};

// Whether the tensor-core kernels take bf16 inputs of this head dim whose base pointers are
// all 16-byte aligned.
bool flash_attention_supported(const AttnDims& d, std::initializer_list<const void*> pointers);

// out, lse as attention_forward (ops/attention.h); doc_start [B, S] or null (one document).
// row_tiles: the 16-row tiles of queries each warp owns in the forward and dq kernels, 2 (the
// default version) or 1 (the version "flash16" of the kernel playground).
void flash_attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             const int* doc_start, const AttnDims& d, float scale, int row_tiles,
                             __nv_bfloat16* out, float* lse);

// dq, dk, dv as attention_backward; delta [B, Hq, S] = Σ_e dout·out per query; doc_end [B, S]
// (one past each token's document) or null.
void flash_attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k,
                              const __nv_bfloat16* v, const int* doc_start, const int* doc_end,
                              const float* lse, const float* delta, const __nv_bfloat16* dout,
                              const AttnDims& d, float scale, int row_tiles, __nv_bfloat16* dq,
                              __nv_bfloat16* dk, __nv_bfloat16* dv);

}  // namespace nh::cuda
