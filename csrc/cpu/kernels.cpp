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

#if defined(__SSE2__)
// GCC 12's own _mm512_reduce_add_* trip its -Wmaybe-uninitialized, and
// -Wuninitialized where they inline into larger loops (false positives: the
// _mm256_undefined_si256() placeholder inside avx512fintrin.h).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
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

#if defined(__AVX2__) && !defined(__AVX512F__)
// quantize_row below, into int16 at the avx2 level, 16 values a step; returns
// how many it did (the rest take quantize_row's loop). Where GCC's vector
// loop of quantize_row spends its time in integer shifts and multiplies and
// the two corrections' blends, this takes t in float: with lo = u mod 2^e
// < 2^17, 127 lo is an integer below 2^24 and 2^(1-e) a power of two, so
// floor(254 lo / 2^e) = floor(lo * 127 2^(1-e)) is exact, and so are
// 254 (u >> e) and their sum. The quotient needs no correction when it is a
// correctly rounded division: n / (2 mant) < 128 is either an integer, which
// the division gives exactly, or at least 1 / (2 mant) >= 2^-16 below the
// next one, more than the half unit (2^-18) that rounding could add
// (tests/test_cpu_levels.py checks every mantissa around every integer
// quotient). The sign comes back by vpsignd.
int64_t quantize_row16(const int32_t* xr, int64_t K, RowScale rs, int16_t* qr) {
  const int e = rs.exp;
  const __m256i ve = _mm256_set1_epi32(e), low = _mm256_set1_epi32(int32_t((uint32_t(1) << e) - 1));
  const __m256 lo_scale = _mm256_set1_ps(float(kActMax) * bits_to_float(uint32_t(128 - e) << 23));  // 127 2^(1-e)
  const __m256 twice = _mm256_set1_ps(float(2 * kActMax)), mant = _mm256_set1_ps(float(rs.mant));
  const __m256 den = _mm256_set1_ps(2.0f * float(rs.mant));
  auto quantize8 = [&](const int32_t* p) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i u = _mm256_abs_epi32(x);  // |INT32_MIN| reads as 2^31 unsigned, as magnitude() gives
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_srlv_epi32(u, ve));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(u, low));
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(hi, twice), _mm256_floor_ps(_mm256_mul_ps(lo, lo_scale)));
    const __m256 n = _mm256_add_ps(t, mant);
    return _mm256_sign_epi32(_mm256_cvttps_epi32(_mm256_div_ps(n, den)), x);
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256i packed = _mm256_packs_epi32(quantize8(xr + k), quantize8(xr + k + 8));  // 128-bit halves interleaved
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + k), _mm256_permute4x64_epi64(packed, 0xd8));
  }
  return k;
}
#endif

// quantize_activation of a whole row in 32-bit lanes, without its 64-bit
// division per value (which made this loop cost as much as the GEMM after
// it). With the row's scale A = mant * 2^e (mant <= 2^15, e <= 17) and
// u = |x| <= A, the result's magnitude round(127 u / A), halves up, is
// floor((254 u + A) / 2A) = floor((t + mant) / (2 mant)) with
// t = floor(254 u / 2^e) (the dropped fraction cannot carry the integer
// quotient over), and t = 254 (u >> e) + ((254 (u mod 2^e)) >> e) stays
// below 2^25. The numerator and denominator are integers below 2^24, exact in
// float; the float quotient is off by at most one, and two comparisons,
// exact in float (products below 2^24), put it right. GCC vectorizes the loop
// at every level, 8 or 16 values a vector; at the avx2 level the int16 rows
// (ncx's pmaddwd kernel) take quantize_row16 above instead, which gives the
// same integers in half the time.
template <typename Q>
void quantize_row(const int32_t* xr, int64_t K, RowScale rs, Q* qr) {
  if (!rs.mant) {
    for (int64_t k = 0; k < K; ++k) qr[k] = Q(0);
    return;
  }
  const int e = rs.exp;
  const uint32_t low = (uint32_t(1) << e) - 1, twice = 2 * kActMax;
  const float mant = float(rs.mant), den = 2.0f * mant, inv = 1.0f / den;
  int64_t k = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
  if constexpr (sizeof(Q) == 2) k = quantize_row16(xr, K, rs, qr);
#endif
  for (; k < K; ++k) {
    const uint32_t u = magnitude(xr[k]);
    const float n = float(int32_t(twice * (u >> e) + ((twice * (u & low)) >> e))) + mant;
    float c = float(int32_t(n * inv));
    c = c * den > n ? c - 1.0f : c;
    c = (c + 1.0f) * den <= n ? c + 1.0f : c;
    const int32_t m = int32_t(c);
    qr[k] = Q(xr[k] < 0 ? -m : m);
  }
}

void quantize_rows(const int32_t* x, int64_t begin, int64_t end, int64_t K, int8_t* q8, int16_t* q16,
                   int32_t* scale) {
  const int64_t Kp = K + (K & 1);
  for (int64_t n = begin; n < end; ++n) {
    const RowScale rs = row_scale(row_amax(x + n * K, K));
    scale[2 * n] = rs.mant;
    scale[2 * n + 1] = rs.exp;
    if (q8) {
      quantize_row(x + n * K, K, rs, q8 + n * K);
    } else {
      quantize_row(x + n * K, K, rs, q16 + n * Kp);
      if (Kp != K) q16[n * Kp + K] = 0;
    }
  }
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// dequantize_rows' loops below at the avx2 level take the channels 8 at a
// time: GCC's own vector loop spent most of its time moving lanes into and
// out of 64-bit order (about 11 shuffles, all on one port, for 8 channels).
// Here the even and the odd channels are multiplied in place (vpmuldq reads
// the low half of each 64-bit lane) and the results go back by one blend, so
// the per-channel terms are kept in the same order: in each whole block of 8
// channels, those of channels 0, 2, 4, 6, then 1, 3, 5, 7.
constexpr int64_t kDequantBlock = 8;
inline int64_t dequant_slot(int64_t d, int64_t blocked) {
  return d < blocked ? (d & ~int64_t(7)) | ((d & 1) << 2) | ((d & 7) >> 1) : d;
}

template <bool kClamp>
inline void dequantize8(const int32_t* a, __m256i mant, const int32_t* multiplier, const uint64_t* shifts,
                        const uint64_t* bias, const uint64_t* back, int32_t* o) {
  auto load = [](const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); };
  const __m256i x = load(a), m = _mm256_mullo_epi32(load(multiplier), mant);  // |mant * multiplier| <= 2^30
  __m256i r[2] = {_mm256_mul_epi32(x, m), _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m, 32))};
  for (int h = 0; h < 2; ++h) {  // the even channels, then the odd
    r[h] = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(r[h], load(bias + 4 * h)), load(shifts + 4 * h)),
                            load(back + 4 * h));
    if (kClamp) {
      const __m256i top = _mm256_set1_epi64x(INT32_MAX), bottom = _mm256_set1_epi64x(-INT32_MAX);
      r[h] = _mm256_blendv_epi8(r[h], top, _mm256_cmpgt_epi64(r[h], top));
      r[h] = _mm256_blendv_epi8(r[h], bottom, _mm256_cmpgt_epi64(bottom, r[h]));
    }
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_blend_epi32(r[0], _mm256_slli_epi64(r[1], 32), 0xaa));
}
#else
constexpr int64_t kDequantBlock = 0;  // every channel's terms in its own place
inline int64_t dequant_slot(int64_t d, int64_t) { return d; }
#endif

// dequantize over rows. Its product acc * mant * multiplier is
// acc * (mant * multiplier) with mant * multiplier <= 2^30: one 32 x 32 -> 64
// bit multiply. Where every channel's s = shift - exponent lies in [1, 62]
// and every |multiplier| <= 2^15 (the usual case), shift_round(v, s) =
// (v + 2^(s-1)) >> s is taken as a logical shift of v + 2^(s-1) + 2^62 (not
// negative, below 2^63) less 2^(62-s): the same integer, and AVX2 has
// variable logical 64-bit shifts but no arithmetic ones, so the loop
// vectorizes. Other rows take dequantize as written.
void dequantize_rows(const int32_t* acc, int64_t begin, int64_t end, int64_t D, const int32_t* scale,
                     const int32_t* multiplier, const int32_t* shift, int32_t* out) {
  int32_t lo = INT32_MAX, hi = INT32_MIN;
  bool small_multipliers = true;  // |multiplier| <= 2^15, as conversion makes them
  uint32_t max_multiplier = 0;
  for (int64_t d = 0; d < D; ++d) {
    lo = shift[d] < lo ? shift[d] : lo;
    hi = shift[d] > hi ? shift[d] : hi;
    small_multipliers &= multiplier[d] >= -(1 << 15) && multiplier[d] <= (1 << 15);
    max_multiplier = magnitude(multiplier[d]) > max_multiplier ? magnitude(multiplier[d]) : max_multiplier;
  }
  // The shift terms depend on the row's exponent only: recomputed when it changes.
  constexpr int64_t kMaxD = 4096;
  uint64_t shifts[kMaxD], bias[kMaxD], back[kMaxD];  // in dequant_slot order
  int32_t shifts_for = INT32_MIN;
  const int64_t blocked = D & -kDequantBlock;  // the channels in whole blocks (none without blocks)
  for (int64_t n = begin; n < end; ++n) {
    const RowScale rs{scale[2 * n], scale[2 * n + 1]};
    const int32_t* a = acc + n * D;
    int32_t* o = out + n * D;
    if (D > kMaxD || !small_multipliers || lo - rs.exp < 1 || hi - rs.exp > 62) {
      for (int64_t d = 0; d < D; ++d) o[d] = dequantize(a[d], rs, multiplier[d], shift[d]);
      continue;
    }
    if (rs.exp != shifts_for) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t j = dequant_slot(d, blocked);
        shifts[j] = uint64_t(shift[d] - rs.exp);
        bias[j] = (uint64_t(1) << 62) + (uint64_t(1) << (shifts[j] - 1));
        back[j] = uint64_t(1) << (62 - shifts[j]);
      }
      shifts_for = rs.exp;
    }
    // No output of the row saturates where its largest product P stays below
    // (2^31 - 2) 2^s for the smallest s: then |r| <= P / 2^s + 1 < 2^31 - 1,
    // and the loops leave the clamps out.
    const int s_min = lo - rs.exp;
    const int64_t P = int64_t(row_amax(a, D)) * int64_t(rs.mant) * int64_t(max_multiplier);  // < 2^58
    const bool clamp = !(s_min >= 32 || P < ((int64_t(1) << 31) - 2) << s_min);
    int64_t d = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
    const __m256i mant = _mm256_set1_epi32(rs.mant);
    for (; d < blocked; d += kDequantBlock) {
      if (clamp) dequantize8<true>(a + d, mant, multiplier + d, shifts + d, bias + d, back + d, o + d);
      else dequantize8<false>(a + d, mant, multiplier + d, shifts + d, bias + d, back + d, o + d);
    }
#endif
    if (!clamp) {
      for (; d < D; ++d) {
        const int64_t prod = int64_t(a[d]) * int64_t(rs.mant * multiplier[d]);  // |mant * mult| <= 2^30
        o[d] = int32_t(int64_t((uint64_t(prod) + bias[d]) >> shifts[d]) - int64_t(back[d]));
      }
      continue;
    }
    for (; d < D; ++d) {
      const int64_t prod = int64_t(a[d]) * int64_t(rs.mant * multiplier[d]);
      const int64_t r = int64_t((uint64_t(prod) + bias[d]) >> shifts[d]) - int64_t(back[d]);
      o[d] = int32_t(r > INT32_MAX ? INT32_MAX : (r < -INT32_MAX ? -INT32_MAX : r));
    }
  }
}

// ---- int8 products by pmaddwd (int_linear below the avx512 level) ------------
// acc[n, d] = sum_k q[n, k] w[d, k] for int8-valued q and w, exact in int32
// (|acc| <= 127^2 * kMaxFanIn < 2^28). pmaddwd multiplies int16 pairs and adds
// each pair's two products into one int32 lane: exact for int8 values (the
// int8 pmaddubsw would saturate), and two multiply-adds per lane where a
// float32 FMA does one.
//
// Layouts: q int16 [N, Kp], Kp = K rounded up to even, its pad column 0; the
// weight packed once per call into panels of kLanes channels, panel p holding
// for each column pair k2 the channels' (w[d, 2 k2], w[d, 2 k2 + 1]) as int16:
// one vector load then gives a pair for every channel of the panel, and the
// row's pair (q[n, 2 k2], q[n, 2 k2 + 1]) is one 32-bit broadcast. Channels
// past D and the column past K are packed as 0.
#if defined(__AVX2__)
struct PairLanes {
  using Reg = __m256i;
  static constexpr int kLanes = 8;
  static Reg zero() { return _mm256_setzero_si256(); }
  static Reg load(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Reg pair(const int16_t* p) {
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static Reg madd(Reg acc, Reg a, Reg b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
  static void store(int32_t* p, Reg v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
};
#elif defined(__SSE2__)  // every x86-64 CPU
struct PairLanes {
  using Reg = __m128i;
  static constexpr int kLanes = 4;
  static Reg zero() { return _mm_setzero_si128(); }
  static Reg load(const int16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
  static Reg pair(const int16_t* p) {
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return _mm_set1_epi32(v);
  }
  static Reg madd(Reg acc, Reg a, Reg b) { return _mm_add_epi32(acc, _mm_madd_epi16(a, b)); }
  static void store(int32_t* p, Reg v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
};
#else  // other architectures: one channel per "vector"
struct PairLanes {
  struct Reg {
    int32_t lo, hi;  // a pair of inputs, or the sum in lo
  };
  static constexpr int kLanes = 1;
  static Reg zero() { return {0, 0}; }
  static Reg load(const int16_t* p) { return {p[0], p[1]}; }
  static Reg pair(const int16_t* p) { return {p[0], p[1]}; }
  static Reg madd(Reg acc, Reg a, Reg b) { return {acc.lo + a.lo * b.lo + a.hi * b.hi, 0}; }
  static void store(int32_t* p, Reg v) { p[0] = v.lo; }
};
#endif

constexpr int kPairRows = 4;    // rows of q per tile
constexpr int kPairPanels = 3;  // panels per tile: 4 x 3 accumulators, 3 weight vectors and a broadcast

// The int16 count of the packed weight.
int64_t pair_packed_size(int64_t D, int64_t K) {
  const int64_t L = PairLanes::kLanes;
  return (D + L - 1) / L * L * (K + (K & 1));
}

// Packs panels [p_begin, p_end) of w int8 [D, K].
void pair_pack(const int8_t* w, int64_t D, int64_t K, int64_t p_begin, int64_t p_end, int16_t* packed) {
  constexpr int L = PairLanes::kLanes;
  const int64_t K2 = (K + 1) / 2;
  for (int64_t p = p_begin; p < p_end; ++p) {
    int16_t* out = packed + p * K2 * 2 * L;
    int64_t k2 = 0;
#if defined(__AVX2__)
    // 8 channels x 8 pairs at a time: each channel's 16 int8 widened to 8
    // int32 pair units, then an 8 x 8 transpose of the units.
    if ((p + 1) * L <= D) {
      for (; 2 * k2 + 16 <= K; k2 += 8) {
        __m256i r[8], t[8], u[8];
        for (int j = 0; j < 8; ++j)
          r[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (p * L + j) * K + 2 * k2)));
        for (int j = 0; j < 8; j += 2) {
          t[j] = _mm256_unpacklo_epi32(r[j], r[j + 1]);
          t[j + 1] = _mm256_unpackhi_epi32(r[j], r[j + 1]);
        }
        for (int h = 0; h < 8; h += 4) {
          u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
          u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
          u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
          u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        __m256i* o = reinterpret_cast<__m256i*>(out + k2 * 2 * L);
        for (int m = 0; m < 4; ++m) {
          _mm256_storeu_si256(o + m, _mm256_permute2x128_si256(u[m], u[m + 4], 0x20));
          _mm256_storeu_si256(o + m + 4, _mm256_permute2x128_si256(u[m], u[m + 4], 0x31));
        }
      }
    }
#endif
    for (; k2 < K2; ++k2)
      for (int j = 0; j < L; ++j)
        for (int h = 0; h < 2; ++h) {
          const int64_t d = p * L + j, k = 2 * k2 + h;
          out[(k2 * L + j) * 2 + h] = d < D && k < K ? int16_t(w[d * K + k]) : int16_t(0);
        }
  }
}

// R rows of q times P panels from column col0, into acc (row stride D).
template <int R, int P>
void pair_tile(const int16_t* q, int64_t Kp, const int16_t* panel, int64_t D, int64_t col0, int32_t* acc) {
  using V = PairLanes;
  constexpr int L = V::kLanes;
  const int64_t K2 = Kp / 2, panel_size = Kp * L;
  typename V::Reg c[R][P];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) c[i][j] = V::zero();
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    typename V::Reg b[P];
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) b[j] = V::load(panel + j * panel_size + k2 * 2 * L);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const typename V::Reg a = V::pair(q + i * Kp + 2 * k2);
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j) c[i][j] = V::madd(c[i][j], a, b[j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) {
      const int64_t col = col0 + j * L;
      if (col + L <= D) {
        V::store(acc + i * D + col, c[i][j]);
      } else {  // the last panel, past D
        int32_t lanes[L];
        V::store(lanes, c[i][j]);
        for (int64_t l = 0; col + l < D; ++l) acc[i * D + col + l] = lanes[l];
      }
    }
}

using PairTile = void (*)(const int16_t*, int64_t, const int16_t*, int64_t, int64_t, int32_t*);
static_assert(kPairRows == 4 && kPairPanels == 3, "kPairTiles lists every tile size");
// pair_tile<rows, panels> at [rows - 1][panels - 1].
constexpr PairTile kPairTiles[kPairRows][kPairPanels] = {
    {&pair_tile<1, 1>, &pair_tile<1, 2>, &pair_tile<1, 3>},
    {&pair_tile<2, 1>, &pair_tile<2, 2>, &pair_tile<2, 3>},
    {&pair_tile<3, 1>, &pair_tile<3, 2>, &pair_tile<3, 3>},
    {&pair_tile<4, 1>, &pair_tile<4, 2>, &pair_tile<4, 3>},
};

// acc [., D] for rows [begin, end) of q int16 [N, Kp].
void pair_gemm_rows(const int16_t* q, const int16_t* packed, int64_t begin, int64_t end, int64_t D, int64_t K,
                    int32_t* acc) {
  constexpr int L = PairLanes::kLanes;
  const int64_t Kp = K + (K & 1), panels = (D + L - 1) / L, panel_size = Kp * L;
  // A group of panels (3 x kLanes channels x Kp) at a time over every row, so
  // that the group stays in cache while the rows' pairs stream past.
  for (int64_t p = 0; p < panels; p += kPairPanels) {
    const int64_t group = panels - p < kPairPanels ? panels - p : kPairPanels;
    for (int64_t n = begin; n < end; n += kPairRows) {
      const int64_t rows = end - n < kPairRows ? end - n : kPairRows;
      kPairTiles[rows - 1][group - 1](q + n * Kp, Kp, packed + p * panel_size, D, p * L, acc + n * D);
    }
  }
}

// norm_apply over a row without its 64-bit division per value, as
// quantize_row does: with n = xs * gain (|xs| < 2^24 after the row's shift,
// |gain| < 2^28, so |n| < 2^52, exact in double) and m = |n| + floor(rms / 2),
// the result's magnitude is floor(m / rms). m / rms in double, rounded to an
// integer by adding and taking away 2^52 (no float-to-int conversion, which
// would overflow for results that saturate), is off by at most one; two
// comparisons, exact in double (products below 2^53), put it right, and the
// result is capped at INT32_MAX. The loop vectorizes at every level.
void norm_apply_row(const int32_t* xr, int64_t C, int s, const int32_t* gain, int64_t rms, int32_t* o) {
  const double d = double(rms), inv = 1.0 / d, half = double(rms / 2);
  const double kMax = double(INT32_MAX);
  const int left = s < 0 ? -s : 0, right = s > 0 ? s : 0;  // one of them 0: no branch in the loop
  for (int64_t c = 0; c < C; ++c) {
    const int32_t xs = (xr[c] << left) >> right;  // norm_scaled: below 2^24 in magnitude
    const double n = double(xs) * double(gain[c]);
    const double m = (n < 0.0 ? -n : n) + half;
    double q = (m * inv + 0x1p52) - 0x1p52;
    q = q * d > m ? q - 1.0 : q;
    q = (q + 1.0) * d <= m ? q + 1.0 : q;
    const int32_t r = int32_t(q < kMax ? q : kMax);
    o[c] = (xs ^ gain[c]) < 0 ? -r : r;  // the sign of n, from integers (the select then vectorizes)
  }
}

void rms_norm_rows(const int32_t* x, const int32_t* gain, int64_t begin, int64_t end, int64_t C, int32_t* out) {
  const bool small_gains = row_amax(gain, C) < (uint32_t(1) << 28);  // as conversion makes them
  for (int64_t n = begin; n < end; ++n) {
    const int32_t* xr = x + n * C;
    const int s = norm_shift(row_amax(xr, C));
    int64_t ss = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t v = norm_scaled(xr[c], s);
      ss += v * v;
    }
    const int64_t rms = norm_rms(ss, C);
    if (rms && small_gains) {
      norm_apply_row(xr, C, s, gain, rms, out + n * C);
      continue;
    }
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

// ---- attention ---------------------------------------------------------------
// Attention runs once per key of every (query, head) row, so it dominates the
// integer M1's step; its three loops are vectorized by hand at the avx2 and
// avx512 levels, each lane computing the scalar functions' integers exactly:
//   - scores: int64 sums of int32 products. vpmuldq multiplies the low 32 bits
//     of 64-bit lanes as signed numbers, so one load of 16 (8) int32 gives the
//     even elements' products directly and the odd ones' after a 32-bit shift
//     (the grouped path at avx512 uses double lanes, below);
//   - weights: exp_nonpositive over 8 (4) keys at a time (below);
//   - the weighted sum of values, with its accumulators held in registers
//     across keys, a block of dimensions at a time.

// Asks for the cache lines of n int32 from p ahead of their use. Attention
// reads a stream's keys and values once per query (or group of queries),
// row after row; left to the hardware prefetchers, its loops waited on
// memory (docs/performance.md, "CPU levels").
constexpr int64_t kKeysAhead = 8;
inline void prefetch_int32(const int32_t* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i);
}

// sum_i a[i] * b[i] in int64.
int64_t dot_i32(const int32_t* a, const int32_t* b, int64_t n) {
  int64_t i = 0, s = 0;
#if defined(__AVX512F__)
  __m512i acc = _mm512_setzero_si512();
  for (; i + 16 <= n; i += 16) {
    const __m512i av = _mm512_loadu_si512(a + i), bv = _mm512_loadu_si512(b + i);
    acc = _mm512_add_epi64(acc, _mm512_mul_epi32(av, bv));
    acc = _mm512_add_epi64(acc, _mm512_mul_epi32(_mm512_srli_epi64(av, 32), _mm512_srli_epi64(bv, 32)));
  }
  s = _mm512_reduce_add_epi64(acc);
#elif defined(__AVX2__)
  __m256i acc = _mm256_setzero_si256();
  for (; i + 8 <= n; i += 8) {
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
    acc = _mm256_add_epi64(acc, _mm256_mul_epi32(av, bv));
    acc = _mm256_add_epi64(acc, _mm256_mul_epi32(_mm256_srli_epi64(av, 32), _mm256_srli_epi64(bv, 32)));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
  for (; i < n; ++i) s += int64_t(a[i]) * b[i];
  return s;
}

// exp_nonpositive(d, out_frac) in int64 lanes, 8 (avx512) or 4 (avx2) at a
// time, for d <= 0 and out_frac < 30 (the attention's weights, Q16, and the
// coder's, Q22). The lanes follow exp_nonpositive step by step, with these
// ranges: d clamped to [-2^26, 0] fits 32 bits, and so does log2(e) in Q30,
// so d * log2(e) is one vpmuldq; t = shift_round(that, 30) lies in
// (-2^27, 0]; f = t mod 2^16 and p < 2^31, so each Horner step p * f is one
// unsigned 32 x 32 -> 64 multiply of non-negative numbers and its rounding
// shift a logical one; the final shift s = 30 - out_frac - floor(t / 2^16)
// is at least 1, and a result whose s exceeds 62 is 0.
constexpr int64_t kExpFloor = -(int64_t(1) << 26), kLog2eQ30 = 1549082005;
constexpr int64_t kExp2Q30[10] = {1073741824, 744261118, 257941248, 59597083, 10327387,
                                  1431680,    165394,    16377,     1419,     109};
#if defined(__AVX512F__)
inline __m512i exp_lanes(__m512i d, int out_frac) {
  const __m512i one = _mm512_set1_epi64(1);
  d = _mm512_max_epi64(d, _mm512_set1_epi64(kExpFloor));
  const __m512i t = _mm512_srai_epi64(
      _mm512_add_epi64(_mm512_mul_epi32(d, _mm512_set1_epi64(kLog2eQ30)), _mm512_set1_epi64(int64_t(1) << 29)), 30);
  const __m512i f = _mm512_and_si512(t, _mm512_set1_epi64(0xffff));
  __m512i p = _mm512_set1_epi64(kExp2Q30[9]);
  for (int k = 8; k >= 0; --k)
    p = _mm512_add_epi64(
        _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epu32(p, f), _mm512_set1_epi64(1 << 15)), 16),
        _mm512_set1_epi64(kExp2Q30[k]));
  const __m512i sh = _mm512_sub_epi64(_mm512_set1_epi64(30 - out_frac), _mm512_srai_epi64(t, 16));
  const __m512i r = _mm512_srlv_epi64(_mm512_add_epi64(p, _mm512_sllv_epi64(one, _mm512_sub_epi64(sh, one))), sh);
  return _mm512_maskz_mov_epi64(_mm512_cmple_epi64_mask(sh, _mm512_set1_epi64(62)), r);
}
constexpr int64_t kExpLanes = 8;
#elif defined(__AVX2__)
inline __m256i exp_lanes(__m256i d, int out_frac) {
  const __m256i one = _mm256_set1_epi64x(1), vfloor = _mm256_set1_epi64x(kExpFloor);
  d = _mm256_blendv_epi8(d, vfloor, _mm256_cmpgt_epi64(vfloor, d));
  // No 64-bit arithmetic shift at this level: the sum is made non-negative
  // by 2^62, shifted logically, and 2^62 / 2^30 taken off again.
  const __m256i biased = _mm256_add_epi64(_mm256_mul_epi32(d, _mm256_set1_epi64x(kLog2eQ30)),
                                          _mm256_set1_epi64x((int64_t(1) << 62) + (int64_t(1) << 29)));
  const __m256i t = _mm256_sub_epi64(_mm256_srli_epi64(biased, 30), _mm256_set1_epi64x(int64_t(1) << 32));
  const __m256i f = _mm256_and_si256(t, _mm256_set1_epi64x(0xffff));
  __m256i p = _mm256_set1_epi64x(kExp2Q30[9]);
  for (int k = 8; k >= 0; --k)
    p = _mm256_add_epi64(
        _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epu32(p, f), _mm256_set1_epi64x(1 << 15)), 16),
        _mm256_set1_epi64x(kExp2Q30[k]));
  // |t| < 2^31: its high half is all sign bits, so a 32-bit arithmetic shift
  // of both halves is the 64-bit one.
  const __m256i sh = _mm256_sub_epi64(_mm256_set1_epi64x(30 - out_frac), _mm256_srai_epi32(t, 16));
  const __m256i r = _mm256_srlv_epi64(_mm256_add_epi64(p, _mm256_sllv_epi64(one, _mm256_sub_epi64(sh, one))), sh);
  return _mm256_andnot_si256(_mm256_cmpgt_epi64(sh, _mm256_set1_epi64x(62)), r);
}
constexpr int64_t kExpLanes = 4;
#endif

// w[j] <- exp_nonpositive(w[j] - peak, kAttnFrac) for j in [0, n); returns
// their sum.
int64_t attention_weights(int64_t* w, int64_t n, int64_t peak) {
  int64_t j = 0, den = 0;
#if defined(__AVX512F__)
  __m512i sum = _mm512_setzero_si512();
  const __m512i vpeak = _mm512_set1_epi64(peak);
  for (; j + kExpLanes <= n; j += kExpLanes) {
    const __m512i e = exp_lanes(_mm512_sub_epi64(_mm512_loadu_si512(w + j), vpeak), kAttnFrac);
    _mm512_storeu_si512(w + j, e);
    sum = _mm512_add_epi64(sum, e);
  }
  den = _mm512_reduce_add_epi64(sum);
#elif defined(__AVX2__)
  __m256i sum = _mm256_setzero_si256();
  const __m256i vpeak = _mm256_set1_epi64x(peak);
  for (; j + kExpLanes <= n; j += kExpLanes) {
    __m256i* wj = reinterpret_cast<__m256i*>(w + j);
    const __m256i e = exp_lanes(_mm256_sub_epi64(_mm256_loadu_si256(wj), vpeak), kAttnFrac);
    _mm256_storeu_si256(wj, e);
    sum = _mm256_add_epi64(sum, e);
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  den = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
  for (; j < n; ++j) {
    w[j] = exp_nonpositive(w[j] - peak, kAttnFrac);
    den += w[j];
  }
  return den;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// weighted_sum's dimensions from i0 in chunks of 8 * NV while they last;
// returns where it stopped. Each vector of 8 int32 gives its even elements'
// products directly and its odd ones' after a 64-bit shift (no widening
// conversion, which runs on one port). With NV = 4, 32 dimensions a pass
// over the value rows instead of 16, the lone-row attention call took 0.90x-
// 0.95x the time at avx2 (docs/performance.md).
template <int NV>
int64_t weighted_sum_avx2(const int64_t* e, const int32_t* v, int64_t keys, int64_t hd, int64_t i0, int64_t* num) {
  for (; i0 + 8 * NV <= hd; i0 += 8 * NV) {
    __m256i even[NV], odd[NV];
    for (int c = 0; c < NV; ++c) even[c] = odd[c] = _mm256_setzero_si256();
    for (int64_t j = 0; j < keys; ++j) {
      if (j + kKeysAhead < keys) prefetch_int32(v + (j + kKeysAhead) * hd + i0, 8 * NV);
      const __m256i ej = _mm256_set1_epi64x(e[j]);  // 0 <= e <= 2^kAttnFrac: its low int32 half
      const int32_t* vr = v + j * hd + i0;
      for (int c = 0; c < NV; ++c) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr + 8 * c));
        even[c] = _mm256_add_epi64(even[c], _mm256_mul_epi32(ej, x));
        odd[c] = _mm256_add_epi64(odd[c], _mm256_mul_epi32(ej, _mm256_srli_epi64(x, 32)));
      }
    }
    for (int c = 0; c < NV; ++c) {
      alignas(32) int64_t a[4], b[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(a), even[c]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(b), odd[c]);
      for (int l = 0; l < 4; ++l) {
        num[i0 + 8 * c + 2 * l] = a[l];
        num[i0 + 8 * c + 2 * l + 1] = b[l];
      }
    }
  }
  return i0;
}
#endif

// num[i] = sum_j e[j] * v[j * hd + i] for i in [0, hd); 0 <= e[j] <= 2^kAttnFrac.
void weighted_sum(const int64_t* e, const int32_t* v, int64_t keys, int64_t hd, int64_t* num) {
  int64_t i0 = 0;
#if defined(__AVX512F__)
  for (; i0 + 32 <= hd; i0 += 32) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = 0; j < keys; ++j) {
      if (j + kKeysAhead < keys) prefetch_int32(v + (j + kKeysAhead) * hd + i0, 32);
      const __m512i ev = _mm512_set1_epi64(e[j]);
      const int32_t* vr = v + j * hd + i0;
      auto term = [&](int o) {
        return _mm512_mul_epi32(ev, _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vr + o))));
      };
      a0 = _mm512_add_epi64(a0, term(0));
      a1 = _mm512_add_epi64(a1, term(8));
      a2 = _mm512_add_epi64(a2, term(16));
      a3 = _mm512_add_epi64(a3, term(24));
    }
    _mm512_storeu_si512(num + i0, a0);
    _mm512_storeu_si512(num + i0 + 8, a1);
    _mm512_storeu_si512(num + i0 + 16, a2);
    _mm512_storeu_si512(num + i0 + 24, a3);
  }
#elif defined(__AVX2__)
  i0 = weighted_sum_avx2<4>(e, v, keys, hd, i0, num);
  i0 = weighted_sum_avx2<1>(e, v, keys, hd, i0, num);
#endif
  for (int64_t i = i0; i < hd; ++i) num[i] = 0;
  for (int64_t j = 0; j < keys && i0 < hd; ++j)
    for (int64_t i = i0; i < hd; ++i) num[i] += e[j] * v[j * hd + i];
}

// clamp32(round_div(num, den), kQKVLimit) without a 64-bit division per
// value: with m = |num| + floor(den / 2) the magnitude is floor(m / den).
// m / den in double (the quotient, a weighted mean of int32 values, is far
// below 2^50, so the estimate is off by less than one) and integer
// corrections, which make it exact whatever the estimate.
inline int32_t attention_output(int64_t num, int64_t den, double inv_den) {
  const int64_t m = (num < 0 ? -num : num) + den / 2;
  int64_t q = int64_t(double(m) * inv_den), r = m - q * den;
  while (r < 0) --q, r += den;
  while (r >= den) ++q, r -= den;
  return clamp32(num < 0 ? -q : q, kQKVLimit);
}

// Attention of one query row (qr, its keys at kb, values at vb): the path of
// the levels without vectors and of head sizes the grouped path does not take.
void attention_row(const int32_t* qr, const int32_t* kb, const int32_t* vb, int64_t keys, int64_t hd, int64_t* w,
                   int64_t* num, int32_t* out) {
  const int64_t inv_sqrt = inv_sqrt_q16(hd);
  int64_t peak = INT64_MIN;
  for (int64_t j = 0; j < keys; ++j) {
    if (j + kKeysAhead < keys) prefetch_int32(kb + (j + kKeysAhead) * hd, hd);
    w[j] = attention_score(dot_i32(qr, kb + j * hd, hd), inv_sqrt);
    peak = w[j] > peak ? w[j] : peak;
  }
  const int64_t den = attention_weights(w, keys, peak);
  weighted_sum(w, vb, keys, hd, num);
  const double inv_den = 1.0 / double(den);
  for (int64_t i = 0; i < hd; ++i) out[i] = attention_output(num[i], den, inv_den);
}

// Grouped attention: the query rows of one stream (a teacher-forced block of
// positions) read the same keys and values, so a group of them takes each key
// and value from memory once, for all its queries; one query at a time would
// stream the stream's whole cache from L2 or RAM again for every row. Each
// key's G dot products are summed across lanes together (one transpose-and-
// add tree for the group), and each value row is multiplied by the G
// queries' weights while it is in registers. At avx2 the products are int64
// lanes; at avx512 double lanes, where FMAs issue at twice vpmuldq's rate,
// within bounds that keep every sum exact. The integers are those of
// attention_row in every case.
#if defined(__AVX512F__)
constexpr int kAttnGroup = 8;       // queries per group: the int64 lanes of a zmm
constexpr int64_t kAttnChunk = 16;  // head dimensions per vector of int32
using Lanes = __m512i;
inline Lanes lanes_load(const void* p) { return _mm512_loadu_si512(p); }
inline void lanes_store(void* p, Lanes v) { _mm512_storeu_si512(p, v); }
inline Lanes lanes_zero() { return _mm512_setzero_si512(); }
inline Lanes lanes_add(Lanes a, Lanes b) { return _mm512_add_epi64(a, b); }
inline Lanes lanes_mul(Lanes a, Lanes b) { return _mm512_mul_epi32(a, b); }  // low int32 halves -> int64
inline Lanes lanes_swap(Lanes a) { return _mm512_shuffle_epi32(a, _MM_PERM_CDAB); }  // odd int32 to the low halves
inline Lanes lanes_set(int64_t x) { return _mm512_set1_epi64(x); }
// Lane g of the result: the sum of a[g]'s eight lanes.
__attribute__((always_inline)) inline Lanes lanes_transpose_sum(const Lanes* a) {
  // Two-source permutes of 128-bit chunks: (x.c0, x.c2, y.c0, y.c2) and (x.c1, x.c3, y.c1, y.c3).
  const __m512i even_chunks = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
  const __m512i odd_chunks = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
  Lanes t[4], u[2];
  for (int i = 0; i < 4; ++i)  // 128-bit chunk c: (a[2i], a[2i+1]) partial sums of chunk c
    t[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                            _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 2; ++i)  // chunks 0-1: pair 2i over two halves; 2-3: pair 2i + 1
    u[i] = _mm512_add_epi64(_mm512_permutex2var_epi64(t[2 * i], even_chunks, t[2 * i + 1]),
                            _mm512_permutex2var_epi64(t[2 * i], odd_chunks, t[2 * i + 1]));
  return _mm512_add_epi64(_mm512_permutex2var_epi64(u[0], even_chunks, u[1]),
                          _mm512_permutex2var_epi64(u[0], odd_chunks, u[1]));
}
#elif defined(__AVX2__)
constexpr int kAttnGroup = 4;
constexpr int64_t kAttnChunk = 8;
using Lanes = __m256i;
inline Lanes lanes_load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline void lanes_store(void* p, Lanes v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
inline Lanes lanes_zero() { return _mm256_setzero_si256(); }
inline Lanes lanes_add(Lanes a, Lanes b) { return _mm256_add_epi64(a, b); }
inline Lanes lanes_mul(Lanes a, Lanes b) { return _mm256_mul_epi32(a, b); }
inline Lanes lanes_swap(Lanes a) { return _mm256_shuffle_epi32(a, 0xb1); }
inline Lanes lanes_set(int64_t x) { return _mm256_set1_epi64x(x); }
__attribute__((always_inline)) inline Lanes lanes_transpose_sum(const Lanes* a) {
  const Lanes t0 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[0], a[1]), _mm256_unpackhi_epi64(a[0], a[1]));
  const Lanes t1 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[2], a[3]), _mm256_unpackhi_epi64(a[2], a[3]));
  return _mm256_add_epi64(_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t0, t1, 0x31));
}
#else
constexpr int kAttnGroup = 1;  // no vectors: one row at a time
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
constexpr int64_t kLanes64 = kAttnChunk / 2;  // int64 lanes per vector

// Scores w[g][j] of G query rows against keys [0, keys_max) from exact int64
// sums: products of int32 lanes, the odd dimensions moved into the low
// halves (q_odd: scratch of G x hd int32 for the queries'). Exact wherever
// hd max|q| max|k| < 2^63, which the integer M1's q and k (|.| <= kQKVLimit)
// keep far from.
template <int G>
void group_scores_int64(const int32_t* const* qr, const int32_t* kb, int64_t keys_max, int64_t hd, int64_t L,
                        int64_t inv_sqrt, int32_t* q_odd, int64_t* w) {
  for (int g = 0; g < G; ++g)
    for (int64_t c = 0; c < hd; c += kAttnChunk) lanes_store(q_odd + g * hd + c, lanes_swap(lanes_load(qr[g] + c)));
  for (int64_t j = 0; j < keys_max; ++j) {
    if (j + kKeysAhead < keys_max) prefetch_int32(kb + (j + kKeysAhead) * hd, hd);
    Lanes acc[kAttnGroup];
    for (int g = 0; g < kAttnGroup; ++g) acc[g] = lanes_zero();
    const int32_t* kr = kb + j * hd;
    for (int64_t c = 0; c < hd; c += kAttnChunk) {
      const Lanes k_even = lanes_load(kr + c), k_odd = lanes_swap(k_even);
      for (int g = 0; g < G; ++g)
        acc[g] = lanes_add(acc[g], lanes_add(lanes_mul(lanes_load(qr[g] + c), k_even),
                                             lanes_mul(lanes_load(q_odd + g * hd + c), k_odd)));
    }
    alignas(64) int64_t dots[kLanes64];
    lanes_store(dots, lanes_transpose_sum(acc));
    for (int g = 0; g < G; ++g) w[g * L + j] = attention_score(dots[g], inv_sqrt);
  }
}

// Blocks of keys at a time, so that a block's value rows stay in L1 while
// each chunk of dimensions passes over them.
constexpr int64_t kKeyBlock = 64;

#if defined(__AVX512F__)
// The same scores from double lanes: one FMA multiplies and adds 8 products
// where the int64 lanes take two instructions for 8, and AVX-512 cores issue
// two FMAs a cycle but one vpmuldq. Each lane of a query's accumulator sums
// hd / 8 products, all integers, exactly while (hd / 8) max|q| max|k| <=
// 2^53: for the integer M1's q and k (|.| <= 2^24) at every head size up to
// kMaxHeadDim. The lanes then go to int64 (exact) and into the same
// transpose-and-add tree. The largest magnitudes are tracked on the way;
// for inputs past the bound it returns false and the caller takes the int64
// sums. qd: scratch of G x hd doubles.
template <int G>
bool group_scores_double(const int32_t* const* qr, const int32_t* kb, int64_t keys_max, int64_t hd, int64_t L,
                         int64_t inv_sqrt, double* qd, int64_t* w) {
  __m512i q_max = _mm512_setzero_si512(), k_max = q_max;  // |.| as uint32 (|INT32_MIN| = 2^31)
  for (int g = 0; g < G; ++g)
    for (int64_t c = 0; c < hd; c += 16) {
      const __m512i x = _mm512_loadu_si512(qr[g] + c);
      q_max = _mm512_max_epu32(q_max, _mm512_abs_epi32(x));
      _mm512_storeu_pd(qd + g * hd + c, _mm512_cvtepi32_pd(_mm512_castsi512_si256(x)));
      _mm512_storeu_pd(qd + g * hd + c + 8, _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(x, 1)));
    }
  for (int64_t j = 0; j < keys_max; ++j) {
    if (j + kKeysAhead < keys_max) prefetch_int32(kb + (j + kKeysAhead) * hd, hd);
    __m512d acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_pd();
    const int32_t* kr = kb + j * hd;
    for (int64_t c = 0; c < hd; c += 16) {
      const __m512i k = _mm512_loadu_si512(kr + c);
      k_max = _mm512_max_epu32(k_max, _mm512_abs_epi32(k));
      const __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(k));
      const __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(k, 1));
      for (int g = 0; g < G; ++g) {
        acc[g] = _mm512_fmadd_pd(_mm512_loadu_pd(qd + g * hd + c), lo, acc[g]);
        acc[g] = _mm512_fmadd_pd(_mm512_loadu_pd(qd + g * hd + c + 8), hi, acc[g]);
      }
    }
    Lanes sums[kAttnGroup];
    for (int g = 0; g < G; ++g) sums[g] = _mm512_cvtpd_epi64(acc[g]);
    for (int g = G; g < kAttnGroup; ++g) sums[g] = lanes_zero();
    alignas(64) int64_t dots[kLanes64];
    lanes_store(dots, lanes_transpose_sum(sums));
    for (int g = 0; g < G; ++g) w[g * L + j] = attention_score(dots[g], inv_sqrt);
  }
  const uint64_t qm = _mm512_reduce_max_epu32(q_max), km = _mm512_reduce_max_epu32(k_max);  // <= 2^31 each
  return qm * km <= (uint64_t(1) << 53) / uint64_t(hd / 8);
}

// The weights of [0, n) as doubles, in place (integers below 2^53: exact).
void weights_to_double(int64_t* w, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm512_storeu_pd(w + j, _mm512_cvtepi64_pd(_mm512_loadu_si512(w + j)));
  for (; j < n; ++j) {
    const double d = double(w[j]);
    __builtin_memcpy(w + j, &d, sizeof d);
  }
}

// num[g][d] = sum_j w[g][j] v[j][d] in double lanes, the weights turned into
// doubles in place first: a block's sums are at most 64 weights of
// 2^kAttnFrac times |v| <= 2^31, 2^53, exact for every int32 value; each
// block's goes to int64 (exact) and is added there.
template <int G>
void group_sums(int64_t* w, const int32_t* vb, int64_t keys_max, int64_t hd, int64_t L, int64_t* num) {
  static_assert(kKeyBlock << (kAttnFrac + 31) <= int64_t(1) << 53, "a block's sums stay exact in double");
  for (int g = 0; g < G; ++g) weights_to_double(w + g * L, keys_max);
  const double* wd = reinterpret_cast<const double*>(w);
  for (int64_t j0 = 0; j0 < keys_max; j0 += kKeyBlock) {
    const int64_t j1 = j0 + kKeyBlock < keys_max ? j0 + kKeyBlock : keys_max;
    for (int64_t c = 0; c < hd; c += 16) {
      __m512d lo[G], hi[G];
      for (int g = 0; g < G; ++g) lo[g] = hi[g] = _mm512_setzero_pd();
      for (int64_t j = j0; j < j1; ++j) {
        if (j + kKeyBlock < keys_max) prefetch_int32(vb + (j + kKeyBlock) * hd + c, 16);  // the next block's
        const __m512i v = _mm512_loadu_si512(vb + j * hd + c);
        const __m512d v_lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(v));
        const __m512d v_hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1));
        for (int g = 0; g < G; ++g) {
          const __m512d e = _mm512_set1_pd(wd[g * L + j]);
          lo[g] = _mm512_fmadd_pd(e, v_lo, lo[g]);
          hi[g] = _mm512_fmadd_pd(e, v_hi, hi[g]);
        }
      }
      for (int g = 0; g < G; ++g) {
        int64_t* n = num + g * hd + c;
        const __m512i a = _mm512_cvtpd_epi64(lo[g]), b = _mm512_cvtpd_epi64(hi[g]);
        lanes_store(n, j0 ? lanes_add(lanes_load(n), a) : a);
        lanes_store(n + 8, j0 ? lanes_add(lanes_load(n + 8), b) : b);
      }
    }
  }
}
#else
// num[g][d] = sum_j w[g][j] v[j][d] in int64 lanes: per query and chunk,
// the even dimensions' sums (lane l: dimension c + 2l), then the odd ones',
// put in order at the end.
template <int G>
void group_sums(int64_t* w, const int32_t* vb, int64_t keys_max, int64_t hd, int64_t L, int64_t* num) {
  for (int64_t j0 = 0; j0 < keys_max; j0 += kKeyBlock) {
    const int64_t j1 = j0 + kKeyBlock < keys_max ? j0 + kKeyBlock : keys_max;
    for (int64_t c = 0; c < hd; c += kAttnChunk) {
      Lanes even[G], odd[G];
      for (int g = 0; g < G; ++g) {
        even[g] = j0 ? lanes_load(num + g * hd + c) : lanes_zero();
        odd[g] = j0 ? lanes_load(num + g * hd + c + kLanes64) : lanes_zero();
      }
      for (int64_t j = j0; j < j1; ++j) {
        if (j + kKeyBlock < keys_max) prefetch_int32(vb + (j + kKeyBlock) * hd + c, kAttnChunk);  // the next block's
        const Lanes v_even = lanes_load(vb + j * hd + c), v_odd = lanes_swap(v_even);
        for (int g = 0; g < G; ++g) {
          const Lanes e = lanes_set(w[g * L + j]);  // 0 <= e <= 2^kAttnFrac: its low int32 half
          even[g] = lanes_add(even[g], lanes_mul(e, v_even));
          odd[g] = lanes_add(odd[g], lanes_mul(e, v_odd));
        }
      }
      for (int g = 0; g < G; ++g) {
        lanes_store(num + g * hd + c, even[g]);
        lanes_store(num + g * hd + c + kLanes64, odd[g]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int64_t c = 0; c < hd; c += kAttnChunk) {
      int64_t split[kAttnChunk];
      __builtin_memcpy(split, num + g * hd + c, sizeof split);
      for (int64_t l = 0; l < kLanes64; ++l) {
        num[g * hd + c + 2 * l] = split[l];
        num[g * hd + c + 2 * l + 1] = split[kLanes64 + l];
      }
    }
}
#endif

// G query rows qr[0..G) of one stream and head, hd a multiple of kAttnChunk.
// scratch: int_attention_scratch(kAttnGroup, L, hd) int64.
template <int G>
void attention_group(const int32_t* const* qr, const int64_t* keys, const int32_t* kb, const int32_t* vb,
                     int64_t hd, int64_t L, int64_t* scratch, int32_t* const* out) {
  int64_t* w = scratch;                        // [G][L] scores, then weights
  int64_t* num = scratch + kAttnGroup * L;     // [G][hd] weighted sums
  int64_t* queries = num + kAttnGroup * hd;    // [G][hd]: the queries as the score loop takes them
  int64_t keys_max = 0;
  for (int g = 0; g < G; ++g) keys_max = keys[g] > keys_max ? keys[g] : keys_max;
  const int64_t inv_sqrt = inv_sqrt_q16(hd);
#if defined(__AVX512F__)
  if (!group_scores_double<G>(qr, kb, keys_max, hd, L, inv_sqrt, reinterpret_cast<double*>(queries), w))
#endif
    group_scores_int64<G>(qr, kb, keys_max, hd, L, inv_sqrt, reinterpret_cast<int32_t*>(queries), w);
  int64_t den[G];
  for (int g = 0; g < G; ++g) {
    int64_t* wg = w + g * L;
    int64_t peak = INT64_MIN;
    for (int64_t j = 0; j < keys[g]; ++j) peak = wg[j] > peak ? wg[j] : peak;
    den[g] = attention_weights(wg, keys[g], peak);
    for (int64_t j = keys[g]; j < keys_max; ++j) wg[j] = 0;  // beyond this query's position
  }
  group_sums<G>(w, vb, keys_max, hd, L, num);
  for (int g = 0; g < G; ++g) {
    const double inv_den = 1.0 / double(den[g]);
    for (int64_t d = 0; d < hd; ++d) out[g][d] = attention_output(num[g * hd + d], den[g], inv_den);
  }
}

// attention_group<G> for a run-time G in [1, kAttnGroup].
template <int G = kAttnGroup>
void attention_group_of(int g, const int32_t* const* qr, const int64_t* keys, const int32_t* kb, const int32_t* vb,
                        int64_t hd, int64_t L, int64_t* scratch, int32_t* const* out) {
  if constexpr (G >= 1) {
    if (g == G) return attention_group<G>(qr, keys, kb, vb, hd, L, scratch, out);
    attention_group_of<G - 1>(g, qr, keys, kb, vb, hd, L, scratch, out);
  }
}
#endif

void attention_groups(const int32_t* q, const int32_t* k_cache, const int32_t* v_cache, const int64_t* streams,
                      const int64_t* positions, const int64_t* group_first, const int32_t* group_size,
                      int64_t begin, int64_t end, int64_t H, int64_t hd, int64_t L, int64_t* scratch, int32_t* out) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t group = item / H, h = item % H, first = group_first[group], G = group_size[group];
    const int64_t base = (streams[first] * H + h) * L * hd;  // this stream and head's keys/values
    const int32_t* qr[kAttnGroup];
    int32_t* orow[kAttnGroup];
    int64_t keys[kAttnGroup];
    for (int64_t g = 0; g < G; ++g) {
      qr[g] = q + ((first + g) * H + h) * hd;
      orow[g] = out + ((first + g) * H + h) * hd;
      keys[g] = positions[first + g] + 1;
    }
#if defined(__AVX512F__) || defined(__AVX2__)
    if (G > 1 && hd % kAttnChunk == 0) {  // a lone row is faster on its own path
      attention_group_of(int(G), qr, keys, k_cache + base, v_cache + base, hd, L, scratch, orow);
      continue;
    }
#endif
    for (int64_t g = 0; g < G; ++g)
      attention_row(qr[g], k_cache + base, v_cache + base, keys[g], hd, scratch, scratch + L, orow[g]);
  }
}

void coder_weights_rows(const int32_t* logits, int64_t begin, int64_t end, int64_t V, int32_t* out) {
  static_assert(kCoderFrac < 30, "exp_lanes takes out_frac < 30");
  for (int64_t n = begin; n < end; ++n) {
    const int32_t* lr = logits + n * V;
    int32_t* o = out + n * V;
    int32_t peak = INT32_MIN;
    for (int64_t v = 0; v < V; ++v) peak = lr[v] > peak ? lr[v] : peak;
    int64_t v = 0;
#if defined(__AVX512F__)
    const __m512i vpeak = _mm512_set1_epi64(peak);
    for (; v + kExpLanes <= V; v += kExpLanes) {
      const __m512i d = _mm512_sub_epi64(
          _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lr + v))), vpeak);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + v), _mm512_cvtepi64_epi32(exp_lanes(d, kCoderFrac)));
    }
#elif defined(__AVX2__)
    const __m256i vpeak = _mm256_set1_epi64x(peak);
    for (; v + kExpLanes <= V; v += kExpLanes) {
      const __m256i d = _mm256_sub_epi64(
          _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lr + v))), vpeak);
      // The weights are at most 2^kCoderFrac: the low halves of the lanes, gathered.
      const __m256i e = _mm256_permutevar8x32_epi32(exp_lanes(d, kCoderFrac), _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + v), _mm256_castsi256_si128(e));
    }
#endif
    for (; v < V; ++v) o[v] = int32_t(exp_nonpositive(int64_t(lr[v]) - peak, kCoderFrac));
  }
}

// ---- the coder ops' loops over rows
// Asks for a row's cache lines ahead of its coding: coding a sequence streams
// its distributions from RAM, and the first pass over each row would
// otherwise wait on memory.
template <typename T>
void prefetch_row(const T* row, int64_t V) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < V * int64_t(sizeof(T)); off += 64) __builtin_prefetch(p + off);
}

// How many rows ahead the loops ask for: about 6 KiB. A row takes 70-200 ns
// to code, a read from RAM about as long, and the lines in flight must cover
// it. For byte alphabets in float32 (6 rows), against the 2 rows before,
// encoding from RAM ran 5-18% faster and decoding 0-8% at avx2 and avx512
// (docs/performance.md); at avx512, 12 rows ahead was no better than 2.
inline int64_t prefetch_distance(int64_t V, int64_t elem_bytes) {
  const int64_t rows = 6144 / (V * elem_bytes);
  return rows < 1 ? 1 : rows;
}

// Each loop has a copy for byte alphabets with V a constant (kV = 256; 0:
// V as given): the row passes then unroll fully and their reductions become
// trees. At avx512 that made a row 20% faster with the rows in cache (71
// against 89 ns) and about 5% from RAM.
template <int64_t kV, typename T>
void cdf_rows_of(const T* rows, int64_t n, int64_t V_, int precision, bool logits, uint32_t* q, uint32_t* cdf,
                 int32_t* status) {
  const int64_t V = kV ? kV : V_;
  const int64_t ahead = prefetch_distance(V, sizeof(T));
  for (int64_t r = 0; r < n; ++r) {
    if (r + ahead < n) prefetch_row(rows + (r + ahead) * V, V);
    uint32_t* out = cdf + r * (V + 1);
    status[r] = quantize_row_cdf(rows + r * V, V, precision, logits, q, out);
    if (status[r] != kOk)
      for (int64_t i = 0; i <= V; ++i) out[i] = 0;
  }
}

template <typename T>
void cdf_rows(const T* rows, int64_t n, int64_t V, int precision, bool logits, uint32_t* q, uint32_t* cdf,
              int32_t* status) {
  if (V == 256) cdf_rows_of<256>(rows, n, V, precision, logits, q, cdf, status);
  else cdf_rows_of<0>(rows, n, V, precision, logits, q, cdf, status);
}

// The encoder's and decoder's loops ask for the row prefetch_distance rows
// on in three parts, one before each pass over the current row, rather than
// all at once: a burst of a whole row's requests (16 lines of float32 at
// V = 256) waits for free line-fill buffers and holds up the passes behind
// it. From RAM, encoding took 0.92x-0.97x the time at avx2 and avx512 and
// decoding 0.94x-1.0x (docs/performance.md, "CPU levels").
template <typename T>
struct PrefetchInParts {
  const char* row;  // nullptr: nothing to ask for
  int64_t bytes, third;
  PrefetchInParts(const T* rows, int64_t stride, int64_t V, int64_t t, int64_t len)
      : row(t + prefetch_distance(V, sizeof(T)) < len
                ? reinterpret_cast<const char*>(rows + (t + prefetch_distance(V, sizeof(T))) * stride)
                : nullptr),
        bytes(V * int64_t(sizeof(T))),
        third((bytes / 3 + 63) / 64 * 64) {}
  void part(int k) const {  // k = 0, 1, 2
    for (int64_t off = k * third; row && off < (k + 1) * third && off < bytes; off += 64) __builtin_prefetch(row + off);
  }
};

// quantize_row_prepare with the parts of the row ahead asked for before each
// of its passes and before the step that follows. raw_max: the row's raw max
// when an earlier row's pass took it (RowsAhead), else 0; the scan is skipped when
// it proves the row valid.
template <bool kArgmax, typename T>
inline int32_t prepare_asking_ahead(const T* row, int64_t V, int precision, bool logits, uint32_t raw_max,
                                    const PrefetchInParts<T>& ahead, uint32_t* q, QuantParams* qp) {
  ahead.part(0);
  uint32_t max_w = raw_max;
  float max_logit = 0.0f;
  if (!raw_max_is_weight(raw_max)) {
    const int32_t st = scan_row(row, V, logits, &max_w, &max_logit);
    if (st != kOk) return st;
  }
  ahead.part(1);
  *qp = fixed_point_params<kArgmax>(row, V, precision, logits, max_w, max_logit, q);
  ahead.part(2);
  return kOk;
}

// Float32 probability rows (kAhead) hand the current row's last pass work
// on the rows after it (RowsAhead). The decoder scans the next row there. The
// encoder scans the row after next and takes the next row, whose largest
// weight it knows by then, to fixed point, into the second half of the
// scratch (stream_scratch_words): that row then starts at its last pass.
// Rows past the stream's end are replaced by its last row, so that the loops
// have no branch for them. On an AMD EPYC (Zen 5), against a scan pass per
// row, the scan ahead took encoding to 0.83x / 0.85x the time at avx2 /
// avx512 and decoding to 0.91x / 0.92x; the fixed point ahead then took
// encoding to 0.83x again at avx2 (kFixAheadPays; docs/performance.md, "CPU
// levels").
template <typename T>
const uint32_t* row_bits_at_or_last(const T* rows, int64_t stride, int64_t t, int64_t len) {
  return reinterpret_cast<const uint32_t*>(rows + (t < len ? t : len - 1) * stride);
}

template <int64_t kV, bool kAhead, typename T, typename S>
int32_t encode_stream_of(const T* rows, int64_t stride, const S* symbols, int64_t len, int64_t V_, int precision,
                         bool logits, uint32_t* q, uint8_t* out, int64_t cap, int64_t* nbits) {
  static_assert(!kAhead || sizeof(T) == 4, "RowsAhead reads float32 rows");
  const int64_t V = kV ? kV : V_;
  *nbits = 0;
  StreamEncoder enc;
  stream_encoder_init(&enc);
  uint32_t* q_next = q + symbol_scratch_words(V);
  // Row t's raw max and row t + 1's, where an earlier row's pass took them
  // (0: not known); whether row t's q are in q already, and their sum.
  uint32_t raw_max = 0, next_raw_max = 0, fixed_sum = 0;
  bool fixed = false;
  for (int64_t t = 0; t < len; ++t) {
    const int64_t s = symbols[t];
    if (s < 0 || s >= V) return kErrSymbol;
    const T* row = rows + t * stride;
    const PrefetchInParts<T> prefetch(rows, stride, V, t, len);
    QuantParams qp;
    if (kAhead && fixed) {
      prefetch.part(0);
      prefetch.part(1);
      qp = params_from_sum(fixed_sum, int32_t(V), raw_max, precision, V);
      prefetch.part(2);
    } else {
      const int32_t st = prepare_asking_ahead<false>(row, V, precision, logits, raw_max, prefetch, q, &qp);
      if (st != kOk) return st;
    }
    uint32_t cum, freq;
    if (kAhead) {
      RowsAhead ahead;
      ahead.scan_bits = row_bits_at_or_last(rows, stride, t + 2, len);
      fixed = false;
      if constexpr (kFixAheadPays) {
        fixed = t + 1 < len && V <= 512 && raw_max_is_weight(next_raw_max) && fixed_point_by_product(next_raw_max);
        if (fixed) {
          ahead.fix_row = reinterpret_cast<const float*>(row + stride);
          ahead.fix_scale = fixed_point_scale(next_raw_max);
          ahead.fix_q = q_next;
          symbol_interval<kScanAndFixAhead>(q, qp, s, V, precision, &cum, &freq, &ahead);
          fixed_sum = ahead.fix_sum;
          q_next = q;
          q = ahead.fix_q;
        }
      }
      if (!fixed) symbol_interval<kScanAhead>(q, qp, s, V, precision, &cum, &freq, &ahead);
      raw_max = next_raw_max;
      next_raw_max = ahead.raw_max;
    } else {
      symbol_interval(q, qp, s, V, precision, &cum, &freq);
    }
    const int32_t st = stream_encode(&enc, out, cap, cum, freq, precision);
    if (st != kOk) return st;
  }
  const int64_t n = stream_encode_finish(&enc, out, cap);
  if (n < 0) return kErrOutputFull;
  *nbits = n;
  return kOk;
}

template <typename T, typename S>
int32_t encode_stream_as(const T* rows, int64_t stride, const S* symbols, int64_t len, int64_t V, int precision,
                         bool logits, uint32_t* q, uint8_t* out, int64_t cap, int64_t* nbits) {
  constexpr bool kFloat32 = sizeof(T) == 4;
  if (kFloat32 && !logits)
    return V == 256
               ? encode_stream_of<256, kFloat32>(rows, stride, symbols, len, V, precision, logits, q, out, cap, nbits)
               : encode_stream_of<0, kFloat32>(rows, stride, symbols, len, V, precision, logits, q, out, cap, nbits);
  return V == 256 ? encode_stream_of<256, false>(rows, stride, symbols, len, V, precision, logits, q, out, cap, nbits)
                  : encode_stream_of<0, false>(rows, stride, symbols, len, V, precision, logits, q, out, cap, nbits);
}

template <typename T>
int32_t encode_stream(const T* rows, int64_t stride, const void* symbols, bool wide, int64_t len, int64_t V,
                      int precision, bool logits, uint32_t* q, uint8_t* out, int64_t cap, int64_t* nbits) {
  return wide ? encode_stream_as(rows, stride, static_cast<const int64_t*>(symbols), len, V, precision, logits, q,
                                 out, cap, nbits)
              : encode_stream_as(rows, stride, static_cast<const int32_t*>(symbols), len, V, precision, logits, q,
                                 out, cap, nbits);
}

template <int64_t kV, bool kAhead, typename T>
int32_t decode_stream_of(const T* rows, int64_t stride, int64_t len, int64_t V_, int precision, bool logits,
                         uint32_t* q, const uint8_t* in, int64_t nbytes, int64_t* symbols) {
  static_assert(!kAhead || sizeof(T) == 4, "RowsAhead reads float32 rows");
  const int64_t V = kV ? kV : V_;
  StreamDecoder dec;
  stream_decoder_init(&dec, in, nbytes);
  RowsAhead ahead;  // ahead.raw_max: row t's, where row t - 1's pass took it (0: not known)
  for (int64_t t = 0; t < len; ++t) {
    QuantParams qp;
    int32_t st = prepare_asking_ahead<true>(rows + t * stride, V, precision, logits, ahead.raw_max,
                                            PrefetchInParts<T>(rows, stride, V, t, len), q, &qp);
    if (st != kOk) return st;
    int64_t s;
    uint32_t cum, freq;
    if (kAhead) ahead.scan_bits = row_bits_at_or_last(rows, stride, t + 1, len);
    find_symbol<kAhead ? kScanAhead : kNothingAhead>(q, qp, V, precision, stream_decode_target(&dec, precision), &s,
                                                      &cum, &freq, &ahead);
    st = stream_decode_consume(&dec, in, nbytes, cum, freq, precision);
    if (st != kOk) return st;
    symbols[t] = s;
  }
  return kOk;
}

template <typename T>
int32_t decode_stream(const T* rows, int64_t stride, int64_t len, int64_t V, int precision, bool logits,
                      uint32_t* q, const uint8_t* in, int64_t nbytes, int64_t* symbols) {
  constexpr bool kFloat32 = sizeof(T) == 4;
  if (kFloat32 && !logits)
    return V == 256 ? decode_stream_of<256, kFloat32>(rows, stride, len, V, precision, logits, q, in, nbytes, symbols)
                    : decode_stream_of<0, kFloat32>(rows, stride, len, V, precision, logits, q, in, nbytes, symbols);
  return V == 256 ? decode_stream_of<256, false>(rows, stride, len, V, precision, logits, q, in, nbytes, symbols)
                  : decode_stream_of<0, false>(rows, stride, len, V, precision, logits, q, in, nbytes, symbols);
}

int64_t vocab_encode(const void* nodes, const uint8_t* data, int64_t n, int32_t* out, int64_t* failed_at) {
  return vocab::encode_document(static_cast<const vocab::TrieNode*>(nodes), data, n, out, failed_at);
}

const CpuKernels kTable = {
    NCX_STRINGIFY(NCX_LEVEL_NAMESPACE) + 6,  // "level_avx2" -> "avx2"
    {&quantize_row_cdf<float>, &quantize_row_symbol<float>, &quantize_row_find<float>, &cdf_rows<float>,
     &encode_stream<float>, &decode_stream<float>},
    {&quantize_row_cdf<uint16_t>, &quantize_row_symbol<uint16_t>, &quantize_row_find<uint16_t>, &cdf_rows<uint16_t>,
     &encode_stream<uint16_t>, &decode_stream<uint16_t>},
    &quantize_rows,
    PairLanes::kLanes,
    &pair_packed_size,
    &pair_pack,
    &pair_gemm_rows,
    &dequantize_rows,
    &rms_norm_rows,
    &rope_rows,
    kAttnGroup,
    &attention_groups,
    &coder_weights_rows,
    &vocab_encode,
};

}  // namespace

// This level's table (declared per level in csrc/cpu/cpu_level.cpp).
const CpuKernels* kernel_table() { return &kTable; }

}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
