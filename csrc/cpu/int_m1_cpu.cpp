// CPU back end of the integer M1 ops: at::parallel_for over rows, each range
// of rows running the level's loops (csrc/cpu/kernels.h), and the int8 matrix
// products in torch._int_mm or the level's own kernel. Integer results do not depend on the order of
// summation, so they equal the CUDA kernels' integers.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../ops_common.h"
#include "cpu_level.h"
#include "kernels.h"

namespace ncx {
namespace {

using at::Tensor;

// The weight int8 [D, K] in the level's panels (packed in parallel).
Tensor pack_weight(const CpuKernels& kernels, const Tensor& weight) {
  const int64_t D = weight.size(0), K = weight.size(1), lanes = kernels.int_gemm_lanes;
  Tensor packed = at::empty({kernels.int_gemm_packed_size(D, K)}, weight.options().dtype(at::kShort));
  at::parallel_for(0, (D + lanes - 1) / lanes, 4, [&](int64_t begin, int64_t end) {
    kernels.int_gemm_pack(weight.data_ptr<int8_t>(), D, K, begin, end, packed.data_ptr<int16_t>());
  });
  return packed;
}

// Whether torch._int_mm (oneDNN's int8 GEMM, int32 accumulation) gives the
// exact products here. With VNNI or AMX it does; without them oneDNN's int8
// kernels add pairs of products in saturating 16-bit lanes, which products
// of +-127 overflow. Checked once against the pmaddwd kernel on such
// products, over the shapes the integer M1 uses.
bool int_mm_is_exact() {
  static const bool exact = [] {
    try {
      const CpuKernels& kernels = cpu_kernels();
      for (int64_t N : {1, 7, 64, 512})
        for (int64_t K : {256, 1024})
          for (int64_t D : {257, 768}) {
            // Rows alternate +127 / -127 runs, so products of both signs saturate.
            Tensor q = at::full({N, K}, 127, at::kChar);
            q.slice(0, 0, N, 2).neg_();
            Tensor w = at::full({D, K}, 127, at::kChar);
            w.slice(1, 0, K, 3).neg_();
            Tensor q16 = q.to(at::kShort).contiguous(), want = at::empty({N, D}, at::kInt);
            kernels.int_gemm_rows(q16.data_ptr<int16_t>(), pack_weight(kernels, w).data_ptr<int16_t>(), 0, N, D, K,
                                  want.data_ptr<int32_t>());
            if (!at::equal(at::_int_mm(q, w.t()), want)) return false;
          }
      return true;
    } catch (const std::exception&) {
      return false;  // no int8 GEMM in this torch
    }
  }();
  return exact;
}

bool use_int_mm() { return std::string(cpu_kernels().level) == "avx512" && int_mm_is_exact(); }

// x quantized row by row, times the int8 weight, dequantized. At the avx512
// level (VNNI), where the probe found it exact, the products are
// torch._int_mm's; otherwise the level's pmaddwd kernel's, which beats a
// float32 GEMM of the same shape there (docs/performance.md, "CPU levels"),
// each block of rows quantized, multiplied and dequantized in one pass.
Tensor int_linear_cpu(const Tensor& x_in, const Tensor& weight_in, const Tensor& multiplier_in,
                      const Tensor& shift_in) {
  check_int_linear(x_in, weight_in, multiplier_in, shift_in);
  Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  Tensor multiplier = multiplier_in.contiguous(), shift = shift_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  const CpuKernels& kernels = cpu_kernels();
  Tensor scale = at::empty({N, 2}, x.options());
  Tensor out = at::empty({N, D}, x.options());
  if (N == 0 || D == 0) return out;
  if (use_int_mm()) {
    Tensor q = at::empty({N, K}, x.options().dtype(at::kChar));
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      kernels.int_quantize_rows(x.data_ptr<int32_t>(), begin, end, K, q.data_ptr<int8_t>(), nullptr,
                                scale.data_ptr<int32_t>());
    });
    const Tensor acc = at::_int_mm(q, weight.t()).contiguous();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      kernels.int_dequantize_rows(acc.data_ptr<int32_t>(), begin, end, D, scale.data_ptr<int32_t>(),
                                  multiplier.data_ptr<int32_t>(), shift.data_ptr<int32_t>(), out.data_ptr<int32_t>());
    });
    return out;
  }
  const Tensor packed = pack_weight(kernels, weight);
  const int64_t Kp = K + (K & 1);
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    // kRows rows at a time, so that their int16 inputs and int32 products
    // stay in this core's cache (and no [N, D] buffer is allocated).
    constexpr int64_t kRows = 32;
    std::vector<int16_t> q16(kRows * Kp);
    std::vector<int32_t> acc(kRows * D);
    for (int64_t r0 = begin; r0 < end; r0 += kRows) {
      const int64_t rows = std::min(end - r0, kRows);
      int32_t* row_scale = scale.data_ptr<int32_t>() + 2 * r0;
      kernels.int_quantize_rows(x.data_ptr<int32_t>() + r0 * K, 0, rows, K, nullptr, q16.data(), row_scale);
      kernels.int_gemm_rows(q16.data(), packed.data_ptr<int16_t>(), 0, rows, D, K, acc.data());
      kernels.int_dequantize_rows(acc.data(), 0, rows, D, row_scale, multiplier.data_ptr<int32_t>(),
                                  shift.data_ptr<int32_t>(), out.data_ptr<int32_t>() + r0 * D);
    }
  });
  return out;
}

Tensor int_rms_norm_cpu(const Tensor& x_in, const Tensor& gain_in) {
  check_int_rms_norm(x_in, gain_in);
  Tensor x = x_in.contiguous(), gain = gain_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  Tensor out = at::empty_like(x);
  const CpuKernels& kernels = cpu_kernels();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    kernels.int_rms_norm_rows(x.data_ptr<int32_t>(), gain.data_ptr<int32_t>(), begin, end, C,
                              out.data_ptr<int32_t>());
  });
  return out;
}

Tensor int_rope_cpu(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in, const Tensor& positions_in) {
  check_int_rope(x_in, cos_in, sin_in, positions_in);
  check_index_range(positions_in, cos_in.size(0), "positions");
  Tensor x = x_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  Tensor positions = positions_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), hd = x.size(2);
  Tensor out = at::empty_like(x);
  const CpuKernels& kernels = cpu_kernels();
  at::parallel_for(0, N * H, 64, [&](int64_t begin, int64_t end) {
    kernels.int_rope_rows(x.data_ptr<int32_t>(), cos.data_ptr<int32_t>(), sin.data_ptr<int32_t>(),
                          positions.data_ptr<int64_t>(), begin, end, H, hd, out.data_ptr<int32_t>());
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
  const CpuKernels& kernels = cpu_kernels();
  // Consecutive rows of one stream (a block of positions) form a group, up
  // to the level's group size: they share their keys and values.
  const int64_t* st = streams.data_ptr<int64_t>();
  std::vector<int64_t> group_first;
  std::vector<int32_t> group_size;
  for (int64_t n = 0; n < N;) {
    int32_t g = 1;
    while (g < kernels.int_attention_group && n + g < N && st[n + g] == st[n]) ++g;
    group_first.push_back(n);
    group_size.push_back(g);
    n += g;
  }
  const int64_t items = int64_t(group_first.size()) * H;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch(int_attention_scratch(kernels.int_attention_group, L, hd));
    kernels.int_attention_groups(q.data_ptr<int32_t>(), k_cache.data_ptr<int32_t>(), v_cache.data_ptr<int32_t>(),
                                 st, positions.data_ptr<int64_t>(), group_first.data(), group_size.data(), begin,
                                 end, H, hd, L, scratch.data(), out.data_ptr<int32_t>());
  });
  return out;
}

Tensor int_coder_weights_cpu(const Tensor& logits_in) {
  check_int_logits(logits_in);
  Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor out = at::empty_like(logits);
  const CpuKernels& kernels = cpu_kernels();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    kernels.int_coder_weights_rows(logits.data_ptr<int32_t>(), begin, end, V, out.data_ptr<int32_t>());
  });
  return out;
}

}  // namespace

std::string cpu_int8_gemm() {
  return use_int_mm() ? "torch._int_mm (int8, int32 sums)" : "ncx pmaddwd kernel (int16 pairs, int32 sums)";
}

TORCH_LIBRARY_IMPL(ncx, CPU, m) {
  m.impl("int_linear", &int_linear_cpu);
  m.impl("int_rms_norm", &int_rms_norm_cpu);
  m.impl("int_rope", &int_rope_cpu);
  m.impl("int_attention", &int_attention_cpu);
  m.impl("int_coder_weights", &int_coder_weights_cpu);
}

}  // namespace ncx
