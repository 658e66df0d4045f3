// Log-probs from hidden states × lm_head without the [N, V] logits (the C++ twin of
// kernels/triton/fused_linear.py, same inputs and outputs).
//
// The vocabulary is walked in column chunks (and the tokens in row chunks when N is huge); each
// (rows × cols) logit tile is one ATen GEMM (MKL) into a reused fp32 buffer, followed by a fused
// epilogue over its rows in parallel (bias, 1/T, online log-sum-exp, entropy terms, the target's
// logit), so only the tile and O(N) row statistics ever exist. Tiles are as tall as possible
// (all rows when they fit): a few large GEMMs parallelise far better than many small ones, whose
// per-call thread barriers cost 2x on a loaded 2-core machine (measured). The backward recomputes each tile, turns it
// in place into dlogits = g·(onehot - softmax)/T and feeds it to two more GEMMs:
// d_hidden[rows] += dZ @ W[cols] and d_weight[cols] += dZᵀ @ hidden[rows] (d_bias += Σ_rows dZ).
//
// All arithmetic is fp32. bf16/fp16 inputs are converted to fp32 first (hidden once, the weight
// one column chunk at a time): on CPUs without bf16 matrix units an fp32 GEMM is several times
// faster than a bf16 one (measured 50 vs 7 GFLOP/s on this AVX2 machine), and the logits keep
// fp32 precision. Column chunk outer, row chunk inner, so each weight chunk is converted once and
// its d_weight chunk is complete (and cast back) before the next one: no fp32 [V, H] buffer.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common.h"
#include "linear_tiles.h"
#include "ops.h"

namespace g2rpo_fast::cpu::CPU_CAPABILITY {


std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_fwd(const at::Tensor& hidden,
                                                                      const at::Tensor& weight,
                                                                      const std::optional<at::Tensor>& bias,
                                                                      const at::Tensor& ids, double temperature,
                                                                      bool with_entropy) {
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  const auto f32 = hidden.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({N}, f32), lse = at::empty({N}, f32);
  at::Tensor entropy = at::empty({with_entropy ? N : 0}, f32);
  if (N == 0) return {logp, lse, entropy};

  const bool convert = weight.scalar_type() != at::kFloat;
  const Tiling tl = tiling(N, V, H, convert);
  const at::Tensor h32 = to_f32(hidden);
  const at::Tensor b32 = bias ? to_f32(*bias) : at::Tensor();
  at::Tensor tile = at::empty({tl.rows * tl.cols}, f32);
  const at::Tensor wbuf = convert ? at::empty({tl.cols, H}, f32) : at::Tensor();
  std::vector<RowStats> stats(N);
  std::vector<float> target(N, 0.f);
  const float inv_t = static_cast<float>(1.0 / temperature);
  const float* bp = bias ? b32.data_ptr<float>() : nullptr;

  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::fused_linear_logps_fwd", [&] {
    const index_t* id = ids.data_ptr<index_t>();
    check_ids(id, N, V);
    for (int64_t c0 = 0; c0 < V; c0 += tl.cols) {
      const int64_t cn = std::min(tl.cols, V - c0);
      const at::Tensor w_c = weight_chunk(weight, wbuf, c0, cn);
      for (int64_t r0 = 0; r0 < N; r0 += tl.rows) {
        const int64_t rn = std::min(tl.rows, N - r0);
        float* z = logit_tile(tile, h32, w_c, r0, rn).data_ptr<float>();
        at::parallel_for(0, rn, row_grain(cn), [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t r = r0 + i;
            float* zr = z + i * cn;
            const float zmax = bias_scale_max(zr, bp ? bp + c0 : nullptr, cn, inv_t);
            if (with_entropy) {
              stats[r].add_block<true>(zr, cn, zmax);
            } else {
              stats[r].add_block<false>(zr, cn, zmax);
            }
            const int64_t tok = id[r];
            if (tok >= c0 && tok < c0 + cn) target[r] = zr[tok - c0];
          }
        });
      }
    }
  });

  float *lp = logp.data_ptr<float>(), *ls = lse.data_ptr<float>();
  float* ent = with_entropy ? entropy.data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < N; ++r) {
    ls[r] = stats[r].lse();
    lp[r] = target[r] - ls[r];
    if (ent) ent[r] = stats[r].entropy();
  }
  return {logp, lse, entropy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_bwd(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& ids,
    const at::Tensor& lse, const at::Tensor& grad, double temperature, bool need_hidden, bool need_weight,
    bool need_bias) {
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  const auto f32 = hidden.options().dtype(at::kFloat);
  need_bias = need_bias && bias.has_value();
  const bool convert = weight.scalar_type() != at::kFloat;
  // fp32 accumulators: d_hidden [N, H] across column chunks; d_weight one column chunk at a
  // time (the output itself for fp32 weights).
  at::Tensor dh32 = need_hidden ? at::zeros({N, H}, f32) : at::Tensor();
  at::Tensor d_weight = need_weight ? (convert ? at::empty_like(weight) : at::zeros({V, H}, f32)) : at::Tensor();
  at::Tensor db32 = need_bias ? at::zeros({V}, f32) : at::Tensor();

  if (N > 0 && (need_hidden || need_weight || need_bias)) {
    const Tiling tl = tiling(N, V, H, convert);
    const at::Tensor h32 = to_f32(hidden);
    const at::Tensor b32 = bias ? to_f32(*bias) : at::Tensor();
    const at::Tensor g32 = to_f32(grad);
    at::Tensor tile = at::empty({tl.rows * tl.cols}, f32);
    const at::Tensor wbuf = convert ? at::empty({tl.cols, H}, f32) : at::Tensor();
    const at::Tensor dwbuf = (need_weight && convert) ? at::empty({tl.cols, H}, f32) : at::Tensor();
    const float inv_t = static_cast<float>(1.0 / temperature);
    const float* bp = bias ? b32.data_ptr<float>() : nullptr;
    const float* g = g32.data_ptr<float>();
    const float* l = lse.data_ptr<float>();

    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::fused_linear_logps_bwd", [&] {
      const index_t* id = ids.data_ptr<index_t>();
      check_ids(id, N, V);
      for (int64_t c0 = 0; c0 < V; c0 += tl.cols) {
        const int64_t cn = std::min(tl.cols, V - c0);
        const at::Tensor w_c = weight_chunk(weight, wbuf, c0, cn);
        at::Tensor dw_c;
        if (need_weight) dw_c = convert ? dwbuf.narrow(0, 0, cn).zero_() : d_weight.narrow(0, c0, cn);
        for (int64_t r0 = 0; r0 < N; r0 += tl.rows) {
          const int64_t rn = std::min(tl.rows, N - r0);
          at::Tensor dz = logit_tile(tile, h32, w_c, r0, rn);
          float* z = dz.data_ptr<float>();
          at::parallel_for(0, rn, row_grain(cn), [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
              const int64_t r = r0 + i;
              float* zr = z + i * cn;
              const float gr = g[r] * inv_t;  // d/dz of log_softmax(z / T): 1/T folded into g
              if (gr == 0.f) {
                std::fill(zr, zr + cn, 0.f);
                continue;
              }
              bias_scale_max(zr, bp ? bp + c0 : nullptr, cn, inv_t);
              neg_softmax_times(zr, cn, l[r], 0.f, gr);
              const int64_t tok = id[r];
              if (tok >= c0 && tok < c0 + cn) zr[tok - c0] += gr;
            }
          });
          const at::Tensor h_r = h32.narrow(0, r0, rn);
          if (need_hidden) dh32.narrow(0, r0, rn).addmm_(dz, w_c);
          if (need_weight) dw_c.addmm_(dz.t(), h_r);
          if (need_bias) db32.narrow(0, c0, cn).add_(dz.sum(0));
        }
        if (need_weight && convert) d_weight.narrow(0, c0, cn).copy_(dw_c);
      }
    });
  }
  const auto empty = [&] { return at::empty({0}, hidden.options()); };
  at::Tensor d_hidden = need_hidden ? (hidden.scalar_type() == at::kFloat ? dh32 : dh32.to(hidden.scalar_type()))
                                    : empty();
  at::Tensor d_bias = need_bias ? db32.to(bias->scalar_type()) : empty();
  return {d_hidden, need_weight ? d_weight : empty(), d_bias};
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
