// The ncx extension module: every op schema in one place (TORCH_LIBRARY), so
// that torch.compile, fake tensors and opcheck see them; the CPU and CUDA
// implementations register themselves for their dispatch keys in csrc/cpu and
// csrc/cuda.
#include <torch/extension.h>

#include "core/coder.h"

TORCH_LIBRARY(ncx, m) {
  // [..., V] float32/bfloat16 probabilities or logits -> int32 CDF [..., V+1]
  // with total 2^precision, and a per-row status (0 = ok).
  m.def("quantize(Tensor dist, int precision, bool logits) -> (Tensor, Tensor)");

  // Whole sequences (plain AC, StaticAC): dist [B, T, V], symbols [B, T],
  // lengths [B] -> bytes [B, max_bytes] uint8, bit lengths [B] int64, status [B].
  m.def(
      "encode(Tensor dist, Tensor symbols, Tensor lengths, int precision, bool logits, "
      "int max_bytes) -> (Tensor, Tensor, Tensor)");
  // bytes [B, N] uint8, nbits [B], dist [B, T, V], lengths [B] -> symbols [B, T] int64, status.
  m.def(
      "decode(Tensor dist, Tensor data, Tensor nbits, Tensor lengths, int precision, "
      "bool logits) -> (Tensor, Tensor)");

  // Stateful stream coding with a model in the loop. symbols < 0: stream idle.
  m.def(
      "stream_encode_step(Tensor(a!) state, Tensor(b!) out, Tensor dist, Tensor symbols, "
      "int precision, bool logits) -> Tensor");
  m.def("stream_encode_finish(Tensor(a!) state, Tensor(b!) out) -> Tensor");
  m.def(
      "stream_decode_step(Tensor(a!) state, Tensor data, Tensor nbits, Tensor dist, "
      "Tensor active, int precision, bool logits) -> (Tensor, Tensor)");

  // Equal-Info windows of budget_bits bits.
  m.def(
      "window_encode_step(Tensor(a!) state, Tensor dist, Tensor symbols, int precision, "
      "bool logits, int budget_bits, int max_symbols) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "window_encode_finish(Tensor(a!) state, Tensor active, int budget_bits) -> (Tensor, "
      "Tensor, Tensor)");
  m.def(
      "window_decode_start(Tensor(a!) state, Tensor codes, Tensor start, Tensor max_symbols, "
      "int budget_bits) -> ()");
  m.def(
      "window_decode_step(Tensor(a!) state, Tensor dist, int precision, bool logits, "
      "int budget_bits, int eos) -> (Tensor, Tensor, Tensor)");
}

// Importing ncx._C registers the ops; the module itself only tells Python the
// size of each per-stream state (int64 words) and whether CUDA was built.
PYBIND11_MODULE(_C, m) {
  auto words = [](size_t bytes) { return int64_t((bytes + 7) / 8); };
  m.attr("STREAM_ENCODER_WORDS") = words(sizeof(ncx::StreamEncoder));
  m.attr("STREAM_DECODER_WORDS") = words(sizeof(ncx::StreamDecoder));
  m.attr("WINDOW_ENCODER_WORDS") = words(sizeof(ncx::WindowEncoder));
  m.attr("WINDOW_DECODER_WORDS") = words(sizeof(ncx::WindowDecoder));
#ifdef NCX_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
