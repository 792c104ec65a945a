// CUDA back end of the integer M1 ops (csrc/core/int_m1.h). Every value is
// computed by the same torch-free integer routines as the CPU back end
// (csrc/cpu/int_m1_cpu.cpp); the only things the kernels reorder are integer
// reductions (max, sums), whose results do not depend on the order, so the
// outputs equal the CPU's bit for bit. Sums that could in principle wrap
// (attention dot products and numerators with out-of-format inputs) are
// accumulated as uint64, i.e. modulo 2^64 like the CPU's two's-complement
// adds, so even those agree. No torch headers here.
#include "../core/int_m1.h"
#include "int_m1_kernels.h"

namespace ncx {
namespace cuda {
namespace {

using namespace intm1;

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;  // every kernel here: a multiple of 32
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGrid = 0x7fffffff;  // grid x limit; row kernels loop past it
static_assert(kMaxHeadDim <= kThreads, "int_attention: at least one thread per channel of a head");

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Reduction over the kThreads threads of the block; every thread gets the
// result. All threads must call it (it synchronizes); sh holds kWarps values.
// The trailing barrier lets the caller reuse sh at once and makes the
// block's global writes before the call visible to all its threads after it.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* sh) {
  v = warp_reduce(v, op);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = sh[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, sh[w]);
  __syncthreads();
  return r;
}

unsigned grid_for(int64_t blocks) { return unsigned(blocks < kMaxGrid ? blocks : kMaxGrid); }

// Largest magnitude of a row, reduced over the block (every thread gets it).
__device__ uint32_t block_row_amax(const int32_t* xr, int64_t K, uint32_t* red) {
  uint32_t m = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) m = max(m, magnitude(xr[k]));
  return block_reduce(m, MaxOp(), red);
}

// ------------------------------------------------------------- int_linear
// Kernel 1, one block per row: amax, row_scale, int8 row into the scratch
// (zero-padded to Kp, a multiple of the GEMM's k tile) and the RowScale.
__global__ void __launch_bounds__(kThreads)
    int_linear_quantize_kernel(const int32_t* __restrict__ x, int64_t N, int64_t K, int64_t Kp,
                               int8_t* __restrict__ q, int32_t* __restrict__ rs_out) {
  __shared__ uint32_t red[kWarps];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t* xr = x + n * K;
    const RowScale rs = row_scale(block_row_amax(xr, K, red));
    int8_t* qr = q + n * Kp;
    for (int64_t k = threadIdx.x; k < Kp; k += kThreads) qr[k] = k < K ? quantize_activation(xr[k], rs) : int8_t(0);
    if (threadIdx.x == 0) {
      rs_out[2 * n] = rs.mant;
      rs_out[2 * n + 1] = rs.exp;
    }
  }
}

// Kernel 2: 64 x 64 output tiles, 256 threads, each thread 4 x 4 outputs
// (rows ty + 16 i, channels tx + 16 j). The k loop goes 64 bytes (16 packed
// int8x4 words) at a time through shared memory, word-major
// ([word][row], row stride 66: conflict-free stores and broadcast reads).
constexpr int kTileN = 64, kTileD = 64;
constexpr int kTileK = int(kIntLinearKTile);  // bytes
constexpr int kTileKW = kTileK / 4;           // int8x4 words
constexpr int kSmemStride = kTileN + 2;
static_assert(kTileN == kTileD && kTileN * kTileK == kThreads * 16, "one 16-byte chunk per thread and operand");

// 16 bytes of weight row `wr` from byte k (a multiple of 16) as 4 packed
// words, zero past K. Vec = 16: K % 16 == 0 and 16-byte aligned rows (one
// vector load); Vec = 4: K % 4 == 0 and 4-byte aligned rows; Vec = 1: any.
template <int Vec>
__device__ __forceinline__ void load_weight_chunk(const int8_t* __restrict__ wr, int64_t k, int64_t K,
                                                  int32_t (&wv)[4]) {
  if (Vec == 16) {
    if (k < K) {
      const int4 v = *reinterpret_cast<const int4*>(wr + k);
      wv[0] = v.x;
      wv[1] = v.y;
      wv[2] = v.z;
      wv[3] = v.w;
    } else {
      wv[0] = wv[1] = wv[2] = wv[3] = 0;
    }
  } else if (Vec == 4) {
#pragma unroll
    for (int m = 0; m < 4; ++m) wv[m] = k + 4 * m < K ? *reinterpret_cast<const int32_t*>(wr + k + 4 * m) : 0;
  } else {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      uint32_t word = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int64_t kk = k + 4 * m + b;
        // Little-endian packing, as a word load of the same bytes would give.
        if (kk < K) word |= uint32_t(uint8_t(wr[kk])) << (8 * b);
      }
      wv[m] = int32_t(word);
    }
  }
}

template <int Vec>
__global__ void __launch_bounds__(kThreads)
    int_linear_gemm_kernel(const int8_t* __restrict__ q, const int32_t* __restrict__ rs,
                           const int8_t* __restrict__ w, const int32_t* __restrict__ multiplier,
                           const int32_t* __restrict__ shift, int64_t N, int64_t K, int64_t Kp, int64_t D,
                           int32_t* __restrict__ out) {
  __shared__ int32_t As[kTileKW][kSmemStride];
  __shared__ int32_t Bs[kTileKW][kSmemStride];
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  // Loader: tile row lr, 16-byte chunk lc (words 4 lc .. 4 lc + 3).
  const int lr = t >> 2, lc = t & 3;
  const int64_t n0 = int64_t(blockIdx.x) * kTileN;
  const bool a_ok = n0 + lr < N;
  const int8_t* arow = q + (a_ok ? n0 + lr : 0) * Kp + lc * 16;
  const int64_t d_tiles = (D + kTileD - 1) / kTileD;
  for (int64_t dt = blockIdx.y; dt < d_tiles; dt += gridDim.y) {
    const int64_t d0 = dt * kTileD;
    const bool b_ok = d0 + lr < D;
    const int8_t* brow = w + (b_ok ? d0 + lr : 0) * K;
    int32_t acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    for (int64_t k0 = 0; k0 < Kp; k0 += kTileK) {
      int4 a = make_int4(0, 0, 0, 0);
      if (a_ok) a = *reinterpret_cast<const int4*>(arow + k0);  // Kp % 64 == 0, rows 16-byte aligned
      int32_t bw[4] = {0, 0, 0, 0};
      if (b_ok) load_weight_chunk<Vec>(brow, k0 + lc * 16, K, bw);
      __syncthreads();  // the previous tile's reads are done
      As[4 * lc + 0][lr] = a.x;
      As[4 * lc + 1][lr] = a.y;
      As[4 * lc + 2][lr] = a.z;
      As[4 * lc + 3][lr] = a.w;
#pragma unroll
      for (int m = 0; m < 4; ++m) Bs[4 * lc + m][lr] = bw[m];
      __syncthreads();
#pragma unroll
      for (int kw = 0; kw < kTileKW; ++kw) {
        int32_t av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = As[kw][ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = Bs[kw][tx + 16 * j];
        // |acc| <= 127^2 * kMaxFanIn < 2^28: the int32 sum is exact, as dot_i8's.
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t n = n0 + ty + 16 * i;
      if (n >= N) continue;
      const RowScale r{rs[2 * n], rs[2 * n + 1]};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t d = d0 + tx + 16 * j;
        if (d < D) out[n * D + d] = dequantize(acc[i][j], r, multiplier[d], shift[d]);
      }
    }
  }
}

// The dequantization of int_linear_gemm_kernel's epilogue, for sums another GEMM made.
__global__ void __launch_bounds__(kThreads)
    int_linear_dequantize_kernel(const int32_t* __restrict__ acc, const int32_t* __restrict__ rs,
                                 const int32_t* __restrict__ multiplier, const int32_t* __restrict__ shift,
                                 int64_t N, int64_t D, int32_t* __restrict__ out) {
  const int64_t total = N * D, stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / D, d = i - n * D;
    out[i] = dequantize(acc[i], RowScale{rs[2 * n], rs[2 * n + 1]}, multiplier[d], shift[d]);
  }
}

// ------------------------------------------------------------ int_rms_norm
__global__ void __launch_bounds__(kThreads)
    int_rms_norm_kernel(const int32_t* __restrict__ x, const int32_t* __restrict__ gain, int64_t N, int64_t C,
                        int32_t* __restrict__ out) {
  __shared__ uint32_t red_max[kWarps];
  __shared__ int64_t red_sum[kWarps];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t* xr = x + n * C;
    const int s = norm_shift(block_row_amax(xr, C, red_max));
    int64_t ss = 0;  // squares < 2^48, C <= 2^14: no overflow
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const int64_t v = norm_scaled(xr[c], s);
      ss += v * v;
    }
    ss = block_reduce(ss, SumOp(), red_sum);
    const int64_t rms = norm_rms(ss, C);
    for (int64_t c = threadIdx.x; c < C; c += kThreads)
      out[n * C + c] = norm_apply(norm_scaled(xr[c], s), gain[c], rms);
  }
}

// ---------------------------------------------------------------- int_rope
// One thread per (n, h, i < half).
__global__ void __launch_bounds__(kThreads)
    int_rope_kernel(const int32_t* __restrict__ x, const int32_t* __restrict__ cos, const int32_t* __restrict__ sin,
                    const int64_t* __restrict__ positions, int64_t N, int64_t H, int64_t half, int64_t context,
                    int32_t* __restrict__ out) {
  const int64_t total = N * H * half;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x; idx < total; idx += stride) {
    const int64_t i = idx % half, nh = idx / half, n = nh / H;
    int64_t p = positions[n];
    p = p < 0 ? 0 : (p >= context ? context - 1 : p);  // the CPU range-checks; here: memory safety only
    const int32_t c = cos[p * half + i], s = sin[p * half + i];
    const int32_t* xr = x + nh * 2 * half;
    int32_t* o = out + nh * 2 * half;
    const int32_t lo = xr[i], hi = xr[i + half];
    o[i] = rope_first(lo, hi, c, s);
    o[i + half] = rope_second(lo, hi, c, s);
  }
}

// ----------------------------------------------------------- int_attention
// One block per (n, h). Scores: one warp per key (lanes over the head dim),
// into the row's int64 scratch; peak by block max; then the scratch is
// overwritten by the exps (den by block sum); the numerators: thread t takes
// channel t % hd over the keys j = t / hd (mod groups), and the groups'
// partial sums meet in shared memory.
__global__ void __launch_bounds__(kThreads)
    int_attention_kernel(const int32_t* __restrict__ q, const int32_t* __restrict__ k_cache,
                         const int32_t* __restrict__ v_cache, const int64_t* __restrict__ streams,
                         const int64_t* __restrict__ positions, int64_t N, int64_t H, int hd, int64_t S, int64_t L,
                         int64_t inv_sqrt, int64_t* __restrict__ scratch, int32_t* __restrict__ out) {
  __shared__ int32_t q_sh[kMaxHeadDim];
  __shared__ uint64_t num_sh[kThreads];
  __shared__ int64_t red[kWarps];
  const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
  const int groups = kThreads / hd;  // hd <= kMaxHeadDim == kThreads
  const int g = t / hd, ch = t % hd;
  for (int64_t nh = blockIdx.x; nh < N * H; nh += gridDim.x) {
    const int64_t n = nh / H, h = nh % H;
    int64_t s = streams[n], p = positions[n];
    s = s < 0 ? 0 : (s >= S ? S - 1 : s);  // the CPU range-checks; here: memory safety only
    p = p < 0 ? 0 : (p >= L ? L - 1 : p);
    const int64_t keys = p + 1;
    const int64_t base = (s * H + h) * L * hd;  // this stream and head's keys/values
    const int32_t* kb = k_cache + base;
    const int32_t* vb = v_cache + base;
    int64_t* w = scratch + nh * L;
    for (int i = t; i < hd; i += kThreads) q_sh[i] = q[nh * hd + i];
    __syncthreads();

    int64_t peak = INT64_MIN;
    for (int64_t j = warp; j < keys; j += kWarps) {
      const int32_t* kr = kb + j * hd;
      uint64_t dot = 0;
      for (int i = lane; i < hd; i += 32) dot += uint64_t(int64_t(q_sh[i]) * kr[i]);
      dot = warp_reduce(dot, SumOp());
      const int64_t score = attention_score(int64_t(dot), inv_sqrt);
      if (lane == 0) w[j] = score;
      peak = max(peak, score);
    }
    peak = block_reduce(peak, MaxOp(), red);  // its barriers also publish w[] to the block

    int64_t den = 0;  // e <= 2^16, keys <= 2^20
    for (int64_t j = t; j < keys; j += kThreads) {
      const int64_t e = exp_nonpositive(w[j] - peak, kAttnFrac);
      w[j] = e;
      den += e;
    }
    den = block_reduce(den, SumOp(), red);  // >= 2^16: the peak's key

    if (g < groups) {
      uint64_t acc = 0;
      for (int64_t j = g; j < keys; j += groups) acc += uint64_t(w[j] * int64_t(vb[j * hd + ch]));
      num_sh[t] = acc;
    }
    __syncthreads();
    if (t < hd) {
      uint64_t num = 0;
      for (int gg = 0; gg < groups; ++gg) num += num_sh[gg * hd + t];
      out[nh * hd + t] = clamp32(round_div(int64_t(num), den), kQKVLimit);
    }
    __syncthreads();  // q_sh and num_sh are rewritten by the next (n, h)
  }
}

// ------------------------------------------------------- int_coder_weights
__global__ void __launch_bounds__(kThreads)
    int_coder_weights_kernel(const int32_t* __restrict__ logits, int64_t N, int64_t V, int32_t* __restrict__ out) {
  __shared__ int32_t red[kWarps];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t* lr = logits + n * V;
    int32_t peak = INT32_MIN;
    for (int64_t v = threadIdx.x; v < V; v += kThreads) peak = max(peak, lr[v]);
    peak = block_reduce(peak, MaxOp(), red);
    for (int64_t v = threadIdx.x; v < V; v += kThreads)
      out[n * V + v] = int32_t(exp_nonpositive(int64_t(lr[v]) - peak, kCoderFrac));
  }
}

}  // namespace

void launch_int_linear_quantize(const int32_t* x, int64_t N, int64_t K, int8_t* q, int32_t* rs,
                                cudaStream_t stream) {
  if (N == 0) return;
  int_linear_quantize_kernel<<<grid_for(N), kThreads, 0, stream>>>(x, N, K, int_linear_padded_k(K), q, rs);
}

void launch_int_linear_dequantize(const int32_t* acc, const int32_t* rs, const int32_t* multiplier,
                                  const int32_t* shift, int64_t N, int64_t D, int32_t* out, cudaStream_t stream) {
  if (N == 0 || D == 0) return;
  int_linear_dequantize_kernel<<<grid_for((N * D + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      acc, rs, multiplier, shift, N, D, out);
}

void launch_int_linear(const int32_t* x, const int8_t* weight, const int32_t* multiplier, const int32_t* shift,
                       int64_t N, int64_t K, int64_t D, int8_t* q_scratch, int32_t* rs_scratch, int32_t* out,
                       cudaStream_t stream) {
  if (N == 0 || D == 0 || K == 0) return;
  const int64_t Kp = int_linear_padded_k(K);
  launch_int_linear_quantize(x, N, K, q_scratch, rs_scratch, stream);
  const int64_t d_tiles = (D + kTileD - 1) / kTileD;
  const dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned(d_tiles < 65535 ? d_tiles : 65535));
  const uintptr_t wa = reinterpret_cast<uintptr_t>(weight);
  if (K % 16 == 0 && wa % 16 == 0)
    int_linear_gemm_kernel<16><<<grid, kThreads, 0, stream>>>(q_scratch, rs_scratch, weight, multiplier, shift, N,
                                                              K, Kp, D, out);
  else if (K % 4 == 0 && wa % 4 == 0)
    int_linear_gemm_kernel<4><<<grid, kThreads, 0, stream>>>(q_scratch, rs_scratch, weight, multiplier, shift, N, K,
                                                             Kp, D, out);
  else
    int_linear_gemm_kernel<1><<<grid, kThreads, 0, stream>>>(q_scratch, rs_scratch, weight, multiplier, shift, N, K,
                                                             Kp, D, out);
}

void launch_int_rms_norm(const int32_t* x, const int32_t* gain, int64_t N, int64_t C, int32_t* out,
                         cudaStream_t stream) {
  if (N == 0 || C == 0) return;
  int_rms_norm_kernel<<<grid_for(N), kThreads, 0, stream>>>(x, gain, N, C, out);
}

void launch_int_rope(const int32_t* x, const int32_t* cos, const int32_t* sin, const int64_t* positions, int64_t N,
                     int64_t H, int64_t hd, int64_t context, int32_t* out, cudaStream_t stream) {
  const int64_t half = hd / 2, total = N * H * half;
  if (total == 0 || context <= 0) return;
  int_rope_kernel<<<grid_for((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(x, cos, sin, positions, N,
                                                                                       H, half, context, out);
}

void launch_int_attention(const int32_t* q, const int32_t* k_cache, const int32_t* v_cache, const int64_t* streams,
                          const int64_t* positions, int64_t N, int64_t H, int64_t hd, int64_t S, int64_t L,
                          int64_t* scratch, int32_t* out, cudaStream_t stream) {
  if (N * H == 0 || hd <= 0 || hd > kMaxHeadDim || S <= 0 || L <= 0) return;
  int_attention_kernel<<<grid_for(N * H), kThreads, 0, stream>>>(q, k_cache, v_cache, streams, positions, N, H,
                                                                 int(hd), S, L, inv_sqrt_q16(hd), scratch, out);
}

void launch_int_coder_weights(const int32_t* logits, int64_t N, int64_t V, int32_t* out, cudaStream_t stream) {
  if (N == 0 || V == 0) return;
  int_coder_weights_kernel<<<grid_for(N), kThreads, 0, stream>>>(logits, N, V, out);
}

}  // namespace cuda
}  // namespace ncx
