// The ncx extension module: every op schema in one place (TORCH_LIBRARY), so
// that torch.compile, fake tensors and opcheck see them; the CPU and CUDA
// implementations register themselves for their dispatch keys in csrc/cpu and
// csrc/cuda.
#include <torch/extension.h>

#include "core/coder.h"
#include "core/int_m1.h"
#include "core/window_vocab.h"
#include "cpu/cpu_level.h"

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
      "Tensor, Tensor, Tensor)");
  m.def(
      "window_decode_start(Tensor(a!) state, Tensor codes, Tensor start, Tensor max_symbols, "
      "int budget_bits) -> ()");
  m.def(
      "window_decode_step(Tensor(a!) state, Tensor dist, int precision, bool logits, "
      "int budget_bits, int eos) -> (Tensor, Tensor, Tensor)");

  // Integer M1 (csrc/core/int_m1.h): int32 activations in Q16 throughout.
  // x [N, K] times int8 weight [D, K] with per-channel multiplier/shift -> [N, D].
  m.def("int_linear(Tensor x, Tensor weight, Tensor multiplier, Tensor shift) -> Tensor");
  // RMS norm of rows x [N, C] with gain [C] (Q16).
  m.def("int_rms_norm(Tensor x, Tensor gain) -> Tensor");
  // RoPE of x [N, H, head_dim] at positions [N] with cos/sin tables [context, head_dim/2] (Q30).
  m.def("int_rope(Tensor x, Tensor cos, Tensor sin, Tensor positions) -> Tensor");
  // Causal attention of queries q [N, H, head_dim], row n attending keys 0..positions[n]
  // of stream streams[n] in the caches [S, H, L, head_dim].
  m.def("int_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor streams, Tensor positions) -> Tensor");
  // Logits [N, V] (Q16) -> coder weights [N, V]: exp(l - max) in Q22, the largest exactly 2^22.
  m.def("int_coder_weights(Tensor logits) -> Tensor");
  // The whole forward of N rows (csrc/int_m1_forward.cpp): row n is token tokens[n] at
  // position positions[n] of stream streams[n]; its key/value go into the caches (one per
  // layer) first. weights in the order ncx.int_m1.IntM1.flat_weights gives -> coder weights [N, V].
  m.def(
      "int_m1_forward(Tensor tokens, Tensor streams, Tensor positions, Tensor[] weights, "
      "Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, int n_head) -> Tensor");

  // Equal-Info windows as a vocabulary (csrc/core/window_vocab.h): code c's
  // string is pool[offsets[c], offsets[c+1]) then EOS if eos[c]. Outputs are
  // sized by the data (host ops, not for graphs).
  // -> the longest-match trie, int64 [nodes, 8].
  m.def("vocab_trie(Tensor pool, Tensor offsets, Tensor eos) -> Tensor");
  // bytes uint8 [total], doc_offsets [D + 1] -> codes int32, window_offsets [D + 1], failed_at [D].
  m.def("vocab_encode(Tensor trie, Tensor data, Tensor doc_offsets) -> (Tensor, Tensor, Tensor)");
  // codes int32 [W], window_offsets [D + 1], caps int32 [W] or empty -> bytes, byte_offsets [D + 1], ended [D].
  m.def(
      "vocab_decode(Tensor pool, Tensor offsets, Tensor eos, Tensor codes, Tensor window_offsets, "
      "Tensor caps) -> (Tensor, Tensor, Tensor)");
}

#ifdef NCX_WITH_CUDA
namespace ncx {
std::string cuda_int8_gemm(int64_t device_index);  // csrc/cuda/int_m1_cuda.cpp
}
#endif

// Importing ncx._C registers the ops; the module itself only tells Python the
// size of each per-stream state (int64 words) and whether CUDA was built.
PYBIND11_MODULE(_C, m) {
  auto words = [](size_t bytes) { return int64_t((bytes + 7) / 8); };
  m.attr("STREAM_ENCODER_WORDS") = words(sizeof(ncx::StreamEncoder));
  m.attr("STREAM_DECODER_WORDS") = words(sizeof(ncx::StreamDecoder));
  m.attr("WINDOW_ENCODER_WORDS") = words(sizeof(ncx::WindowEncoder));
  m.attr("WINDOW_DECODER_WORDS") = words(sizeof(ncx::WindowDecoder));
  // Limits and formats the Python layer checks against or builds with, from the core itself.
  m.attr("MIN_PRECISION") = ncx::kMinPrecision;
  m.attr("MAX_PRECISION") = ncx::kMaxPrecision;
  m.attr("MAX_ALPHABET") = ncx::kMaxAlphabet;
  pybind11::dict status;
  for (int32_t s = 1; s < ncx::kNumStatus; ++s) status[pybind11::int_(s)] = ncx::status_text(s);
  m.attr("STATUS_MESSAGES") = status;
  m.attr("INT_ACT_FRAC") = ncx::intm1::kFrac;
  m.attr("INT_ROPE_FRAC") = ncx::intm1::kRopeFrac;
  m.attr("INT_QKV_LIMIT") = ncx::intm1::kQKVLimit;
  m.attr("INT_CODER_FRAC") = ncx::intm1::kCoderFrac;
  // The symbol the vocabulary ops read as EOS (ncx.window_vocab checks it is M1's).
  m.attr("VOCAB_EOS") = ncx::vocab::kEos;
  // The CPU level of the CPU kernels (csrc/cpu/kernels.h); NCX_CPU_LEVEL picks one at import.
  ncx::set_cpu_level_from_environment();
  m.def("cpu_level", &ncx::cpu_level, "The CPU level the CPU ops use: baseline, avx2 or avx512.");
  m.def("cpu_levels", &ncx::cpu_levels, "The CPU levels this build and this CPU can run, lowest first.");
  m.def("set_cpu_level", &ncx::set_cpu_level, "Switch the CPU ops to another level (ValueError if unavailable).");
  m.def("cpu_int8_gemm", &ncx::cpu_int8_gemm, "The GEMM the CPU's int_linear uses at the current level.");
#ifdef NCX_WITH_CUDA
  m.def("cuda_int8_gemm", &ncx::cuda_int8_gemm, pybind11::arg("device_index") = 0,
        "The GEMM the CUDA int_linear uses on that device (probes torch._int_mm once).");
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
}
