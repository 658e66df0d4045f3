// The per-token G²RPO surrogate (DESIGN.md section 4) and its derivative in logp, shared by the
// fused kernels (token_loss.cpp, fused_linear_loss.cpp); the same operations as the Triton kernel
// kernels/triton/token_loss.py. Derivatives follow PyTorch's conventions, like the reference autograd:
// `clamp` passes the gradient on the closed interval, `minimum` splits it in half on a tie.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>

namespace g2rpo_fast::cpu::CPU_CAPABILITY {

struct Surrogate {
  float beta, clip_lo, clip_hi, delta;
  bool has_old, has_ref, use_kl, has_delta;

  static Surrogate make(double beta, double epsilon_low, double epsilon_high, std::optional<double> delta,
                        bool has_old, bool has_ref) {
    return {static_cast<float>(beta), 1.f - static_cast<float>(epsilon_low), 1.f + static_cast<float>(epsilon_high),
            delta ? static_cast<float>(*delta) : 1.f, has_old, has_ref, has_ref && beta != 0.0, delta.has_value()};
  }
};

struct TokenTerms {
  float loss, dloss, kl, low, high;
};

// L_t and dL_t/dlogp_t of one token (scalar fp32, the same operations as the Triton kernel).
inline TokenTerms token_terms(const Surrogate& p, float logp, float a, float old, float ref) {
  const float ratio = p.has_old ? std::exp(logp - old) : 1.f;  // exp(logp - logp.detach())
  float unclipped = ratio, d_unclipped = ratio;
  if (p.has_delta) {
    unclipped = std::min(ratio, p.delta);
    d_unclipped = ratio <= p.delta ? ratio : 0.f;
  }
  const float clipped = std::min(std::max(ratio, p.clip_lo), p.clip_hi);
  const float d_clipped = (ratio >= p.clip_lo && ratio <= p.clip_hi) ? ratio : 0.f;
  const float u = unclipped * a, v = clipped * a;
  const float share_u = u < v ? 1.f : (u == v ? 0.5f : 0.f);
  TokenTerms out;
  out.loss = -std::min(u, v);
  out.dloss = -(share_u * a * d_unclipped + (1.f - share_u) * a * d_clipped);
  out.kl = 0.f;
  if (p.has_ref) {
    const float diff = ref - logp;
    const float e = std::exp(diff);
    out.kl = e - diff - 1.f;
    if (p.use_kl) {
      out.loss += p.beta * out.kl;
      out.dloss += p.beta * (1.f - e);
    }
  }
  out.low = (ratio < p.clip_lo && a < 0.f) ? 1.f : 0.f;
  out.high = (ratio > p.clip_hi && a > 0.f) ? 1.f : 0.f;
  return out;
}

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
