// CPU back end of the integer M1 ops: at::parallel_for over rows, each range
// of rows running the level's loops (csrc/cpu/kernels.h), and the int8 matrix
// products in a library GEMM. Integer results do not depend on the order of
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

// Slices of K no longer than this make a float32 GEMM of int8 values exact:
// every partial sum is an integer of magnitude below 1040 * 127 * 127 < 2^24,
// which float32 holds exactly whatever the order of summation (and inputs of
// magnitude <= 127 are exact in bfloat16 and TF32 too, should a reduced
// matmul precision be set, since those still accumulate in float32).
constexpr int64_t kExactFloatK = 1040;

// acc[n, d] = sum_k q[n, k] w[d, k] for q float [N, K] (integer values) by
// float32 GEMMs: float [N, D] for one slice of K, int32 [N, D] summed over
// several.
Tensor float_gemm(const Tensor& q, const Tensor& w) {
  const int64_t K = q.size(1);
  if (K <= kExactFloatK) return at::mm(q, w.to(at::kFloat).t());
  Tensor acc;
  for (int64_t k0 = 0; k0 < K; k0 += kExactFloatK) {
    const int64_t k1 = std::min(K, k0 + kExactFloatK);
    Tensor part = at::mm(q.slice(1, k0, k1), w.slice(1, k0, k1).to(at::kFloat).t()).to(at::kInt);
    acc = acc.defined() ? acc.add_(part) : part;
  }
  return acc;
}

// Whether torch._int_mm (oneDNN's int8 GEMM, int32 accumulation) gives the
// exact products here. With VNNI or AMX it does; without them oneDNN's int8
// kernels add pairs of products in saturating 16-bit lanes, which products
// of +-127 overflow. Checked once against float_gemm on such products, over
// the shapes the integer M1 uses.
bool int_mm_is_exact() {
  static const bool exact = [] {
    try {
      for (int64_t N : {1, 7, 64, 512})
        for (int64_t K : {256, 1024})
          for (int64_t D : {257, 768}) {
            // Rows alternate +127 / -127 runs, so products of both signs saturate.
            Tensor q = at::full({N, K}, 127, at::kChar);
            q.slice(0, 0, N, 2).neg_();
            Tensor w = at::full({D, K}, 127, at::kChar);
            w.slice(1, 0, K, 3).neg_();
            if (!at::equal(at::_int_mm(q, w.t()), float_gemm(q.to(at::kFloat), w).to(at::kInt))) return false;
          }
      return true;
    } catch (const std::exception&) {
      return false;  // no int8 GEMM in this torch
    }
  }();
  return exact;
}

bool use_int_mm() { return std::string(cpu_kernels().level) == "avx512" && int_mm_is_exact(); }

// x quantized row by row, times the int8 weight: torch._int_mm at the avx512
// level (VNNI) where the probe found it exact, float32 GEMMs otherwise; then
// dequantized.
Tensor int_linear_cpu(const Tensor& x_in, const Tensor& weight_in, const Tensor& multiplier_in,
                      const Tensor& shift_in) {
  check_int_linear(x_in, weight_in, multiplier_in, shift_in);
  Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  Tensor multiplier = multiplier_in.contiguous(), shift = shift_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  const CpuKernels& kernels = cpu_kernels();
  const bool int_mm = use_int_mm();
  Tensor q = at::empty({N, K}, x.options().dtype(int_mm ? at::kChar : at::kFloat));
  Tensor scale = at::empty({N, 2}, x.options());
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    kernels.int_quantize_rows(x.data_ptr<int32_t>(), begin, end, K, int_mm ? q.data_ptr<int8_t>() : nullptr,
                              int_mm ? nullptr : q.data_ptr<float>(), scale.data_ptr<int32_t>());
  });
  Tensor acc;
  if (N == 0 || D == 0) acc = at::zeros({N, D}, x.options());
  else acc = (int_mm ? at::_int_mm(q, weight.t()) : float_gemm(q, weight)).contiguous();
  const bool acc_float = acc.scalar_type() == at::kFloat;
  Tensor out = at::empty({N, D}, x.options());
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    kernels.int_dequantize_rows(acc_float ? nullptr : acc.data_ptr<int32_t>(), acc_float ? acc.data_ptr<float>() : nullptr,
                                begin, end, D, scale.data_ptr<int32_t>(), multiplier.data_ptr<int32_t>(),
                                shift.data_ptr<int32_t>(), out.data_ptr<int32_t>());
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
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch(L + hd);
    kernels.int_attention_rows(q.data_ptr<int32_t>(), k_cache.data_ptr<int32_t>(), v_cache.data_ptr<int32_t>(),
                               streams.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), begin, end, H, hd, L,
                               scratch.data(), out.data_ptr<int32_t>());
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
  return use_int_mm() ? "torch._int_mm (int8, int32 sums)" : "float32 GEMM of int8 values (exact, K sliced at 1040)";
}

TORCH_LIBRARY_IMPL(ncx, CPU, m) {
  m.impl("int_linear", &int_linear_cpu);
  m.impl("int_rms_norm", &int_rms_norm_cpu);
  m.impl("int_rope", &int_rope_cpu);
  m.impl("int_attention", &int_attention_cpu);
  m.impl("int_coder_weights", &int_coder_weights_cpu);
}

}  // namespace ncx
