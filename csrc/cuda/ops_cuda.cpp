// CUDA dispatch of the ncx ops: argument checks (shared with the CPU back
// end), output allocation, and one kernel launch on the current stream.
// Data-dependent checks that the CPU does with .item() (lengths and nbits in
// range) are done the same way here for the whole-sequence ops; the step ops
// never synchronize.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../ops_common.h"
#include "dispatch_common.h"
#include "kernels.h"

namespace ncx {
namespace {

using at::Tensor;

cuda::DistArg dist_arg(const Tensor& dist, int64_t stride_b, int64_t stride_t) {
  return cuda::DistArg{dist.data_ptr(), dist.scalar_type() == at::kBFloat16, stride_b, stride_t, dist.size(-1)};
}

Tensor scratch_for(const Tensor& dist, int64_t B, int64_t V) {
  return at::empty({B, V + 1}, dist.options().dtype(at::kInt));
}

uint32_t* u32(Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

std::tuple<Tensor, Tensor> quantize_cuda(const Tensor& dist_in, int64_t precision, bool logits) {
  TORCH_CHECK(dist_in.dim() >= 1, "dist must have at least one dimension");
  int64_t V = check_dist(dist_in, dist_in.dim(), "[..., V]");
  check_precision(precision, V);
  c10::cuda::CUDAGuard guard(dist_in.device());
  Tensor dist = dist_in.contiguous();
  int64_t rows = dist.numel() / V;
  auto sizes = dist.sizes().vec();
  sizes.back() = V + 1;
  Tensor cdf = at::empty(sizes, dist.options().dtype(at::kInt));
  auto st_sizes = dist.sizes().vec();
  st_sizes.pop_back();
  Tensor status = at::empty(st_sizes, dist.options().dtype(at::kInt));
  cuda::launch_quantize(dist_arg(dist, V, 0), rows, int(precision), logits, cdf.data_ptr<int32_t>(),
                        status.data_ptr<int32_t>(), stream());
  check_launch();
  return {cdf, status};
}

std::tuple<Tensor, Tensor, Tensor> encode_cuda(const Tensor& dist, const Tensor& symbols_in, const Tensor& lengths_in,
                                              int64_t precision, bool logits, int64_t max_bytes) {
  int64_t V = check_dist(dist, 3, "[B, T, V]");
  int64_t B = dist.size(0), T = dist.size(1);
  check_precision(precision, V);
  check_index_tensor(symbols_in, "symbols");
  TORCH_CHECK(symbols_in.dim() == 2 && symbols_in.size(0) == B && symbols_in.size(1) == T,
              "symbols must have shape [B, T] = [", B, ", ", T, "], got ", symbols_in.sizes());
  check_cuda(dist, "dist");
  check_same_device(dist, symbols_in, "dist", "symbols");
  check_same_device(dist, lengths_in, "dist", "lengths");
  check_lengths(lengths_in, B, T);
  c10::cuda::CUDAGuard guard(dist.device());
  if (max_bytes <= 0) max_bytes = max_stream_bytes(T, precision);
  Tensor symbols = symbols_in.to(at::kLong).contiguous();
  Tensor lengths = lengths_in.to(at::kLong).contiguous();
  Tensor out = at::zeros({B, max_bytes}, dist.options().dtype(at::kByte));
  Tensor nbits = at::empty({B}, dist.options().dtype(at::kLong));
  Tensor status = at::empty({B}, dist.options().dtype(at::kInt));
  cuda::launch_encode(dist_arg(dist, dist.stride(0), dist.stride(1)), B, T, symbols.data_ptr<int64_t>(),
                      lengths.data_ptr<int64_t>(), int(precision), logits, out.data_ptr<uint8_t>(), max_bytes,
                      nbits.data_ptr<int64_t>(), status.data_ptr<int32_t>(), stream());
  check_launch();
  return {out, nbits, status};
}

std::tuple<Tensor, Tensor> decode_cuda(const Tensor& dist, const Tensor& data_in, const Tensor& nbits_in,
                                       const Tensor& lengths_in, int64_t precision, bool logits) {
  int64_t V = check_dist(dist, 3, "[B, T, V]");
  int64_t B = dist.size(0), T = dist.size(1);
  check_precision(precision, V);
  check_cuda(dist, "dist");
  check_data(data_in, nbits_in, B);
  check_same_device(dist, data_in, "dist", "data");
  check_same_device(dist, nbits_in, "dist", "nbits");
  check_same_device(dist, lengths_in, "dist", "lengths");
  check_lengths(lengths_in, B, T);
  check_nbits_range(data_in, nbits_in);
  c10::cuda::CUDAGuard guard(dist.device());
  Tensor data = data_in.contiguous();
  Tensor nbits = nbits_in.to(at::kLong).contiguous();
  Tensor lengths = lengths_in.to(at::kLong).contiguous();
  Tensor symbols = at::full({B, T}, -1, dist.options().dtype(at::kLong));
  Tensor status = at::empty({B}, dist.options().dtype(at::kInt));
  Tensor scratch = scratch_for(dist, B, V);
  cuda::launch_decode(dist_arg(dist, dist.stride(0), dist.stride(1)), B, T, data.data_ptr<uint8_t>(), data.size(1),
                      nbits.data_ptr<int64_t>(), lengths.data_ptr<int64_t>(), int(precision), logits, u32(scratch),
                      symbols.data_ptr<int64_t>(), status.data_ptr<int32_t>(), stream());
  check_launch();
  return {symbols, status};
}

// The shared step checks plus the device ones.
int64_t check_step(const Tensor& dist, const Tensor& symbols, int64_t& B) {
  int64_t V = check_step_args(dist, symbols, B);
  check_cuda(dist, "dist");
  check_same_device(dist, symbols, "dist", "symbols");
  return V;
}

Tensor stream_encode_step_cuda(Tensor& state, Tensor& out, const Tensor& dist, const Tensor& symbols_in,
                               int64_t precision, bool logits) {
  int64_t B;
  int64_t V = check_step(dist, symbols_in, B);
  check_precision(precision, V);
  check_state(state, B, words_of(sizeof(StreamEncoder)), "stream encoder");
  check_same_device(dist, state, "dist", "state");
  check_same_device(dist, out, "dist", "out");
  check_out_buffer(out, B);
  c10::cuda::CUDAGuard guard(dist.device());
  Tensor symbols = symbols_in.to(at::kLong).contiguous();
  Tensor status = at::empty({B}, dist.options().dtype(at::kInt));
  cuda::launch_stream_encode_step(state.data_ptr<int64_t>(), out.data_ptr<uint8_t>(), out.size(1),
                                  dist_arg(dist, dist.stride(0), 0), B, symbols.data_ptr<int64_t>(), int(precision),
                                  logits, status.data_ptr<int32_t>(), stream());
  check_launch();
  return status;
}

Tensor stream_encode_finish_cuda(Tensor& state, Tensor& out) {
  int64_t B = out.size(0);
  check_state(state, B, words_of(sizeof(StreamEncoder)), "stream encoder");
  check_cuda(state, "state");
  check_same_device(state, out, "state", "out");
  c10::cuda::CUDAGuard guard(state.device());
  Tensor nbits = at::empty({B}, state.options());
  cuda::launch_stream_encode_finish(state.data_ptr<int64_t>(), out.data_ptr<uint8_t>(), out.size(1), B,
                                    nbits.data_ptr<int64_t>(), stream());
  check_launch();
  return nbits;
}

std::tuple<Tensor, Tensor> stream_decode_step_cuda(Tensor& state, const Tensor& data_in, const Tensor& nbits_in,
                                                   const Tensor& dist, const Tensor& active_in, int64_t precision,
                                                   bool logits) {
  int64_t V = check_dist(dist, 2, "[B, V]");
  int64_t B = dist.size(0);
  check_precision(precision, V);
  check_cuda(dist, "dist");
  check_state(state, B, words_of(sizeof(StreamDecoder)), "stream decoder");
  check_data(data_in, nbits_in, B);
  for (const Tensor* t : {static_cast<const Tensor*>(&state), &data_in, &nbits_in, &active_in})
    check_same_device(dist, *t, "dist", "coder inputs");
  TORCH_CHECK(active_in.scalar_type() == at::kBool && active_in.dim() == 1 && active_in.size(0) == B,
              "active must be a bool tensor of shape [B]");
  c10::cuda::CUDAGuard guard(dist.device());
  Tensor data = data_in.contiguous();
  Tensor nbits = nbits_in.to(at::kLong).contiguous();
  Tensor active = active_in.contiguous();
  Tensor symbols = at::empty({B}, dist.options().dtype(at::kLong));
  Tensor status = at::empty({B}, dist.options().dtype(at::kInt));
  Tensor scratch = scratch_for(dist, B, V);
  cuda::launch_stream_decode_step(state.data_ptr<int64_t>(), data.data_ptr<uint8_t>(), data.size(1),
                                  nbits.data_ptr<int64_t>(), dist_arg(dist, dist.stride(0), 0), B,
                                  active.data_ptr<bool>(), int(precision), logits, u32(scratch),
                                  symbols.data_ptr<int64_t>(), status.data_ptr<int32_t>(), stream());
  check_launch();
  return {symbols, status};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> window_encode_step_cuda(Tensor& state, const Tensor& dist,
                                                                           const Tensor& symbols_in,
                                                                           int64_t precision, bool logits,
                                                                           int64_t budget_bits,
                                                                           int64_t max_symbols) {
  int64_t B;
  int64_t V = check_step(dist, symbols_in, B);
  check_precision(precision, V);
  check_budget(budget_bits, precision);
  TORCH_CHECK(max_symbols >= 1 && max_symbols <= INT32_MAX, "max_symbols must be in [1, 2^31), got ", max_symbols);
  check_state(state, B, words_of(sizeof(WindowEncoder)), "window encoder");
  check_same_device(dist, state, "dist", "state");
  c10::cuda::CUDAGuard guard(dist.device());
  Tensor symbols = symbols_in.to(at::kLong).contiguous();
  auto opts = dist.options();
  Tensor event = at::empty({B}, opts.dtype(at::kInt));
  Tensor codes = at::empty({B, budget_bits / 8}, opts.dtype(at::kByte));
  Tensor nsym = at::empty({B}, opts.dtype(at::kInt));
  Tensor back = at::empty({B}, opts.dtype(at::kInt));
  Tensor status = at::empty({B}, opts.dtype(at::kInt));
  Tensor scratch = scratch_for(dist, B, V);
  cuda::launch_window_encode_step(state.data_ptr<int64_t>(), dist_arg(dist, dist.stride(0), 0), B,
                                  symbols.data_ptr<int64_t>(), int(precision), logits, int(budget_bits),
                                  int32_t(max_symbols), u32(scratch), event.data_ptr<int32_t>(),
                                  codes.data_ptr<uint8_t>(), nsym.data_ptr<int32_t>(), back.data_ptr<int32_t>(),
                                  status.data_ptr<int32_t>(), stream());
  check_launch();
  return {event, codes, nsym, back, status};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> window_encode_finish_cuda(Tensor& state, const Tensor& active_in,
                                                             int64_t budget_bits) {
  int64_t B = active_in.size(0);
  TORCH_CHECK(active_in.scalar_type() == at::kBool && active_in.dim() == 1, "active must be a bool tensor [B]");
  TORCH_CHECK(budget_bits >= 8 && budget_bits <= 128 && budget_bits % 8 == 0,
              "budget_bits must be a multiple of 8 in [8, 128], got ", budget_bits);
  check_state(state, B, words_of(sizeof(WindowEncoder)), "window encoder");
  check_cuda(state, "state");
  check_same_device(state, active_in, "state", "active");
  c10::cuda::CUDAGuard guard(state.device());
  Tensor active = active_in.contiguous();
  auto opts = state.options();
  Tensor has = at::empty({B}, opts.dtype(at::kBool));
  Tensor codes = at::empty({B, budget_bits / 8}, opts.dtype(at::kByte));
  Tensor nsym = at::empty({B}, opts.dtype(at::kInt));
  Tensor status = at::empty({B}, opts.dtype(at::kInt));
  cuda::launch_window_encode_finish(state.data_ptr<int64_t>(), active.data_ptr<bool>(), B, int(budget_bits),
                                    has.data_ptr<bool>(), codes.data_ptr<uint8_t>(), nsym.data_ptr<int32_t>(),
                                    status.data_ptr<int32_t>(), stream());
  check_launch();
  return {has, codes, nsym, status};
}

void window_decode_start_cuda(Tensor& state, const Tensor& codes_in, const Tensor& start_in, const Tensor& max_in,
                              int64_t budget_bits) {
  int64_t B = start_in.size(0), nb = budget_bits / 8;
  TORCH_CHECK(budget_bits >= 8 && budget_bits <= 128 && budget_bits % 8 == 0,
              "budget_bits must be a multiple of 8 in [8, 128], got ", budget_bits);
  check_state(state, B, words_of(sizeof(WindowDecoder)), "window decoder");
  check_cuda(state, "state");
  TORCH_CHECK(codes_in.scalar_type() == at::kByte && codes_in.dim() == 2 && codes_in.size(0) == B &&
                  codes_in.size(1) == nb,
              "codes must be a uint8 tensor of shape [B, budget_bits / 8] = [", B, ", ", nb, "], got ",
              codes_in.sizes());
  TORCH_CHECK(start_in.scalar_type() == at::kBool && start_in.dim() == 1, "start must be a bool tensor [B]");
  check_index_tensor(max_in, "max_symbols");
  TORCH_CHECK(max_in.dim() == 1 && max_in.size(0) == B, "max_symbols must have shape [B]");
  for (const Tensor* t : {&codes_in, &start_in, &max_in}) check_same_device(state, *t, "state", "window inputs");
  c10::cuda::CUDAGuard guard(state.device());
  Tensor codes = codes_in.contiguous(), start = start_in.contiguous();
  Tensor maxs = max_in.to(at::kLong).clamp(0, INT32_MAX).contiguous();
  cuda::launch_window_decode_start(state.data_ptr<int64_t>(), codes.data_ptr<uint8_t>(), start.data_ptr<bool>(),
                                   maxs.data_ptr<int64_t>(), B, int(budget_bits), stream());
  check_launch();
}

std::tuple<Tensor, Tensor, Tensor> window_decode_step_cuda(Tensor& state, const Tensor& dist, int64_t precision,
                                                           bool logits, int64_t budget_bits, int64_t eos) {
  int64_t V = check_dist(dist, 2, "[B, V]");
  int64_t B = dist.size(0);
  check_precision(precision, V);
  check_budget(budget_bits, precision);
  check_cuda(dist, "dist");
  check_state(state, B, words_of(sizeof(WindowDecoder)), "window decoder");
  check_same_device(dist, state, "dist", "state");
  c10::cuda::CUDAGuard guard(dist.device());
  auto opts = dist.options();
  Tensor symbols = at::empty({B}, opts.dtype(at::kLong));
  Tensor ended = at::empty({B}, opts.dtype(at::kBool));
  Tensor status = at::empty({B}, opts.dtype(at::kInt));
  Tensor scratch = scratch_for(dist, B, V);
  cuda::launch_window_decode_step(state.data_ptr<int64_t>(), dist_arg(dist, dist.stride(0), 0), B, int(precision),
                                  logits, int(budget_bits), eos, u32(scratch), symbols.data_ptr<int64_t>(),
                                  ended.data_ptr<bool>(), status.data_ptr<int32_t>(), stream());
  check_launch();
  return {symbols, ended, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncx, CUDA, m) {
  m.impl("quantize", &quantize_cuda);
  m.impl("encode", &encode_cuda);
  m.impl("decode", &decode_cuda);
  m.impl("stream_encode_step", &stream_encode_step_cuda);
  m.impl("stream_encode_finish", &stream_encode_finish_cuda);
  m.impl("stream_decode_step", &stream_decode_step_cuda);
  m.impl("window_encode_step", &window_encode_step_cuda);
  m.impl("window_encode_finish", &window_encode_finish_cuda);
  m.impl("window_decode_start", &window_decode_start_cuda);
  m.impl("window_decode_step", &window_decode_step_cuda);
}

}  // namespace ncx
