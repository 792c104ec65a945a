// CPU back end of the integer M1 ops: at::parallel_for over rows, each row
// running the integer routines of csrc/core/int_m1.h. Integer sums do not
// depend on their order, so the vectorized loops the compiler makes of them
// (AVX-512/VNNI where -march=native allows) give the CUDA kernels' integers.
#include <ATen/Parallel.h>

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

Tensor int_linear_cpu(const Tensor& x_in, const Tensor& weight_in, const Tensor& multiplier_in,
                      const Tensor& shift_in) {
  check_int_linear(x_in, weight_in, multiplier_in, shift_in);
  Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  Tensor multiplier = multiplier_in.contiguous(), shift = shift_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  Tensor out = at::empty({N, D}, x.options());
  const int32_t* xp = x.data_ptr<int32_t>();
  const int8_t* wp = weight.data_ptr<int8_t>();
  const int32_t* mp = multiplier.data_ptr<int32_t>();
  const int32_t* sp = shift.data_ptr<int32_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> q(kRowBlock * K);
    RowScale rs[kRowBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kRowBlock, rows = std::min(kRowBlock, N - r0);
      for (int64_t r = 0; r < rows; ++r) {
        const int32_t* xr = xp + (r0 + r) * K;
        rs[r] = row_scale(row_amax(xr, K));
        for (int64_t k = 0; k < K; ++k) q[r * K + k] = quantize_activation(xr[k], rs[r]);
      }
      for (int64_t d = 0; d < D; ++d) {
        const int8_t* wr = wp + d * K;
        for (int64_t r = 0; r < rows; ++r)
          op[(r0 + r) * D + d] = dequantize(dot_i8(q.data() + r * K, wr, K), rs[r], mp[d], sp[d]);
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
        const int32_t* kr = kp + base + j * hd;
        int64_t dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += int64_t(qr[i]) * kr[i];
        w[j] = attention_score(dot, inv_sqrt);
        peak = std::max(peak, w[j]);
      }
      int64_t den = 0;
      std::fill(num.begin(), num.end(), int64_t(0));
      for (int64_t j = 0; j < keys; ++j) {
        const int64_t e = exp_nonpositive(w[j] - peak, kAttnFrac);
        den += e;
        const int32_t* vr = vp + base + j * hd;
        for (int64_t i = 0; i < hd; ++i) num[i] += e * vr[i];
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
