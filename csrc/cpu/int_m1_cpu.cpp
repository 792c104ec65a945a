// CPU back end of the integer M1 ops: at::parallel_for over rows, each row
// running the integer routines of csrc/core/int_m1.h. Integer sums do not
// depend on their order, so the vectorized loops the compiler makes of them
// (AVX-512/VNNI where -march=native allows) give the CUDA kernels' integers.
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
// GCC 12's own _mm512_reduce_add_* trip its -Wmaybe-uninitialized (a false
// positive inside avx512fintrin.h).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include <algorithm>
#include <vector>

#include "../ops_common.h"

namespace ncx {
namespace {

using at::Tensor;
using namespace intm1;

int32_t dot_sum_i8(const int8_t* w, int64_t K) {
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += w[k];
  return s;
}

uint32_t row_amax(const int32_t* x, int64_t K) {
  uint32_t m = 0;
  for (int64_t k = 0; k < K; ++k) m = std::max(m, magnitude(x[k]));
  return m;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// VNNI multiplies unsigned by signed bytes, so a row's int8 values are stored
// offset by 128 (as uint8) and 128 * sum_k w[d, k] is subtracted again:
// sum (q + 128) w - 128 sum w = sum q w, an identity on integers, so the
// result is dot_i8's. Rows are padded to a multiple of 64 bytes; weight rows
// are loaded masked at their tail (zeros), so padding contributes nothing.
constexpr bool kVnni = true;
constexpr int kQOffset = 128;

// The 16 lane sums of 16 vectors, in one vector (lane c = sum of a[c]): a
// tree of unpacks and 128-bit lane shuffles instead of 16 separate
// reductions, which would cost more than the dot products for small K.
__m512i sum16(const __m512i* a) {
  __m512i b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]),
                            _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // 128-bit lane l of c[i]: partial sums of a[4i..4i+3]
    c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]),
                            _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
  const __m512i d0 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88), _mm512_shuffle_i32x4(c[0], c[1], 0xDD));
  const __m512i d1 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2], c[3], 0x88), _mm512_shuffle_i32x4(c[2], c[3], 0xDD));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(d0, d1, 0x88), _mm512_shuffle_i32x4(d0, d1, 0xDD));
}

__mmask64 tail_mask(int64_t left) { return left >= 64 ? ~__mmask64(0) : ((__mmask64(1) << left) - 1); }

// acc[d] = sum_k q[k] w[d, k] for every channel d, q stored offset by 128;
// offset[d] = 128 * sum_k w[d, k].
void row_dots(const uint8_t* q, const int8_t* w, int64_t K, int64_t D, const int32_t* offset, int32_t* acc) {
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    __m512i a[16];
    for (auto& v : a) v = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64) {
      const __mmask64 m = tail_mask(K - k);
      const __m512i x = _mm512_loadu_si512(q + k);
      for (int c = 0; c < 16; ++c) a[c] = _mm512_dpbusd_epi32(a[c], x, _mm512_maskz_loadu_epi8(m, w + (d + c) * K + k));
    }
    _mm512_storeu_si512(acc + d, _mm512_sub_epi32(sum16(a), _mm512_loadu_si512(offset + d)));
  }
  for (; d < D; ++d) {
    __m512i a = _mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 64)
      a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(q + k), _mm512_maskz_loadu_epi8(tail_mask(K - k), w + d * K + k));
    acc[d] = _mm512_reduce_add_epi32(a) - offset[d];
  }
}
#else
constexpr bool kVnni = false;
constexpr int kQOffset = 0;

void row_dots(const uint8_t* q, const int8_t* w, int64_t K, int64_t D, const int32_t*, int32_t* acc) {
  for (int64_t d = 0; d < D; ++d) acc[d] = dot_i8(reinterpret_cast<const int8_t*>(q), w + d * K, K);
}
#endif

Tensor int_linear_cpu(const Tensor& x_in, const Tensor& weight_in, const Tensor& multiplier_in,
                      const Tensor& shift_in) {
  check_int_linear(x_in, weight_in, multiplier_in, shift_in);
  Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  Tensor multiplier = multiplier_in.contiguous(), shift = shift_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  const int64_t stride = kVnni ? (K + 63) / 64 * 64 : K;
  Tensor out = at::empty({N, D}, x.options());
  const int32_t* xp = x.data_ptr<int32_t>();
  const int8_t* wp = weight.data_ptr<int8_t>();
  const int32_t* mp = multiplier.data_ptr<int32_t>();
  const int32_t* sp = shift.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  std::vector<int32_t> offset(D, 0);
  if (kVnni)
    for (int64_t d = 0; d < D; ++d) offset[d] = kQOffset * dot_sum_i8(wp + d * K, K);
  at::parallel_for(0, N, 4, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> q(stride, uint8_t(kQOffset));  // padding: any value (its weights are zero)
    std::vector<int32_t> acc(D);
    for (int64_t n = begin; n < end; ++n) {
      const int32_t* xr = xp + n * K;
      const RowScale rs = row_scale(row_amax(xr, K));
      for (int64_t k = 0; k < K; ++k) q[k] = uint8_t(quantize_activation(xr[k], rs) + kQOffset);
      row_dots(q.data(), wp, K, D, offset.data(), acc.data());
      for (int64_t d = 0; d < D; ++d) op[n * D + d] = dequantize(acc[d], rs, mp[d], sp[d]);
    }
  });
  return out;
}

Tensor int_rms_norm_cpu(const Tensor& x_in, const Tensor& gain_in) {
  check_int_rms_norm(x_in, gain_in);
  Tensor x = x_in.contiguous(), gain = gain_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  Tensor out = at::empty_like(x);
  const int32_t* xp = x.data_ptr<int32_t>();
  const int32_t* gp = gain.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int32_t* xr = xp + n * C;
      const int s = norm_shift(row_amax(xr, C));
      int64_t ss = 0;
      for (int64_t c = 0; c < C; ++c) {
        int64_t v = norm_scaled(xr[c], s);
        ss += v * v;
      }
      const int64_t rms = norm_rms(ss, C);
      for (int64_t c = 0; c < C; ++c) op[n * C + c] = norm_apply(norm_scaled(xr[c], s), gp[c], rms);
    }
  });
  return out;
}

Tensor int_rope_cpu(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in, const Tensor& positions_in) {
  check_int_rope(x_in, cos_in, sin_in, positions_in);
  check_index_range(positions_in, cos_in.size(0), "positions");
  Tensor x = x_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  Tensor positions = positions_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), hd = x.size(2), half = hd / 2;
  Tensor out = at::empty_like(x);
  const int32_t* xp = x.data_ptr<int32_t>();
  const int32_t* cp = cos.data_ptr<int32_t>();
  const int32_t* snp = sin.data_ptr<int32_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  int32_t* op = out.data_ptr<int32_t>();
  at::parallel_for(0, N * H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t p = pp[nh / H];
      const int32_t* xr = xp + nh * hd;
      int32_t* o = op + nh * hd;
      for (int64_t i = 0; i < half; ++i) {
        const int32_t c = cp[p * half + i], s = snp[p * half + i];
        o[i] = rope_first(xr[i], xr[i + half], c, s);
        o[i + half] = rope_second(xr[i], xr[i + half], c, s);
      }
    }
  });
  return out;
}

// Attention's int64 sums of int32 products. With AVX-512 the products come
// from vpmuldq (signed 32 x 32 -> 64 bits of sign-extended lanes): exact, so
// the sums equal the scalar loop's.
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
#endif
  for (; i < n; ++i) s += int64_t(a[i]) * b[i];
  return s;
}

// acc[i] += e * v[i] for |e| < 2^31.
void axpy_i32(int64_t* acc, int64_t e, const int32_t* v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512i ev = _mm512_set1_epi64(e);
  for (; i + 8 <= n; i += 8) {
    const __m512i vv = _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + i)));
    _mm512_storeu_si512(acc + i, _mm512_add_epi64(_mm512_loadu_si512(acc + i), _mm512_mul_epi32(ev, vv)));
  }
#endif
  for (; i < n; ++i) acc[i] += e * v[i];
}

Tensor int_attention_cpu(const Tensor& q_in, const Tensor& k_cache, const Tensor& v_cache, const Tensor& streams_in,
                         const Tensor& positions_in) {
  check_int_attention(q_in, k_cache, v_cache, streams_in, positions_in);
  check_index_range(streams_in, k_cache.size(0), "streams");
  check_index_range(positions_in, k_cache.size(2), "positions");
  Tensor q = q_in.contiguous(), streams = streams_in.contiguous(), positions = positions_in.contiguous();
  const int64_t N = q.size(0), H = q.size(1), hd = q.size(2), L = k_cache.size(2);
  Tensor out = at::empty_like(q);
  const int32_t* qp = q.data_ptr<int32_t>();
  const int32_t* kp = k_cache.data_ptr<int32_t>();
  const int32_t* vp = v_cache.data_ptr<int32_t>();
  const int64_t* sp = streams.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const int64_t inv_sqrt = inv_sqrt_q16(hd);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> w(L), num(hd);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H, keys = pp[n] + 1;
      const int32_t* qr = qp + nh * hd;
      const int64_t base = (sp[n] * H + h) * L * hd;  // this stream and head's keys/values
      int64_t peak = INT64_MIN;
      for (int64_t j = 0; j < keys; ++j) {
        w[j] = attention_score(dot_i32(qr, kp + base + j * hd, hd), inv_sqrt);
        peak = std::max(peak, w[j]);
      }
      int64_t den = 0;
      std::fill(num.begin(), num.end(), int64_t(0));
      for (int64_t j = 0; j < keys; ++j) {
        const int64_t e = exp_nonpositive(w[j] - peak, kAttnFrac);
        den += e;
        axpy_i32(num.data(), e, vp + base + j * hd, hd);
      }
      for (int64_t i = 0; i < hd; ++i) op[nh * hd + i] = clamp32(round_div(num[i], den), kQKVLimit);
    }
  });
  return out;
}

Tensor int_coder_weights_cpu(const Tensor& logits_in) {
  check_int_logits(logits_in);
  Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor out = at::empty_like(logits);
  const int32_t* lp = logits.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int32_t* lr = lp + n * V;
      const int32_t peak = *std::max_element(lr, lr + V);
      for (int64_t v = 0; v < V; ++v)
        op[n * V + v] = int32_t(exp_nonpositive(int64_t(lr[v]) - peak, kCoderFrac));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ncx, CPU, m) {
  m.impl("int_linear", &int_linear_cpu);
  m.impl("int_rms_norm", &int_rms_norm_cpu);
  m.impl("int_rope", &int_rope_cpu);
  m.impl("int_attention", &int_attention_cpu);
  m.impl("int_coder_weights", &int_coder_weights_cpu);
}

}  // namespace ncx
