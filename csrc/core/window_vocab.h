// Equal-Info windows as a vocabulary: greedy longest match over the strings
// that each b-bit window code decodes to, and decoding by table lookup.
// Torch-free, host only (the loops are memory-bound lookups; docs/window_vocab.md
// says why this reproduces the M1-driven window encoder token for token).
//
// Symbols are bytes 0..255 and EOS (256), which only ever ends a string. A
// code's string is pool[offsets[c], offsets[c+1]) followed by EOS when eos[c].
//
// The trie for encoding is a flat array of 64-byte nodes in breadth-first
// order, so a node's children are contiguous: child(node, s) is first_child
// plus the number of present symbols below s (a 257-bit bitmap with per-word
// running counts, one popcount per step). One node is one cache line.
#pragma once
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "level.h"

namespace ncx {
inline namespace NCX_LEVEL_NAMESPACE {
namespace vocab {

constexpr int32_t kEos = 256;
constexpr int kWords = 5;  // ceil(257 / 64)

struct alignas(64) TrieNode {
  uint64_t bits[kWords];    // bit s: a child for symbol s
  int32_t first_child;      // index of the child with the smallest symbol
  int32_t code;             // smallest code whose string ends here, or -1
  uint16_t before[kWords];  // children in the words below word w
};
static_assert(sizeof(TrieNode) == 64, "a trie node is one cache line");

inline bool node_has(const TrieNode& n, int32_t s) { return (n.bits[s >> 6] >> (s & 63)) & 1; }

inline int32_t node_child(const TrieNode& n, int32_t s) {
  int w = s >> 6;
  uint64_t below = n.bits[w] & ((uint64_t(1) << (s & 63)) - 1);
  return n.first_child + n.before[w] + __builtin_popcountll(below);
}

// The strings of a table: code c has `length(c)` symbols, `symbol(c, i)`.
struct Table {
  const uint8_t* pool;
  const int64_t* offsets;  // [num_codes + 1]
  const uint8_t* eos;      // [num_codes]
  int64_t num_codes;
  int64_t pool_size;

  int64_t length(int64_t c) const { return offsets[c + 1] - offsets[c] + (eos[c] ? 1 : 0); }
  int32_t symbol(int64_t c, int64_t i) const {
    int64_t nbytes = offsets[c + 1] - offsets[c];
    return i < nbytes ? int32_t(pool[offsets[c] + i]) : kEos;
  }
};

// Offsets must rise from 0 to the pool's size: the table's own consistency,
// checked before anything reads through it. Returns the first bad code or -1.
inline int64_t table_first_bad_offset(const Table& t) {
  if (t.offsets[0] != 0 || t.offsets[t.num_codes] != t.pool_size) return 0;
  for (int64_t c = 0; c < t.num_codes; ++c)
    if (t.offsets[c + 1] < t.offsets[c]) return c;
  return -1;
}

// Builds the trie of every non-empty string; a string held by several codes
// keeps the smallest (the one the window encoder emits). Sorting the codes by
// string (ties by code) makes each node a contiguous range of them, so the
// breadth-first pass visits each symbol of each string once.
inline std::vector<TrieNode> build_trie(const Table& t) {
  std::vector<int64_t> order;
  order.reserve(t.num_codes);
  for (int64_t c = 0; c < t.num_codes; ++c)
    if (t.length(c) > 0) order.push_back(c);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    int64_t la = t.length(a), lb = t.length(b), n = std::min(la, lb);
    for (int64_t i = 0; i < n; ++i) {
      int32_t sa = t.symbol(a, i), sb = t.symbol(b, i);
      if (sa != sb) return sa < sb;
    }
    return la != lb ? la < lb : a < b;
  });
  struct Pending {
    int64_t lo, hi;  // range of `order` sharing this node's prefix
    int64_t depth;
  };
  std::vector<TrieNode> nodes(1);
  std::vector<Pending> queue{{0, int64_t(order.size()), 0}};
  for (size_t q = 0; q < queue.size(); ++q) {
    Pending p = queue[q];
    TrieNode& n = nodes[q];
    memset(&n, 0, sizeof(n));
    n.code = -1;
    n.first_child = int32_t(nodes.size());
    int64_t i = p.lo;
    if (p.depth > 0 && i < p.hi && t.length(order[i]) == p.depth) n.code = int32_t(order[i]);
    while (i < p.hi && t.length(order[i]) == p.depth) ++i;  // strings that end here
    while (i < p.hi) {
      int32_t s = t.symbol(order[i], p.depth);
      int64_t j = i;
      while (j < p.hi && t.symbol(order[j], p.depth) == s) ++j;
      n.bits[s >> 6] |= uint64_t(1) << (s & 63);
      queue.push_back({i, j, p.depth + 1});
      i = j;
    }
    uint16_t acc = 0;
    for (int w = 0; w < kWords; ++w) {
      n.before[w] = acc;
      acc = uint16_t(acc + __builtin_popcountll(n.bits[w]));
    }
    nodes.resize(queue.size());
  }
  return nodes;
}

// Status of one document's encoding.
constexpr int64_t kEncodedOk = -1;

// Greedy longest match of `data` followed by EOS. Writes the codes to out
// (room for n + 1) and returns how many, or, in *failed_at, the position of
// the first symbol where no string of the table starts (else kEncodedOk).
inline int64_t encode_document(const TrieNode* nodes, const uint8_t* data, int64_t n, int32_t* out,
                               int64_t* failed_at) {
  int64_t pos = 0, windows = 0;
  const int64_t total = n + 1;  // the bytes and EOS
  while (pos < total) {
    int32_t node = 0, best_code = -1;
    int64_t best_end = pos;
    for (int64_t i = pos; i < total; ++i) {
      int32_t s = i < n ? int32_t(data[i]) : kEos;
      const TrieNode& cur = nodes[node];
      if (!node_has(cur, s)) break;
      node = node_child(cur, s);
      int32_t code = nodes[node].code;
      if (code >= 0) {
        best_code = code;
        best_end = i + 1;
      }
    }
    if (best_code < 0) {
      *failed_at = pos;
      return windows;
    }
    out[windows++] = best_code;
    pos = best_end;
  }
  *failed_at = kEncodedOk;
  return windows;
}

// Bytes one document's windows decode to: their strings concatenated up to
// the first EOS (excluded). caps (or null) limits a window to its first
// caps[w] symbols (an exception window's stored count; < 0: no cap).
// *ended tells whether an EOS was met. Codes must be < num_codes.
inline int64_t decoded_size(const Table& t, const int32_t* codes, const int32_t* caps, int64_t windows,
                            bool* ended) {
  int64_t size = 0;
  for (int64_t w = 0; w < windows; ++w) {
    int32_t c = codes[w];
    int64_t nbytes = t.offsets[c + 1] - t.offsets[c];
    if (caps && caps[w] >= 0 && caps[w] <= nbytes) {
      size += caps[w];
      continue;
    }
    size += nbytes;
    if (t.eos[c]) {
      *ended = true;
      return size;
    }
  }
  *ended = false;
  return size;
}

// Writes what decoded_size counted to [out, out_end). Short strings copy as
// one 16-byte block where both the pool and the document have room for it.
inline void decode_document(const Table& t, const int32_t* codes, const int32_t* caps, int64_t windows,
                            uint8_t* out, uint8_t* out_end) {
  for (int64_t w = 0; w < windows; ++w) {
    int32_t c = codes[w];
    int64_t nbytes = t.offsets[c + 1] - t.offsets[c];
    bool capped = caps && caps[w] >= 0 && caps[w] <= nbytes;
    if (capped) nbytes = caps[w];
    const uint8_t* src = t.pool + t.offsets[c];
    if (nbytes <= 16 && t.offsets[c] + 16 <= t.pool_size && out_end - out >= 16) memcpy(out, src, 16);
    else memcpy(out, src, size_t(nbytes));
    out += nbytes;
    if (!capped && t.eos[c]) return;
  }
}

}  // namespace vocab
}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
