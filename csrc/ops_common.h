// Argument checks and output allocation shared by the CPU and CUDA back ends,
// so both reject the same mistakes with the same messages.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include "core/coder.h"

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

}  // namespace ncx
