// CUDA dispatch of the integer M1 ops (csrc/cuda/int_m1_kernels.cu): the
// argument checks shared with the CPU back end, output and scratch allocation,
// and the launches on the current stream. The CPU op range-checks positions
// and streams (reading them: a sync); these never synchronize, the kernels
// clamp the indices into range instead (memory safety only: an index out of
// range is still a caller's mistake and gives a meaningless row).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "../ops_common.h"
#include "dispatch_common.h"
#include "int_m1_kernels.h"

namespace ncx {
namespace {

using at::Tensor;

// Index range [0, limit) that no value can satisfy: the only check left from
// the CPU's check_index_range that needs no values (clamping needs limit >= 1).
void check_index_limit(const Tensor& t, int64_t limit, const char* name) {
  TORCH_CHECK(t.numel() == 0 || limit > 0, name, " must lie in [0, ", limit, "), which is empty");
}

// x [N, K] quantized row by row, times the int8 weight [D, K], dequantized:
// the products either in torch._int_mm (cuBLASLt on the tensor cores, int32
// accumulation: exact, like the kernel's __dp4a) or in the tiled kernel.
Tensor int_linear_on(const Tensor& x, const Tensor& weight, const Tensor& multiplier, const Tensor& shift,
                     bool int_mm) {
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  Tensor out = at::empty({N, D}, x.options());
  if (N == 0 || D == 0) return out;
  Tensor q = at::empty({N, cuda::int_linear_padded_k(K)}, x.options().dtype(at::kChar));
  Tensor rs = at::empty({N, 2}, x.options());
  if (int_mm) {
    cuda::launch_int_linear_quantize(x.data_ptr<int32_t>(), N, K, q.data_ptr<int8_t>(), rs.data_ptr<int32_t>(),
                                     stream());
    check_launch();
    const Tensor acc = at::_int_mm(q, weight.t()).contiguous();  // q has no padding: K % 64 == 0
    cuda::launch_int_linear_dequantize(acc.data_ptr<int32_t>(), rs.data_ptr<int32_t>(),
                                       multiplier.data_ptr<int32_t>(), shift.data_ptr<int32_t>(), N, D,
                                       out.data_ptr<int32_t>(), stream());
  } else {
    cuda::launch_int_linear(x.data_ptr<int32_t>(), weight.data_ptr<int8_t>(), multiplier.data_ptr<int32_t>(),
                            shift.data_ptr<int32_t>(), N, K, D, q.data_ptr<int8_t>(), rs.data_ptr<int32_t>(),
                            out.data_ptr<int32_t>(), stream());
  }
  check_launch();
  return out;
}

// Shapes torch._int_mm takes (more than 16 rows, K and D multiples of 8; here
// K a multiple of the quantizer's padding, so q needs none).
bool int_mm_shape(int64_t N, int64_t K, int64_t D) {
  return N > 16 && K % cuda::kIntLinearKTile == 0 && D % 8 == 0;
}

// Whether torch._int_mm runs on this device and gives the kernel's integers:
// probed once per device on the integer M1's shapes, with products of +-127
// that an inexact path would get wrong. Anything else (an error, another
// result, NCX_CUDA_INT_MM=0) keeps the kernel.
bool int_mm_works(const at::Device& device) {
  static std::mutex lock;
  static std::map<int, bool> works;
  std::lock_guard<std::mutex> guard(lock);
  const auto found = works.find(device.index());
  if (found != works.end()) return found->second;
  bool ok = false;
  const char* env = std::getenv("NCX_CUDA_INT_MM");
  if (!(env && std::string(env) == "0")) {
    try {
      auto opts = at::TensorOptions().device(device);
      ok = true;
      for (int64_t K : {256, 1024}) {
        const int64_t N = 40, D = 768;
        Tensor x = at::randint(-(int64_t(1) << 30), int64_t(1) << 30, {N, K}, at::kInt).to(device);
        x.select(0, 0).fill_(int64_t(1) << 30);
        Tensor w = at::randint(-127, 128, {D, K}, at::kChar).to(device);
        w.select(0, 0).fill_(127);
        Tensor m = at::full({D}, int64_t(1) << 14, opts.dtype(at::kInt));
        Tensor sh = at::full({D}, 20, opts.dtype(at::kInt));
        ok = ok && at::equal(int_linear_on(x, w, m, sh, true), int_linear_on(x, w, m, sh, false));
      }
    } catch (const std::exception&) {
      ok = false;
    }
  }
  works[device.index()] = ok;
  return ok;
}

Tensor int_linear_cuda(const Tensor& x_in, const Tensor& weight_in, const Tensor& multiplier_in,
                       const Tensor& shift_in) {
  check_int_linear(x_in, weight_in, multiplier_in, shift_in);
  check_cuda(x_in, "x");
  check_cuda(weight_in, "weight");
  check_cuda(multiplier_in, "multiplier");
  check_cuda(shift_in, "shift");
  c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), D = weight.size(0);
  const bool int_mm = int_mm_shape(N, K, D) && int_mm_works(x.device());
  return int_linear_on(x, weight, multiplier_in.contiguous(), shift_in.contiguous(), int_mm);
}

Tensor int_rms_norm_cuda(const Tensor& x_in, const Tensor& gain_in) {
  check_int_rms_norm(x_in, gain_in);
  check_cuda(x_in, "x");
  check_cuda(gain_in, "gain");
  c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = x_in.contiguous(), gain = gain_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1);
  Tensor out = at::empty_like(x);
  if (N == 0) return out;
  cuda::launch_int_rms_norm(x.data_ptr<int32_t>(), gain.data_ptr<int32_t>(), N, C, out.data_ptr<int32_t>(),
                            stream());
  check_launch();
  return out;
}

Tensor int_rope_cuda(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in, const Tensor& positions_in) {
  check_int_rope(x_in, cos_in, sin_in, positions_in);
  check_cuda(x_in, "x");
  check_cuda(cos_in, "cos");
  check_cuda(sin_in, "sin");
  check_cuda(positions_in, "positions");
  check_index_limit(positions_in, cos_in.size(0), "positions");
  c10::cuda::CUDAGuard guard(x_in.device());
  Tensor x = x_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  Tensor positions = positions_in.contiguous();
  const int64_t N = x.size(0), H = x.size(1), hd = x.size(2);
  Tensor out = at::empty_like(x);
  if (N * H == 0) return out;
  cuda::launch_int_rope(x.data_ptr<int32_t>(), cos.data_ptr<int32_t>(), sin.data_ptr<int32_t>(),
                        positions.data_ptr<int64_t>(), N, H, hd, cos.size(0), out.data_ptr<int32_t>(), stream());
  check_launch();
  return out;
}

Tensor int_attention_cuda(const Tensor& q_in, const Tensor& k_cache, const Tensor& v_cache, const Tensor& streams_in,
                          const Tensor& positions_in) {
  check_int_attention(q_in, k_cache, v_cache, streams_in, positions_in);
  check_cuda(q_in, "q");
  check_cuda(k_cache, "k_cache");
  check_cuda(v_cache, "v_cache");
  check_cuda(streams_in, "streams");
  check_cuda(positions_in, "positions");
  check_index_limit(streams_in, k_cache.size(0), "streams");
  check_index_limit(positions_in, k_cache.size(2), "positions");
  c10::cuda::CUDAGuard guard(q_in.device());
  Tensor q = q_in.contiguous(), streams = streams_in.contiguous(), positions = positions_in.contiguous();
  const int64_t N = q.size(0), H = q.size(1), hd = q.size(2), S = k_cache.size(0), L = k_cache.size(2);
  Tensor out = at::empty_like(q);
  if (N * H == 0) return out;
  Tensor scratch = at::empty({N * H, L}, q.options().dtype(at::kLong));
  cuda::launch_int_attention(q.data_ptr<int32_t>(), k_cache.data_ptr<int32_t>(), v_cache.data_ptr<int32_t>(),
                             streams.data_ptr<int64_t>(), positions.data_ptr<int64_t>(), N, H, hd, S, L,
                             scratch.data_ptr<int64_t>(), out.data_ptr<int32_t>(), stream());
  check_launch();
  return out;
}

Tensor int_coder_weights_cuda(const Tensor& logits_in) {
  check_int_logits(logits_in);
  check_cuda(logits_in, "logits");
  c10::cuda::CUDAGuard guard(logits_in.device());
  Tensor logits = logits_in.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor out = at::empty_like(logits);
  if (N == 0) return out;
  cuda::launch_int_coder_weights(logits.data_ptr<int32_t>(), N, V, out.data_ptr<int32_t>(), stream());
  check_launch();
  return out;
}

}  // namespace

std::string cuda_int8_gemm(int64_t device_index) {
  const at::Device device(at::kCUDA, c10::DeviceIndex(device_index));
  c10::cuda::CUDAGuard guard(device);
  return int_mm_works(device) ? "torch._int_mm (cuBLASLt int8, int32 sums) where the shape allows, else the ncx kernel"
                              : "ncx __dp4a kernel (int8, int32 sums)";
}

TORCH_LIBRARY_IMPL(ncx, CUDA, m) {
  m.impl("int_linear", &int_linear_cuda);
  m.impl("int_rms_norm", &int_rms_norm_cuda);
  m.impl("int_rope", &int_rope_cuda);
  m.impl("int_attention", &int_attention_cuda);
  m.impl("int_coder_weights", &int_coder_weights_cuda);
}

}  // namespace ncx
