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
//      that the largest weight lands in [2^22, 2^23): pure integer bit shifts
//      of the float's mantissa, so it is exact and identical everywhere (23
//      bits keep sum q_i in 32 bits for V <= 512, which the CPU loops need to
//      run at full vector width);
//   3. Q = sum q_i, S = 2^P - V (the mass left after every symbol's 1),
//      scale = floor(S * 2^(54-P) / Q), f_i = (q_i * scale) >> (54-P), which
//      guarantees sum f_i <= S (and scale < 2^32 whenever the largest weight
//      is a normal float);
//   4. freq_i = 1 + f_i, and the remainder S - sum f_i goes to the first index
//      of the largest weight.
#pragma once
#include <stdint.h>

#include "level.h"

#if defined(__AVX2__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define NCX_HD __host__ __device__ __forceinline__
#define NCX_HD_ALWAYS_INLINE __host__ __device__ __forceinline__
#else
#define NCX_HD inline
// For the functions that must inline into vectorized host loops (a call
// inside a loop stops GCC's vectorizer), and for the row routines and coder
// steps, which must inline into csrc/cpu/kernels.cpp's loops over rows: GCC
// stops inlining into those large loops on its own, and in the shared library
// the calls it leaves go through the PLT.
#define NCX_HD_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

// Before a loop over a row's elements or vectors: unrolled by 4 at the
// baseline and avx2 levels, where each vector's work is a few instructions
// and the loop's own (pointer adds, the exit test, register copies) took
// about as many slots; with it, encoding took 4-9% less time at avx2 and
// baseline, and decoding 3-6% at avx2 (docs/performance.md). At avx512 GCC
// unrolls the byte loops whole by itself, and the pragma made them slower.
#if defined(__AVX512F__) || defined(__CUDACC__)
#define NCX_UNROLL_ROW
#else
#define NCX_UNROLL_ROW _Pragma("GCC unroll 4")
#endif

namespace ncx {
inline namespace NCX_LEVEL_NAMESPACE {

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
  kErrState = 9,          // a coder state tensor that no coder produced
};
constexpr int32_t kNumStatus = 10;

// What a status means, for error messages (ncx._C.STATUS_MESSAGES).
inline const char* status_text(int32_t s) {
  switch (s) {
    case kOk: return "ok";
    case kErrNaN: return "a distribution row contains NaN";
    case kErrNegative: return "a distribution row contains a negative probability";
    case kErrZeroRow: return "a distribution row is all zero (or all logits are -inf)";
    case kErrInf: return "a distribution row contains +inf";
    case kErrSymbol: return "a symbol is outside [0, V)";
    case kErrOutputFull: return "the output buffer is too small for the code";
    case kErrCorrupt: return "the compressed data is corrupt (inconsistent with the distributions)";
    case kErrTruncated: return "the compressed data is truncated";
    case kErrState: return "the coder state is invalid (not produced by a coder of this kind)";
    default: return "unknown status";
  }
}

constexpr int kMinPrecision = 1;
constexpr int kMaxPrecision = 24;
constexpr int64_t kMaxAlphabet = 65536;

// ---- bit access to floats -------------------------------------------------
NCX_HD_ALWAYS_INLINE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}
NCX_HD_ALWAYS_INLINE float bits_to_float(uint32_t u) {
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
NCX_HD_ALWAYS_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
NCX_HD_ALWAYS_INLINE float mul_rn(float a, float b) {
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
NCX_HD_ALWAYS_INLINE float exp_ncx(float x) {
  // Branch-free (selects only) so CPU loops over a row vectorize.
  float xc = x > -87.0f ? x : -87.0f;
  xc = xc < 0.0f ? xc : 0.0f;
  // Hex literals: no decimal-to-binary rounding left to either compiler.
  const float kLog2e = 0x1.715476p+0f;
  const float kLn2Hi = 0x1.62e4p-1f;     // ln2 with its low bits cleared
  const float kLn2Lo = 0x1.7f7d1cp-20f;  // ln2 - kLn2Hi
  // n = round-half-away(x * log2e): t <= 0, so truncating t - 0.5 rounds.
  float t = mul_rn(xc, kLog2e);
  int n = (int)add_rn(t, -0.5f);
  float nf = (float)n;
  float r = add_rn(xc, -mul_rn(nf, kLn2Hi));
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
  float scaled = bits_to_float((float_to_bits(p) & 0x807fffffu) | (uint32_t(e > 0 ? e : 0) << 23));
  // Results below 2^-126 flush to zero (far below the fixed-point step's
  // 2^-31 resolution); x >= 0 (only x - max(x) == 0 occurs) is exactly 1.
  float y = e > 0 ? scaled : 0.0f;
  y = x >= 0.0f ? 1.0f : y;
  return x > -87.0f ? y : 0.0f;
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
// q = floor(w * 2^k) with the largest weight's mantissa landing at bit 22.
NCX_HD_ALWAYS_INLINE uint32_t weight_to_fixed(uint32_t w, uint32_t max_w) {
  // Branch-free so the CPU loops vectorize: a subnormal (exponent field 0)
  // has no implicit bit and the exponent of 1.
  uint32_t ex = w >> 23, ex_max = max_w >> 23;
  uint32_t mant = (w & 0x7fffffu) | (ex ? 0x800000u : 0u);
  // A normal largest weight lands in [2^22, 2^23); a subnormal one (no
  // implicit bit, already below 2^23) is kept as it is, so it stays >= 1.
  int shift = int(ex ? ex : 1u) - int(ex_max ? ex_max : 1u) - (ex_max ? 1 : 0);  // <= 0
  uint32_t left = mant << (shift > 0 ? shift : 0);
  uint32_t right = mant >> (-shift < 31 ? -shift : 31);  // mant < 2^24: >> 31 is 0
  return shift >= 0 ? left : right;
}

// ---- step 3: integer scaling ---------------------------------------------
struct QuantParams {
  uint64_t scale;   // multiplier for q_i
  int shift;        // quant_shift(P)
  uint32_t rem;     // extra mass for the argmax symbol
  int32_t argmax;   // first index of the largest weight (V when not computed)
  uint32_t q_max;   // the largest q_i
};

NCX_HD int quant_shift(int precision) { return 54 - precision; }
NCX_HD_ALWAYS_INLINE uint64_t quant_scale(uint64_t q_sum, int precision, int64_t V) {
  uint64_t free_mass = (uint64_t(1) << precision) - uint64_t(V);
  return (free_mass << quant_shift(precision)) / q_sum;
}
NCX_HD_ALWAYS_INLINE uint32_t fixed_to_f(uint32_t q, uint64_t scale, int shift) {
  return uint32_t((uint64_t(q) * scale) >> shift);
}

// ---- serial row routines (CPU back end) -----------------------------------
// Written as plain loops without data-dependent branches so the compiler
// vectorizes them; the GPU runs the same per-element functions across lanes.
NCX_HD uint32_t load_bits(const float* p, int64_t i) { return float_to_bits(p[i]); }
NCX_HD uint32_t load_bits(const uint16_t* p, int64_t i) { return bf16_to_bits(p[i]); }

// Step 1 scan of a row: returns a status, and the largest weight's bits and
// (logits) the largest logit.
template <typename T>
NCX_HD_ALWAYS_INLINE int32_t scan_row(const T* row, int64_t V, bool logits, uint32_t* max_w, float* max_logit) {
  if (!logits) {
    // Fast path: one unsigned max over the raw bits. Any sign bit makes it
    // >= 0x80000000 and NaN/inf make it >= 0x7f800000, so a max below
    // 0x7f800000 proves the row valid (non-negative, finite) and is the
    // largest weight; anything else goes through the detailed scan below.
    uint32_t raw = 0;
    NCX_UNROLL_ROW
    for (int64_t i = 0; i < V; ++i) {
      uint32_t b = load_bits(row, i);
      raw = b > raw ? b : raw;
    }
    if (raw < 0x7f800000u) {
      if (raw == 0) return kErrZeroRow;
      *max_w = raw;
      return kOk;
    }
  }
  uint32_t key = 0, nan = 0, inf = 0, neg = 0;
  if (logits) {
    for (int64_t i = 0; i < V; ++i) {
      uint32_t b = load_bits(row, i), m = b & 0x7fffffffu;
      nan |= m > 0x7f800000u;
      inf |= b == 0x7f800000u;
      uint32_t k = (b >> 31) ? ~b : (b | 0x80000000u);
      key = k > key ? k : key;
    }
  } else {
    for (int64_t i = 0; i < V; ++i) {
      uint32_t b = load_bits(row, i), m = b & 0x7fffffffu;
      nan |= m > 0x7f800000u;
      inf |= m == 0x7f800000u;
      neg |= b > 0x80000000u;  // sign set on a non-zero value (-0 is fine)
      key = m > key ? m : key;
    }
  }
  if (nan) return kErrNaN;
  if (neg) return kErrNegative;
  if (logits) {
    uint32_t mb = key_to_logit_bits(key);
    if (inf) return kErrInf;
    if (mb == 0xff800000u) return kErrZeroRow;  // every logit is -inf
    *max_logit = bits_to_float(mb);
    *max_w = float_to_bits(exp_ncx(0.0f));
  } else {
    if (inf) return kErrInf;
    if (key == 0) return kErrZeroRow;
    *max_w = key;
  }
  return kOk;
}

// scan_row's fast path for a row whose raw max is known: a raw max in
// [1, 0x7f800000) proves the row valid and is its largest weight; anything
// else (0 for "not known" too) needs scan_row.
NCX_HD bool raw_max_is_weight(uint32_t raw) { return raw - 1u < 0x7f800000u - 1u; }

// When the largest weight's exponent field e_max is >= 23, fixed_point_row
// takes q_i = floor(w_i * 2^(149 - e_max)) as a float product (see there);
// this is that power of two.
NCX_HD bool fixed_point_by_product(uint32_t max_w) { return (max_w >> 23) >= 23; }
NCX_HD float fixed_point_scale(uint32_t max_w) { return bits_to_float((149u - (max_w >> 23) + 127u) << 23); }

// Work on the rows after the current one, riding in the current row's last
// pass. The encoder's and decoder's loops over a stream of float32
// probability rows hand symbol_sums or to_frequencies a row ahead to scan:
// their loops take the unsigned max of its bits beside their own work, so
// that row needs no scan pass of its own, a pass whose end (a reduction, then
// the fixed-point scale) every later step of the row waits on. The encoder
// also hands symbol_sums the row right after the current one, whose largest
// weight an earlier pass found, to take to fixed point (the float-product
// path of fixed_point_row, V <= 512): the rows' passes then overlap, where
// each pass of a row otherwise waits for the one before to end.
enum AheadWork { kNothingAhead = 0, kScanAhead = 1, kScanAndFixAhead = 2 };
// Whether the encoder takes the next row to fixed point ahead: against the
// scan ahead alone, on an AMD EPYC (Zen 5), encoding took 0.82x the time at
// avx2 and 0.96x at baseline, but 1.03x-1.07x at avx512, whose rows are half
// as many vectors, so it scans only there.
#if defined(__AVX512F__)
constexpr bool kFixAheadPays = false;
#else
constexpr bool kFixAheadPays = true;
#endif
struct RowsAhead {
  const uint32_t* scan_bits = nullptr;  // the row to scan, V float32 as bits
  uint32_t raw_max = 0;                 // out: the unsigned max of its bits
  const float* fix_row = nullptr;       // the row to take to fixed point ...
  float fix_scale = 0.0f;               // ... with fixed_point_scale of its largest weight
  uint32_t* fix_q = nullptr;            // out: its q_i
  uint32_t fix_sum = 0;                 // out: their sum
};

// Elements [from, V) of the rows ahead, added to what the vector loops found.
template <int kAhead>
NCX_HD_ALWAYS_INLINE void rows_ahead_from(RowsAhead* a, int64_t from, int64_t V) {
  for (int64_t k = 0, rest = V - from; k < rest; ++k) {
    const int64_t i = from + k;
    a->raw_max = a->scan_bits[i] > a->raw_max ? a->scan_bits[i] : a->raw_max;
    if (kAhead == kScanAndFixAhead) {
      const uint32_t qi = uint32_t(int32_t(mul_rn(a->fix_row[i], a->fix_scale)));
      a->fix_q[i] = qi;
      a->fix_sum += qi;
    }
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__) && !defined(__CUDA_ARCH__)
// ---- AVX2 helpers: eight elements as floats (float32 as they are, bfloat16
// widened, exact), and reductions of a vector's lanes.
inline __m256 load8_floats(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_floats(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline uint32_t sum_lanes8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return uint32_t(_mm_cvtsi128_si32(s));
}
// The low 32 bits of the sum of four 64-bit lanes (sums of f, below 2^32).
inline uint32_t sum_lanes64(__m256i v) {
  const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return uint32_t(_mm_cvtsi128_si32(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s))));
}
inline uint32_t max_lanes8(__m256i v) {  // of unsigned lanes
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4e));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xb1));
  return uint32_t(_mm_cvtsi128_si32(m));
}
inline int32_t min_lanes8(__m256i v) {  // of signed lanes
  __m128i m = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0x4e));
  m = _mm_min_epi32(m, _mm_shuffle_epi32(m, 0xb1));
  return _mm_cvtsi128_si32(m);
}
#endif

// Step 2 over a row: q[0..V), their sum and the first index of the largest
// weight (the first with q == q_max, as weight_to_fixed is monotone: a
// min-reduction, so the loops vectorize).
template <typename Sum, bool kArgmax = true, typename T>
NCX_HD_ALWAYS_INLINE Sum fixed_point_row(const T* row, int64_t V, bool logits, uint32_t max_w, float max_logit,
                                         uint32_t* q, int32_t* argmax_out) {
  // weight_to_fixed(w, max_w) = floor(w * 2^(149 - e)), e = max_w's exponent
  // field. When e >= 23, 2^(149 - e) is a float, the product is exact (a
  // power-of-two scaling; a subnormal w gives a product below 1, which floors
  // to 0 either way, so FTZ/DAZ modes cannot change it) and the truncating
  // conversion is the floor: two vector instructions instead of the bit
  // manipulation, with identical integers. The products are below 2^23, so
  // the conversion goes through int32: one instruction on every level
  // (AVX-512 alone has a float-to-uint32 conversion).
  const uint32_t q_max = weight_to_fixed(max_w, max_w);
  Sum q_sum = 0;
  int32_t argmax = int32_t(V);
  auto accumulate = [&](int32_t i, uint32_t qi) {
    q[i] = qi;
    q_sum += qi;
    if (kArgmax) {
      int32_t c = qi == q_max ? i : int32_t(V);
      argmax = c < argmax ? c : argmax;
    }
  };
  if (fixed_point_by_product(max_w)) {
    const float scale = fixed_point_scale(max_w);
    if (logits) {
      // Two loops: the exp alone vectorizes, fused with the reductions it does not.
      for (int32_t i = 0; i < int32_t(V); ++i)
        q[i] = uint32_t(int32_t(mul_rn(exp_ncx(add_rn(bits_to_float(load_bits(row, i)), -max_logit)), scale)));
      for (int32_t i = 0; i < int32_t(V); ++i) accumulate(i, q[i]);
    } else {
      int32_t i = 0;
#if defined(__AVX2__) && !defined(__AVX512F__) && !defined(__CUDA_ARCH__)
      if (kArgmax && sizeof(Sum) == 4) {
        // The first index of q_max from per-lane counts: hit marks the lanes
        // that have met q_max, and after counts (negated) the vectors from
        // each lane's first hit on. Three simple instructions a vector where
        // the vectorized min of indices takes a blend (two uops) and a min.
        const __m256 vscale = _mm256_set1_ps(scale);
        const __m256i vq_max = _mm256_set1_epi32(int32_t(q_max));
        __m256i sum = _mm256_setzero_si256(), hit = sum, after = sum;
        NCX_UNROLL_ROW
        for (; i + 8 <= int32_t(V); i += 8) {
          const __m256i v = _mm256_cvttps_epi32(_mm256_mul_ps(load8_floats(row + i), vscale));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), v);
          sum = _mm256_add_epi32(sum, v);
          hit = _mm256_or_si256(hit, _mm256_cmpeq_epi32(v, vq_max));
          after = _mm256_add_epi32(after, hit);
        }
        const __m256i first = _mm256_add_epi32(_mm256_slli_epi32(_mm256_add_epi32(_mm256_set1_epi32(i / 8), after), 3),
                                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        argmax = min_lanes8(_mm256_blendv_epi8(_mm256_set1_epi32(int32_t(V)), first, hit));
        q_sum = sum_lanes8(sum);
      }
#endif
      NCX_UNROLL_ROW
      for (; i < int32_t(V); ++i)
        // No sign mask: a valid row's only sign bit is -0's, and -0 * scale
        // truncates to 0 as +0 does.
        accumulate(i, uint32_t(int32_t(mul_rn(bits_to_float(load_bits(row, i)), scale))));
    }
  } else if (logits) {
    for (int32_t i = 0; i < int32_t(V); ++i)
      accumulate(i, weight_to_fixed(logit_weight_bits(load_bits(row, i), max_logit), max_w));
  } else {
    for (int32_t i = 0; i < int32_t(V); ++i) accumulate(i, weight_to_fixed(load_bits(row, i) & 0x7fffffffu, max_w));
  }
  *argmax_out = argmax;
  return q_sum;
}

// Step 3 from the sum of the fixed-point weights.
NCX_HD_ALWAYS_INLINE QuantParams params_from_sum(uint64_t q_sum, int32_t argmax, uint32_t max_w, int precision,
                                                 int64_t V) {
  QuantParams qp;
  qp.argmax = argmax;
  qp.q_max = weight_to_fixed(max_w, max_w);
  qp.scale = quant_scale(q_sum, precision, V);
  qp.shift = quant_shift(precision);
  qp.rem = 0;  // the CPU's steps work the remainder out from their own sums
  return qp;
}

// Steps 2-3 over a row that scan_row passed: fills q[0..V) with the
// fixed-point weights and returns the params.
template <bool kArgmax = true, typename T>
NCX_HD_ALWAYS_INLINE QuantParams fixed_point_params(const T* row, int64_t V, int precision, bool logits,
                                                    uint32_t max_w, float max_logit, uint32_t* q) {
  int32_t argmax = int32_t(V);
  // q < 2^23, so for V <= 512 the sum fits 32 bits: the loops then run at
  // full vector width (a 64-bit sum halves it).
  const uint64_t q_sum =
      V <= 512 ? fixed_point_row<uint32_t, kArgmax>(row, V, logits, max_w, max_logit, q, &argmax)
               : fixed_point_row<uint64_t, kArgmax>(row, V, logits, max_w, max_logit, q, &argmax);
  return params_from_sum(q_sum, argmax, max_w, precision, V);
}

// Steps 1-3 over one row: fills q[0..V) with the fixed-point weights and
// returns the params, or a status.
template <bool kArgmax = true, typename T>
NCX_HD_ALWAYS_INLINE int32_t quantize_row_prepare(const T* row, int64_t V, int precision, bool logits, uint32_t* q,
                                                  QuantParams* out) {
  uint32_t max_w = 0;
  float max_logit = 0.0f;
  int32_t st = scan_row(row, V, logits, &max_w, &max_logit);
  if (st != kOk) return st;
  *out = fixed_point_params<kArgmax>(row, V, precision, logits, max_w, max_logit, q);
  return kOk;
}

NCX_HD uint32_t free_mass(int precision, int64_t V) { return uint32_t((uint64_t(1) << precision) - uint64_t(V)); }

// f_i = (q_i * scale) >> shift for 16 (AVX-512) or 8 (AVX2) q_i at once, as
// uint32 lanes in q's order. With a 32-bit scale, vpmuludq multiplies the low
// halves of 64-bit lanes: once for the even q_i, once (after moving them
// down) for the odd ones, one instruction each where GCC's own loop takes a
// 64-bit multiply of three. f_i < 2^P fits the low half again. The shifts
// take their count from a vector: the form with an xmm count is two uops on
// Intel cores, and these loops are bound by the vector ports.
#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
NCX_HD_ALWAYS_INLINE __m512i fixed_to_f16(const uint32_t* q, __m512i scale, __m512i shift) {
  const __m512i v = _mm512_loadu_si512(q);
  const __m512i even = _mm512_srlv_epi64(_mm512_mul_epu32(v, scale), shift);
  // The odd q_i moved down by a shuffle (port 5), beside the multiplies and shifts (port 0).
  const __m512i odd = _mm512_srlv_epi64(_mm512_mul_epu32(_mm512_shuffle_epi32(v, _MM_PERM_CDAB), scale), shift);
  // Interleave the low halves: lane 2j from even's lane 2j, 2j+1 from odd's.
  const __m512i pick = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  return _mm512_permutex2var_epi32(even, pick, odd);
}
#elif defined(__AVX2__) && !defined(__CUDA_ARCH__)
NCX_HD_ALWAYS_INLINE __m256i fixed_to_f8(const uint32_t* q, __m256i scale, __m256i shift) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  const __m256i even = _mm256_srlv_epi64(_mm256_mul_epu32(v, scale), shift);
  const __m256i odd = _mm256_srlv_epi64(_mm256_mul_epu32(_mm256_srli_epi64(v, 32), scale), shift);
  return _mm256_or_si256(even, _mm256_slli_epi64(odd, 32));
}
#endif

// For encoding symbol s: sum f_i over [0, s) (below) and over [0, V) (all),
// and whether a q_i in [0, s) equals q_max. One pass over every q_i that
// keeps running totals (the sum of f and the largest q) and stores them, as
// they stand before each vector, in the scratch after q; the totals below s
// are then the stored ones at s's vector plus that vector's lanes below s.
// (Loops whose lengths depend on s would mispredict their exits at every
// symbol, and a compare against s in every lane costs more than the store.)
//
// The sums need no f in q's order, nor f itself: with q_i shifted left by
// pre = 32 - shift (shift <= 32, P >= 22; q_i < 2^23 leaves room for it),
// f_i is the high dword of the 64-bit product q_i * scale, and with shift > 32
// it is that high dword shifted right by post = shift - 32, whose sum is the
// sum of the high dwords with their low post bits cleared, shifted once at
// the end. Either way a dword add of the even and the odd products sums
// their f in the odd dwords, and no 64-bit shift per product is needed.
struct SymbolSums {
  uint32_t below, all;
  bool max_below;
};

// Words of scratch quantize_row_symbol needs: q[0..V), then from the next
// cache line two running totals per vector of up to 16 lanes, and one more.
NCX_HD int64_t symbol_scratch_words(int64_t V) { return 3 * ((V + 15) / 16 * 16) + 32; }
// Words of scratch the stream loops need (csrc/cpu/kernels.cpp): two rows'
// symbol scratch, the second for the next row's q (RowsAhead).
NCX_HD int64_t stream_scratch_words(int64_t V) { return 2 * symbol_scratch_words(V); }

// The serial form over q[from..V), added to the running sums. Counted from
// `from`, as in to_frequencies: after the vector loops GCC would otherwise
// vectorize this tail of a few elements too.
NCX_HD_ALWAYS_INLINE void add_symbol_sums(const uint32_t* q, const QuantParams& qp, int64_t s, int64_t from,
                                          int64_t V, uint32_t* below, uint32_t* all, uint32_t* max_below) {
  for (int64_t k = 0, rest = V - from; k < rest; ++k) {
    const int64_t i = from + k;
    const uint32_t f = fixed_to_f(q[i], qp.scale, qp.shift);
    *all += f;
    *below += i < s ? f : 0u;
    *max_below = i < s && q[i] > *max_below ? q[i] : *max_below;
  }
}

#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
// The products of 16 q_i whose odd dwords hold f_i << post: even q_i's in
// *even, odd q_i's (moved down by a shuffle, port 5) in *odd.
template <bool kPost>
NCX_HD_ALWAYS_INLINE void f_high16(__m512i v, __m512i scale, __m512i pre, __m512i keep, __m512i* even,
                                   __m512i* odd) {
  if (!kPost) v = _mm512_sllv_epi32(v, pre);
  *even = _mm512_mul_epu32(v, scale);
  *odd = _mm512_mul_epu32(_mm512_shuffle_epi32(v, _MM_PERM_CDAB), scale);
  if (kPost) {
    *even = _mm512_and_si512(*even, keep);
    *odd = _mm512_and_si512(*odd, keep);
  }
}
#elif defined(__AVX2__) && !defined(__CUDA_ARCH__)
// As f_high16, for 8 q_i.
template <bool kPost>
NCX_HD_ALWAYS_INLINE void f_high8(__m256i v, __m256i scale, __m256i pre, __m256i keep, __m256i* even,
                                  __m256i* odd) {
  if (!kPost) v = _mm256_sllv_epi32(v, pre);
  *even = _mm256_mul_epu32(v, scale);
  *odd = _mm256_mul_epu32(_mm256_srli_epi64(v, 32), scale);
  if (kPost) {
    *even = _mm256_and_si256(*even, keep);
    *odd = _mm256_and_si256(*odd, keep);
  }
}
// The sum of the odd dwords of 8.
inline uint32_t sum_odd_dwords8(__m256i v) { return sum_lanes64(_mm256_srli_epi64(v, 32)); }
#endif

#if (defined(__AVX512F__) || defined(__AVX2__)) && !defined(__CUDA_ARCH__)
template <bool kPost, int kAhead>
NCX_HD_ALWAYS_INLINE SymbolSums symbol_sums_vec(uint32_t* q, const QuantParams& qp, int64_t s, int64_t V,
                                                RowsAhead* ahead) {
  const uint32_t scale32 = uint32_t(qp.scale);
  const int pre = kPost ? 0 : 32 - qp.shift, post = kPost ? qp.shift - 32 : 0;
  const uint64_t keep64 = ~uint64_t(0) << (32 + post);
  uint32_t* totals = q + (V + 15) / 16 * 16;  // [sums of f, max q] per vector, as they stand before it
  uint32_t below, all, max_below;
#if defined(__AVX512F__)
  const __m512i vs = _mm512_set1_epi64(scale32), vpre = _mm512_set1_epi32(pre);
  const __m512i keep = _mm512_set1_epi64(int64_t(keep64));
  static_assert(kAhead != kScanAndFixAhead, "no fixed point ahead at avx512 (kFixAheadPays)");
  __m512i sum = _mm512_setzero_si512(), mx = sum, scan_mx = sum, e, o;
  const int64_t nv = V / 16;
  for (int64_t j = 0; j < nv; ++j) {
    const __m512i v = _mm512_loadu_si512(q + 16 * j);
    if (kAhead >= kScanAhead) scan_mx = _mm512_max_epu32(scan_mx, _mm512_loadu_si512(ahead->scan_bits + 16 * j));
    _mm512_storeu_si512(totals + 32 * j, sum);
    _mm512_storeu_si512(totals + 32 * j + 16, mx);
    f_high16<kPost>(v, vs, vpre, keep, &e, &o);
    sum = _mm512_add_epi32(sum, _mm512_add_epi32(e, o));
    mx = _mm512_max_epu32(mx, v);
  }
  _mm512_storeu_si512(totals + 32 * nv, sum);
  _mm512_storeu_si512(totals + 32 * nv + 16, mx);
  const int64_t done = 16 * nv, at = s < done ? s / 16 : nv;
  __m512i sum_below = _mm512_loadu_si512(totals + 32 * at);
  __m512i mx_below = _mm512_loadu_si512(totals + 32 * at + 16);
  if (at < nv) {  // s's own vector: its r lanes below s (f_i sits in dword i | 1)
    const unsigned r = unsigned(s % 16);
    const __m512i v = _mm512_loadu_si512(q + 16 * at);
    f_high16<kPost>(v, vs, vpre, keep, &e, &o);
    sum_below = _mm512_mask_add_epi32(sum_below, __mmask16(0xaaaau & ((2u << r) - 1)), sum_below, e);
    sum_below = _mm512_mask_add_epi32(sum_below, __mmask16(0xaaaau & ((1u << r) - 1)), sum_below, o);
    mx_below = _mm512_mask_max_epu32(mx_below, __mmask16((1u << r) - 1), mx_below, v);
  }
  all = uint32_t(_mm512_mask_reduce_add_epi32(0xaaaa, sum)) >> post;
  below = uint32_t(_mm512_mask_reduce_add_epi32(0xaaaa, sum_below)) >> post;
  max_below = uint32_t(_mm512_reduce_max_epu32(mx_below));
  if (kAhead >= kScanAhead) ahead->raw_max = uint32_t(_mm512_reduce_max_epu32(scan_mx));
#else
  const __m256i vs = _mm256_set1_epi64x(scale32), vpre = _mm256_set1_epi32(pre);
  const __m256i keep = _mm256_set1_epi64x(int64_t(keep64));
  __m256i sum = _mm256_setzero_si256(), mx = sum, scan_mx = sum, fix_sum = sum, e, o;
  const __m256 fix_scale = _mm256_set1_ps(kAhead == kScanAndFixAhead ? ahead->fix_scale : 0.0f);
  const int64_t nv = V / 8;
  NCX_UNROLL_ROW
  for (int64_t j = 0; j < nv; ++j) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * j));
    if (kAhead >= kScanAhead)
      scan_mx =
          _mm256_max_epu32(scan_mx, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ahead->scan_bits + 8 * j)));
    if (kAhead == kScanAndFixAhead) {
      const __m256i fq = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_loadu_ps(ahead->fix_row + 8 * j), fix_scale));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ahead->fix_q + 8 * j), fq);
      fix_sum = _mm256_add_epi32(fix_sum, fq);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(totals + 16 * j), sum);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(totals + 16 * j + 8), mx);
    f_high8<kPost>(v, vs, vpre, keep, &e, &o);
    sum = _mm256_add_epi32(sum, _mm256_add_epi32(e, o));
    mx = _mm256_max_epu32(mx, v);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(totals + 16 * nv), sum);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(totals + 16 * nv + 8), mx);
  const int64_t done = 8 * nv, at = s < done ? s / 8 : nv;
  __m256i sum_below = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(totals + 16 * at));
  __m256i mx_below = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(totals + 16 * at + 8));
  if (at < nv) {  // s's own vector, as above
    const int32_t r = int32_t(s % 8);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 8 * at));
    f_high8<kPost>(v, vs, vpre, keep, &e, &o);
    // Odd dword d holds f_(d-1) in e and f_d in o: lanes d <= r and d < r.
    const __m256i odd_index = _mm256_setr_epi32(64, 1, 64, 3, 64, 5, 64, 7);
    const __m256i even_below = _mm256_cmpgt_epi32(_mm256_set1_epi32(r + 1), odd_index);
    const __m256i odd_below = _mm256_cmpgt_epi32(_mm256_set1_epi32(r), odd_index);
    sum_below = _mm256_add_epi32(sum_below, _mm256_and_si256(even_below, e));
    sum_below = _mm256_add_epi32(sum_below, _mm256_and_si256(odd_below, o));
    const __m256i lanes_below = _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    mx_below = _mm256_max_epu32(mx_below, _mm256_and_si256(lanes_below, v));
  }
  all = sum_odd_dwords8(sum) >> post;
  below = sum_odd_dwords8(sum_below) >> post;
  max_below = max_lanes8(mx_below);
  if (kAhead >= kScanAhead) ahead->raw_max = max_lanes8(scan_mx);
  if (kAhead == kScanAndFixAhead) ahead->fix_sum = sum_lanes8(fix_sum);
#endif
  if (kAhead >= kScanAhead) rows_ahead_from<kAhead>(ahead, done, V);
  add_symbol_sums(q, qp, s, done, V, &below, &all, &max_below);
  return {below, all, max_below == qp.q_max};
}
#endif

// kAhead: also the work on the rows ahead (RowsAhead).
template <int kAhead = kNothingAhead>
NCX_HD_ALWAYS_INLINE SymbolSums symbol_sums(uint32_t* q, const QuantParams& qp, int64_t s, int64_t V,
                                            RowsAhead* ahead = nullptr) {
#if (defined(__AVX512F__) || defined(__AVX2__)) && !defined(__CUDA_ARCH__)
  if (!(qp.scale >> 32))  // always, unless the largest weight is subnormal
    return qp.shift > 32 ? symbol_sums_vec<true, kAhead>(q, qp, s, V, ahead)
                         : symbol_sums_vec<false, kAhead>(q, qp, s, V, ahead);
#endif
  if (kAhead >= kScanAhead) {
    ahead->raw_max = ahead->fix_sum = 0;
    rows_ahead_from<kAhead>(ahead, 0, V);
  }
  uint32_t below = 0, all = 0, max_below = 0;
  add_symbol_sums(q, qp, s, 0, V, &below, &all, &max_below);
  return {below, all, max_below == qp.q_max};
}

// Turns q[0..V) into the frequencies, in place; kAhead: also the scan of the
// row ahead (RowsAhead; the decoder takes no row ahead to fixed point).
template <int kAhead = kNothingAhead>
NCX_HD_ALWAYS_INLINE void to_frequencies(uint32_t* q, const QuantParams& qp, int64_t V, int precision,
                                         RowsAhead* ahead = nullptr) {
  static_assert(kAhead != kScanAndFixAhead, "the decoder's rows ahead are scanned only");
  uint32_t total = 0, scan_max = 0;
  int64_t vectors_end = 0;  // what the vector loops covered
  if (qp.scale >> 32) {
    for (int64_t i = 0; i < V; ++i) {
      uint32_t f = 1u + fixed_to_f(q[i], qp.scale, qp.shift);
      q[i] = f;
      total += f;
    }
  } else {
    int64_t i = 0;
    const uint32_t scale32 = uint32_t(qp.scale);
#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
    const __m512i vs = _mm512_set1_epi64(scale32), one = _mm512_set1_epi32(1);
    const __m512i sh = _mm512_set1_epi64(qp.shift);
    __m512i a = _mm512_setzero_si512(), scan_mx = a;
    for (; i + 16 <= V; i += 16) {
      const __m512i f = _mm512_add_epi32(fixed_to_f16(q + i, vs, sh), one);
      _mm512_storeu_si512(q + i, f);
      a = _mm512_add_epi32(a, f);
      if (kAhead) scan_mx = _mm512_max_epu32(scan_mx, _mm512_loadu_si512(ahead->scan_bits + i));
    }
    total = uint32_t(_mm512_reduce_add_epi32(a));
    if (kAhead) scan_max = uint32_t(_mm512_reduce_max_epu32(scan_mx));
#elif defined(__AVX2__) && !defined(__CUDA_ARCH__)
    const __m256i vs = _mm256_set1_epi64x(scale32), one = _mm256_set1_epi32(1);
    const __m256i sh = _mm256_set1_epi64x(qp.shift);
    __m256i a = _mm256_setzero_si256(), scan_mx = a;
    NCX_UNROLL_ROW
    for (; i + 8 <= V; i += 8) {
      const __m256i f = _mm256_add_epi32(fixed_to_f8(q + i, vs, sh), one);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), f);
      a = _mm256_add_epi32(a, f);
      if (kAhead)
        scan_mx = _mm256_max_epu32(scan_mx, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ahead->scan_bits + i)));
    }
    total = sum_lanes8(a);
    if (kAhead) scan_max = max_lanes8(scan_mx);
#endif
    // Counted from the vectors' end: with V a constant that GCC sees as a
    // loop of none, where `i < V` left it vectorizing a dead loop and warning.
    for (int64_t k = 0, rest = V - i; k < rest; ++k) {
      uint32_t f = 1u + uint32_t((uint64_t(q[i + k]) * scale32) >> qp.shift);
      q[i + k] = f;
      total += f;
    }
    vectors_end = i;
  }
  if (kAhead) {  // the elements past the vectors (all of them without vectors)
    ahead->raw_max = scan_max;
    rows_ahead_from<kAhead>(ahead, vectors_end, V);
  }
  q[qp.argmax] += (uint32_t(1) << precision) - total;  // the remainder
}

// Step 4 for encoding: symbol s's cumulative frequency and frequency from
// q and the params of fixed_point_params<false> (no argmax: the remainder
// goes to the first index of the largest weight, and encoding only needs to
// know whether that index is below, at or above s, which the largest q below
// s tells, cheaper than tracking the index).
template <int kAhead = kNothingAhead>
NCX_HD_ALWAYS_INLINE void symbol_interval(uint32_t* q, const QuantParams& qp, int64_t s, int64_t V, int precision,
                                          uint32_t* cum, uint32_t* freq, RowsAhead* ahead = nullptr) {
  const SymbolSums sums = symbol_sums<kAhead>(q, qp, s, V, ahead);
  const uint32_t f_s = fixed_to_f(q[s], qp.scale, qp.shift);
  const uint32_t rem = free_mass(precision, V) - sums.all;
  const bool argmax_below = sums.max_below, argmax_at = !argmax_below && q[s] == qp.q_max;
  *cum = uint32_t(s) + sums.below + (argmax_below ? rem : 0u);
  *freq = 1u + f_s + (argmax_at ? rem : 0u);
}

// Cumulative frequency below symbol s and its frequency (encoding needs no
// CDF). q holds symbol_scratch_words(V) words, from a cache line's start.
template <typename T>
NCX_HD_ALWAYS_INLINE int32_t quantize_row_symbol(const T* row, int64_t V, int precision, bool logits, int64_t s,
                                                 uint32_t* q, uint32_t* cum, uint32_t* freq) {
  QuantParams qp;
  int32_t st = quantize_row_prepare<false>(row, V, precision, logits, q, &qp);
  if (st != kOk) return st;
  symbol_interval(q, qp, s, V, precision, cum, freq);
  return kOk;
}

// The full CDF: cdf[0] = 0, cdf[V] = 2^P (the window encoder's straddle search
// needs every boundary).
template <typename T>
NCX_HD_ALWAYS_INLINE int32_t quantize_row_cdf(const T* row, int64_t V, int precision, bool logits, uint32_t* q,
                                              uint32_t* cdf) {
  QuantParams qp;
  int32_t st = quantize_row_prepare(row, V, precision, logits, q, &qp);
  if (st != kOk) return st;
  to_frequencies(q, qp, V, precision);
  uint32_t c = 0;
  cdf[0] = 0;
  for (int64_t i = 0; i < V; ++i) {
    c += q[i];
    cdf[i + 1] = c;
  }
  return kOk;
}

#if defined(__AVX512F__) && !defined(__CUDA_ARCH__)
// Inclusive prefix sums of 16 lanes: four shift-and-add steps.
NCX_HD_ALWAYS_INLINE __m512i prefix_sums16(__m512i x) {
  const __m512i z = _mm512_setzero_si512();
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 15));  // lane j += lane j - 1
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 14));  // ... j - 2
  x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 12));  // ... j - 4
  return _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 8));  // ... j - 8
}

// The symbol's index in a block of 32 frequencies f[0..32) starting at
// cumulative frequency c, given c <= target < c + sum f: the count of symbols
// whose end is <= target, from prefix sums and a compare (a scalar scan would
// mispredict its exit at every symbol). *cum gets the symbol's start.
NCX_HD_ALWAYS_INLINE int64_t find_in_block32(const uint32_t* f, uint32_t c, uint32_t target, uint32_t* cum) {
  alignas(64) uint32_t ends[48];  // ends[15]: c, the block's start; ends[16 + j]: where symbol j ends
  ends[15] = c;
  const __m512i lo = _mm512_add_epi32(prefix_sums16(_mm512_loadu_si512(f)), _mm512_set1_epi32(int32_t(c)));
  const __m512i lo_end = _mm512_permutexvar_epi32(_mm512_set1_epi32(15), lo);
  const __m512i hi = _mm512_add_epi32(prefix_sums16(_mm512_loadu_si512(f + 16)), lo_end);
  const __m512i t = _mm512_set1_epi32(int32_t(target));
  const int n = __builtin_popcount(_mm512_cmple_epu32_mask(lo, t)) + __builtin_popcount(_mm512_cmple_epu32_mask(hi, t));
  _mm512_store_si512(ends + 16, lo);
  _mm512_store_si512(ends + 32, hi);
  *cum = ends[15 + n];  // no branch on n == 0: it mispredicts, the first symbol of a block being common
  return n;
}

// For byte alphabets (256 <= V < 288: eight whole blocks of 32, then a short
// tail): how many of the eight blocks end at or before target, and in *c the
// cumulative frequency where the next one starts. The block sums come from a
// transpose-and-add tree, so no loop exit depends on the data.
// (GCC 12 warns inside its own headers here: their _mm512_undefined_epi32()
// placeholder reads as uninitialized once inlined.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
NCX_HD_ALWAYS_INLINE int64_t find_block8(const uint32_t* f, uint32_t target, uint32_t* c) {
  __m512i x[4], y[2];
  for (int j = 0; j < 4; ++j) {  // x[j]: 8 partial sums of block 2j in lanes 0-7, of block 2j + 1 in 8-15
    const __m512i a = _mm512_add_epi32(_mm512_loadu_si512(f + 64 * j), _mm512_loadu_si512(f + 64 * j + 16));
    const __m512i b = _mm512_add_epi32(_mm512_loadu_si512(f + 64 * j + 32), _mm512_loadu_si512(f + 64 * j + 48));
    x[j] = _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int m = 0; m < 2; ++m)  // y[m]: 4 partial sums of block 4m + i in 128-bit chunk i
    y[m] = _mm512_add_epi32(_mm512_shuffle_i32x4(x[2 * m], x[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(x[2 * m], x[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i z = _mm512_add_epi32(_mm512_unpacklo_epi32(y[0], y[1]), _mm512_unpackhi_epi32(y[0], y[1]));
  const __m512i w = _mm512_add_epi32(z, _mm512_shuffle_epi32(z, _MM_PERM_BADC));  // block i in lane 4i, 4 + i in 4i + 1
  const __m512i sums = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), w);
  alignas(64) uint32_t ends[32];  // ends[15]: 0; ends[16 + k]: where block k ends
  ends[15] = 0;
  const __m512i e = prefix_sums16(sums);  // lanes 0-7: where each block ends
  _mm512_store_si512(ends + 16, e);
  const int k = __builtin_popcount(_mm512_cmple_epu32_mask(e, _mm512_set1_epi32(int32_t(target))) & 0xffu);
  *c = ends[15 + k];
  return k;
}
#pragma GCC diagnostic pop
#elif defined(__AVX2__) && !defined(__CUDA_ARCH__)
// Inclusive prefix sums of 8 lanes: two shift-and-add steps in each 128-bit
// half, then the low half's total added to the high half.
NCX_HD_ALWAYS_INLINE __m256i prefix_sums8(__m256i x) {
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));
  x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
  const __m256i half_totals = _mm256_shuffle_epi32(x, 0xff);
  return _mm256_add_epi32(x, _mm256_permute2x128_si256(half_totals, half_totals, 0x08));  // [0, low total]
}

// As the AVX-512 find_in_block32, in four vectors of 8. The sums are below
// 2^24, so the signed compare serves.
NCX_HD_ALWAYS_INLINE int64_t find_in_block32(const uint32_t* f, uint32_t c, uint32_t target, uint32_t* cum) {
  alignas(32) uint32_t ends[40];  // as in the AVX-512 version, from ends[7] = c
  ends[7] = c;
  const __m256i t = _mm256_set1_epi32(int32_t(target)), last = _mm256_set1_epi32(7);
  __m256i carry = _mm256_set1_epi32(int32_t(c));
  int n = 32;
  for (int k = 0; k < 32; k += 8) {
    const __m256i e =
        _mm256_add_epi32(prefix_sums8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(f + k))), carry);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ends + 8 + k), e);
    n -= __builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(e, t))));
    carry = _mm256_permutevar8x32_epi32(e, last);
  }
  *cum = ends[7 + n];
  return n;
}

// As the AVX-512 find_block8: the eight block sums by horizontal adds.
NCX_HD_ALWAYS_INLINE int64_t find_block8(const uint32_t* f, uint32_t target, uint32_t* c) {
  __m256i b[8];  // b[k]: 8 partial sums of block k
  for (int k = 0; k < 8; ++k) {
    const __m256i* p = reinterpret_cast<const __m256i*>(f + 32 * k);
    b[k] = _mm256_add_epi32(_mm256_add_epi32(_mm256_loadu_si256(p), _mm256_loadu_si256(p + 1)),
                            _mm256_add_epi32(_mm256_loadu_si256(p + 2), _mm256_loadu_si256(p + 3)));
  }
  // Each half of h0 holds 4 partial sums of blocks 0-3, in order; h1 of blocks 4-7.
  const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(b[0], b[1]), _mm256_hadd_epi32(b[2], b[3]));
  const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(b[4], b[5]), _mm256_hadd_epi32(b[6], b[7]));
  const __m128i s0 = _mm_add_epi32(_mm256_castsi256_si128(h0), _mm256_extracti128_si256(h0, 1));
  const __m128i s1 = _mm_add_epi32(_mm256_castsi256_si128(h1), _mm256_extracti128_si256(h1, 1));
  const __m256i e = prefix_sums8(_mm256_set_m128i(s1, s0));  // where each block ends
  alignas(32) uint32_t ends[16];  // ends[7]: 0; ends[8 + k]: where block k ends
  ends[7] = 0;
  _mm256_store_si256(reinterpret_cast<__m256i*>(ends + 8), e);
  const int k = 8 - __builtin_popcount(
                        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(int32_t(target))))));
  *c = ends[7 + k];
  return k;
}
#endif

// Step 4 for decoding, from q and the params of fixed_point_params: the
// symbol s with cum(s) <= target < cum(s+1), without a full prefix sum: the
// block of 32 that holds it, then the symbol in that block. With vectors both
// steps are prefix sums and a compare (the block step for byte alphabets;
// other sizes scan the block sums); without, scans.
template <int kAhead = kNothingAhead>
NCX_HD_ALWAYS_INLINE void find_symbol(uint32_t* q, const QuantParams& qp, int64_t V, int precision, uint32_t target,
                                      int64_t* sym, uint32_t* cum, uint32_t* freq, RowsAhead* ahead = nullptr) {
  to_frequencies<kAhead>(q, qp, V, precision, ahead);
  constexpr int64_t kBlock = 32;
  uint32_t c = 0;
  int64_t base = 0;
#if (defined(__AVX512F__) || defined(__AVX2__)) && !defined(__CUDA_ARCH__)
  if (V >= 8 * kBlock && V < 9 * kBlock) base = kBlock * find_block8(q, target, &c);
  else
#endif
  for (; base + kBlock < V; base += kBlock) {
    uint32_t blk = 0;
    for (int64_t i = base; i < base + kBlock; ++i) blk += q[i];
    if (c + blk > target) break;
    c += blk;
  }
#if (defined(__AVX512F__) || defined(__AVX2__)) && !defined(__CUDA_ARCH__)
  if (base + kBlock <= V) {  // a whole block (always, for V a multiple of 32)
    *sym = base + find_in_block32(q + base, c, target, cum);
    *freq = q[*sym];
    return;
  }
#endif
  int64_t i = base;
  while (i < V - 1 && c + q[i] <= target) c += q[i++];
  *sym = i;
  *cum = c;
  *freq = q[i];
}

// Steps 1-4 for decoding one row.
template <typename T>
NCX_HD_ALWAYS_INLINE int32_t quantize_row_find(const T* row, int64_t V, int precision, bool logits, uint32_t target,
                                               uint32_t* q, int64_t* sym, uint32_t* cum, uint32_t* freq) {
  QuantParams qp;
  int32_t st = quantize_row_prepare(row, V, precision, logits, q, &qp);
  if (st != kOk) return st;
  find_symbol(q, qp, V, precision, target, sym, cum, freq);
  return kOk;
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

}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
