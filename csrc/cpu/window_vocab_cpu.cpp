// CPU ops of the window vocabulary (csrc/core/window_vocab.h): build the
// trie, encode documents by longest match, decode windows by lookup.
// Documents run in parallel (at::parallel_for); each is sequential.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../core/window_vocab.h"
#include "../ops_common.h"
#include "kernels.h"

namespace ncx {
namespace {

using at::Tensor;

// Calls f(d) for every document d, split between threads by their share of
// `offsets` (bytes or windows), not by count, so a few long documents do not
// leave one thread with most of the work. A document goes to the chunk that
// holds its start; the range ends one past the last offset so that empty
// documents at the very end have a chunk too.
template <typename F>
void parallel_over_documents(const int64_t* offsets, int64_t D, int64_t grain, const F& f) {
  if (D == 0) return;
  at::parallel_for(0, offsets[D] + 1, grain, [&](int64_t begin, int64_t end) {
    for (int64_t d = std::lower_bound(offsets, offsets + D, begin) - offsets; d < D && offsets[d] < end; ++d) f(d);
  });
}

// pool uint8 [P], offsets int64 [N + 1], eos bool [N], all contiguous CPU.
vocab::Table check_table(const Tensor& pool, const Tensor& offsets, const Tensor& eos) {
  check_int_tensor(pool, at::kByte, 1, "pool", "[pool_bytes]");
  check_int_tensor(offsets, at::kLong, 1, "offsets", "[num_codes + 1]");
  check_int_tensor(eos, at::kBool, 1, "eos", "[num_codes]");
  TORCH_CHECK(pool.is_contiguous() && offsets.is_contiguous() && eos.is_contiguous(),
              "pool, offsets and eos must be contiguous");
  int64_t n = eos.size(0);
  TORCH_CHECK(n >= 1 && offsets.size(0) == n + 1, "offsets must have num_codes + 1 = ", n + 1, " entries, got ",
              offsets.size(0));
  vocab::Table t{pool.data_ptr<uint8_t>(), offsets.data_ptr<int64_t>(),
                 reinterpret_cast<const uint8_t*>(eos.data_ptr<bool>()), n, pool.size(0)};
  int64_t bad = vocab::table_first_bad_offset(t);
  TORCH_CHECK(bad < 0, "offsets must rise from 0 to the pool size ", pool.size(0), " (first bad code ", bad, ")");
  return t;
}

// The trie as int64 [nodes, 8]: one 64-byte node per row.
Tensor vocab_trie_cpu(const Tensor& pool, const Tensor& offsets, const Tensor& eos) {
  vocab::Table t = check_table(pool, offsets, eos);
  std::vector<vocab::TrieNode> nodes = vocab::build_trie(t);
  TORCH_CHECK(nodes.size() < (size_t(1) << 31), "the trie has too many nodes for int32 indices");
  Tensor out = at::empty({int64_t(nodes.size()), 8}, pool.options().dtype(at::kLong));
  memcpy(out.data_ptr(), nodes.data(), nodes.size() * sizeof(vocab::TrieNode));
  return out;
}

// data uint8 [total], doc_offsets int64 [D + 1] -> codes int32 [windows],
// window_offsets int64 [D + 1], failed_at int64 [D] (-1: encoded; else the
// first symbol position where no vocabulary string starts).
std::tuple<Tensor, Tensor, Tensor> vocab_encode_cpu(const Tensor& trie, const Tensor& data,
                                                     const Tensor& doc_offsets) {
  TORCH_CHECK(trie.scalar_type() == at::kLong && trie.dim() == 2 && trie.size(1) == 8 && trie.size(0) >= 1 &&
                  trie.is_contiguous(),
              "trie must be the int64 [nodes, 8] tensor vocab_trie made, got ", trie.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(trie.data_ptr()) % 64 == 0, "trie must be 64-byte aligned");
  check_int_tensor(data, at::kByte, 1, "data", "[total_bytes]");
  check_int_tensor(doc_offsets, at::kLong, 1, "doc_offsets", "[documents + 1]");
  TORCH_CHECK(data.is_contiguous() && doc_offsets.is_contiguous(), "data and doc_offsets must be contiguous");
  int64_t D = doc_offsets.size(0) - 1;
  TORCH_CHECK(D >= 0, "doc_offsets must have documents + 1 >= 1 entries");
  const int64_t* off = doc_offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[D] == data.size(0), "doc_offsets must run from 0 to the data size ", data.size(0));
  for (int64_t d = 0; d < D; ++d) TORCH_CHECK(off[d + 1] >= off[d], "doc_offsets must not decrease");

  const void* nodes = trie.data_ptr();
  const auto encode_document = cpu_kernels().vocab_encode_document;
  const uint8_t* bytes = data.data_ptr<uint8_t>();
  auto opts = doc_offsets.options();
  // Document d's windows first go to a slot of its own at off[d] + d (it has
  // at most its length + 1 windows), then are packed.
  Tensor scratch = at::empty({data.size(0) + D}, opts.dtype(at::kInt));
  Tensor counts = at::empty({D}, opts);
  Tensor failed_at = at::empty({D}, opts);
  int32_t* s = scratch.data_ptr<int32_t>();
  int64_t* cnt = counts.data_ptr<int64_t>();
  int64_t* fail = failed_at.data_ptr<int64_t>();
  parallel_over_documents(off, D, 1 << 14, [&](int64_t d) {
    cnt[d] = encode_document(nodes, bytes + off[d], off[d + 1] - off[d], s + off[d] + d, fail + d);
  });
  Tensor window_offsets = at::empty({D + 1}, opts);
  int64_t* wo = window_offsets.data_ptr<int64_t>();
  wo[0] = 0;
  for (int64_t d = 0; d < D; ++d) wo[d + 1] = wo[d] + cnt[d];
  Tensor codes = at::empty({wo[D]}, opts.dtype(at::kInt));
  int32_t* c = codes.data_ptr<int32_t>();
  parallel_over_documents(off, D, 1 << 16, [&](int64_t d) {
    memcpy(c + wo[d], s + off[d] + d, size_t(cnt[d]) * sizeof(int32_t));
  });
  return {codes, window_offsets, failed_at};
}

// codes int32 [windows] (< num_codes), window_offsets int64 [D + 1], caps
// int32 [windows] or empty (no exceptions) -> bytes uint8 [total],
// byte_offsets int64 [D + 1], ended bool [D] (an EOS ended the document).
std::tuple<Tensor, Tensor, Tensor> vocab_decode_cpu(const Tensor& pool, const Tensor& offsets, const Tensor& eos,
                                                     const Tensor& codes, const Tensor& window_offsets,
                                                     const Tensor& caps) {
  vocab::Table t = check_table(pool, offsets, eos);
  check_int_tensor(codes, at::kInt, 1, "codes", "[windows]");
  check_int_tensor(window_offsets, at::kLong, 1, "window_offsets", "[documents + 1]");
  TORCH_CHECK(codes.is_contiguous() && window_offsets.is_contiguous(), "codes and window_offsets must be contiguous");
  int64_t W = codes.size(0), D = window_offsets.size(0) - 1;
  TORCH_CHECK(D >= 0, "window_offsets must have documents + 1 >= 1 entries");
  const int64_t* wo = window_offsets.data_ptr<int64_t>();
  TORCH_CHECK(wo[0] == 0 && wo[D] == W, "window_offsets must run from 0 to the number of codes ", W);
  for (int64_t d = 0; d < D; ++d) TORCH_CHECK(wo[d + 1] >= wo[d], "window_offsets must not decrease");
  check_index_range(codes, t.num_codes, "codes");
  const int32_t* cap = nullptr;
  if (caps.numel()) {
    check_int_tensor(caps, at::kInt, 1, "caps", "[windows]");
    TORCH_CHECK(caps.size(0) == W && caps.is_contiguous(), "caps must be empty or contiguous [windows] = [", W, "]");
    cap = caps.data_ptr<int32_t>();
  }
  const int32_t* c = codes.data_ptr<int32_t>();
  auto opts = window_offsets.options();
  Tensor byte_offsets = at::empty({D + 1}, opts);
  Tensor ended = at::empty({D}, opts.dtype(at::kBool));
  int64_t* bo = byte_offsets.data_ptr<int64_t>();
  bool* e = ended.data_ptr<bool>();
  parallel_over_documents(wo, D, 1 << 12, [&](int64_t d) {
    bo[d + 1] = vocab::decoded_size(t, c + wo[d], cap ? cap + wo[d] : nullptr, wo[d + 1] - wo[d], e + d);
  });
  bo[0] = 0;
  for (int64_t d = 0; d < D; ++d) bo[d + 1] += bo[d];
  Tensor out = at::empty({bo[D]}, opts.dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  parallel_over_documents(bo, D, 1 << 16, [&](int64_t d) {
    vocab::decode_document(t, c + wo[d], cap ? cap + wo[d] : nullptr, wo[d + 1] - wo[d], o + bo[d], o + bo[d + 1]);
  });
  return {out, byte_offsets, ended};
}

}  // namespace

TORCH_LIBRARY_IMPL(ncx, CPU, m) {
  m.impl("vocab_trie", &vocab_trie_cpu);
  m.impl("vocab_encode", &vocab_encode_cpu);
  m.impl("vocab_decode", &vocab_decode_cpu);
}

}  // namespace ncx
