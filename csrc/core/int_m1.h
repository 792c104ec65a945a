// Integer arithmetic of the integer-exact M1 (docs/design.md, "Determinism of M1",
// level 2): every operation between the input bytes and the weights handed to
// the coder is on integers, so its result does not depend on the device, the
// batch, the summation order or the kernel. Torch-free and host+device: the
// CPU back end (csrc/cpu/int_m1_cpu.cpp) and the CUDA back end
// (csrc/cuda/int_m1_kernels.cu) call these same functions.
//
// Number formats (fixed in the format of integer checkpoints, ncx/int_m1.py):
//   activations   int32, value = v / 2^kFrac (Q15.16), saturating;
//   linear inputs int8 in [-127, 127] with a per-row scale A = mant * 2^exp
//                 chosen from the row's largest magnitude ("dynamic per-token"
//                 quantization): value ~= q * A / 127 / 2^kFrac;
//   weights       int8 in [-127, 127] per output channel d with an integer
//                 multiplier and shift: the product of the int32 accumulator,
//                 the row's mant and the channel's multiplier is shifted back
//                 to Q16 in one rounding (see dequantize);
//   RoPE tables   int32, value = v / 2^kRopeFrac;
//   softmax       exp of non-positive fixed-point numbers, from an integer
//                 polynomial for 2^f on [0, 1) and a shift.
// Rounding is "half away from zero" for divisions and "half up" for shifts;
// both are fixed integer functions, so the only requirement for identical
// results is that every back end calls them on the same integers.
#pragma once
#include <stdint.h>

#include "quantize.h"  // NCX_HD

namespace ncx {
inline namespace NCX_LEVEL_NAMESPACE {
namespace intm1 {

constexpr int kFrac = 16;                    // activations: Q15.16
constexpr int32_t kActMax = 127;             // int8 range used: [-127, 127]
constexpr int kRopeFrac = 30;                // cos/sin tables
constexpr int32_t kQKVLimit = 1 << 24;       // q, k, v saturate at +-256.0
constexpr int kAttnFrac = 16;                // attention weights: exp(0) = 2^16
constexpr int kCoderFrac = 22;               // coder weights: exp(0) = 2^22, the largest weight
                                             // quantize.h takes without any shift
constexpr int64_t kMaxFanIn = 16384;         // keeps every accumulator product < 2^62
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxContext = 1 << 20;

// ---- integer helpers --------------------------------------------------------
NCX_HD int bit_length(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return 32 - __clz(v);
#else
  return v ? 32 - __builtin_clz(v) : 0;
#endif
}

NCX_HD int32_t saturate32(int64_t v) {
  return v > INT32_MAX ? INT32_MAX : (v < -int64_t(INT32_MAX) ? -INT32_MAX : int32_t(v));
}

NCX_HD int32_t clamp32(int64_t v, int32_t limit) {
  return v > limit ? limit : (v < -limit ? -limit : int32_t(v));
}

// round(v / 2^s), halves rounded up; s <= 0 multiplies, saturating at +-2^62.
// Callers keep |v| < 2^62.
NCX_HD int64_t shift_round(int64_t v, int s) {
  if (s > 62) return 0;
  if (s > 0) return (v + (int64_t(1) << (s - 1))) >> s;
  int l = -s;
  const int64_t lim = int64_t(1) << 62;
  if (l >= 62) return v == 0 ? 0 : (v > 0 ? lim : -lim);
  if (v >= (lim >> l)) return lim;
  if (v <= -(lim >> l)) return -lim;
  return v * (int64_t(1) << l);
}

// round(n / d) for d > 0, halves away from zero.
NCX_HD int64_t round_div(int64_t n, int64_t d) {
  return n >= 0 ? (n + d / 2) / d : -((-n + d / 2) / d);
}

// floor(sqrt(x)), digit by digit.
NCX_HD uint64_t isqrt64(uint64_t x) {
  uint64_t r = 0, bit = uint64_t(1) << 62;
  while (bit > x) bit >>= 2;
  while (bit) {
    if (x >= r + bit) {
      x -= r + bit;
      r = (r >> 1) + bit;
    } else {
      r >>= 1;
    }
    bit >>= 2;
  }
  return r;
}

NCX_HD uint32_t magnitude(int32_t v) { return v < 0 ? uint32_t(0) - uint32_t(v) : uint32_t(v); }

// ---- dynamic int8 quantization of a linear layer's input row ---------------
// A = mant * 2^exp >= amax with mant <= 2^15: 15 significant bits, so that the
// dequantization product acc * mant * multiplier stays below 2^62.
struct RowScale {
  int32_t mant;
  int32_t exp;
};

NCX_HD RowScale row_scale(uint32_t amax) {
  if (!amax) return {0, 0};
  int e = bit_length(amax) - 15;
  if (e < 0) e = 0;
  uint32_t mant = uint32_t((uint64_t(amax) + (uint64_t(1) << e) - 1) >> e);  // ceil: A >= amax
  return {int32_t(mant), e};
}

// round(127 x / A): in [-127, 127] because |x| <= A.
NCX_HD int8_t quantize_activation(int32_t x, RowScale rs) {
  if (!rs.mant) return 0;
  return int8_t(round_div(int64_t(x) * kActMax, int64_t(rs.mant) << rs.exp));
}

// The Q16 output of one channel: acc * A * c_d with the channel constant
// c_d = max|W_d| / 127^2 = multiplier * 2^-shift (multiplier <= 2^15). With
// |acc| <= 127^2 * kMaxFanIn < 2^28 the product stays below 2^58.
NCX_HD int32_t dequantize(int32_t acc, RowScale rs, int32_t multiplier, int32_t shift) {
  int64_t prod = int64_t(acc) * rs.mant * multiplier;
  return saturate32(shift_round(prod, shift - rs.exp));
}

NCX_HD int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t K) {
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += int32_t(a[k]) * int32_t(b[k]);
  return s;
}

// ---- RMS norm -----------------------------------------------------------------
// The row is first scaled by 2^-s so that its largest magnitude lands in
// [2^23, 2^24): squares stay below 2^48 and their sum (fan-in <= 2^14) below
// 2^62, and the root keeps about 23 bits whatever the row's magnitude.
NCX_HD int norm_shift(uint32_t amax) { return bit_length(amax) - 24; }

NCX_HD int64_t norm_scaled(int32_t x, int s) { return s >= 0 ? (int64_t(x) >> s) : (int64_t(x) << (-s)); }

// rms of the scaled row from the sum of its squares (same units as the scaled row).
NCX_HD int64_t norm_rms(int64_t sum_squares, int64_t C) { return int64_t(isqrt64(uint64_t(sum_squares / C))); }

// x * gain / rms in Q16 (gain Q16): xs and rms are in the same units, so only
// gain's format remains. A zero row (rms 0) stays zero; the float model's eps
// matters only for rows with rms below ~1e-3, which trained models do not have.
NCX_HD int32_t norm_apply(int64_t xs, int32_t gain, int64_t rms) {
  if (!rms) return 0;
  return saturate32(round_div(xs * gain, rms));
}

// ---- RoPE (rotate-half layout) -----------------------------------------------
// x_i and x_{i+half} rotated by the angle whose cos/sin (Q30) are given.
NCX_HD int32_t rope_first(int32_t x_lo, int32_t x_hi, int32_t c, int32_t s) {
  return clamp32(shift_round(int64_t(x_lo) * c - int64_t(x_hi) * s, kRopeFrac), kQKVLimit);
}
NCX_HD int32_t rope_second(int32_t x_lo, int32_t x_hi, int32_t c, int32_t s) {
  return clamp32(shift_round(int64_t(x_hi) * c + int64_t(x_lo) * s, kRopeFrac), kQKVLimit);
}

// ---- exp ------------------------------------------------------------------------
// 2^f for f in [0, 1) given as f * 2^16, in Q30: Taylor series of e^(f ln 2) to
// degree 9 (truncation error < 1e-8), coefficients (ln 2)^k / k! in Q30.
NCX_HD int64_t exp2_fraction_q30(int64_t f) {
  const int64_t c[10] = {1073741824, 744261118, 257941248, 59597083, 10327387,
                         1431680,    165394,    16377,     1419,     109};
  int64_t p = c[9];
  for (int k = 8; k >= 0; --k) p = shift_round(p * f, 16) + c[k];
  return p;
}

// exp(d) for d <= 0 given in Q16, returned in Q(out_frac): exactly 2^out_frac
// at d = 0, decreasing to 0. log2(e) in Q30 is 1549082005.
NCX_HD int64_t exp_nonpositive(int64_t d, int out_frac) {
  const int64_t kLog2eQ30 = 1549082005;
  const int64_t kFloor = -(int64_t(1) << 26);  // exp(-1024): zero at any output precision
  if (d < kFloor) d = kFloor;
  int64_t t = shift_round(d * kLog2eQ30, 30);  // d * log2(e) in Q16, <= 0
  int64_t whole = t >> 16;                      // floor, <= 0
  int64_t frac = t - whole * 65536;             // [0, 2^16)
  int64_t s = 30 - out_frac - whole;
  return s > 62 ? 0 : shift_round(exp2_fraction_q30(frac), int(s));
}

// ---- attention scores ---------------------------------------------------------
// 1/sqrt(head_dim) in Q16.
NCX_HD int64_t inv_sqrt_q16(int64_t head_dim) {
  return int64_t(isqrt64((uint64_t(1) << 62) / uint64_t(head_dim)) >> 15);
}

// q . k / sqrt(hd) in Q16 from the raw Q32 dot product (|q|, |k| <= 2^24 and
// hd <= 256 keep it below 2^56).
NCX_HD int64_t attention_score(int64_t dot_q32, int64_t inv_sqrt) {
  return shift_round(shift_round(dot_q32, kFrac) * inv_sqrt, 16);
}

}  // namespace intm1
}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
