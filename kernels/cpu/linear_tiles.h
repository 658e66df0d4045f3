// Tiles of hidden @ weightᵀ for the fused-linear kernels (fused_linear.cpp,
// fused_linear_loss.cpp): tile sizes, fp32 weight chunks, the GEMM into a reused buffer.
#pragma once

#include <ATen/ops/mm.h>

#include "common.h"

namespace g2rpo_fast::cpu::CPU_CAPABILITY {

// fp32 logit tile: 1/16 of the [N, V] logits it stands for, within [4 MiB, 64 MiB]. Big tiles
// mean few GEMM calls and parallel regions, i.e. few thread barriers (costly on a loaded CPU).
constexpr int64_t kMaxTileElems = int64_t{1} << 24;
constexpr int64_t kMinTileElems = int64_t{1} << 20;
constexpr int64_t kWeightChunkElems = int64_t{1} << 22;  // fp32 copy of a bf16 weight chunk: 16 MiB
constexpr int64_t kMinCols = 256, kMaxCols = 4096;

struct Tiling {
  int64_t rows, cols;
};

inline Tiling tiling(int64_t N, int64_t V, int64_t H, bool convert_weight) {
  N = std::max<int64_t>(N, 1);
  const int64_t budget = std::clamp(N * V / 16, kMinTileElems, kMaxTileElems);
  int64_t cols = std::clamp(budget / N, kMinCols, kMaxCols);
  if (convert_weight) cols = std::min(cols, std::max(kMinCols, kWeightChunkElems / std::max<int64_t>(H, 1)));
  cols = std::min(cols, V);
  const int64_t rows = std::min(N, std::max<int64_t>(64, budget / cols));
  return {rows, cols};
}

// weight[c0 : c0 + n] as fp32 (a view for fp32 weights, else converted into `buf`).
inline at::Tensor weight_chunk(const at::Tensor& weight, const at::Tensor& buf, int64_t c0, int64_t n) {
  at::Tensor w = weight.narrow(0, c0, n);
  if (weight.scalar_type() == at::kFloat) return w;
  at::Tensor out = buf.narrow(0, 0, n);
  out.copy_(w);
  return out;
}

// The [rows, cols] logit tile hidden[r0 : r0 + rows] @ w_cᵀ, in the reused buffer.
inline at::Tensor logit_tile(at::Tensor& tile, const at::Tensor& h32, const at::Tensor& w_c, int64_t r0, int64_t rows) {
  at::Tensor z = tile.narrow(0, 0, rows * w_c.size(0)).view({rows, w_c.size(0)});
  at::mm_out(z, h32.narrow(0, r0, rows), w_c.t());
  return z;
}

template <typename I>
inline void check_ids(const I* ids, int64_t N, int64_t V) {
  for (int64_t r = 0; r < N; ++r) {
    TORCH_CHECK_VALUE(ids[r] >= 0 && ids[r] < V, "`ids` must lie in [0, ", V, "), got ", int64_t(ids[r]));
  }
}

inline at::Tensor to_f32(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat ? x.contiguous() : x.to(at::kFloat).contiguous();
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
