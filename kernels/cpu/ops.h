// The C++ CPU kernels, declared once per CPU capability namespace.
//
// Each kernels/cpu/<op>.cpp defines its functions in `g2rpo_fast::cpu::CPU_CAPABILITY` and is
// compiled once per capability; register.cpp (compiled once, baseline flags) validates the
// arguments and calls the best copy the running CPU supports. Signatures mirror the Triton
// launchers (kernels/triton/logps.py, token_loss.py, fused_linear.py) so that one autograd Function can
// call either. Optional outputs that were not requested come back as empty tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#define G2RPO_DECLARE_CPU_KERNELS(CAP)                                                                     \
  namespace g2rpo_fast::cpu::CAP {                                                                       \
  /* (logp, rowmax, logsum, entropy) fp32 [N]; entropy is empty unless with_entropy */                    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logps_fwd(                                  \
      const at::Tensor& logits, const at::Tensor& ids, double inv_temperature, bool with_entropy);       \
  /* out[r] = grad[r]·(onehot(ids[r]) - softmax(logits[r]·inv_t)); out may be logits (in place) */      \
  void logps_bwd_into(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad,           \
                      const at::Tensor& rowmax, const at::Tensor& logsum, double inv_temperature,        \
                      const at::Tensor& out);                                                            \
  /* (logp, rowmax, logsum, c·L, c·dL/dlogp, kl, low, high) fp32 [N] */                                   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,         \
             at::Tensor>                                                                                 \
  g2rpo_loss_fwd(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& coef,                \
                 const at::Tensor& advantages, const std::optional<at::Tensor>& old_logps,               \
                 const std::optional<at::Tensor>& ref_logps, double inv_temperature, double beta,        \
                 double epsilon_low, double epsilon_high, std::optional<double> delta);                  \
  /* (logp, lse, entropy) fp32 [N]; entropy is empty unless with_entropy */                               \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_fwd(                                 \
      const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,         \
      const at::Tensor& ids, double temperature, bool with_entropy);                                     \
  /* (d_hidden, d_weight, d_bias) in the input dtypes; empty where not needed */                          \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_bwd(                                 \
      const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,         \
      const at::Tensor& ids, const at::Tensor& lse, const at::Tensor& grad, double temperature,          \
      bool need_hidden, bool need_weight, bool need_bias);                                               \
  /* (logp, c·L, kl, low, high) fp32 [N] and the gradients of Σ c·L (d_hidden, d_weight, d_bias) */       \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,         \
             at::Tensor>                                                                                 \
  fused_linear_g2rpo_loss(const at::Tensor& hidden, const at::Tensor& weight,                            \
                          const std::optional<at::Tensor>& bias, const at::Tensor& ids,                  \
                          const at::Tensor& coef, const at::Tensor& advantages,                          \
                          const std::optional<at::Tensor>& old_logps,                                    \
                          const std::optional<at::Tensor>& ref_logps, double temperature, double beta,   \
                          double epsilon_low, double epsilon_high, std::optional<double> delta,          \
                          bool need_hidden, bool need_weight, bool need_bias);                           \
  }

G2RPO_DECLARE_CPU_KERNELS(DEFAULT)
G2RPO_DECLARE_CPU_KERNELS(AVX2)
G2RPO_DECLARE_CPU_KERNELS(AVX512)
