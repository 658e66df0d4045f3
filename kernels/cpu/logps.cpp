// Per-token log-probs from logits: log_softmax(logits / T)[ids] (forward) and its gradient.
//
// Forward reads each row once (blockwise online log-sum-exp, fp32) and keeps rowmax and
// log Σ exp per row (8 bytes) for the backward, plus the entropy when asked. Backward reads each
// row once and writes it once: dlogits = g·(onehot - softmax(x / T)), with 1/T folded into g by
// the caller (as the Triton launcher `kernels.logps.launch_logps_bwd`). Rows run in parallel.
#include <ATen/ops/empty.h>

#include "common.h"
#include "ops.h"

namespace g2rpo_fast::cpu::CPU_CAPABILITY {

namespace {

template <typename T, typename I, bool kEntropy>
void forward_rows(const at::Tensor& logits, const I* ids, float inv_t, float* logp, float* rowmax, float* logsum,
                  float* entropy) {
  const int64_t V = logits.size(-1);
  const int64_t N = logits.numel() / V;
  const Rows<const T> rows(logits);
  at::parallel_for(0, N, row_grain(V), [&](int64_t begin, int64_t end) {
    float buf[kBlock];
    for (int64_t r = begin; r < end; ++r) {
      const T* x = rows[r];
      const int64_t tok = ids[r];
      TORCH_CHECK_VALUE(tok >= 0 && tok < V, "`ids` must lie in [0, ", V, "), got ", tok);
      const RowStats st = row_stats<T, kEntropy>(x, V, inv_t, buf);
      const float log_s = st.log_s();
      logp[r] = (static_cast<float>(x[tok]) * inv_t - st.m) - log_s;
      rowmax[r] = st.m;
      logsum[r] = log_s;
      if constexpr (kEntropy) entropy[r] = st.entropy();
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logps_fwd(const at::Tensor& logits, const at::Tensor& ids,
                                                                     double inv_temperature, bool with_entropy) {
  const int64_t N = ids.numel();
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty({N}, f32), rowmax = at::empty({N}, f32), logsum = at::empty({N}, f32);
  at::Tensor entropy = at::empty({with_entropy ? N : 0}, f32);
  const float inv_t = static_cast<float>(inv_temperature);
  G2RPO_DISPATCH_FLOATS(logits.scalar_type(), "g2rpo_fast::logps_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::logps_fwd", [&] {
      auto run = [&](auto entropy_tag) {
        forward_rows<scalar_t, index_t, decltype(entropy_tag)::value>(
            logits, ids.data_ptr<index_t>(), inv_t, logp.data_ptr<float>(), rowmax.data_ptr<float>(),
            logsum.data_ptr<float>(), with_entropy ? entropy.data_ptr<float>() : nullptr);
      };
      with_entropy ? run(std::true_type{}) : run(std::false_type{});
    });
  });
  return {logp, rowmax, logsum, entropy};
}

void logps_bwd_into(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad, const at::Tensor& rowmax,
                    const at::Tensor& logsum, double inv_temperature, const at::Tensor& out) {
  const int64_t V = logits.size(-1);
  const int64_t N = ids.numel();
  const float inv_t = static_cast<float>(inv_temperature);
  const float* g = grad.data_ptr<float>();
  const float* m = rowmax.data_ptr<float>();
  const float* ls = logsum.data_ptr<float>();
  G2RPO_DISPATCH_FLOATS(logits.scalar_type(), "g2rpo_fast::logps_bwd", [&] {
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::logps_bwd", [&] {
      const index_t* id = ids.data_ptr<index_t>();
      const Rows<const scalar_t> rows(logits);
      scalar_t* dst = out.data_ptr<scalar_t>();  // contiguous [N, V]
      at::parallel_for(0, N, row_grain(V), [&](int64_t begin, int64_t end) {
        float buf[kBlock];
        for (int64_t r = begin; r < end; ++r) {
          const int64_t tok = id[r];
          TORCH_CHECK_VALUE(tok >= 0 && tok < V, "`ids` must lie in [0, ", V, "), got ", tok);
          softmax_grad_row(rows[r], dst + r * V, V, tok, g[r], inv_t, m[r], ls[r], buf);
        }
      });
    });
  });
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
