// `torch.ops.g2rpo_fast.*`: the schemas, the CPU implementations and the Python module `_C`.
//
// Compiled once with baseline flags (static initialisers must never contain AVX code). Each
// implementation checks its arguments (a ValueError naming the argument) and calls the kernel
// copy built for the best capability the CPU has, as ATen reports it (`ATEN_CPU_CAPABILITY`
// lowers it, e.g. to test the DEFAULT build on an AVX2 machine).
#include <Python.h>

#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops.h"

namespace g2rpo_fast::cpu {
namespace {

enum class Capability { kDefault, kAvx2, kAvx512 };

Capability capability() {
  static const Capability cap = [] {
    const std::string s = at::get_cpu_capability();
#if defined(G2RPO_HAVE_AVX512)
    if (s == "AVX512") return Capability::kAvx512;
#endif
#if defined(G2RPO_HAVE_AVX2)
    if (s == "AVX2" || s == "AVX512") return Capability::kAvx2;
#endif
    return Capability::kDefault;
  }();
  return cap;
}

std::string capability_name() {
  switch (capability()) {
    case Capability::kAvx512:
      return "AVX512";
    case Capability::kAvx2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
}

#if defined(G2RPO_HAVE_AVX512)
#define G2RPO_CASE_AVX512(fn, ...) \
  case Capability::kAvx512:        \
    return AVX512::fn(__VA_ARGS__);
#else
#define G2RPO_CASE_AVX512(fn, ...)
#endif
#if defined(G2RPO_HAVE_AVX2)
#define G2RPO_CASE_AVX2(fn, ...) \
  case Capability::kAvx2:        \
    return AVX2::fn(__VA_ARGS__);
#else
#define G2RPO_CASE_AVX2(fn, ...)
#endif
#define G2RPO_DISPATCH(fn, ...)            \
  switch (capability()) {                  \
    G2RPO_CASE_AVX512(fn, __VA_ARGS__)     \
    G2RPO_CASE_AVX2(fn, __VA_ARGS__)       \
    default:                               \
      return DEFAULT::fn(__VA_ARGS__);     \
  }

// ------------------------------------------------------------------------ argument checks

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "`", name, "` must be a CPU tensor, got ", t.device());
}

void check_floating(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_VALUE(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, "`", name,
                    "` must be float32, bfloat16 or float16, got ", s);
}

// [N, V] or [B, T, V] with a unit last stride; returns N.
int64_t check_logits(const at::Tensor& logits) {
  check_cpu(logits, "logits");
  check_floating(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2 || logits.dim() == 3, "`logits` must be [N, V] or [B, T, V], got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.size(-1) > 0, "`logits` needs a non-empty vocabulary, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(logits.stride(-1) == 1, "`logits` must have a unit last stride (call .contiguous())");
  return logits.numel() / logits.size(-1);
}

void check_ids(const at::Tensor& ids, int64_t n) {
  check_cpu(ids, "ids");
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                    "`ids` must be int64 or int32, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.numel() == n && ids.is_contiguous(),
                    "`ids` must be a contiguous 1-D tensor of ", n, " token ids, got shape ", ids.sizes());
}

// A contiguous fp32 [n] per-row tensor.
void check_rows(const at::Tensor& t, int64_t n, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, "`", name, "` must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == n && t.is_contiguous(), "`", name,
                    "` must be a contiguous 1-D tensor of ", n, " values, got shape ", t.sizes());
}

void check_temperature(double inv_or_t, const char* name) {
  TORCH_CHECK_VALUE(inv_or_t > 0 && std::isfinite(inv_or_t), "`", name, "` must be a positive finite number, got ",
                    inv_or_t);
}

// hidden [N, H], weight [V, H], bias [V]: contiguous, one floating dtype; returns N.
int64_t check_linear(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_cpu(hidden, "hidden");
  check_cpu(weight, "weight");
  check_floating(hidden, "hidden");
  TORCH_CHECK_VALUE(hidden.dim() == 2 && hidden.is_contiguous(), "`hidden` must be a contiguous [N, H] tensor, got ",
                    hidden.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.is_contiguous() && weight.size(1) == hidden.size(1) &&
                        weight.size(0) > 0,
                    "`weight` must be a contiguous [V, H] tensor with H = ", hidden.size(1), ", got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.scalar_type() == hidden.scalar_type(), "`weight` has dtype ", weight.scalar_type(),
                    " but `hidden` has ", hidden.scalar_type());
  if (bias) {
    check_cpu(*bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->is_contiguous(),
                      "`bias` must be a contiguous [V] tensor with V = ", weight.size(0), ", got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->scalar_type() == hidden.scalar_type(), "`bias` has dtype ", bias->scalar_type(),
                      " but `hidden` has ", hidden.scalar_type());
  }
  return hidden.size(0);
}

// ------------------------------------------------------------------------ implementations

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logps_fwd(const at::Tensor& logits, const at::Tensor& ids,
                                                                     double inv_temperature, bool with_entropy) {
  check_ids(ids, check_logits(logits));
  check_temperature(inv_temperature, "inv_temperature");
  G2RPO_DISPATCH(logps_fwd, logits, ids, inv_temperature, with_entropy)
}

void check_bwd(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad, const at::Tensor& rowmax,
               const at::Tensor& logsum, double inv_temperature) {
  const int64_t n = check_logits(logits);
  check_ids(ids, n);
  check_rows(grad, n, "grad");
  check_rows(rowmax, n, "rowmax");
  check_rows(logsum, n, "logsum");
  check_temperature(inv_temperature, "inv_temperature");
}

void logps_bwd_into(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad, const at::Tensor& rowmax,
                    const at::Tensor& logsum, double inv_temperature, const at::Tensor& out) {
  G2RPO_DISPATCH(logps_bwd_into, logits, ids, grad, rowmax, logsum, inv_temperature, out)
}

at::Tensor logps_bwd(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad, const at::Tensor& rowmax,
                     const at::Tensor& logsum, double inv_temperature) {
  check_bwd(logits, ids, grad, rowmax, logsum, inv_temperature);
  at::Tensor out = at::empty({ids.numel(), logits.size(-1)}, logits.options());
  logps_bwd_into(logits, ids, grad, rowmax, logsum, inv_temperature, out);
  return out;
}

void logps_bwd_(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& grad, const at::Tensor& rowmax,
                const at::Tensor& logsum, double inv_temperature) {
  check_bwd(logits, ids, grad, rowmax, logsum, inv_temperature);
  TORCH_CHECK_VALUE(logits.is_contiguous(), "`logits` must be contiguous to receive its gradient in place");
  logps_bwd_into(logits, ids, grad, rowmax, logsum, inv_temperature, logits);
}

// The per-token loss inputs of the fused losses: c_t, advantages, old/ref log-probs, options.
void check_loss_rows(int64_t n, const at::Tensor& coef, const at::Tensor& advantages,
                     const std::optional<at::Tensor>& old_logps, const std::optional<at::Tensor>& ref_logps,
                     double beta, double epsilon_low, double epsilon_high, std::optional<double> delta) {
  check_rows(coef, n, "coef");
  check_rows(advantages, n, "advantages");
  if (old_logps) check_rows(*old_logps, n, "old_logps");
  if (ref_logps) check_rows(*ref_logps, n, "ref_logps");
  TORCH_CHECK_VALUE(beta >= 0 && epsilon_low >= 0 && epsilon_high >= 0,
                    "`beta`, `epsilon_low` and `epsilon_high` must be >= 0, got ", beta, ", ", epsilon_low, ", ",
                    epsilon_high);
  TORCH_CHECK_VALUE(!delta || *delta > 1, "`delta` must be None or > 1, got ", delta ? *delta : 0.0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
g2rpo_loss_fwd(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& coef, const at::Tensor& advantages,
               const std::optional<at::Tensor>& old_logps, const std::optional<at::Tensor>& ref_logps,
               double inv_temperature, double beta, double epsilon_low, double epsilon_high,
               std::optional<double> delta) {
  const int64_t n = check_logits(logits);
  check_ids(ids, n);
  check_loss_rows(n, coef, advantages, old_logps, ref_logps, beta, epsilon_low, epsilon_high, delta);
  check_temperature(inv_temperature, "inv_temperature");
  G2RPO_DISPATCH(g2rpo_loss_fwd, logits, ids, coef, advantages, old_logps, ref_logps, inv_temperature, beta,
                 epsilon_low, epsilon_high, delta)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_fwd(const at::Tensor& hidden,
                                                                      const at::Tensor& weight,
                                                                      const std::optional<at::Tensor>& bias,
                                                                      const at::Tensor& ids, double temperature,
                                                                      bool with_entropy) {
  check_ids(ids, check_linear(hidden, weight, bias));
  check_temperature(temperature, "temperature");
  G2RPO_DISPATCH(fused_linear_logps_fwd, hidden, weight, bias, ids, temperature, with_entropy)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_logps_bwd(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& ids,
    const at::Tensor& lse, const at::Tensor& grad, double temperature, bool need_hidden, bool need_weight,
    bool need_bias) {
  const int64_t n = check_linear(hidden, weight, bias);
  check_ids(ids, n);
  check_rows(lse, n, "lse");
  check_rows(grad, n, "grad");
  check_temperature(temperature, "temperature");
  G2RPO_DISPATCH(fused_linear_logps_bwd, hidden, weight, bias, ids, lse, grad, temperature, need_hidden, need_weight,
                 need_bias)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_g2rpo_loss(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& ids, const at::Tensor& coef, const at::Tensor& advantages,
                        const std::optional<at::Tensor>& old_logps, const std::optional<at::Tensor>& ref_logps,
                        double temperature, double beta, double epsilon_low, double epsilon_high,
                        std::optional<double> delta, bool need_hidden, bool need_weight, bool need_bias) {
  const int64_t n = check_linear(hidden, weight, bias);
  check_ids(ids, n);
  check_loss_rows(n, coef, advantages, old_logps, ref_logps, beta, epsilon_low, epsilon_high, delta);
  check_temperature(temperature, "temperature");
  G2RPO_DISPATCH(fused_linear_g2rpo_loss, hidden, weight, bias, ids, coef, advantages, old_logps, ref_logps,
                 temperature, beta, epsilon_low, epsilon_high, delta, need_hidden, need_weight, need_bias)
}

}  // namespace
}  // namespace g2rpo_fast::cpu

TORCH_LIBRARY(g2rpo_fast, m) {
  m.def("logps_fwd(Tensor logits, Tensor ids, float inv_temperature, bool with_entropy)"
        " -> (Tensor logp, Tensor rowmax, Tensor logsum, Tensor entropy)");
  m.def("logps_bwd(Tensor logits, Tensor ids, Tensor grad, Tensor rowmax, Tensor logsum, float inv_temperature)"
        " -> Tensor");
  m.def("logps_bwd_(Tensor(a!) logits, Tensor ids, Tensor grad, Tensor rowmax, Tensor logsum,"
        " float inv_temperature) -> ()");
  m.def("g2rpo_loss_fwd(Tensor logits, Tensor ids, Tensor coef, Tensor advantages, Tensor? old_logps,"
        " Tensor? ref_logps, float inv_temperature, float beta, float epsilon_low, float epsilon_high,"
        " float? delta) -> (Tensor logp, Tensor rowmax, Tensor logsum, Tensor loss, Tensor dlogp, Tensor kl,"
        " Tensor low, Tensor high)");
  m.def("fused_linear_logps_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor ids, float temperature,"
        " bool with_entropy) -> (Tensor logp, Tensor lse, Tensor entropy)");
  m.def("fused_linear_logps_bwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor ids, Tensor lse, Tensor grad,"
        " float temperature, bool need_hidden, bool need_weight, bool need_bias)"
        " -> (Tensor d_hidden, Tensor d_weight, Tensor d_bias)");
  m.def("fused_linear_g2rpo_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor ids, Tensor coef,"
        " Tensor advantages, Tensor? old_logps, Tensor? ref_logps, float temperature, float beta,"
        " float epsilon_low, float epsilon_high, float? delta, bool need_hidden, bool need_weight, bool need_bias)"
        " -> (Tensor logp, Tensor loss, Tensor kl, Tensor low, Tensor high, Tensor d_hidden, Tensor d_weight,"
        " Tensor d_bias)");
  // Which kernel copy runs (DEFAULT, AVX2, AVX512): for tests and benchmark records.
  m.def("cpu_capability() -> str", &g2rpo_fast::cpu::capability_name);
}

TORCH_LIBRARY_IMPL(g2rpo_fast, CPU, m) {
  using namespace g2rpo_fast::cpu;
  m.impl("logps_fwd", &logps_fwd);
  m.impl("logps_bwd", &logps_bwd);
  m.impl("logps_bwd_", &logps_bwd_);
  m.impl("g2rpo_loss_fwd", &g2rpo_loss_fwd);
  m.impl("fused_linear_logps_fwd", &fused_linear_logps_fwd);
  m.impl("fused_linear_logps_bwd", &fused_linear_logps_bwd);
  m.impl("fused_linear_g2rpo_loss", &fused_linear_g2rpo_loss);
}

// `import g2rpo_fast._C` loads this library, which runs the registrations above.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "g2rpo_fast C++ CPU kernels (torch.ops.g2rpo_fast)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
