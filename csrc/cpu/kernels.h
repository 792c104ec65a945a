// The CPU back end's hot loops as a table of functions, one table per CPU
// level. csrc/cpu/kernels.cpp fills a table; setup.py compiles it once per
// level (x86-64 baseline, AVX2 = x86-64-v3, AVX-512 with VNNI = x86-64-v4),
// and cpu_kernels() returns the table of the level in use
// (csrc/cpu/cpu_level.cpp): the one the CPU supports best, or the one
// NCX_CPU_LEVEL names. Every level returns the same integers.
//
// Torch-free, and the signatures use plain types only: each level's copy of
// the core lives in its own namespace (csrc/core/level.h), so its structs are
// distinct types.
#pragma once
#include <stdint.h>

namespace ncx {

enum CpuLevel : int32_t { kLevelBaseline = 0, kLevelAvx2 = 1, kLevelAvx512 = 2, kNumCpuLevels = 3 };

// csrc/core/quantize.h's row routines for one element type: float, or
// bfloat16 as its uint16 bits. q is the row scratch: symbol_scratch_words(V)
// words from a cache line's start (stream_scratch_words(V) for encode_stream
// and decode_stream).
template <typename T>
struct RowQuantizer {
  int32_t (*cdf)(const T* row, int64_t V, int precision, bool logits, uint32_t* q, uint32_t* cdf);
  int32_t (*symbol)(const T* row, int64_t V, int precision, bool logits, int64_t s, uint32_t* q, uint32_t* cum,
                    uint32_t* freq);
  int32_t (*find)(const T* row, int64_t V, int precision, bool logits, uint32_t target, uint32_t* q,
                  int64_t* sym, uint32_t* cum, uint32_t* freq);
  // Loops over many rows (ops.quantize, ops.encode, ops.decode), here so the
  // row routines and the coder inline into them: a call per row through this
  // table cost 5-10% of a row's time. cdf_rows fills n contiguous rows' CDFs
  // and statuses (a bad row's CDF all zeros). encode_stream codes rows
  // [0, len) of one stream, `stride` elements apart, with symbols int64
  // (wide) or int32: returns a status and sets *nbits (0 on error).
  // decode_stream decodes them, writing symbols[t] up to the first error.
  void (*cdf_rows)(const T* rows, int64_t n, int64_t V, int precision, bool logits, uint32_t* q, uint32_t* cdf,
                   int32_t* status);
  int32_t (*encode_stream)(const T* rows, int64_t stride, const void* symbols, bool wide, int64_t len, int64_t V,
                           int precision, bool logits, uint32_t* q, uint8_t* out, int64_t cap, int64_t* nbits);
  int32_t (*decode_stream)(const T* rows, int64_t stride, int64_t len, int64_t V, int precision, bool logits,
                           uint32_t* q, const uint8_t* in, int64_t nbytes, int64_t* symbols);
};

struct CpuKernels {
  const char* level;  // "baseline", "avx2" or "avx512"
  RowQuantizer<float> f32;
  RowQuantizer<uint16_t> bf16;

  // Integer M1 (csrc/core/int_m1.h), over rows [begin, end).
  // x int32 [., K] -> q [., K] with values in [-127, 127], as int8 (q8, for
  // torch._int_mm) or as int16 (q16, rows of Kp = K rounded up to even, the
  // pad 0, for int_gemm_rows; the other pointer is null), and the rows'
  // scales as (mantissa, exponent) pairs.
  void (*int_quantize_rows)(const int32_t* x, int64_t begin, int64_t end, int64_t K, int8_t* q8, int16_t* q16,
                            int32_t* scale);
  // The exact int8 products by pmaddwd: the weight int8 [D, K] packed into
  // panels (int_gemm_packed_size int16 in all; int_gemm_pack fills panels
  // [p_begin, p_end) of ceil(D / int_gemm_lanes)), then
  // acc[n, d] = sum_k q16[n, k] w[d, k] as int32 for rows [begin, end).
  int32_t int_gemm_lanes;
  int64_t (*int_gemm_packed_size)(int64_t D, int64_t K);
  void (*int_gemm_pack)(const int8_t* w, int64_t D, int64_t K, int64_t p_begin, int64_t p_end, int16_t* packed);
  void (*int_gemm_rows)(const int16_t* q16, const int16_t* packed, int64_t begin, int64_t end, int64_t D, int64_t K,
                        int32_t* acc);
  // The products acc [., D] -> Q16 outputs [., D] with the rows' scales and
  // the per-channel constants.
  void (*int_dequantize_rows)(const int32_t* acc, int64_t begin, int64_t end, int64_t D, const int32_t* scale,
                              const int32_t* multiplier, const int32_t* shift, int32_t* out);
  void (*int_rms_norm_rows)(const int32_t* x, const int32_t* gain, int64_t begin, int64_t end, int64_t C,
                            int32_t* out);
  // Rows are (token, head) pairs of x [N, H, hd].
  void (*int_rope_rows)(const int32_t* x, const int32_t* cos, const int32_t* sin, const int64_t* positions,
                        int64_t begin, int64_t end, int64_t H, int64_t hd, int32_t* out);
  // Attention of q [N, H, hd] over the caches [S, H, L, hd], in groups of
  // query rows of one stream: group i is rows group_first[i] ..
  // group_first[i] + group_size[i] - 1 (at most int_attention_group rows).
  // Items [begin, end) are (group, head) pairs, item = i * H + h; scratch
  // holds int_attention_scratch(int_attention_group, L, hd) int64.
  int32_t int_attention_group;
  void (*int_attention_groups)(const int32_t* q, const int32_t* k_cache, const int32_t* v_cache,
                               const int64_t* streams, const int64_t* positions, const int64_t* group_first,
                               const int32_t* group_size, int64_t begin, int64_t end, int64_t H, int64_t hd,
                               int64_t L, int64_t* scratch, int32_t* out);
  void (*int_coder_weights_rows)(const int32_t* logits, int64_t begin, int64_t end, int64_t V, int32_t* out);

  // csrc/core/window_vocab.h's greedy longest match; nodes are its TrieNodes.
  int64_t (*vocab_encode_document)(const void* nodes, const uint8_t* data, int64_t n, int32_t* out,
                                   int64_t* failed_at);

  template <typename T>
  const RowQuantizer<T>& rows() const;
};

template <>
inline const RowQuantizer<float>& CpuKernels::rows<float>() const { return f32; }
template <>
inline const RowQuantizer<uint16_t>& CpuKernels::rows<uint16_t>() const { return bf16; }

// int64 scratch per thread of int_attention_groups: a row of scores and two
// of head dimensions for each row of a group.
inline int64_t int_attention_scratch(int32_t group, int64_t L, int64_t hd) { return group * (L + 2 * hd); }

// The table of the level in use.
const CpuKernels& cpu_kernels();

}  // namespace ncx
