// Launchers of the integer M1 kernels (csrc/cuda/int_m1_kernels.cu). Torch-free:
// raw pointers to contiguous device arrays, sizes and a stream, so the .cu
// compiles without torch headers. Every launch goes on the given stream (the
// caller's current torch stream); a launcher with nothing to compute launches
// nothing. Index inputs (positions, streams) are int64 and are clamped into
// range on the device instead of being checked (no synchronization).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace ncx {
namespace cuda {

// Row stride (bytes) of int_linear's int8 scratch: K rounded up to the GEMM's
// k tile, the padding filled with zeros by the quantize kernel.
constexpr int64_t kIntLinearKTile = 64;
inline int64_t int_linear_padded_k(int64_t K) { return (K + kIntLinearKTile - 1) / kIntLinearKTile * kIntLinearKTile; }

// out[n, d] = dequantize(sum_k q[n, k] * weight[d, k], row scale of n, multiplier[d], shift[d]):
// two launches, per-row int8 quantization into the scratch buffers, then the
// tiled int8 GEMM (__dp4a) with the dequantization in its epilogue.
void launch_int_linear(const int32_t* x,           // [N, K] activations (Q16)
                       const int8_t* weight,       // [D, K] int8 weights (any alignment)
                       const int32_t* multiplier,  // [D] per-channel multiplier
                       const int32_t* shift,       // [D] per-channel shift
                       int64_t N,                  // rows of x
                       int64_t K,                  // fan-in, >= 1
                       int64_t D,                  // output channels
                       int8_t* q_scratch,          // [N, int_linear_padded_k(K)] int8 scratch
                       int32_t* rs_scratch,        // [N, 2] scratch: each row's RowScale (mant, exp)
                       int32_t* out,               // [N, D] output (Q16)
                       cudaStream_t stream);

// The two ends of int_linear around another GEMM (torch._int_mm): each row of
// x quantized to int8 into q [N, int_linear_padded_k(K)] (zero padding) with
// its RowScale into rs [N, 2]; and out[n, d] = dequantize(acc[n, d], ...).
void launch_int_linear_quantize(const int32_t* x, int64_t N, int64_t K, int8_t* q, int32_t* rs,
                                cudaStream_t stream);
void launch_int_linear_dequantize(const int32_t* acc,         // [N, D] int32 sums of int8 products
                                  const int32_t* rs,          // [N, 2] row scales
                                  const int32_t* multiplier,  // [D]
                                  const int32_t* shift,       // [D]
                                  int64_t N, int64_t D, int32_t* out, cudaStream_t stream);

// out[n, c] = norm_apply(x[n, c] scaled, gain[c], rms of the scaled row n).
void launch_int_rms_norm(const int32_t* x,     // [N, C] activations (Q16)
                         const int32_t* gain,  // [C] gain (Q16)
                         int64_t N,            // rows
                         int64_t C,            // columns, >= 1
                         int32_t* out,         // [N, C] output (Q16)
                         cudaStream_t stream);

// Rotate-half RoPE of each head of x at positions[n] (clamped to [0, context - 1]).
void launch_int_rope(const int32_t* x,          // [N, H, hd] activations (Q16)
                     const int32_t* cos,        // [context, hd / 2] table (Q30)
                     const int32_t* sin,        // [context, hd / 2] table (Q30)
                     const int64_t* positions,  // [N] position of each row
                     int64_t N,                 // rows
                     int64_t H,                 // heads
                     int64_t hd,                // head dim, even
                     int64_t context,           // rows of the tables, >= 1 when N * H > 0
                     int32_t* out,              // [N, H, hd] output (Q16)
                     cudaStream_t stream);

// Causal attention of q row n over keys/values 0..positions[n] of stream
// streams[n] (streams clamped to [0, S - 1], positions to [0, L - 1]).
void launch_int_attention(const int32_t* q,          // [N, H, hd] queries (Q16)
                          const int32_t* k_cache,    // [S, H, L, hd] keys (Q16)
                          const int32_t* v_cache,    // [S, H, L, hd] values (Q16)
                          const int64_t* streams,    // [N] cache stream of each row
                          const int64_t* positions,  // [N] last key position of each row
                          int64_t N,                 // rows
                          int64_t H,                 // heads
                          int64_t hd,                // head dim, in [1, 256]
                          int64_t S,                 // cache streams, >= 1 when N * H > 0
                          int64_t L,                 // cache length, >= 1 when N * H > 0
                          int64_t* scratch,          // [N * H, L] int64 scratch (scores, then exps)
                          int32_t* out,              // [N, H, hd] output (Q16)
                          cudaStream_t stream);

// out[n, v] = exp_nonpositive(logits[n, v] - max_v logits[n, v], kCoderFrac).
void launch_int_coder_weights(const int32_t* logits,  // [N, V] logits (Q16)
                              int64_t N,              // rows
                              int64_t V,              // alphabet size, >= 1
                              int32_t* out,           // [N, V] coder weights (Q22)
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace ncx
