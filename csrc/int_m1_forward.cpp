// The integer M1's whole forward (every layer) as one op, for every device:
// it composes the ncx::int_* ops through the dispatcher, so each device runs
// its own kernels, and does the glue between them (residual adds, the KV
// cache writes, the ReLU) without a Python dispatch per piece. A coding step
// is then one call from Python, and on a GPU it launches kernels only: no
// value is read back to the host, so the step can be captured in a CUDA graph.
// The integers are those of composing the single ops (ncx.int_m1 documents
// the model; tests/test_int_m1.py compares the two).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIndexing.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/int_m1.h"

namespace ncx {
namespace {

using at::Tensor;
using Unary = Tensor(const Tensor&);
using Binary = Tensor(const Tensor&, const Tensor&);
using Quaternary = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using Quinary = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&);

template <typename Signature>
c10::TypedOperatorHandle<Signature> ncx_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

constexpr int32_t kInt32Limit = std::numeric_limits<int32_t>::max();  // residual adds saturate at +-(2^31 - 1)

// x += y, saturated to +-(2^31 - 1); x [N, C] contiguous.
void add_saturating_(Tensor& x, const Tensor& y_in) {
  if (!x.is_cpu()) {
    x.copy_(at::add(x.to(at::kLong), y_in).clamp_(-kInt32Limit, kInt32Limit));
    return;
  }
  const Tensor y = y_in.contiguous();
  int32_t* xp = x.data_ptr<int32_t>();
  const int32_t* yp = y.data_ptr<int32_t>();
  at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
    // In 32-bit lanes, so that the loop vectorizes at this file's baseline
    // target (SSE2 has no 64-bit compares): the sum wraps exactly when both
    // operands differ in sign from it, and then saturates the way its
    // operands point; -2^31 itself is held at -(2^31 - 1).
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t a = uint32_t(xp[i]), b = uint32_t(yp[i]), w = a + b;
      const int32_t wrapped = int32_t((a ^ w) & (b ^ w)) >> 31;      // all ones where it wrapped
      const int32_t saturated = (int32_t(a) >> 31) ^ kInt32Limit;   // INT32_MAX, or ~INT32_MAX = -2^31
      const int32_t r = (wrapped & saturated) | (~wrapped & int32_t(w));
      xp[i] = r == std::numeric_limits<int32_t>::min() ? -kInt32Limit : r;
    }
  });
}

// cache[streams[n], :, positions[n]] = rows[n] (rows [N, H, hd], any strides),
// each value clamped to +-limit.
void write_cache_(Tensor& cache, const Tensor& rows, const Tensor& streams, const Tensor& positions, int32_t limit) {
  if (!cache.is_cpu()) {
    // No value is read back: indices out of range are clamped (memory safety
    // only, as in the CUDA ops: such a row is a caller's mistake).
    using at::indexing::Slice;
    cache.index_put_({streams.clamp(0, cache.size(0) - 1), Slice(), positions.clamp(0, cache.size(2) - 1)},
                     rows.clamp(-limit, limit));
    return;
  }
  const int64_t N = rows.size(0), H = rows.size(1), hd = rows.size(2), S = cache.size(0), L = cache.size(2);
  const int64_t* sp = streams.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n)
    TORCH_CHECK(sp[n] >= 0 && sp[n] < S && pp[n] >= 0 && pp[n] < L, "row ", n, ": stream ", sp[n], " position ",
                pp[n], " is outside the cache [", S, ", ", L, "]");
  const Tensor src = rows.contiguous();
  const int32_t* in = src.data_ptr<int32_t>();
  int32_t* out = cache.data_ptr<int32_t>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const int32_t* from = in + (n * H + h) * hd;
        int32_t* to = out + ((sp[n] * H + h) * L + pp[n]) * hd;
        for (int64_t d = 0; d < hd; ++d) to[d] = std::clamp(from[d], -limit, limit);
      }
  });
}

// The tensors of ncx.int_m1.IntM1 in the order IntM1.flat_weights lists them.
constexpr int64_t kGlobalWeights = 7;  // wte, norm_f, head.{weight,multiplier,shift}, rope_cos, rope_sin
constexpr int64_t kLayerWeights = 14;  // norm1, norm2, {qkv,proj,fc,fc_proj}.{weight,multiplier,shift}

Tensor int_m1_forward(const Tensor& tokens, const Tensor& streams_in, const Tensor& positions_in,
                      at::TensorList weights, at::TensorList k_cache, at::TensorList v_cache, int64_t n_head) {
  static const auto linear_op = ncx_op<Quaternary>("ncx::int_linear");
  static const auto norm_op = ncx_op<Binary>("ncx::int_rms_norm");
  static const auto rope_op = ncx_op<Quaternary>("ncx::int_rope");
  static const auto attention_op = ncx_op<Quinary>("ncx::int_attention");
  static const auto coder_weights_op = ncx_op<Unary>("ncx::int_coder_weights");

  const int64_t n_layer = int64_t(k_cache.size());
  TORCH_CHECK(n_layer >= 1 && int64_t(v_cache.size()) == n_layer, "k_cache and v_cache must hold one cache per ",
              "layer (at least one), got ", k_cache.size(), " and ", v_cache.size());
  TORCH_CHECK(int64_t(weights.size()) == kGlobalWeights + kLayerWeights * n_layer, "weights must hold ",
              kGlobalWeights + kLayerWeights * n_layer, " tensors for ", n_layer, " layers, got ", weights.size());
  TORCH_CHECK(tokens.dim() == 1 && streams_in.sizes() == tokens.sizes() && positions_in.sizes() == tokens.sizes() &&
                  streams_in.scalar_type() == at::kLong && positions_in.scalar_type() == at::kLong,
              "tokens, streams and positions must be 1-D of one length (streams and positions int64), got ",
              tokens.sizes(), ", ", streams_in.sizes(), " and ", positions_in.sizes());
  const Tensor& wte = weights[0];
  TORCH_CHECK(wte.dim() == 2 && wte.scalar_type() == at::kInt, "wte must be int32 [V, C], got ", wte.sizes());
  TORCH_CHECK(tokens.device() == wte.device() && streams_in.device() == wte.device() &&
                  positions_in.device() == wte.device(),
              "tokens, streams and positions must be on the weights' device ", wte.device());
  const int64_t N = tokens.size(0), C = wte.size(1), H = n_head;
  TORCH_CHECK(H >= 1 && C % H == 0, "n_head ", H, " must divide the width ", C);
  const int64_t hd = C / H;
  for (int64_t i = 0; i < n_layer; ++i) {  // written before int_attention checks them
    const Tensor &k = k_cache[i], &v = v_cache[i];
    TORCH_CHECK(k.scalar_type() == at::kInt && k.dim() == 4 && k.size(1) == H && k.size(3) == hd &&
                    k.is_contiguous() && v.sizes() == k.sizes() && v.scalar_type() == at::kInt && v.is_contiguous() &&
                    k.device() == wte.device() && v.device() == wte.device(),
                "the caches of layer ", i, " must be contiguous int32 [S, ", H, ", L, ", hd, "] on ", wte.device(),
                ", got ", k.sizes(), " and ", v.sizes());
  }
  const Tensor streams = streams_in.contiguous(), positions = positions_in.contiguous();
  const Tensor &cos = weights[5], &sin = weights[6];
  auto linear = [&](const Tensor& x, int64_t first) {
    return linear_op.call(x, weights[first], weights[first + 1], weights[first + 2]);
  };

  // On a CPU index_select range-checks the tokens; elsewhere they are clamped (no value read back).
  const Tensor token_rows = tokens.is_cpu() ? tokens.to(at::kLong) : tokens.to(at::kLong).clamp(0, wte.size(0) - 1);
  Tensor x = wte.index_select(0, token_rows).contiguous();  // [N, C] Q16
  for (int64_t i = 0; i < n_layer; ++i) {
    const int64_t w = kGlobalWeights + kLayerWeights * i;  // norm1, norm2, qkv, proj, fc, fc_proj
    Tensor qkv = linear(norm_op.call(x, weights[w]), w + 2).view({N, 3, H, hd});
    Tensor qk = rope_op.call(qkv.slice(1, 0, 2).reshape({N, 2 * H, hd}), cos, sin, positions).view({N, 2, H, hd});
    Tensor k_layer = k_cache[i], v_layer = v_cache[i];
    write_cache_(k_layer, qk.select(1, 1), streams, positions, intm1::kQKVLimit);
    write_cache_(v_layer, qkv.select(1, 2), streams, positions, intm1::kQKVLimit);
    Tensor attended = attention_op.call(qk.select(1, 0), k_layer, v_layer, streams, positions);
    add_saturating_(x, linear(attended.view({N, C}), w + 5));
    Tensor hidden = linear(norm_op.call(x, weights[w + 1]), w + 8).clamp_min_(0);  // ReLU
    add_saturating_(x, linear(hidden, w + 11));
  }
  return coder_weights_op.call(linear(norm_op.call(x, weights[1]), 2));
}

}  // namespace

TORCH_LIBRARY_IMPL(ncx, CompositeExplicitAutograd, m) { m.impl("int_m1_forward", &int_m1_forward); }

}  // namespace ncx
