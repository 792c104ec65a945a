// Launchers of the CUDA kernels (csrc/cuda/kernels.cu). Torch-free: raw
// pointers, sizes and a stream, so kernels.cu compiles without torch headers.
// Every launch goes on the given stream (the caller's current torch stream).
//
// Distribution rows: `dist` points at element [0, 0(, 0)] of a float32 or
// bfloat16 (uint16 bits) tensor whose last dimension is contiguous;
// dist_b / dist_t are element strides of the stream and time dimensions.
// Symbols, lengths, nbits and max_symbols are int64. Status arrays get the
// codes of csrc/core/quantize.h.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace ncx {
namespace cuda {

struct DistArg {
  const void* data;
  bool bf16;
  int64_t stride_b, stride_t;  // elements
  int64_t V;
};

void launch_quantize(DistArg dist, int64_t rows, int precision, bool logits, int32_t* cdf, int32_t* status,
                     cudaStream_t stream);

void launch_encode(DistArg dist, int64_t B, int64_t T, const int64_t* symbols, const int64_t* lengths,
                   int precision, bool logits, uint8_t* out, int64_t max_bytes, int64_t* nbits, int32_t* status,
                   cudaStream_t stream);

void launch_decode(DistArg dist, int64_t B, int64_t T, const uint8_t* data, int64_t N, const int64_t* nbits,
                   const int64_t* lengths, int precision, bool logits, uint32_t* scratch, int64_t* symbols,
                   int32_t* status, cudaStream_t stream);

void launch_stream_encode_step(int64_t* state, uint8_t* out, int64_t cap, DistArg dist, int64_t B,
                               const int64_t* symbols, int precision, bool logits, int32_t* status,
                               cudaStream_t stream);

void launch_stream_encode_finish(int64_t* state, uint8_t* out, int64_t cap, int64_t B, int64_t* nbits,
                                 cudaStream_t stream);

void launch_stream_decode_step(int64_t* state, const uint8_t* data, int64_t N, const int64_t* nbits, DistArg dist,
                               int64_t B, const bool* active, int precision, bool logits, uint32_t* scratch,
                               int64_t* symbols, int32_t* status, cudaStream_t stream);

void launch_window_encode_step(int64_t* state, DistArg dist, int64_t B, const int64_t* symbols, int precision,
                               bool logits, int budget_bits, int32_t max_symbols, uint32_t* scratch,
                               int32_t* event, uint8_t* codes, int32_t* nsym, int32_t* back, int32_t* status,
                               cudaStream_t stream);

void launch_window_encode_finish(int64_t* state, const bool* active, int64_t B, int budget_bits, bool* has,
                                 uint8_t* codes, int32_t* nsym, int32_t* status, cudaStream_t stream);

void launch_window_decode_start(int64_t* state, const uint8_t* codes, const bool* start,
                                const int64_t* max_symbols, int64_t B, int budget_bits, cudaStream_t stream);

void launch_window_decode_step(int64_t* state, DistArg dist, int64_t B, int precision, bool logits,
                               int budget_bits, int64_t eos, uint32_t* scratch, int64_t* symbols, bool* ended,
                               int32_t* status, cudaStream_t stream);

}  // namespace cuda
}  // namespace ncx
