// The CPU back end's hot loops (the table of csrc/cpu/kernels.h), compiled
// once per CPU level: setup.py builds this file with each level's flags and
// NCX_LEVEL_NAMESPACE set to level_<name>. The loops are plain C++ over raw
// pointers that the compiler vectorizes for the level's instruction set, with
// intrinsics only where it does not.
//
// Every level gives the same integers: integer sums do not depend on their
// order, and the quantizer's float steps are elementwise and correctly
// rounded (-ffp-contract=off: no fused multiply-add at any level).
//
// Nothing here may use torch or instantiate std templates: their inline code
// would not be in this level's namespace, and the linker could hand a
// baseline caller this level's copy (tests/test_cpu_levels.py checks the
// built library for such leaks).
#include <stdint.h>

#if defined(__AVX2__)
// GCC 12's own _mm512_reduce_add_* trip its -Wmaybe-uninitialized (a false
// positive inside avx512fintrin.h).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "../core/coder.h"
#include "../core/int_m1.h"
#include "../core/window_vocab.h"
#include "kernels.h"

#define NCX_STRINGIFY_(x) #x
#define NCX_STRINGIFY(x) NCX_STRINGIFY_(x)

namespace ncx {
inline namespace NCX_LEVEL_NAMESPACE {
namespace {

using namespace intm1;

uint32_t row_amax(const int32_t* x, int64_t K) {
  uint32_t m = 0;
  for (int64_t k = 0; k < K; ++k) {
    const uint32_t a = magnitude(x[k]);
    m = a > m ? a : m;
  }
  return m;
}

// quantize_activation of a whole row, without its 64-bit division per value
// (which made this loop cost as much as the GEMM after it). With A the row's
// scale, n2 = 2 * 127 |x| and d = A (both exact in double: below 2^39 and
// 2^33), the result's magnitude is c = floor((n2 + d) / 2d), round(127 |x| / A)
// with halves up, as round_div. The double estimate below is off by at most
// one, and the two comparisons, exact in double (products below 2^42), put it
// right; the loop vectorizes at every level.
template <typename Q>
void quantize_row(const int32_t* xr, int64_t K, RowScale rs, Q* qr) {
  if (!rs.mant) {
    for (int64_t k = 0; k < K; ++k) qr[k] = Q(0);
    return;
  }
  const double d = double(int64_t(rs.mant) << rs.exp), inv = 1.0 / d;
  for (int64_t k = 0; k < K; ++k) {
    const double ax = double(xr[k]);  // int32 -> double: one instruction at every level
    const double n2 = double(2 * kActMax) * (ax < 0.0 ? -ax : ax);
    const double c0 = double(int32_t((n2 * inv + 1.0) * 0.5));
    const double c1 = (2.0 * c0 - 1.0) * d > n2 ? c0 - 1.0 : c0;
    const double c = (2.0 * c1 + 1.0) * d <= n2 ? c1 + 1.0 : c1;
    const int32_t m = int32_t(c);
    qr[k] = Q(xr[k] < 0 ? -m : m);
  }
}

void quantize_rows(const int32_t* x, int64_t begin, int64_t end, int64_t K, int8_t* q8, float* qf,
                   int32_t* scale) {
  for (int64_t n = begin; n < end; ++n) {
    const RowScale rs = row_scale(row_amax(x + n * K, K));
    scale[2 * n] = rs.mant;
    scale[2 * n + 1] = rs.exp;
    if (q8) quantize_row(x + n * K, K, rs, q8 + n * K);
    else quantize_row(x + n * K, K, rs, qf + n * K);
  }
}

// dequantize over rows. Its product acc * mant * multiplier is
// acc * (mant * multiplier) with mant * multiplier <= 2^30: one 32 x 32 -> 64
// bit multiply. Where every channel's s = shift - exponent lies in [1, 62]
// and every |multiplier| <= 2^15 (the usual case), shift_round(v, s) =
// (v + 2^(s-1)) >> s is taken as a logical shift of v + 2^(s-1) + 2^62 (not
// negative, below 2^63) less 2^(62-s): the same integer, and AVX2 has
// variable logical 64-bit shifts but no arithmetic ones, so the loop
// vectorizes. Other rows take dequantize as written.
template <typename A>
void dequantize_rows(const A* acc, int64_t begin, int64_t end, int64_t D, const int32_t* scale,
                     const int32_t* multiplier, const int32_t* shift, int32_t* out) {
  int32_t lo = INT32_MAX, hi = INT32_MIN;
  bool small_multipliers = true;  // |multiplier| <= 2^15, as conversion makes them
  for (int64_t d = 0; d < D; ++d) {
    lo = shift[d] < lo ? shift[d] : lo;
    hi = shift[d] > hi ? shift[d] : hi;
    small_multipliers &= multiplier[d] >= -(1 << 15) && multiplier[d] <= (1 << 15);
  }
  // The shift terms depend on the row's exponent only: recomputed when it changes.
  constexpr int64_t kMaxD = 4096;
  uint64_t shifts[kMaxD], bias[kMaxD], back[kMaxD];
  int32_t shifts_for = INT32_MIN;
  for (int64_t n = begin; n < end; ++n) {
    const RowScale rs{scale[2 * n], scale[2 * n + 1]};
    const A* a = acc + n * D;
    int32_t* o = out + n * D;
    if (D > kMaxD || !small_multipliers || lo - rs.exp < 1 || hi - rs.exp > 62) {
      for (int64_t d = 0; d < D; ++d) o[d] = dequantize(int32_t(a[d]), rs, multiplier[d], shift[d]);
      continue;
    }
    if (rs.exp != shifts_for) {
      for (int64_t d = 0; d < D; ++d) {
        shifts[d] = uint64_t(shift[d] - rs.exp);
        bias[d] = (uint64_t(1) << 62) + (uint64_t(1) << (shifts[d] - 1));
        back[d] = uint64_t(1) << (62 - shifts[d]);
      }
      shifts_for = rs.exp;
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t prod = int64_t(int32_t(a[d])) * int64_t(rs.mant * multiplier[d]);  // |mant * mult| <= 2^30
      const int64_t r = int64_t((uint64_t(prod) + bias[d]) >> shifts[d]) - int64_t(back[d]);
      o[d] = int32_t(r > INT32_MAX ? INT32_MAX : (r < -INT32_MAX ? -INT32_MAX : r));
    }
  }
}

void dequantize_either(const int32_t* acc32, const float* accf, int64_t begin, int64_t end, int64_t D,
                       const int32_t* scale, const int32_t* multiplier, const int32_t* shift, int32_t* out) {
  if (acc32) dequantize_rows(acc32, begin, end, D, scale, multiplier, shift, out);
  else dequantize_rows(accf, begin, end, D, scale, multiplier, shift, out);
}

void rms_norm_rows(const int32_t* x, const int32_t* gain, int64_t begin, int64_t end, int64_t C, int32_t* out) {
  for (int64_t n = begin; n < end; ++n) {
    const int32_t* xr = x + n * C;
    const int s = norm_shift(row_amax(xr, C));
    int64_t ss = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t v = norm_scaled(xr[c], s);
      ss += v * v;
    }
    const int64_t rms = norm_rms(ss, C);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = norm_apply(norm_scaled(xr[c], s), gain[c], rms);
  }
}

void rope_rows(const int32_t* x, const int32_t* cos, const int32_t* sin, const int64_t* positions, int64_t begin,
               int64_t end, int64_t H, int64_t hd, int32_t* out) {
  const int64_t half = hd / 2;
  for (int64_t nh = begin; nh < end; ++nh) {
    const int64_t p = positions[nh / H];
    const int32_t* xr = x + nh * hd;
    int32_t* o = out + nh * hd;
    for (int64_t i = 0; i < half; ++i) {
      const int32_t c = cos[p * half + i], s = sin[p * half + i];
      o[i] = rope_first(xr[i], xr[i + half], c, s);
      o[i + half] = rope_second(xr[i], xr[i + half], c, s);
    }
  }
}

// Attention's int64 sums of int32 products: vpmuldq multiplies the low 32
// bits of 64-bit lanes as signed numbers, exactly, so the vector sums equal
// the scalar loop's.
int64_t dot_i32(const int32_t* a, const int32_t* b, int64_t n) {
  int64_t i = 0, s = 0;
#if defined(__AVX512F__)
  __m512i acc = _mm512_setzero_si512();
  for (; i + 8 <= n; i += 8) {
    const __m512i av = _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    const __m512i bv = _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    acc = _mm512_add_epi64(acc, _mm512_mul_epi32(av, bv));
  }
  s = _mm512_reduce_add_epi64(acc);
#elif defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (; i + 4 <= n; i += 4) {
    const __m256i av = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256i bv = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    acc = _mm256_add_epi64(acc, _mm256_mul_epi32(av, bv));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
  for (; i < n; ++i) s += int64_t(a[i]) * b[i];
  return s;
}

// acc[i] += e * v[i]; e is an attention weight, 0 <= e <= 2^kAttnFrac.
void axpy_i32(int64_t* acc, int32_t e, const int32_t* v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512i ev = _mm512_set1_epi64(e);
  for (; i + 8 <= n; i += 8) {
    const __m512i vv = _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + i)));
    _mm512_storeu_si512(acc + i, _mm512_add_epi64(_mm512_loadu_si512(acc + i), _mm512_mul_epi32(ev, vv)));
  }
#elif defined(__AVX2__)
  const __m256i ev = _mm256_set1_epi64x(e);
  for (; i + 4 <= n; i += 4) {
    const __m256i vv = _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i)));
    __m256i* dst = reinterpret_cast<__m256i*>(acc + i);
    _mm256_storeu_si256(dst, _mm256_add_epi64(_mm256_loadu_si256(dst), _mm256_mul_epi32(ev, vv)));
  }
#endif
  for (; i < n; ++i) acc[i] += int64_t(e) * v[i];
}

void attention_rows(const int32_t* q, const int32_t* k_cache, const int32_t* v_cache, const int64_t* streams,
                    const int64_t* positions, int64_t begin, int64_t end, int64_t H, int64_t hd, int64_t L,
                    int64_t* scratch, int32_t* out) {
  int64_t* w = scratch;       // [L] scores, then weights
  int64_t* num = scratch + L;  // [hd]
  const int64_t inv_sqrt = inv_sqrt_q16(hd);
  for (int64_t nh = begin; nh < end; ++nh) {
    const int64_t n = nh / H, h = nh % H, keys = positions[n] + 1;
    const int32_t* qr = q + nh * hd;
    const int64_t base = (streams[n] * H + h) * L * hd;  // this stream and head's keys/values
    int64_t peak = INT64_MIN;
    for (int64_t j = 0; j < keys; ++j) {
      w[j] = attention_score(dot_i32(qr, k_cache + base + j * hd, hd), inv_sqrt);
      peak = w[j] > peak ? w[j] : peak;
    }
    int64_t den = 0;
    for (int64_t i = 0; i < hd; ++i) num[i] = 0;
    for (int64_t j = 0; j < keys; ++j) {
      const int32_t e = int32_t(exp_nonpositive(w[j] - peak, kAttnFrac));  // <= 2^kAttnFrac
      den += e;
      axpy_i32(num, e, v_cache + base + j * hd, hd);
    }
    for (int64_t i = 0; i < hd; ++i) out[nh * hd + i] = clamp32(round_div(num[i], den), kQKVLimit);
  }
}

void coder_weights_rows(const int32_t* logits, int64_t begin, int64_t end, int64_t V, int32_t* out) {
  for (int64_t n = begin; n < end; ++n) {
    const int32_t* lr = logits + n * V;
    int32_t peak = INT32_MIN;
    for (int64_t v = 0; v < V; ++v) peak = lr[v] > peak ? lr[v] : peak;
    for (int64_t v = 0; v < V; ++v) out[n * V + v] = int32_t(exp_nonpositive(int64_t(lr[v]) - peak, kCoderFrac));
  }
}

int64_t vocab_encode(const void* nodes, const uint8_t* data, int64_t n, int32_t* out, int64_t* failed_at) {
  return vocab::encode_document(static_cast<const vocab::TrieNode*>(nodes), data, n, out, failed_at);
}

const CpuKernels kTable = {
    NCX_STRINGIFY(NCX_LEVEL_NAMESPACE) + 6,  // "level_avx2" -> "avx2"
    {&quantize_row_cdf<float>, &quantize_row_symbol<float>, &quantize_row_find<float>},
    {&quantize_row_cdf<uint16_t>, &quantize_row_symbol<uint16_t>, &quantize_row_find<uint16_t>},
    &quantize_rows,
    &dequantize_either,
    &rms_norm_rows,
    &rope_rows,
    &attention_rows,
    &coder_weights_rows,
    &vocab_encode,
};

}  // namespace

// This level's table (declared per level in csrc/cpu/cpu_level.cpp).
const CpuKernels* kernel_table() { return &kTable; }

}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
