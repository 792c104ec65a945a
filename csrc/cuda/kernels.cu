// CUDA back end. One warp per stream (or per row): the 32 lanes share the
// quantization of a distribution row (integer warp reductions, so the result
// equals the CPU's serial loop exactly), then lane 0 runs the serial coder
// step from csrc/core. No torch headers here.
#include "../core/coder.h"
#include "kernels.h"

namespace ncx {
namespace cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ uint32_t warp_or(uint32_t v) {
  for (int o = 16; o; o >>= 1) v |= __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
  for (int o = 16; o; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ int32_t warp_min(int32_t v) {
  for (int o = 16; o; o >>= 1) v = min(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ uint64_t warp_sum64(uint64_t v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ uint32_t warp_sum32(uint32_t v) {
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ const T* row_at(const DistArg& d, int64_t b, int64_t t) {
  return reinterpret_cast<const T*>(d.data) + b * d.stride_b + t * d.stride_t;
}

// The warp-parallel form of quantize_row_prepare (csrc/core/quantize.h): the
// same integers, reduced across lanes. Optionally also sums f_i below symbol
// `sym` (for encoding without a CDF).
template <typename T>
struct WarpQuant {
  const T* row;
  int64_t V;
  int precision;
  bool logits;
  int lane;
  QuantParams qp;
  float max_logit;
  uint32_t max_w;

  __device__ uint32_t weight(int64_t i) const {
    uint32_t bits = load_bits(row, i);
    return logits ? logit_weight_bits(bits, max_logit) : (bits & 0x7fffffffu);
  }
  __device__ uint32_t f(int64_t i) const { return fixed_to_f(weight_to_fixed(weight(i), max_w), qp.scale, qp.shift); }
  __device__ uint32_t freq(int64_t i) const { return 1u + f(i) + (i == qp.argmax ? qp.rem : 0u); }

  // Returns a status; on success fills qp. *f_below gets sum_{i<sym} f_i.
  __device__ int32_t prepare(int64_t sym, uint32_t* f_below) {
    uint32_t bad = 0, key = 0;
    for (int64_t i = lane; i < V; i += 32) {
      uint32_t bits = load_bits(row, i);
      uint32_t k = logits ? logit_key(bits, &bad) : prob_weight_bits(bits, &bad);
      key = max(key, k);
    }
    bad = warp_or(bad);
    key = warp_max(key);
    if (bad) return __ffs(bad >> 1);  // lowest status bit (bit 0 is unused)
    if (logits) {
      uint32_t mb = key_to_logit_bits(key);
      if (mb == 0xff800000u) return kErrZeroRow;
      max_logit = bits_to_float(mb);
      max_w = float_to_bits(exp_ncx(0.0f));
    } else {
      if (key == 0) return kErrZeroRow;
      max_w = key;
    }
    const uint32_t q_max = weight_to_fixed(max_w, max_w);
    uint64_t q_sum = 0;
    int32_t argmax = INT32_MAX;
    for (int64_t i = lane; i < V; i += 32) {
      uint32_t q = weight_to_fixed(weight(i), max_w);
      q_sum += q;
      if (q == q_max && i < argmax) argmax = int32_t(i);
    }
    q_sum = warp_sum64(q_sum);
    qp.argmax = warp_min(argmax);
    qp.scale = quant_scale(q_sum, precision, V);
    qp.shift = quant_shift(precision);
    uint32_t f_sum = 0, below = 0;
    for (int64_t i = lane; i < V; i += 32) {
      uint32_t fi = f(i);
      f_sum += fi;
      if (i < sym) below += fi;
    }
    f_sum = warp_sum32(f_sum);
    *f_below = warp_sum32(below);
    qp.rem = uint32_t(((uint64_t(1) << precision) - uint64_t(V)) - f_sum);
    return kOk;
  }

  // cdf[0..V] of the prepared row (inclusive warp scans, 32 symbols a pass).
  __device__ void write_cdf(uint32_t* cdf) const {
    if (lane == 0) cdf[0] = 0;
    uint32_t carry = 0;
    for (int64_t base = 0; base < V; base += 32) {
      int64_t i = base + lane;
      uint32_t v = i < V ? freq(i) : 0u;
      for (int o = 1; o < 32; o <<= 1) {
        uint32_t n = __shfl_up_sync(kFull, v, o);
        if (lane >= o) v += n;
      }
      if (i < V) cdf[i + 1] = carry + v;
      carry += __shfl_sync(kFull, v, 31);
    }
  }
};

template <typename T>
__device__ __forceinline__ WarpQuant<T> make_quant(const T* row, int64_t V, int precision, bool logits) {
  WarpQuant<T> w;
  w.row = row;
  w.V = V;
  w.precision = precision;
  w.logits = logits;
  w.lane = threadIdx.x & 31;
  w.max_logit = 0.0f;
  w.max_w = 0;
  return w;
}

__device__ __forceinline__ int64_t warp_id() { return int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); }

int blocks_for(int64_t warps) { return int((warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// ---------------------------------------------------------------- kernels
template <typename T>
__global__ void quantize_kernel(DistArg d, int64_t rows, int precision, bool logits, int32_t* cdf,
                                int32_t* status) {
  int64_t row = warp_id();
  if (row >= rows) return;
  int lane = threadIdx.x & 31;
  const int64_t V = d.V;
  auto q = make_quant(reinterpret_cast<const T*>(d.data) + row * V, V, precision, logits);
  uint32_t below;
  int32_t st = q.prepare(-1, &below);
  uint32_t* out = reinterpret_cast<uint32_t*>(cdf + row * (V + 1));
  if (lane == 0) status[row] = st;
  if (st == kOk) {
    q.write_cdf(out);
  } else {
    for (int64_t i = lane; i <= V; i += 32) out[i] = 0;
  }
}

template <typename T>
__global__ void encode_kernel(DistArg d, int64_t B, int64_t T_, const int64_t* symbols, const int64_t* lengths,
                              int precision, bool logits, uint8_t* out, int64_t max_bytes, int64_t* nbits,
                              int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  const int64_t V = d.V;
  uint8_t* o = out + b * max_bytes;
  StreamEncoder enc;
  stream_encoder_init(&enc);
  int32_t code = kOk;
  const int64_t len = lengths[b];
  for (int64_t t = 0; t < len; ++t) {
    int64_t sym = symbols[b * T_ + t];
    if (sym < 0 || sym >= V) { code = kErrSymbol; break; }
    auto q = make_quant(row_at<T>(d, b, t), V, precision, logits);
    uint32_t below;
    code = q.prepare(sym, &below);
    if (code != kOk) break;
    if (lane == 0) {
      uint32_t cum = uint32_t(sym) + below + (q.qp.argmax < sym ? q.qp.rem : 0u);
      code = stream_encode(&enc, o, max_bytes, cum, q.freq(sym), precision);
    }
    code = __shfl_sync(kFull, code, 0);
    if (code != kOk) break;
  }
  if (lane == 0) {
    int64_t n = 0;
    if (code == kOk) {
      n = stream_encode_finish(&enc, o, max_bytes);
      if (n < 0) { code = kErrOutputFull; n = 0; }
    }
    nbits[b] = n;
    status[b] = code;
  }
}

// Decodes one symbol with the warp: CDF to scratch, lane 0 searches and
// consumes. Returns the symbol or -status (warp-uniform).
template <typename T>
__device__ int64_t warp_stream_decode_one(StreamDecoder* dec, const uint8_t* in, int64_t nbytes, const T* row,
                                          int64_t V, int precision, bool logits, uint32_t* cdf) {
  int lane = threadIdx.x & 31;
  auto q = make_quant(row, V, precision, logits);
  uint32_t below;
  int32_t st = q.prepare(-1, &below);
  if (st != kOk) return -st;
  q.write_cdf(cdf);
  __syncwarp();
  int64_t s = 0;
  if (lane == 0) {
    uint32_t target = stream_decode_target(dec, precision);
    s = cdf_search(cdf, V, target);
    int32_t c = stream_decode_consume(dec, in, nbytes, cdf[s], cdf[s + 1] - cdf[s], precision);
    if (c != kOk) s = -c;
  }
  __syncwarp();
  return __shfl_sync(kFull, s, 0);
}

template <typename T>
__global__ void decode_kernel(DistArg d, int64_t B, int64_t T_, const uint8_t* data, int64_t N,
                              const int64_t* nbits, const int64_t* lengths, int precision, bool logits,
                              uint32_t* scratch, int64_t* symbols, int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  const int64_t V = d.V;
  const uint8_t* in = data + b * N;
  int64_t nbytes = min((nbits[b] + 7) / 8, N);  // never read past the row
  StreamDecoder dec;
  stream_decoder_init(&dec, in, nbytes);
  int32_t code = kOk;
  int64_t* out = symbols + b * T_;
  for (int64_t t = 0; t < lengths[b]; ++t) {
    int64_t s = warp_stream_decode_one(&dec, in, nbytes, row_at<T>(d, b, t), V, precision, logits,
                                       scratch + b * (V + 1));
    if (s < 0) { code = int32_t(-s); break; }
    if (lane == 0) out[t] = s;
  }
  if (lane == 0) status[b] = code;
}

template <typename S>
__device__ __forceinline__ S* state_at(int64_t* state, int64_t b) {
  return reinterpret_cast<S*>(state + b * ((sizeof(S) + 7) / 8));
}

template <typename T>
__global__ void stream_encode_step_kernel(int64_t* state, uint8_t* out, int64_t cap, DistArg d, int64_t B,
                                          const int64_t* symbols, int precision, bool logits, int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  int64_t sym = symbols[b];
  int32_t st = kOk;
  if (sym >= d.V) st = kErrSymbol;
  StreamEncoder* enc = state_at<StreamEncoder>(state, b);
  if (sym >= 0 && st == kOk && !stream_encoder_valid(*enc, cap)) st = kErrState;
  if (sym >= 0 && st == kOk) {
    auto q = make_quant(row_at<T>(d, b, 0), d.V, precision, logits);
    uint32_t below;
    st = q.prepare(sym, &below);
    if (st == kOk && lane == 0) {
      uint32_t cum = uint32_t(sym) + below + (q.qp.argmax < sym ? q.qp.rem : 0u);
      st = stream_encode(enc, out + b * cap, cap, cum, q.freq(sym), precision);
    }
  }
  if (lane == 0) status[b] = st;
}

__global__ void stream_encode_finish_kernel(int64_t* state, uint8_t* out, int64_t cap, int64_t B, int64_t* nbits) {
  int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  StreamEncoder* e = state_at<StreamEncoder>(state, b);
  // -1: the buffer is too small; -2: the state is not a coder's.
  nbits[b] = stream_encoder_valid(*e, cap) ? stream_encode_finish(e, out + b * cap, cap) : -2;
  stream_encoder_init(e);
}

template <typename T>
__global__ void stream_decode_step_kernel(int64_t* state, const uint8_t* data, int64_t N, const int64_t* nbits,
                                          DistArg d, int64_t B, const bool* active, int precision, bool logits,
                                          uint32_t* scratch, int64_t* symbols, int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  int64_t sym = -1;
  int32_t st = kOk;
  if (active[b] && !stream_decoder_valid(*state_at<StreamDecoder>(state, b))) {
    st = kErrState;
  } else if (active[b]) {
    const uint8_t* in = data + b * N;
    int64_t nbytes = min((nbits[b] + 7) / 8, N);  // never read past the row
    StreamDecoder* dec = state_at<StreamDecoder>(state, b);
    if (lane == 0 && dec->pos == 0) stream_decoder_init(dec, in, nbytes);
    __syncwarp();
    int64_t s = warp_stream_decode_one(dec, in, nbytes, row_at<T>(d, b, 0), d.V, precision, logits,
                                       scratch + b * (d.V + 1));
    if (s < 0) st = int32_t(-s); else sym = s;
  }
  if (lane == 0) {
    symbols[b] = sym;
    status[b] = st;
  }
}

// The window order's candidate (coder.h window_candidate) by the whole warp:
// the largest frequency among all but the last symbol, then its first index.
__device__ WindowOrder warp_window_candidate(const uint32_t* cdf, int64_t V) {
  int lane = threadIdx.x & 31;
  uint32_t fm = 0;
  for (int64_t s = lane; s < V - 1; s += 32) fm = max(fm, cdf[s + 1] - cdf[s]);
  fm = warp_max(fm);
  int32_t first = INT32_MAX;
  for (int64_t s = lane; s < V - 1; s += 32) {
    if (cdf[s + 1] - cdf[s] == fm) {
      first = int32_t(s);
      break;
    }
  }
  return WindowOrder{cdf, V, int64_t(warp_min(first)), fm, kPlaceFront};
}

__device__ void store_code(uint8_t* c, int nb, U128 v) {
  for (int i = 0; i < nb; ++i) c[i] = uint8_t(u128_shr(v, 8 * (nb - 1 - i)).lo);
}

template <typename T>
__global__ void window_encode_step_kernel(int64_t* state, DistArg d, int64_t B, const int64_t* symbols,
                                          int precision, bool logits, int budget_bits, int32_t max_symbols,
                                          uint32_t* scratch, int32_t* event, uint8_t* codes, int32_t* nsym,
                                          int32_t* back, int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  const int nb = budget_bits / 8;
  int64_t sym = symbols[b];
  int32_t st = kOk, ev = -1;
  WindowClose close;
  close.symbols = 0;
  close.given_back = 0;
  close.value = U128{0, 0};
  if (sym >= d.V) st = kErrSymbol;
  if (sym >= 0 && st == kOk && !window_encoder_valid(*state_at<WindowEncoder>(state, b))) st = kErrState;
  if (sym >= 0 && st == kOk) {
    auto q = make_quant(row_at<T>(d, b, 0), d.V, precision, logits);
    uint32_t below;
    st = q.prepare(-1, &below);
    if (st == kOk) {
      uint32_t* cdf = scratch + b * (d.V + 1);
      q.write_cdf(cdf);
      __syncwarp();
      WindowOrder candidate = warp_window_candidate(cdf, d.V);
      if (lane == 0)
        ev = window_encode(state_at<WindowEncoder>(state, b), candidate, sym, precision, budget_bits, max_symbols,
                           &close);
    }
  }
  if (lane == 0) {
    event[b] = ev;
    status[b] = st;
    bool closed = ev == kWindowClosed || ev == kWindowException;
    store_code(codes + b * nb, nb, closed ? close.value : U128{0, 0});
    nsym[b] = closed ? close.symbols : 0;
    back[b] = closed ? close.given_back : 0;
  }
}

__global__ void window_encode_finish_kernel(int64_t* state, const bool* active, int64_t B, int budget_bits,
                                            bool* has, uint8_t* codes, int32_t* nsym, int32_t* status) {
  int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const int nb = budget_bits / 8;
  WindowClose close;
  WindowEncoder* e = state_at<WindowEncoder>(state, b);
  // An invalid state (not a coder's) is a status, as in every op, and no window.
  const bool valid = !active[b] || window_encoder_valid(*e);
  status[b] = valid ? kOk : kErrState;
  bool h = active[b] && valid && window_encode_finish(e, budget_bits, &close);
  has[b] = h;
  store_code(codes + b * nb, nb, h ? close.value : U128{0, 0});
  nsym[b] = h ? close.symbols : 0;
}

__global__ void window_decode_start_kernel(int64_t* state, const uint8_t* codes, const bool* start,
                                           const int64_t* max_symbols, int64_t B, int budget_bits) {
  int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B || !start[b]) return;
  const int nb = budget_bits / 8;
  U128 v{0, 0};
  for (int i = 0; i < nb; ++i) v = u128_add64(u128_shl(v, 8), codes[b * nb + i]);
  window_decoder_init(state_at<WindowDecoder>(state, b), v, int32_t(max_symbols[b]));
}

template <typename T>
__global__ void window_decode_step_kernel(int64_t* state, DistArg d, int64_t B, int precision, bool logits,
                                          int budget_bits, int64_t eos, uint32_t* scratch, int64_t* symbols,
                                          bool* ended, int32_t* status) {
  int64_t b = warp_id();
  if (b >= B) return;
  int lane = threadIdx.x & 31;
  WindowDecoder* dec = state_at<WindowDecoder>(state, b);
  int64_t sym = -1;
  bool end = false;
  int32_t st = kOk;
  if (dec->done) {
    end = true;
  } else if (dec->count >= dec->max_symbols) {
    end = true;
  } else if (!window_decoder_valid(*dec)) {
    st = kErrState;
  } else {
    auto q = make_quant(row_at<T>(d, b, 0), d.V, precision, logits);
    uint32_t below;
    st = q.prepare(-1, &below);
    if (st == kOk) {
      uint32_t* cdf = scratch + b * (d.V + 1);
      q.write_cdf(cdf);
      __syncwarp();
      WindowOrder candidate = warp_window_candidate(cdf, d.V);
      if (lane == 0) {
        int64_t s;
        if (window_decode_symbol(dec, candidate, precision, budget_bits, &s)) sym = s;
        else end = true;
      }
    }
  }
  __syncwarp();
  if (lane == 0) {
    // The CPU marks a window done at the same three points: already done,
    // full by count, or the cell left the interval; EOS ends it after output.
    if (st == kOk && (end || sym == eos)) dec->done = 1;
    symbols[b] = sym;
    ended[b] = end;
    status[b] = st;
  }
}

template <typename F>
void with_type(const DistArg& d, F&& f) {
  if (d.bf16) f(uint16_t{});
  else f(float{});
}

constexpr int kThreads = 32 * kWarpsPerBlock;

}  // namespace

void launch_quantize(DistArg d, int64_t rows, int precision, bool logits, int32_t* cdf, int32_t* status,
                     cudaStream_t stream) {
  if (rows == 0) return;
  with_type(d, [&](auto tag) {
    quantize_kernel<decltype(tag)><<<blocks_for(rows), kThreads, 0, stream>>>(d, rows, precision, logits, cdf,
                                                                               status);
  });
}

void launch_encode(DistArg d, int64_t B, int64_t T, const int64_t* symbols, const int64_t* lengths, int precision,
                   bool logits, uint8_t* out, int64_t max_bytes, int64_t* nbits, int32_t* status,
                   cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    encode_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(d, B, T, symbols, lengths, precision,
                                                                          logits, out, max_bytes, nbits, status);
  });
}

void launch_decode(DistArg d, int64_t B, int64_t T, const uint8_t* data, int64_t N, const int64_t* nbits,
                   const int64_t* lengths, int precision, bool logits, uint32_t* scratch, int64_t* symbols,
                   int32_t* status, cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    decode_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(d, B, T, data, N, nbits, lengths,
                                                                          precision, logits, scratch, symbols,
                                                                          status);
  });
}

void launch_stream_encode_step(int64_t* state, uint8_t* out, int64_t cap, DistArg d, int64_t B,
                               const int64_t* symbols, int precision, bool logits, int32_t* status,
                               cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    stream_encode_step_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(
        state, out, cap, d, B, symbols, precision, logits, status);
  });
}

void launch_stream_encode_finish(int64_t* state, uint8_t* out, int64_t cap, int64_t B, int64_t* nbits,
                                 cudaStream_t stream) {
  if (B == 0) return;
  stream_encode_finish_kernel<<<int((B + 127) / 128), 128, 0, stream>>>(state, out, cap, B, nbits);
}

void launch_stream_decode_step(int64_t* state, const uint8_t* data, int64_t N, const int64_t* nbits, DistArg d,
                               int64_t B, const bool* active, int precision, bool logits, uint32_t* scratch,
                               int64_t* symbols, int32_t* status, cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    stream_decode_step_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(
        state, data, N, nbits, d, B, active, precision, logits, scratch, symbols, status);
  });
}

void launch_window_encode_step(int64_t* state, DistArg d, int64_t B, const int64_t* symbols, int precision,
                               bool logits, int budget_bits, int32_t max_symbols, uint32_t* scratch,
                               int32_t* event, uint8_t* codes, int32_t* nsym, int32_t* back, int32_t* status,
                               cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    window_encode_step_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(
        state, d, B, symbols, precision, logits, budget_bits, max_symbols, scratch, event, codes, nsym, back,
        status);
  });
}

void launch_window_encode_finish(int64_t* state, const bool* active, int64_t B, int budget_bits, bool* has,
                                 uint8_t* codes, int32_t* nsym, int32_t* status, cudaStream_t stream) {
  if (B == 0) return;
  window_encode_finish_kernel<<<int((B + 127) / 128), 128, 0, stream>>>(state, active, B, budget_bits, has, codes,
                                                                        nsym, status);
}

void launch_window_decode_start(int64_t* state, const uint8_t* codes, const bool* start,
                                const int64_t* max_symbols, int64_t B, int budget_bits, cudaStream_t stream) {
  if (B == 0) return;
  window_decode_start_kernel<<<int((B + 127) / 128), 128, 0, stream>>>(state, codes, start, max_symbols, B,
                                                                       budget_bits);
}

void launch_window_decode_step(int64_t* state, DistArg d, int64_t B, int precision, bool logits, int budget_bits,
                               int64_t eos, uint32_t* scratch, int64_t* symbols, bool* ended, int32_t* status,
                               cudaStream_t stream) {
  if (B == 0) return;
  with_type(d, [&](auto tag) {
    window_decode_step_kernel<decltype(tag)><<<blocks_for(B), kThreads, 0, stream>>>(
        state, d, B, precision, logits, budget_bits, eos, scratch, symbols, ended, status);
  });
}

}  // namespace cuda
}  // namespace ncx
