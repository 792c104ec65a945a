// Argument checks and output allocation shared by the CPU and CUDA back ends,
// so both reject the same mistakes with the same messages.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include "core/coder.h"
#include "core/int_m1.h"

namespace ncx {

inline void check_precision(int64_t precision, int64_t V) {
  TORCH_CHECK(precision >= kMinPrecision && precision <= kMaxPrecision,
              "precision must be in [", kMinPrecision, ", ", kMaxPrecision, "], got ", precision);
  TORCH_CHECK((int64_t(1) << precision) >= V, "precision ", precision,
              " is too small for an alphabet of ", V, " symbols (every symbol needs frequency >= 1, so 2^precision >= V)");
}

inline void check_budget(int64_t budget_bits, int64_t precision) {
  TORCH_CHECK(budget_bits >= 8 && budget_bits <= 128 && budget_bits % 8 == 0,
              "budget_bits must be a multiple of 8 in [8, 128], got ", budget_bits);
  TORCH_CHECK(precision <= budget_bits - 2, "precision ", precision, " must be at most budget_bits - 2 = ",
              budget_bits - 2, " so that any single symbol fits a window");
}

// dist: [..., V] with the last dimension contiguous; float32 or bfloat16.
inline int64_t check_dist(const at::Tensor& dist, int64_t dims, const char* shape) {
  TORCH_CHECK(dist.dim() == dims, "dist must have shape ", shape, ", got ", dist.sizes());
  TORCH_CHECK(dist.scalar_type() == at::kFloat || dist.scalar_type() == at::kBFloat16,
              "dist must be float32 or bfloat16, got ", dist.scalar_type());
  int64_t V = dist.size(-1);
  TORCH_CHECK(V >= 2 && V <= kMaxAlphabet, "alphabet size V (last dim of dist) must be in [2, ",
              kMaxAlphabet, "], got ", V);
  TORCH_CHECK(dist.stride(-1) == 1, "dist must be contiguous in its last dimension");
  return V;
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* an, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

inline void check_index_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, name,
              " must be int64 or int32, got ", t.scalar_type());
}

inline void check_state(const at::Tensor& state, int64_t B, int64_t words, const char* kind) {
  TORCH_CHECK(state.scalar_type() == at::kLong && state.dim() == 2 && state.size(0) == B &&
                  state.size(1) == words && state.is_contiguous(),
              kind, " state must be a contiguous int64 tensor of shape [", B, ", ", words, "], got ",
              state.scalar_type(), " ", state.sizes());
}

// lengths [B] within [0, T] (reads the values: one sync on a GPU).
inline void check_lengths(const at::Tensor& lengths, int64_t B, int64_t T) {
  check_index_tensor(lengths, "lengths");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "lengths must have shape [B] = [", B, "], got ",
              lengths.sizes());
  if (B) {
    auto mn = lengths.min().item<int64_t>(), mx = lengths.max().item<int64_t>();
    TORCH_CHECK(mn >= 0 && mx <= T, "lengths must lie in [0, T] = [0, ", T, "], got min ", mn, " max ", mx);
  }
}

// data uint8 [B, N] and nbits [B] (shapes only).
inline void check_data(const at::Tensor& data, const at::Tensor& nbits, int64_t B) {
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 2 && data.size(0) == B,
              "data must be a uint8 tensor of shape [B, N] with B = ", B, ", got ", data.scalar_type(), " ",
              data.sizes());
  check_index_tensor(nbits, "nbits");
  TORCH_CHECK(nbits.dim() == 1 && nbits.size(0) == B, "nbits must have shape [B] = [", B, "], got ", nbits.sizes());
}

// nbits within what data can hold (reads the values: one sync on a GPU).
inline void check_nbits_range(const at::Tensor& data, const at::Tensor& nbits) {
  if (nbits.numel()) {
    auto mn = nbits.min().item<int64_t>(), mx = nbits.max().item<int64_t>();
    TORCH_CHECK(mn >= 0 && mx <= data.size(1) * 8, "nbits must lie in [0, 8 * N] = [0, ", data.size(1) * 8,
                "], got min ", mn, " max ", mx);
  }
}

// dist [B, V] and symbols [B] of a step op; returns V and sets B.
inline int64_t check_step_args(const at::Tensor& dist, const at::Tensor& symbols, int64_t& B) {
  int64_t V = check_dist(dist, 2, "[B, V]");
  B = dist.size(0);
  check_index_tensor(symbols, "symbols");
  TORCH_CHECK(symbols.dim() == 1 && symbols.size(0) == B, "symbols must have shape [B] = [", B, "], got ",
              symbols.sizes());
  return V;
}

// A stream encoder's output buffer: contiguous uint8 [B, capacity].
inline void check_out_buffer(const at::Tensor& out, int64_t B) {
  TORCH_CHECK(out.scalar_type() == at::kByte && out.dim() == 2 && out.size(0) == B && out.is_contiguous(),
              "out must be a contiguous uint8 tensor of shape [B, capacity], got ", out.sizes());
}

inline int64_t words_of(size_t bytes) { return int64_t((bytes + 7) / 8); }

// Bound on a stream's code: each symbol costs at most P + 1 bits (frequency
// >= 1 out of 2^P, plus the split's rounding), termination at most 65 bits.
inline int64_t max_stream_bytes(int64_t T, int64_t precision) {
  return (T * (precision + 1) + 65 + 7) / 8 + 8;
}

// ---- integer M1 ops (csrc/core/int_m1.h) -----------------------------------
inline void check_int_tensor(const at::Tensor& t, at::ScalarType dtype, int64_t dims, const char* name,
                             const char* shape) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == dims, name, " must be a ", dtype, " tensor of shape ", shape,
              ", got ", t.scalar_type(), " ", t.sizes());
}

// x int32 [N, K], weight int8 [D, K], multiplier/shift int32 [D].
inline void check_int_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& multiplier,
                             const at::Tensor& shift) {
  check_int_tensor(x, at::kInt, 2, "x", "[N, K]");
  check_int_tensor(weight, at::kChar, 2, "weight", "[D, K]");
  TORCH_CHECK(weight.size(1) == x.size(1), "weight must have K = ", x.size(1), " columns, got ", weight.sizes());
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= intm1::kMaxFanIn, "fan-in K must be in [1, ", intm1::kMaxFanIn,
              "], got ", x.size(1));
  int64_t D = weight.size(0);
  check_int_tensor(multiplier, at::kInt, 1, "multiplier", "[D]");
  check_int_tensor(shift, at::kInt, 1, "shift", "[D]");
  TORCH_CHECK(multiplier.size(0) == D && shift.size(0) == D, "multiplier and shift must have D = ", D,
              " entries, got ", multiplier.size(0), " and ", shift.size(0));
  check_same_device(x, weight, "x", "weight");
  check_same_device(x, multiplier, "x", "multiplier");
  check_same_device(x, shift, "x", "shift");
}

// x int32 [N, C], gain int32 [C].
inline void check_int_rms_norm(const at::Tensor& x, const at::Tensor& gain) {
  check_int_tensor(x, at::kInt, 2, "x", "[N, C]");
  check_int_tensor(gain, at::kInt, 1, "gain", "[C]");
  TORCH_CHECK(gain.size(0) == x.size(1), "gain must have C = ", x.size(1), " entries, got ", gain.size(0));
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= intm1::kMaxFanIn, "C must be in [1, ", intm1::kMaxFanIn, "], got ",
              x.size(1));
  check_same_device(x, gain, "x", "gain");
}

// x int32 [N, H, hd], cos/sin int32 [context, hd/2], positions int64 [N].
inline void check_int_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                           const at::Tensor& positions) {
  check_int_tensor(x, at::kInt, 3, "x", "[N, H, head_dim]");
  int64_t hd = x.size(2);
  TORCH_CHECK(hd >= 2 && hd % 2 == 0 && hd <= intm1::kMaxHeadDim, "head_dim must be even and in [2, ",
              intm1::kMaxHeadDim, "], got ", hd);
  check_int_tensor(cos, at::kInt, 2, "cos", "[context, head_dim / 2]");
  TORCH_CHECK(cos.sizes() == sin.sizes() && sin.scalar_type() == at::kInt && cos.size(1) == hd / 2,
              "cos and sin must both be int32 [context, ", hd / 2, "], got ", cos.sizes(), " and ", sin.sizes());
  check_int_tensor(positions, at::kLong, 1, "positions", "[N]");
  TORCH_CHECK(positions.size(0) == x.size(0), "positions must have N = ", x.size(0), " entries, got ",
              positions.size(0));
  check_same_device(x, cos, "x", "cos");
  check_same_device(x, sin, "x", "sin");
  check_same_device(x, positions, "x", "positions");
}

// q int32 [N, H, hd]; caches int32 [S, H, L, hd]; streams, positions int64 [N].
inline void check_int_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& streams, const at::Tensor& positions) {
  check_int_tensor(q, at::kInt, 3, "q", "[N, H, head_dim]");
  TORCH_CHECK(q.size(2) >= 1 && q.size(2) <= intm1::kMaxHeadDim, "head_dim must be in [1, ", intm1::kMaxHeadDim,
              "], got ", q.size(2));
  check_int_tensor(k_cache, at::kInt, 4, "k_cache", "[S, H, L, head_dim]");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && v_cache.scalar_type() == at::kInt,
              "k_cache and v_cache must both be int32 of one shape, got ", k_cache.sizes(), " and ", v_cache.sizes());
  TORCH_CHECK(k_cache.size(1) == q.size(1) && k_cache.size(3) == q.size(2), "caches must be [S, ", q.size(1),
              ", L, ", q.size(2), "], got ", k_cache.sizes());
  TORCH_CHECK(k_cache.size(2) <= intm1::kMaxContext, "cache length must be at most ", intm1::kMaxContext);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "k_cache and v_cache must be contiguous");
  check_int_tensor(streams, at::kLong, 1, "streams", "[N]");
  check_int_tensor(positions, at::kLong, 1, "positions", "[N]");
  TORCH_CHECK(streams.size(0) == q.size(0) && positions.size(0) == q.size(0), "streams and positions must have N = ",
              q.size(0), " entries, got ", streams.size(0), " and ", positions.size(0));
  for (auto* t : {&k_cache, &v_cache, &streams, &positions}) check_same_device(q, *t, "q", "every other argument");
}

// logits int32 [N, V].
inline void check_int_logits(const at::Tensor& logits) {
  check_int_tensor(logits, at::kInt, 2, "logits", "[N, V]");
  TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) <= kMaxAlphabet, "V must be in [1, ", kMaxAlphabet, "], got ",
              logits.size(1));
}

// Every value of an index tensor in [0, limit) (reads the values: CPU only,
// the CUDA kernels clamp instead of synchronizing).
inline void check_index_range(const at::Tensor& t, int64_t limit, const char* name) {
  if (t.numel()) {
    auto mn = t.min().item<int64_t>(), mx = t.max().item<int64_t>();
    TORCH_CHECK(mn >= 0 && mx < limit, name, " must lie in [0, ", limit, "), got min ", mn, " max ", mx);
  }
}

}  // namespace ncx
