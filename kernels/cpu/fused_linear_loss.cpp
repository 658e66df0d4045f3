// The token-level G²RPO loss straight from hidden states × lm_head, with its gradients computed
// in the same pass: 3 GEMMs per token instead of the 4 of log-probs + backward (which must
// recompute the logits), and still no [N, V] logits.
//
// The loss of a token depends on its own log-prob only (DESIGN.md section 4; the aggregation
// coefficient c_t comes from the masks), so dL/dlogits of a block of rows is known as soon as
// those rows' logits are: per row chunk, (A) one GEMM writes the [rows, V] logits into a reused
// fp32 tile, (B) a parallel epilogue per row takes the log-sum-exp, logp, c_t·L_t and turns the
// row in place into dZ = c_t·dL_t/dlogp_t·(onehot - softmax)/T, (C) two GEMMs add dZ @ W to
// d_hidden and dZᵀ @ hidden to d_weight. The caller's backward only scales the stored gradients
// by grad_output. Rows with c_t == 0 (padding, masked guidance) get exact zeros and never read
// their old/ref log-probs (any placeholder there is harmless).
//
// bf16/fp16 weights are converted to fp32 one column block at a time (twice per row chunk) and
// d_weight accumulates in an fp32 [V, H] buffer (as the Triton kernel does); fp32 weights need
// neither. Tiles: 1/16 of the logits within [4, 64] MiB (linear_tiles.h).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common.h"
#include "g2rpo_terms.h"
#include "linear_tiles.h"
#include "ops.h"

namespace g2rpo_fast::cpu::CPU_CAPABILITY {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_g2rpo_loss(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& ids, const at::Tensor& coef, const at::Tensor& advantages,
                        const std::optional<at::Tensor>& old_logps, const std::optional<at::Tensor>& ref_logps,
                        double temperature, double beta, double epsilon_low, double epsilon_high,
                        std::optional<double> delta, bool need_hidden, bool need_weight, bool need_bias) {
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  const auto f32 = hidden.options().dtype(at::kFloat);
  need_bias = need_bias && bias.has_value();
  at::Tensor rows_out[5];  // logp, c·L, kl, low, high: zeros stay for masked rows
  float* o[5];
  for (int i = 0; i < 5; ++i) {
    rows_out[i] = at::zeros({N}, f32);
    o[i] = rows_out[i].data_ptr<float>();
  }
  const bool convert = weight.scalar_type() != at::kFloat;
  const bool fp32_hidden = hidden.scalar_type() == at::kFloat;
  at::Tensor d_hidden = need_hidden ? at::empty({N, H}, hidden.options()) : at::empty({0}, hidden.options());
  at::Tensor dw32 = need_weight ? at::zeros({V, H}, f32) : at::Tensor();  // the output itself for fp32
  at::Tensor db32 = need_bias ? at::zeros({V}, f32) : at::Tensor();

  if (N > 0) {
    const int64_t budget = std::clamp(N * V / 16, kMinTileElems, kMaxTileElems);
    const int64_t R = std::clamp<int64_t>(budget / V, 16, N);
    // One column block (the whole vocabulary) for fp32 weights; bounded fp32 copies otherwise.
    const int64_t C = convert ? std::min(V, std::max(kMinCols, kWeightChunkElems / std::max<int64_t>(H, 1))) : V;
    const at::Tensor h32 = to_f32(hidden);
    const at::Tensor b32 = bias ? to_f32(*bias) : at::Tensor();
    at::Tensor tile = at::empty({R * V}, f32);
    const at::Tensor wbuf = convert ? at::empty({C, H}, f32) : at::Tensor();
    const at::Tensor dhbuf = (need_hidden && !fp32_hidden) ? at::empty({R, H}, f32) : at::Tensor();
    const Surrogate p = Surrogate::make(beta, epsilon_low, epsilon_high, delta, old_logps.has_value(),
                                        ref_logps.has_value());
    const float inv_t = static_cast<float>(1.0 / temperature);
    const float* bp = bias ? b32.data_ptr<float>() : nullptr;
    const float* c = coef.data_ptr<float>();
    const float* adv = advantages.data_ptr<float>();
    const float* old = p.has_old ? old_logps->data_ptr<float>() : nullptr;
    const float* ref = p.has_ref ? ref_logps->data_ptr<float>() : nullptr;

    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "g2rpo_fast::fused_linear_g2rpo_loss", [&] {
      const index_t* id = ids.data_ptr<index_t>();
      check_ids(id, N, V);
      for (int64_t r0 = 0; r0 < N; r0 += R) {
        const int64_t rn = std::min(R, N - r0);
        const at::Tensor h_r = h32.narrow(0, r0, rn);
        at::Tensor z = tile.narrow(0, 0, rn * V).view({rn, V});
        for (int64_t c0 = 0; c0 < V; c0 += C) {  // (A) the logits of these rows
          const int64_t cn = std::min(C, V - c0);
          at::Tensor z_c = z.narrow(1, c0, cn);
          at::mm_out(z_c, h_r, weight_chunk(weight, wbuf, c0, cn).t());
        }
        float* zp = z.data_ptr<float>();
        at::parallel_for(0, rn, row_grain(V), [&](int64_t begin, int64_t end) {  // (B) loss and dZ
          for (int64_t i = begin; i < end; ++i) {
            const int64_t r = r0 + i;
            float* zr = zp + i * V;
            if (c[r] == 0.f) {
              std::fill(zr, zr + V, 0.f);
              continue;
            }
            RowStats st;
            for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
              const int64_t n = std::min(kBlock, V - b0);
              st.add_block<false>(zr + b0, n, bias_scale_max(zr + b0, bp ? bp + b0 : nullptr, n, inv_t));
            }
            const int64_t tok = id[r];
            const float log_s = st.log_s();
            const float logp = (zr[tok] - st.m) - log_s;
            const TokenTerms t = token_terms(p, logp, adv[r], old ? old[r] : 0.f, ref ? ref[r] : 0.f);
            o[0][r] = logp;
            o[1][r] = c[r] * t.loss;
            o[2][r] = t.kl;
            o[3][r] = t.low;
            o[4][r] = t.high;
            const float g = c[r] * t.dloss * inv_t;  // d/dz of c·L through log_softmax(z / T)
            if (g == 0.f) {
              std::fill(zr, zr + V, 0.f);
              continue;
            }
            neg_softmax_times(zr, V, st.m, log_s, g);
            zr[tok] += g;
          }
        });
        if (!(need_hidden || need_weight || need_bias)) continue;
        at::Tensor dh_r;
        if (need_hidden) dh_r = (fp32_hidden ? d_hidden.narrow(0, r0, rn) : dhbuf.narrow(0, 0, rn)).zero_();
        for (int64_t c0 = 0; c0 < V; c0 += C) {  // (C) the gradients
          const int64_t cn = std::min(C, V - c0);
          const at::Tensor dz_c = z.narrow(1, c0, cn);
          if (need_hidden || need_weight) {
            const at::Tensor w_c = weight_chunk(weight, wbuf, c0, cn);
            if (need_hidden) dh_r.addmm_(dz_c, w_c);
            if (need_weight) dw32.narrow(0, c0, cn).addmm_(dz_c.t(), h_r);
          }
          if (need_bias) db32.narrow(0, c0, cn).add_(dz_c.sum(0));
        }
        if (need_hidden && !fp32_hidden) d_hidden.narrow(0, r0, rn).copy_(dh_r);
      }
    });
  } else if (need_hidden) {
    d_hidden.zero_();
  }
  const auto empty = [&] { return at::empty({0}, hidden.options()); };
  at::Tensor d_weight = need_weight ? (convert ? dw32.to(weight.scalar_type()) : dw32) : empty();
  at::Tensor d_bias = need_bias ? db32.to(bias->scalar_type()) : empty();
  return {rows_out[0], rows_out[1], rows_out[2], rows_out[3], rows_out[4], d_hidden, d_weight, d_bias};
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
