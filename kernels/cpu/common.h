// Shared helpers of the C++ CPU kernels: fp32 loads of fp32/bf16/fp16 rows, blockwise online
// log-sum-exp (one read of each row from memory; the second pass over a block hits L1), and
// the softmax-gradient row writer.
//
// Every kernel source is compiled once per CPU capability (CMakeLists.txt: DEFAULT, AVX2),
// with CPU_CAPABILITY defined to that name. Everything here lives in the namespace
// `g2rpo_fast::cpu::CPU_CAPABILITY`, as ATen's `at::vec` does, so that the AVX2 copy of an
// inline helper can never be linked into the DEFAULT code path (an ODR clash would be a
// SIGILL on a CPU without AVX2).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#ifndef CPU_CAPABILITY
#error "compile kernels/cpu/*.cpp with -DCPU_CAPABILITY=<DEFAULT|AVX2|AVX512> (see CMakeLists.txt)"
#endif

// The logits dtypes the kernels take (fp64 is a test dtype: the PyTorch path handles it).
#define G2RPO_DISPATCH_FLOATS(TYPE, NAME, ...)                                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                          \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace g2rpo_fast::cpu::CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Vocabulary block: 8 KiB of fp32 scratch per thread, so a block read from memory is
// re-read from L1 by the second pass instead of from DRAM.
constexpr int64_t kBlock = 2048;

// ---------------------------------------------------------------- loads and stores in fp32

template <typename T>
inline Vec load_f32(const T* p);

template <>
inline Vec load_f32<float>(const float* p) {
  return Vec::loadu(p);
}

template <>
inline Vec load_f32<at::BFloat16>(const at::BFloat16* p) {
  Vec v;
  at::vec::load_fp32_from_bf16(p, v);
  return v;
}

template <>
inline Vec load_f32<at::Half>(const at::Half* p) {
  Vec v;
  at::vec::load_fp32_from_fp16(p, v);
  return v;
}

template <typename T>
inline void store_from_f32(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    at::vec::convert(src, dst, n);  // round to nearest even, vectorised for bf16/fp16
  }
}

inline float hmax(const Vec& v) {
  float lanes[kW];
  v.store(lanes);
  return *std::max_element(lanes, lanes + kW);
}

inline float hsum(const Vec& v) {
  float lanes[kW];
  v.store(lanes);
  float s = 0.f;
  for (int64_t i = 0; i < kW; ++i) s += lanes[i];
  return s;
}

// buf[0:n] = x[0:n] * inv_t in fp32; returns the max of buf.
template <typename T>
inline float scale_to_buffer(const T* x, int64_t n, float inv_t, float* buf) {
  const Vec scale(inv_t);
  Vec vmax(kNegInf);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    Vec v = load_f32(x + i) * scale;
    v.store(buf + i);
    vmax = at::vec::maximum(vmax, v);
  }
  float m = hmax(vmax);
  for (; i < n; ++i) {  // the tail when n is not a multiple of the vector width
    buf[i] = static_cast<float>(x[i]) * inv_t;
    m = std::max(m, buf[i]);
  }
  return m;
}

// z[0:n] = (z + bias) * inv_t in place (bias may be null); returns the max.
inline float bias_scale_max(float* z, const float* bias, int64_t n, float inv_t) {
  const Vec scale(inv_t);
  Vec vmax(kNegInf);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    Vec v = Vec::loadu(z + i);
    if (bias) v = v + Vec::loadu(bias + i);
    v = v * scale;
    v.store(z + i);
    vmax = at::vec::maximum(vmax, v);
  }
  float m = hmax(vmax);
  for (; i < n; ++i) {
    z[i] = (bias ? z[i] + bias[i] : z[i]) * inv_t;
    m = std::max(m, z[i]);
  }
  return m;
}

// ---------------------------------------------------------------- online log-sum-exp

// Softmax statistics of one row relative to its running max m: s = Σ e^{z-m} and, for the
// entropy, t = Σ e^{z-m}(z-m) (H = log s - t/s, free of the cancellation of lse - E[z]).
struct RowStats {
  float m = kNegInf;
  float s = 0.f;
  float t = 0.f;

  float log_s() const { return std::log(s); }
  float lse() const { return m + std::log(s); }
  float entropy() const { return std::log(s) - t / s; }

  // Fold in a block z[0:n] (already scaled) whose max is zmax: one exp per element.
  template <bool kEntropy>
  void add_block(const float* z, int64_t n, float zmax) {
    const float m_new = std::max(m, zmax);
    if (m_new == kNegInf) return;  // only -inf so far: nothing to add
    if (s > 0.f) {                  // re-centre what we have on the new max
      const float alpha = std::exp(m - m_new);
      if constexpr (kEntropy) t = alpha * (t + (m - m_new) * s);
      s *= alpha;
    }
    const Vec vm(m_new);
    Vec acc_s(0.f), acc_t(0.f);
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      const Vec d = Vec::loadu(z + i) - vm;
      const Vec e = d.exp_u20();  // ~1e-6 relative: far below the fp32 sum's own rounding
      acc_s = acc_s + e;
      if constexpr (kEntropy) acc_t = at::vec::fmadd(e, d, acc_t);
    }
    float bs = hsum(acc_s), bt = kEntropy ? hsum(acc_t) : 0.f;
    for (; i < n; ++i) {
      const float d = z[i] - m_new;
      const float e = std::exp(d);
      bs += e;
      if constexpr (kEntropy) bt += e * d;
    }
    s += bs;
    if constexpr (kEntropy) t += bt;
    m = m_new;
  }
};

// Statistics of one logits row x[0:V] scaled by inv_t, reading it once (buf: kBlock floats).
template <typename T, bool kEntropy>
inline RowStats row_stats(const T* x, int64_t V, float inv_t, float* buf) {
  RowStats st;
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t n = std::min(kBlock, V - b0);
    const float bmax = scale_to_buffer(x + b0, n, inv_t, buf);
    st.template add_block<kEntropy>(buf, n, bmax);
  }
  return st;
}

// z[0:n] = -g · exp((z - m) - log_s) in place: the softmax part of g·(onehot - softmax).
// (z - m) first: with logits ~1e4, m + log_s rounded to fp32 would be off by ~1e-3.
inline void neg_softmax_times(float* z, int64_t n, float m, float log_s, float g) {
  const Vec vm(m), vl(log_s), vg(-g);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    (((Vec::loadu(z + i) - vm) - vl).exp_u20() * vg).store(z + i);
  }
  for (; i < n; ++i) z[i] = -g * std::exp((z[i] - m) - log_s);
}

// dlogits row: out[0:V] = g·(onehot(tok) - exp((x·inv_t - m) - log_s)). `out` may alias `x`
// (in place): each block is read into `buf` before it is written.
template <typename T>
inline void softmax_grad_row(const T* x, T* out, int64_t V, int64_t tok, float g, float inv_t, float m,
                             float log_s, float* buf) {
  if (g == 0.f) {  // a masked token: its gradient is exactly zero, no need to read the row
    std::fill(out, out + V, T(0.f));
    return;
  }
  for (int64_t b0 = 0; b0 < V; b0 += kBlock) {
    const int64_t n = std::min(kBlock, V - b0);
    scale_to_buffer(x + b0, n, inv_t, buf);
    neg_softmax_times(buf, n, m, log_s, g);
    if (tok >= b0 && tok < b0 + n) buf[tok - b0] += g;
    store_from_f32(buf, out + b0, n);
  }
}

// Rows per parallel task: about 64k logits, so tiny vocabularies are not one task per row.
inline int64_t row_grain(int64_t V) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(V, 1));
}

// Row r of [N, V] or [B, T, V] logits with a unit last stride (strided views read in place).
template <typename T>
struct Rows {
  T* data;
  int64_t stride_b, stride_t, seq_len;

  explicit Rows(const at::Tensor& logits)
      : data(static_cast<T*>(logits.data_ptr())),
        stride_b(logits.dim() == 3 ? logits.stride(0) : 0),
        stride_t(logits.stride(-2)),
        seq_len(std::max<int64_t>(logits.dim() == 3 ? logits.size(1) : logits.size(0), 1)) {}

  T* operator[](int64_t r) const { return data + (r / seq_len) * stride_b + (r % seq_len) * stride_t; }
};

}  // namespace g2rpo_fast::cpu::CPU_CAPABILITY
