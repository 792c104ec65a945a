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

uint32_t row_amax(const int32_t* x, int64_t K) {
  uint32_t m = 0;
  for (int64_t k = 0; k < K; ++k) m = std::max(m, magnitude(x[k]));
  return m;
}

// Rows are quantized to int8 a block at a time and each weight row is read
// once per block, which keeps the weights in cache across the block's rows.
constexpr int64_t kRowBlock = 8;

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// VNNI multiplies unsigned by signed bytes, so the block's int8 rows are
// stored offset by 128 (as uint8) and 128 * sum_k w[k] is subtracted again:
// sum (q + 128) w - 128 sum w = sum q w, an identity on integers, so the
// result is dot_i8's. Rows are padded to a multiple of 64 bytes; the weight
// row's tail is loaded masked (zeros), so padding contributes nothing.
constexpr bool kVnni = true;
constexpr int kQOffset = 128;

void dot_block(const uint8_t* q, int64_t stride, const int8_t* w, int64_t K, int32_t* acc) {
  __m512i a[kRowBlock];
  for (auto& v : a) v = _mm512_setzero_si512();
  __m512i wsum = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 m = K - k >= 64 ? ~__mmask64(0) : ((__mmask64(1) << (K - k)) - 1);
    const __m512i wv = _mm512_maskz_loadu_epi8(m, w + k);
    wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
    for (int64_t r = 0; r < kRowBlock; ++r) a[r] = _mm512_dpbusd_epi32(a[r], _mm512_loadu_si512(q + r * stride + k), wv);
  }
  const int32_t ws = _mm512_reduce_add_epi32(wsum);
  for (int64_t r = 0; r < kRowBlock; ++r) acc[r] = _mm512_reduce_add_epi32(a[r]) - kQOffset * ws;
}
#else
constexpr bool kVnni = false;
constexpr int kQOffset = 0;

void dot_block(const uint8_t* q, int64_t stride, const int8_t* w, int64_t K, int32_t* acc) {
  for (int64_t r = 0; r < kRowBlock; ++r) acc[r] = dot_i8(reinterpret_cast<const int8_t*>(q + r * stride), w, K);
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
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> q(kRowBlock * stride, uint8_t(kQOffset));  // unused rows/padding: any value
    RowScale rs[kRowBlock];
    int32_t acc[kRowBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kRowBlock, rows = std::min(kRowBlock, N - r0);
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t* xr = xp + (r0 + r) * K;
        rs[r] = row_scale(row_amax(xr, K));
        for (int64_t k = 0; k < K; ++k) q[r * stride + k] = uint8_t(quantize_activation(xr[k], rs[r]) + kQOffset);
      }
      for (int64_t d = 0; d < D; ++d) {
        dot_block(q.data(), stride, wp + d * K, K, acc);
        for (int64_t r = 0; r < rows; ++r) op[(r0 + r) * D + d] = dequantize(acc[r], rs[r], mp[d], sp[d]);
      }
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
