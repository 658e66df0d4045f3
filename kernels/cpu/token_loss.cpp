// The token-level G²RPO loss fused with the log-prob of each token (the C++ twin of the Triton
// kernel kernels/triton/token_loss.py, same inputs and outputs).
//
// For each row (token): read the logits once (blockwise online log-sum-exp, fp32), form logp,
// then the per-token loss L_t of DESIGN.md section 4 (ratio, `delta` cap, clip to
// [1-ε_low, 1+ε_high], k3 KL times β) and dL_t/dlogp_t, both times the token's aggregation
// coefficient c_t (section 6; computed by the caller from the masks). A row with c_t == 0
// (padding, masked guidance) reads nothing and writes zeros. The backward is `logps_bwd` with
// grad = grad_out · c_t·dL_t/dlogp_t / T.
#include <ATen/ops/zeros.h>

#include "common.h"
#include "g2rpo_terms.h"
#include "ops.h"

namespace g2rpo_fast::cpu::CPU_CAPABILITY {


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
g2rpo_loss_fwd(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& coef, const at::Tensor& advantages,
               const std::optional<at::Tensor>& old_logps, const std::optional<at::Tensor>& ref_logps,
               double inv_temperature, double beta, double epsilon_low, double epsilon_high,
               std::optional<double> delta) {
  const int64_t V = logits.size(-1);
  const int64_t N = ids.numel();
  const auto f32 = logits.options().dtype(at::kFloat);
  // Zero-filled, separate tensors (custom-op outputs may not alias): masked rows keep zeros.
  at::Tensor outs[8];
  float* o[8];
  for (int i = 0; i < 8; ++i) {
    outs[i] = at::zeros({N}, f32);
    o[i] = outs[i].data_ptr<float>();
  }
  float *logp = o[0], *rowmax = o[1], *logsum = o[2], *loss = o[3], *dlogp = o[4], *kl = o[5], *low = o[6],
        *high = o[7];
  const Surrogate p = Surrogate::make(beta, epsilon_low, epsilon_high, delta, old_logps.has_value(),
                                      ref_logps.has_value());
  const float inv_t = static_cast<float>(inv_temperature);
  const float* c = coef.data_ptr<float>();
  const float* adv = advantages.data_ptr<float>();
  const float* old = p.has_old ? old_logps->data_ptr<float>() : nullptr;
  const float* ref = p.has_ref ? ref_logps->data_ptr<float>() : nullptr;
  G2RPO_DISPATCH_FLOATS(logits.scalar_type(), "g2rpo_fast::g2rpo_loss_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::g2rpo_loss_fwd", [&] {
      const index_t* id = ids.data_ptr<index_t>();
      const Rows<const scalar_t> rows(logits);
      at::parallel_for(0, N, row_grain(V), [&](int64_t begin, int64_t end) {
        float buf[kBlock];
        for (int64_t r = begin; r < end; ++r) {
          if (c[r] == 0.f) continue;  // masked token: contributes nothing, reads nothing
          const int64_t tok = id[r];
          TORCH_CHECK_VALUE(tok >= 0 && tok < V, "`ids` must lie in [0, ", V, "), got ", tok);
          const scalar_t* x = rows[r];
          const RowStats st = row_stats<scalar_t, false>(x, V, inv_t, buf);
          const float log_s = st.log_s();
          const float lp = (static_cast<float>(x[tok]) * inv_t - st.m) - log_s;
          const TokenTerms t = token_terms(p, lp, adv[r], old ? old[r] : 0.f, ref ? ref[r] : 0.f);
          logp[r] = lp;
          rowmax[r] = st.m;
          logsum[r] = log_s;
          loss[r] = c[r] * t.loss;
          dlogp[r] = c[r] * t.dloss;
          kl[r] = t.kl;
          low[r] = t.low;
          high[r] = t.high;
        }
      });
    });
  });
  return {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5], outs[6], outs[7]};
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
