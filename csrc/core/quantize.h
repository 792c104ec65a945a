// Quantization of one distribution row (probabilities or logits) to integer
// frequencies with total 2^P, every frequency >= 1.
//
// Torch-free and host+device. The CPU back end calls the serial row routines
// at the bottom; the CUDA back end calls the per-element functions with warp
// reductions in between. Both give the same integers because the only float
// arithmetic is elementwise (the exp of logits, written with correctly
// rounded basic operations only); every reduction is over integers (max, sum,
// first-argmax), which do not depend on the order of evaluation.
//
// The recipe for a row x[0..V):
//   1. weight w_i = |x_i| for probabilities, exp_ncx(x_i - max_j x_j) for logits
//      (a non-negative float, handled through its bit pattern);
//   2. fixed point q_i = w_i * 2^k, truncated, with the power of two k chosen so
//      that the largest weight lands in [2^30, 2^31): pure integer bit shifts
//      of the float's mantissa, so it is exact and identical everywhere;
//   3. Q = sum q_i, S = 2^P - V (the mass left after every symbol's 1),
//      scale = floor(S * 2^(62-P) / Q), f_i = (q_i * scale) >> (62-P), which
//      guarantees sum f_i <= S;
//   4. freq_i = 1 + f_i, and the remainder S - sum f_i goes to the first index
//      of the largest weight.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define NCX_HD __host__ __device__ __forceinline__
#else
#define NCX_HD inline
#endif

namespace ncx {

// Status codes shared by every op; the Python layer turns them into messages.
enum Status : int32_t {
  kOk = 0,
  kErrNaN = 1,            // a NaN in a distribution row
  kErrNegative = 2,       // a negative probability
  kErrZeroRow = 3,        // all probabilities zero (or all logits -inf)
  kErrInf = 4,            // +inf probability or logit
  kErrSymbol = 5,         // symbol outside [0, V)
  kErrOutputFull = 6,     // output buffer too small for the code
  kErrCorrupt = 7,        // compressed data inconsistent with the distributions
  kErrTruncated = 8,      // compressed data ended before the last symbol
};

constexpr int kMinPrecision = 1;
constexpr int kMaxPrecision = 24;
constexpr int64_t kMaxAlphabet = 65536;

// ---- bit access to floats -------------------------------------------------
NCX_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}
NCX_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}
// bfloat16 is the top half of a float32: widening is exact.
NCX_HD uint32_t bf16_to_bits(uint16_t h) { return uint32_t(h) << 16; }

// Correctly rounded float add/mul that the compiler may not fuse or reorder;
// on the host the build also passes -ffp-contract=off.
NCX_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NCX_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// exp(x) for x <= 0, written once so CPU and GPU agree bit for bit: Cody-Waite
// range reduction x = n ln2 + r, a degree-7 Taylor polynomial in Horner form,
// and 2^n applied to the exponent field. Results below 2^-126 flush to zero
// (they are far below the 2^-31 resolution of the fixed-point step anyway).
NCX_HD float exp_ncx(float x) {
  if (!(x > -87.0f)) return 0.0f;  // also maps -inf to 0
  if (x >= 0.0f) return 1.0f;      // x - max(x) is never positive
  // Hex literals: no decimal-to-binary rounding left to either compiler.
  const float kLog2e = 0x1.715476p+0f;
  const float kLn2Hi = 0x1.62e4p-1f;     // ln2 with its low bits cleared
  const float kLn2Lo = 0x1.7f7d1cp-20f;  // ln2 - kLn2Hi
  // n = round-half-away(x * log2e) through an exact integer conversion.
  float t = mul_rn(x, kLog2e);
  int n = (int)add_rn(t, -0.5f);  // t < 0: truncation toward zero of t-0.5 rounds
  float nf = (float)n;
  float r = add_rn(x, -mul_rn(nf, kLn2Hi));
  r = add_rn(r, -mul_rn(nf, kLn2Lo));
  float p = 0x1.a01a02p-13f;                 // 1/5040
  p = add_rn(mul_rn(p, r), 0x1.6c16c2p-10f);  // 1/720
  p = add_rn(mul_rn(p, r), 0x1.111112p-7f);   // 1/120
  p = add_rn(mul_rn(p, r), 0x1.555556p-5f);   // 1/24
  p = add_rn(mul_rn(p, r), 0x1.555556p-3f);   // 1/6
  p = add_rn(mul_rn(p, r), 0.5f);
  p = add_rn(mul_rn(p, r), 1.0f);
  p = add_rn(mul_rn(p, r), 1.0f);
  int e = (int)((float_to_bits(p) >> 23) & 0xff) + n;
  if (e <= 0) return 0.0f;
  return bits_to_float((float_to_bits(p) & 0x807fffffu) | (uint32_t(e) << 23));
}

// ---- step 1: weights --------------------------------------------------------
// Row flags gathered while scanning; any of them makes the row invalid.
struct RowScan {
  uint32_t max_key;  // probabilities: max |x| bits; logits: max monotone key
  uint32_t bad;      // bit set of Status values seen (1u << status)
};

// Probability element: its weight bits and its contribution to the scan.
NCX_HD uint32_t prob_weight_bits(uint32_t bits, uint32_t* bad) {
  uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) *bad |= 1u << kErrNaN;
  else if (mag == 0x7f800000u) *bad |= 1u << kErrInf;
  if ((bits >> 31) && mag != 0) *bad |= 1u << kErrNegative;
  return mag;
}

// Logits: a key whose unsigned order is the float order, so the max is an
// integer reduction.
NCX_HD uint32_t logit_key(uint32_t bits, uint32_t* bad) {
  uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) *bad |= 1u << kErrNaN;
  else if (bits == 0x7f800000u) *bad |= 1u << kErrInf;
  return (bits >> 31) ? ~bits : (bits | 0x80000000u);
}
NCX_HD uint32_t key_to_logit_bits(uint32_t key) {
  return (key >> 31) ? (key & 0x7fffffffu) : ~key;
}
NCX_HD uint32_t logit_weight_bits(uint32_t bits, float max_logit) {
  return float_to_bits(exp_ncx(add_rn(bits_to_float(bits), -max_logit)));
}

// ---- step 2: fixed point ---------------------------------------------------
// q = floor(w * 2^k) with the largest weight's mantissa landing at bit 30.
NCX_HD uint32_t weight_to_fixed(uint32_t w, uint32_t max_w) {
  int ex = int(w >> 23), ex_max = int(max_w >> 23);
  uint32_t mant = w & 0x7fffffu;
  if (ex == 0) ex = 1; else mant |= 0x800000u;
  if (ex_max == 0) ex_max = 1;
  int shift = ex - ex_max + 7;  // <= 7
  if (shift >= 0) return mant << shift;
  if (shift <= -32) return 0;
  return mant >> (-shift);
}

// ---- step 3: integer scaling ---------------------------------------------
struct QuantParams {
  uint64_t scale;   // multiplier for q_i
  int shift;        // 62 - P
  uint32_t rem;     // extra mass for the argmax symbol
  int32_t argmax;   // first index of the largest weight
};

NCX_HD uint64_t quant_scale(uint64_t q_sum, int precision, int64_t V) {
  uint64_t free_mass = (uint64_t(1) << precision) - uint64_t(V);
  return (free_mass << (62 - precision)) / q_sum;
}
NCX_HD uint32_t fixed_to_f(uint32_t q, uint64_t scale, int shift) {
  return uint32_t((uint64_t(q) * scale) >> shift);
}

// ---- serial row routines (CPU back end, tests, small kernels) --------------
// Element loaders: T is float or uint16_t (bfloat16 bits).
NCX_HD uint32_t load_bits(const float* p, int64_t i) { return float_to_bits(p[i]); }
NCX_HD uint32_t load_bits(const uint16_t* p, int64_t i) { return bf16_to_bits(p[i]); }

// Steps 1-3 over one row; fills q[0..V) and returns the params, or a status.
template <typename T>
NCX_HD int32_t quantize_row_prepare(const T* row, int64_t V, int precision, bool logits,
                                    uint32_t* q, QuantParams* out) {
  uint32_t bad = 0, max_key = 0;
  if (logits) {
    for (int64_t i = 0; i < V; ++i) {
      uint32_t k = logit_key(load_bits(row, i), &bad);
      max_key = k > max_key ? k : max_key;
    }
  } else {
    for (int64_t i = 0; i < V; ++i) {
      uint32_t m = prob_weight_bits(load_bits(row, i), &bad);
      max_key = m > max_key ? m : max_key;
    }
  }
  if (bad) {
    for (int32_t s = 1; s < 32; ++s)
      if (bad & (1u << s)) return s;
  }
  uint32_t max_w;
  float max_logit = 0.0f;
  if (logits) {
    uint32_t mb = key_to_logit_bits(max_key);
    if (mb == 0xff800000u) return kErrZeroRow;  // every logit is -inf
    max_logit = bits_to_float(mb);
    max_w = float_to_bits(exp_ncx(0.0f));
  } else {
    if (max_key == 0) return kErrZeroRow;
    max_w = max_key;
  }
  uint64_t q_sum = 0;
  uint32_t q_max = 0;
  int32_t argmax = 0;
  for (int64_t i = 0; i < V; ++i) {
    uint32_t bits = load_bits(row, i);
    uint32_t w = logits ? logit_weight_bits(bits, max_logit) : (bits & 0x7fffffffu);
    uint32_t qi = weight_to_fixed(w, max_w);
    q[i] = qi;
    q_sum += qi;
    if (qi > q_max) { q_max = qi; argmax = int32_t(i); }
  }
  out->scale = quant_scale(q_sum, precision, V);
  out->shift = 62 - precision;
  out->argmax = argmax;
  uint32_t f_sum = 0;
  for (int64_t i = 0; i < V; ++i) f_sum += fixed_to_f(q[i], out->scale, out->shift);
  out->rem = uint32_t(((uint64_t(1) << precision) - uint64_t(V)) - f_sum);
  return kOk;
}

NCX_HD uint32_t quant_freq(const uint32_t* q, const QuantParams& qp, int64_t i) {
  return 1u + fixed_to_f(q[i], qp.scale, qp.shift) + (i == qp.argmax ? qp.rem : 0u);
}

// Full CDF: cdf[0] = 0, cdf[V] = 2^P.
NCX_HD void quant_cdf(const uint32_t* q, const QuantParams& qp, int64_t V, uint32_t* cdf) {
  uint32_t c = 0;
  cdf[0] = 0;
  for (int64_t i = 0; i < V; ++i) {
    c += quant_freq(q, qp, i);
    cdf[i + 1] = c;
  }
}

// Cumulative frequency below symbol s and its frequency, without a CDF array.
NCX_HD void quant_symbol(const uint32_t* q, const QuantParams& qp, int64_t s,
                         uint32_t* cum, uint32_t* freq) {
  uint32_t c = uint32_t(s);
  for (int64_t i = 0; i < s; ++i) c += fixed_to_f(q[i], qp.scale, qp.shift);
  if (qp.argmax < s) c += qp.rem;
  *cum = c;
  *freq = quant_freq(q, qp, s);
}

// Symbol s with cdf[s] <= target < cdf[s+1] (target < 2^P).
NCX_HD int64_t cdf_search(const uint32_t* cdf, int64_t V, uint32_t target) {
  int64_t lo = 0, hi = V;  // invariant: cdf[lo] <= target < cdf[hi]
  while (hi - lo > 1) {
    int64_t mid = (lo + hi) >> 1;
    if (cdf[mid] <= target) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace ncx
