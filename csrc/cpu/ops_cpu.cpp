// CPU back end: loops over streams with at::parallel_for, each stream running
// the shared core (csrc/core) serially.
#include <ATen/Parallel.h>

#include <vector>

#include "../ops_common.h"
#include "kernels.h"

namespace ncx {
namespace {

using at::Tensor;

// Scratch for the row loops: fixed-point weights (with the encoder's running
// totals after them, and room for a second row's) and the CDF, each starting
// on a cache line. The row
// loops read and write them a whole vector at a time; a vector that straddles
// two lines costs two accesses (malloc aligns to 16 bytes only).
class RowScratch {
 public:
  explicit RowScratch(int64_t V)
      : buffer_(line_up(stream_scratch_words(V)) + line_up(V + 1) + kLine),
        q_(first_line()),
        cdf_(q_ + line_up(stream_scratch_words(V))) {}
  RowScratch(const RowScratch&) = delete;
  RowScratch& operator=(const RowScratch&) = delete;
  uint32_t* q() { return q_; }
  uint32_t* cdf() { return cdf_; }

 private:
  static constexpr int64_t kLine = 64 / sizeof(uint32_t);
  static int64_t line_up(int64_t n) { return (n + kLine - 1) / kLine * kLine; }
  uint32_t* first_line() {
    const uintptr_t p = reinterpret_cast<uintptr_t>(buffer_.data());
    return reinterpret_cast<uint32_t*>((p + 63) & ~uintptr_t(63));
  }
  std::vector<uint32_t> buffer_;
  uint32_t* q_;
  uint32_t* cdf_;
};

template <typename T>
const T* row_ptr(const Tensor& dist) {
  return reinterpret_cast<const T*>(dist.data_ptr());
}

// Reads a contiguous int64 or int32 symbol tensor; the pointer is taken once,
// outside the row loops (data_ptr checks the dtype on every call).
class Symbols {
 public:
  explicit Symbols(const Tensor& t)
      : wide_(t.scalar_type() == at::kLong),
        p64_(wide_ ? t.data_ptr<int64_t>() : nullptr),
        p32_(wide_ ? nullptr : t.data_ptr<int32_t>()) {}
  int64_t operator[](int64_t i) const { return wide_ ? p64_[i] : int64_t(p32_[i]); }
  // For the kernels' loops: int64 (wide) or int32, from element i on.
  bool wide() const { return wide_; }
  const void* from(int64_t i) const { return wide_ ? static_cast<const void*>(p64_ + i) : p32_ + i; }

 private:
  bool wide_;
  const int64_t* p64_;
  const int32_t* p32_;
};

// Calls f with the dist element type (float or uint16_t for bfloat16 bits).
template <typename F>
void with_dist_type(const Tensor& dist, F&& f) {
  if (dist.scalar_type() == at::kFloat) f(float{});
  else f(uint16_t{});
}

// ------------------------------------------------------------------ quantize
std::tuple<Tensor, Tensor> quantize_cpu(const Tensor& dist_in, int64_t precision, bool logits) {
  TORCH_CHECK(dist_in.dim() >= 1, "dist must have at least one dimension");
  int64_t V = check_dist(dist_in, dist_in.dim(), "[..., V]");
  check_precision(precision, V);
  Tensor dist = dist_in.contiguous();
  int64_t rows = dist.numel() / V;
  auto sizes = dist.sizes().vec();
  sizes.back() = V + 1;
  Tensor cdf = at::empty(sizes, dist.options().dtype(at::kInt));
  auto status_sizes = dist.sizes().vec();
  status_sizes.pop_back();
  Tensor status = at::empty(status_sizes, dist.options().dtype(at::kInt));
  int32_t* cdf_p = cdf.data_ptr<int32_t>();
  int32_t* st_p = status.data_ptr<int32_t>();
  with_dist_type(dist, [&](auto tag) {
    using T = decltype(tag);
    const T* base = row_ptr<T>(dist);
    const RowQuantizer<T>& quantizer = cpu_kernels().rows<T>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      quantizer.cdf_rows(base + begin * V, end - begin, V, int(precision), logits, scratch.q(),
                         reinterpret_cast<uint32_t*>(cdf_p + begin * (V + 1)), st_p + begin);
    });
  });
  return {cdf, status};
}

// ----------------------------------------------------- whole-sequence coding

std::tuple<Tensor, Tensor, Tensor> encode_cpu(const Tensor& dist, const Tensor& symbols_in,
                                             const Tensor& lengths_in, int64_t precision, bool logits,
                                             int64_t max_bytes) {
  int64_t V = check_dist(dist, 3, "[B, T, V]");
  int64_t B = dist.size(0), T = dist.size(1);
  check_precision(precision, V);
  check_index_tensor(symbols_in, "symbols");
  TORCH_CHECK(symbols_in.dim() == 2 && symbols_in.size(0) == B && symbols_in.size(1) == T,
              "symbols must have shape [B, T] = [", B, ", ", T, "], got ", symbols_in.sizes());
  check_lengths(lengths_in, B, T);
  if (max_bytes <= 0) max_bytes = max_stream_bytes(T, precision);
  Tensor symbols_tensor = symbols_in.contiguous();
  const Symbols symbols(symbols_tensor);
  Tensor lengths = lengths_in.to(at::kLong).contiguous();
  Tensor out = at::zeros({B, max_bytes}, dist.options().dtype(at::kByte));
  Tensor nbits = at::zeros({B}, dist.options().dtype(at::kLong));
  Tensor status = at::zeros({B}, dist.options().dtype(at::kInt));
  const int64_t sb = dist.stride(0), st = dist.stride(1);
  const int64_t* len_p = lengths.data_ptr<int64_t>();
  uint8_t* out_p = out.data_ptr<uint8_t>();
  int64_t* nbits_p = nbits.data_ptr<int64_t>();
  int32_t* status_p = status.data_ptr<int32_t>();
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b)
        status_p[b] = quantizer.encode_stream(base + b * sb, st, symbols.from(b * T), symbols.wide(), len_p[b], V,
                                              int(precision), logits, scratch.q(), out_p + b * max_bytes,
                                              max_bytes, nbits_p + b);
    });
  });
  return {out, nbits, status};
}

// Decodes one symbol of a stream with the row's quantization; returns the
// symbol or -status.
template <typename E>
int64_t stream_decode_one(StreamDecoder* dec, const uint8_t* in, int64_t nbytes, const E* row, int64_t V,
                          int precision, bool logits, const RowQuantizer<E>& quantizer, RowScratch& scratch) {
  uint32_t target = stream_decode_target(dec, precision), cum, freq;
  int64_t s;
  int32_t st = quantizer.find(row, V, precision, logits, target, scratch.q(), &s, &cum, &freq);
  if (st != kOk) return -st;
  st = stream_decode_consume(dec, in, nbytes, cum, freq, precision);
  if (st != kOk) return -st;
  return s;
}


std::tuple<Tensor, Tensor> decode_cpu(const Tensor& dist, const Tensor& data_in, const Tensor& nbits_in,
                                      const Tensor& lengths_in, int64_t precision, bool logits) {
  int64_t V = check_dist(dist, 3, "[B, T, V]");
  int64_t B = dist.size(0), T = dist.size(1);
  check_precision(precision, V);
  check_data(data_in, nbits_in, B);
  check_nbits_range(data_in, nbits_in);
  check_lengths(lengths_in, B, T);
  Tensor data = data_in.contiguous();
  Tensor nbits = nbits_in.to(at::kLong).contiguous();
  Tensor lengths = lengths_in.to(at::kLong).contiguous();
  Tensor symbols = at::full({B, T}, -1, dist.options().dtype(at::kLong));
  Tensor status = at::zeros({B}, dist.options().dtype(at::kInt));
  const int64_t sb = dist.stride(0), st = dist.stride(1), N = data.size(1);
  const int64_t* len_p = lengths.data_ptr<int64_t>();
  const uint8_t* data_p = data.data_ptr<uint8_t>();
  const int64_t* nbits_p = nbits.data_ptr<int64_t>();
  int64_t* symbols_p = symbols.data_ptr<int64_t>();
  int32_t* status_p = status.data_ptr<int32_t>();
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t nbytes = std::min((nbits_p[b] + 7) / 8, N);  // never read past the row
        status_p[b] = quantizer.decode_stream(base + b * sb, st, len_p[b], V, int(precision), logits, scratch.q(),
                                              data_p + b * N, nbytes, symbols_p + b * T);
      }
    });
  });
  return {symbols, status};
}

// ------------------------------------------------------- stateful step ops
template <typename S>
S* state_ptr(const Tensor& state) {
  return reinterpret_cast<S*>(state.data_ptr<int64_t>());
}

Tensor stream_encode_step_cpu(Tensor& state, Tensor& out, const Tensor& dist, const Tensor& symbols_in,
                              int64_t precision, bool logits) {
  int64_t B;
  int64_t V = check_step_args(dist, symbols_in, B);
  check_precision(precision, V);
  check_state(state, B, words_of(sizeof(StreamEncoder)), "stream encoder");
  check_out_buffer(out, B);
  Tensor symbols_tensor = symbols_in.contiguous();
  const Symbols symbols(symbols_tensor);
  Tensor status = at::zeros({B}, dist.options().dtype(at::kInt));
  const int64_t cap = out.size(1), sb = dist.stride(0);
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b) {
        int64_t sym = symbols[b];
        if (sym < 0) continue;
        int32_t& st = status.data_ptr<int32_t>()[b];
        if (sym >= V) { st = kErrSymbol; continue; }
        StreamEncoder* e = state_ptr<StreamEncoder>(state) + b;
        if (!stream_encoder_valid(*e, cap)) { st = kErrState; continue; }
        uint32_t cum, freq;
        st = quantizer.symbol(base + b * sb, V, int(precision), logits, sym, scratch.q(), &cum, &freq);
        if (st != kOk) continue;
        st = stream_encode(e, out.data_ptr<uint8_t>() + b * cap, cap, cum, freq, int(precision));
      }
    });
  });
  return status;
}

Tensor stream_encode_finish_cpu(Tensor& state, Tensor& out) {
  int64_t B = out.size(0);
  check_state(state, B, words_of(sizeof(StreamEncoder)), "stream encoder");
  check_out_buffer(out, B);
  Tensor nbits = at::empty({B}, state.options());
  const int64_t cap = out.size(1);
  for (int64_t b = 0; b < B; ++b) {
    StreamEncoder* e = state_ptr<StreamEncoder>(state) + b;
    // -1: the buffer is too small; -2: the state is not a coder's.
    nbits.data_ptr<int64_t>()[b] =
        stream_encoder_valid(*e, cap) ? stream_encode_finish(e, out.data_ptr<uint8_t>() + b * cap, cap) : -2;
    stream_encoder_init(e);
  }
  return nbits;
}

std::tuple<Tensor, Tensor> stream_decode_step_cpu(Tensor& state, const Tensor& data_in, const Tensor& nbits_in,
                                                  const Tensor& dist, const Tensor& active_in, int64_t precision,
                                                  bool logits) {
  int64_t V = check_dist(dist, 2, "[B, V]");
  int64_t B = dist.size(0);
  check_precision(precision, V);
  check_state(state, B, words_of(sizeof(StreamDecoder)), "stream decoder");
  check_data(data_in, nbits_in, B);
  check_nbits_range(data_in, nbits_in);
  TORCH_CHECK(active_in.scalar_type() == at::kBool && active_in.dim() == 1 && active_in.size(0) == B,
              "active must be a bool tensor of shape [B]");
  Tensor data = data_in.contiguous();
  Tensor nbits = nbits_in.to(at::kLong).contiguous();
  Tensor active = active_in.contiguous();
  Tensor symbols = at::full({B}, -1, dist.options().dtype(at::kLong));
  Tensor status = at::zeros({B}, dist.options().dtype(at::kInt));
  const int64_t N = data.size(1), sb = dist.stride(0);
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b) {
        if (!active.data_ptr<bool>()[b]) continue;
        const uint8_t* in = data.data_ptr<uint8_t>() + b * N;
        int64_t nbytes = std::min((nbits.data_ptr<int64_t>()[b] + 7) / 8, N);  // never read past the row
        StreamDecoder* dec = state_ptr<StreamDecoder>(state) + b;
        if (!stream_decoder_valid(*dec)) { status.data_ptr<int32_t>()[b] = kErrState; continue; }
        if (dec->pos == 0) stream_decoder_init(dec, in, nbytes);  // a fresh (zeroed) state
        int64_t s =
            stream_decode_one(dec, in, nbytes, base + b * sb, V, int(precision), logits, quantizer, scratch);
        if (s < 0) status.data_ptr<int32_t>()[b] = int32_t(-s);
        else symbols.data_ptr<int64_t>()[b] = s;
      }
    });
  });
  return {symbols, status};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> window_encode_step_cpu(Tensor& state, const Tensor& dist,
                                                                          const Tensor& symbols_in,
                                                                          int64_t precision, bool logits,
                                                                          int64_t budget_bits,
                                                                          int64_t max_symbols) {
  int64_t B;
  int64_t V = check_step_args(dist, symbols_in, B);
  check_precision(precision, V);
  check_budget(budget_bits, precision);
  TORCH_CHECK(max_symbols >= 1 && max_symbols <= INT32_MAX, "max_symbols must be in [1, 2^31), got ", max_symbols);
  check_state(state, B, words_of(sizeof(WindowEncoder)), "window encoder");
  Tensor symbols_tensor = symbols_in.contiguous();
  const Symbols symbols(symbols_tensor);
  auto opts = dist.options();
  Tensor event = at::full({B}, -1, opts.dtype(at::kInt));
  Tensor codes = at::zeros({B, budget_bits / 8}, opts.dtype(at::kByte));
  Tensor nsym = at::zeros({B}, opts.dtype(at::kInt));
  Tensor back = at::zeros({B}, opts.dtype(at::kInt));
  Tensor status = at::zeros({B}, opts.dtype(at::kInt));
  const int64_t sb = dist.stride(0), nb = budget_bits / 8;
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b) {
        int64_t sym = symbols[b];
        if (sym < 0) continue;
        int32_t& st = status.data_ptr<int32_t>()[b];
        if (sym >= V) { st = kErrSymbol; continue; }
        WindowEncoder* e = state_ptr<WindowEncoder>(state) + b;
        if (!window_encoder_valid(*e)) { st = kErrState; continue; }
        st = quantizer.cdf(base + b * sb, V, int(precision), logits, scratch.q(), scratch.cdf());
        if (st != kOk) continue;
        WindowClose close;
        int32_t ev = window_encode(e, window_candidate(scratch.cdf(), V), sym,
                                   int(precision), int(budget_bits), int32_t(max_symbols), &close);
        event.data_ptr<int32_t>()[b] = ev;
        if (ev != kWindowAccepted) {
          uint8_t* c = codes.data_ptr<uint8_t>() + b * nb;
          for (int64_t i = 0; i < nb; ++i) {
            int64_t bit = 8 * (nb - 1 - i);  // big-endian
            c[i] = uint8_t(u128_shr(close.value, int(bit)).lo);
          }
          nsym.data_ptr<int32_t>()[b] = close.symbols;
          back.data_ptr<int32_t>()[b] = close.given_back;
        }
      }
    });
  });
  return {event, codes, nsym, back, status};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> window_encode_finish_cpu(Tensor& state, const Tensor& active_in,
                                                            int64_t budget_bits) {
  int64_t B = active_in.size(0);
  TORCH_CHECK(active_in.scalar_type() == at::kBool && active_in.dim() == 1, "active must be a bool tensor [B]");
  check_state(state, B, words_of(sizeof(WindowEncoder)), "window encoder");
  TORCH_CHECK(budget_bits >= 8 && budget_bits <= 128 && budget_bits % 8 == 0,
              "budget_bits must be a multiple of 8 in [8, 128], got ", budget_bits);
  Tensor active = active_in.contiguous();
  const int64_t nb = budget_bits / 8;
  auto opts = state.options();
  Tensor has = at::zeros({B}, opts.dtype(at::kBool));
  Tensor codes = at::zeros({B, nb}, opts.dtype(at::kByte));
  Tensor nsym = at::zeros({B}, opts.dtype(at::kInt));
  Tensor status = at::zeros({B}, opts.dtype(at::kInt));
  for (int64_t b = 0; b < B; ++b) {
    if (!active.data_ptr<bool>()[b]) continue;
    WindowClose close;
    WindowEncoder* e = state_ptr<WindowEncoder>(state) + b;
    if (!window_encoder_valid(*e)) {  // as every op: a status, not an exception
      status.data_ptr<int32_t>()[b] = kErrState;
      continue;
    }
    if (window_encode_finish(e, int(budget_bits), &close)) {
      has.data_ptr<bool>()[b] = true;
      uint8_t* c = codes.data_ptr<uint8_t>() + b * nb;
      for (int64_t i = 0; i < nb; ++i) c[i] = uint8_t(u128_shr(close.value, int(8 * (nb - 1 - i))).lo);
      nsym.data_ptr<int32_t>()[b] = close.symbols;
    }
  }
  return {has, codes, nsym, status};
}

void window_decode_start_cpu(Tensor& state, const Tensor& codes_in, const Tensor& start_in,
                             const Tensor& max_in, int64_t budget_bits) {
  int64_t B = start_in.size(0), nb = budget_bits / 8;
  TORCH_CHECK(budget_bits >= 8 && budget_bits <= 128 && budget_bits % 8 == 0,
              "budget_bits must be a multiple of 8 in [8, 128], got ", budget_bits);
  check_state(state, B, words_of(sizeof(WindowDecoder)), "window decoder");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte && codes_in.dim() == 2 && codes_in.size(0) == B &&
                  codes_in.size(1) == nb,
              "codes must be a uint8 tensor of shape [B, budget_bits / 8] = [", B, ", ", nb, "], got ",
              codes_in.sizes());
  TORCH_CHECK(start_in.scalar_type() == at::kBool && start_in.dim() == 1, "start must be a bool tensor [B]");
  check_index_tensor(max_in, "max_symbols");
  Tensor codes = codes_in.contiguous(), start = start_in.contiguous();
  Tensor maxs = max_in.to(at::kLong).contiguous();
  TORCH_CHECK(maxs.dim() == 1 && maxs.size(0) == B, "max_symbols must have shape [B]");
  for (int64_t b = 0; b < B; ++b) {
    if (!start.data_ptr<bool>()[b]) continue;
    U128 v{0, 0};
    const uint8_t* c = codes.data_ptr<uint8_t>() + b * nb;
    for (int64_t i = 0; i < nb; ++i) v = u128_add64(u128_shl(v, 8), c[i]);
    int64_t m = std::min<int64_t>(std::max<int64_t>(maxs.data_ptr<int64_t>()[b], 0), INT32_MAX);
    window_decoder_init(state_ptr<WindowDecoder>(state) + b, v, int32_t(m));
  }
}

std::tuple<Tensor, Tensor, Tensor> window_decode_step_cpu(Tensor& state, const Tensor& dist, int64_t precision,
                                                          bool logits, int64_t budget_bits, int64_t eos) {
  int64_t V = check_dist(dist, 2, "[B, V]");
  int64_t B = dist.size(0);
  check_precision(precision, V);
  check_budget(budget_bits, precision);
  check_state(state, B, words_of(sizeof(WindowDecoder)), "window decoder");
  auto opts = dist.options();
  Tensor symbols = at::full({B}, -1, opts.dtype(at::kLong));
  Tensor ended = at::zeros({B}, opts.dtype(at::kBool));
  Tensor status = at::zeros({B}, opts.dtype(at::kInt));
  const int64_t sb = dist.stride(0);
  with_dist_type(dist, [&](auto tag) {
    using E = decltype(tag);
    const E* base = row_ptr<E>(dist);
    const RowQuantizer<E>& quantizer = cpu_kernels().rows<E>();
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      RowScratch scratch(V);
      for (int64_t b = begin; b < end; ++b) {
        WindowDecoder* d = state_ptr<WindowDecoder>(state) + b;
        if (d->done) { ended.data_ptr<bool>()[b] = true; continue; }
        if (d->count >= d->max_symbols) {
          d->done = 1;
          ended.data_ptr<bool>()[b] = true;
          continue;
        }
        if (!window_decoder_valid(*d)) { status.data_ptr<int32_t>()[b] = kErrState; continue; }
        int32_t st = quantizer.cdf(base + b * sb, V, int(precision), logits, scratch.q(), scratch.cdf());
        if (st != kOk) { status.data_ptr<int32_t>()[b] = st; continue; }
        int64_t s;
        if (window_decode_symbol(d, window_candidate(scratch.cdf(), V), int(precision), int(budget_bits),
                                 &s)) {
          symbols.data_ptr<int64_t>()[b] = s;
          if (s == eos) d->done = 1;
        } else {
          d->done = 1;
          ended.data_ptr<bool>()[b] = true;
        }
      }
    });
  });
  return {symbols, ended, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncx, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("encode", &encode_cpu);
  m.impl("decode", &decode_cpu);
  m.impl("stream_encode_step", &stream_encode_step_cpu);
  m.impl("stream_encode_finish", &stream_encode_finish_cpu);
  m.impl("stream_decode_step", &stream_decode_step_cpu);
  m.impl("window_encode_step", &window_encode_step_cpu);
  m.impl("window_encode_finish", &window_encode_finish_cpu);
  m.impl("window_decode_start", &window_decode_start_cpu);
  m.impl("window_decode_step", &window_decode_step_cpu);
}

}  // namespace ncx
