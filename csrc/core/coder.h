// The arithmetic coder and the Equal-Info window rule. Torch-free, host+device.
//
// Coder: a range coder over a 64-bit window of the code value. The interval
// is [low, low + range) in units of 2^-(64 + 8n), n = bytes shifted out so
// far; range stays in [2^56, 2^64) after each symbol (byte renormalization),
// so with P <= 24 the split r = range >> P keeps 32+ bits of precision and
// the cost over the ideal -log2 p is below 2^-31 bits per symbol. The last
// symbol of the alphabet takes the remainder of the range, so every code
// value decodes to some symbol.
//
// Stream mode writes whole bytes to a buffer (a carry adds 1 to the bytes
// already written). Termination emits the shortest bit string whose value,
// zero-padded, lies in the final interval: its length in bits is exact.
//
// Window mode (Equal-Info windows of b bits) keeps the shifted-out bytes in a
// 128-bit prefix instead, and uses the window rule of docs/design.md
// ("Equal-Info windows that always decode"): a window holds the greedy
// number of symbols k whose interval still contains a whole b-bit cell
// [V, V+1) / 2^b; its code is a cell that straddles a boundary between the
// sub-intervals of position k+1, so the decoder, which decodes while the cell
// lies inside one sub-interval, stops after exactly k symbols. Sub-intervals
// are in the window order (below), not plain CDF order. When no such
// cell exists at k, the encoder backs off to the largest j < k that has one
// (the given-back symbols start the next window); when no j >= 1 has one, the
// window is an exception, emitted at length k with its count stored aside.
#pragma once
#include "quantize.h"

namespace ncx {
inline namespace NCX_LEVEL_NAMESPACE {

constexpr uint64_t kRangeBottom = uint64_t(1) << 56;
constexpr uint64_t kRangeFull = ~uint64_t(0);  // [0, 1 - 2^-64): a fresh interval

struct U128 {
  uint64_t lo, hi;
};
NCX_HD U128 u128_add64(U128 a, uint64_t b) {
  U128 r{a.lo + b, a.hi};
  r.hi += (r.lo < b) ? 1 : 0;
  return r;
}
NCX_HD U128 u128_shl(U128 a, int s) {  // 0 <= s <= 127
  if (s == 0) return a;
  if (s >= 64) return U128{0, a.lo << (s - 64)};
  return U128{a.lo << s, (a.hi << s) | (a.lo >> (64 - s))};
}
NCX_HD U128 u128_shr(U128 a, int s) {  // 0 <= s <= 127
  if (s == 0) return a;
  if (s >= 64) return U128{a.hi >> (s - 64), 0};
  return U128{(a.lo >> s) | (a.hi << (64 - s)), a.hi >> s};
}

// One symbol's effect on (low, range): returns true when low carried past 2^64.
// cum/freq come from the quantizer; total = 2^P.
NCX_HD_ALWAYS_INLINE bool rc_narrow(uint64_t* low, uint64_t* range, uint32_t cum, uint32_t freq, int precision) {
  uint64_t r = *range >> precision;
  uint64_t add = r * cum;
  uint64_t nl = *low + add;
  bool carry = nl < add;
  bool last = (uint64_t(cum) + freq) == (uint64_t(1) << precision);
  *range = last ? (*range - add) : r * freq;
  *low = nl;
  return carry;
}

// ---------------------------------------------------------------- stream mode

// How many bytes renormalization shifts in or out: those that take range
// (nonzero) back to [2^56, 2^64).
NCX_HD_ALWAYS_INLINE int renorm_bytes(uint64_t range) {
#if defined(__CUDA_ARCH__)
  return __clzll(range) >> 3;
#else
  return __builtin_clzll(range) >> 3;
#endif
}

#if !defined(__CUDA_ARCH__)
// The stream coders' renormalization on a CPU moves 8 bytes at a time (one
// load or store) while 8 fit in the buffer; a GPU thread keeps the byte loop,
// where 8 single-byte accesses per symbol would cost more than its branch.
#define NCX_RENORM_8_BYTES 1

// The 8 bytes at p as a big-endian integer.
inline uint64_t load_be64(const uint8_t* p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t v;
  __builtin_memcpy(&v, p, 8);  // one load and a byte swap (GCC 12 does not see it in the loop below)
  return __builtin_bswap64(v);
#else
  uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v = (v << 8) | p[k];
  return v;
#endif
}

inline void store_be64(uint8_t* p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  v = __builtin_bswap64(v);
  __builtin_memcpy(p, &v, 8);
#else
  for (int k = 0; k < 8; ++k) p[k] = uint8_t(v >> (56 - 8 * k));
#endif
}
#endif

struct StreamEncoder {
  uint64_t low, range;
  int64_t pos;  // bytes written to the buffer
};

// States come from user-visible tensors: the step ops check these invariants
// (which every state a coder produced satisfies) before touching buffers.
NCX_HD bool stream_encoder_valid(const StreamEncoder& e, int64_t cap) {
  return e.pos >= 0 && e.pos <= cap && e.range >= kRangeBottom;
}

NCX_HD void stream_encoder_init(StreamEncoder* e) {
  e->low = 0;
  e->range = kRangeFull;
  e->pos = 0;
}

// Adds 1 at byte position pos-1 of out (a carry out of low).
NCX_HD void propagate_carry(uint8_t* out, int64_t pos) {
  int64_t i = pos - 1;
  while (i >= 0 && out[i] == 0xff) out[i--] = 0;
  if (i >= 0) out[i] += 1;
}

// Encodes one symbol; returns kOk or kErrOutputFull.
NCX_HD_ALWAYS_INLINE int32_t stream_encode(StreamEncoder* e, uint8_t* out, int64_t cap, uint32_t cum,
                                           uint32_t freq, int precision) {
  if (rc_narrow(&e->low, &e->range, cum, freq, precision)) propagate_carry(out, e->pos);
#ifdef NCX_RENORM_8_BYTES
  if (e->pos <= cap - 8) {  // as stream_decode_consume: no loop whose exit depends on the data
    const int bits = 8 * renorm_bytes(e->range);
    store_be64(out + e->pos, e->low);  // its bytes past the new pos are written again later, or zeroed at the finish
    e->pos += bits / 8;
    e->low <<= bits;
    e->range <<= bits;
    return kOk;
  }
#endif
  while (e->range < kRangeBottom) {
    if (e->pos >= cap) return kErrOutputFull;
    out[e->pos++] = uint8_t(e->low >> 56);
    e->low <<= 8;
    e->range <<= 8;
  }
  return kOk;
}

// Writes the shortest terminating code and returns its exact length in bits
// (or -1 if the buffer is too small). Bytes past the length are zero.
NCX_HD int64_t stream_encode_finish(StreamEncoder* e, uint8_t* out, int64_t cap) {
  // Smallest t in [0, 64] such that low rounded up to a multiple of 2^(64-t)
  // stays below low + range. t = 64 always works (delta 0).
  int t = 0;
  uint64_t delta = 0;
  for (; t <= 64; ++t) {
    if (t == 0) {
      if (e->low == 0) { delta = 0; break; }
      // delta = 2^64 - low
      uint64_t d = uint64_t(0) - e->low;
      if (d < e->range) { delta = d; break; }
      continue;
    }
    uint64_t mask = (t == 64) ? 0 : (~uint64_t(0) >> t);
    uint64_t d = (uint64_t(0) - e->low) & mask;  // distance up to the next multiple
    if (d < e->range) { delta = d; break; }
  }
  uint64_t v = e->low + delta;
  if (v < delta) propagate_carry(out, e->pos);
  int64_t nbits = e->pos * 8 + t;
  int nb = (t + 7) / 8;
  if (e->pos + nb > cap) return -1;
  for (int64_t i = e->pos; i < e->pos + 8 && i < cap; ++i) out[i] = 0;  // stream_encode's bytes past pos
  for (int i = 0; i < nb; ++i) out[e->pos + i] = uint8_t(v >> (56 - 8 * i));
  // Trailing zero bits add nothing once the reader pads with zeros.
  while (nbits > 0 && !((out[(nbits - 1) >> 3] >> (7 - ((nbits - 1) & 7))) & 1)) --nbits;
  return nbits;
}

struct StreamDecoder {
  uint64_t code;   // code value minus low, in the same 64-bit window
  uint64_t range;
  int64_t pos;     // next byte to read
};

NCX_HD bool stream_decoder_valid(const StreamDecoder& d) {
  return d.pos == 0 || (d.pos >= 8 && d.range >= kRangeBottom && d.code < d.range);
}

// Bytes past nbytes read as zero (the encoder trimmed trailing zeros).
NCX_HD uint8_t read_byte(const uint8_t* in, int64_t nbytes, int64_t i) {
  return i < nbytes ? in[i] : 0;
}

NCX_HD void stream_decoder_init(StreamDecoder* d, const uint8_t* in, int64_t nbytes) {
  d->code = 0;
  for (int i = 0; i < 8; ++i) d->code = (d->code << 8) | read_byte(in, nbytes, i);
  d->range = kRangeFull;
  d->pos = 8;
  // No encoder writes a value at or above the initial interval's top (that
  // takes 64 one-bits); clamping keeps arbitrary bytes decodable (to garbage,
  // which the callers' checksums catch) instead of failing.
  if (d->code >= d->range) d->code = d->range - 1;
}

// The target cumulative frequency of the next symbol.
NCX_HD_ALWAYS_INLINE uint32_t stream_decode_target(const StreamDecoder* d, int precision) {
  uint64_t r = d->range >> precision;
  uint64_t t = d->code / r;
  uint64_t top = (uint64_t(1) << precision) - 1;
  return uint32_t(t < top ? t : top);
}

// Consumes symbol with (cum, freq). Returns kErrCorrupt if the code value left
// the interval (only possible with bytes no encoder produced).
NCX_HD_ALWAYS_INLINE int32_t stream_decode_consume(StreamDecoder* d, const uint8_t* in, int64_t nbytes,
                                                   uint32_t cum, uint32_t freq, int precision) {
  uint64_t r = d->range >> precision;
  uint64_t sub = r * cum;
  bool last = (uint64_t(cum) + freq) == (uint64_t(1) << precision);
  uint64_t width = last ? d->range - sub : r * freq;
  if (d->code < sub || d->code - sub >= width) return kErrCorrupt;
  d->code -= sub;
  d->range = width;
#ifdef NCX_RENORM_8_BYTES
  if (d->pos <= nbytes - 8) {  // (not pos + 8: a state handed in may hold any pos)
    // Without a loop: how many bytes come in (0-3: width >= r >= 2^32)
    // depends on the data, and a loop's exit would mispredict often.
    const int bits = 8 * renorm_bytes(width);
    d->code = (d->code << bits) | ((load_be64(in + d->pos) >> 1) >> (63 - bits));  // bits = 0: ORs 0
    d->range = width << bits;
    d->pos += bits / 8;
    return kOk;
  }
#endif
  while (d->range < kRangeBottom) {
    d->code = (d->code << 8) | read_byte(in, nbytes, d->pos++);
    d->range <<= 8;
  }
  return kOk;
}

// ---------------------------------------------------------------- window mode
// Shared by the window encoder and decoder: the interval of the current window.
struct WindowInterval {
  uint64_t low, range;
  int32_t nshift;  // bytes shifted out of the 64-bit window since the window began
};

NCX_HD void window_interval_init(WindowInterval* w) {
  w->low = 0;
  w->range = kRangeFull;
  w->nshift = 0;
}

// An accepted window interval has a whole cell: 8 n < b <= 128.
NCX_HD bool window_interval_valid(const WindowInterval& w) {
  return w.range >= kRangeBottom && w.nshift >= 0 && w.nshift < 16;
}

// d = log2(cell width in coder units) = 64 + 8 n - b.
NCX_HD int window_cell_shift(const WindowInterval& w, int budget_bits) {
  return 64 + 8 * w.nshift - budget_bits;
}

// Does the interval contain a whole b-bit cell? Returns the offset (from low)
// of the first such cell in *first_offset.
NCX_HD bool window_has_cell(const WindowInterval& w, int budget_bits, uint64_t* first_offset) {
  int d = window_cell_shift(w, budget_bits);
  if (d < 0) { *first_offset = 0; return true; }   // cells finer than a coder unit
  if (d >= 64) return false;                        // cell wider than any range
  uint64_t unit = uint64_t(1) << d;
  uint64_t off = (uint64_t(0) - w.low) & (unit - 1);
  *first_offset = off;
  return w.range >= unit && off <= w.range - unit;
}

// The interval after one symbol; the bytes shifted out are returned in
// shifted (big-endian; at most 3, as the narrowed range is at least
// 2^(56 - P) >= 2^32) with the carry flag.
NCX_HD void window_narrow(WindowInterval* w, uint32_t cum, uint32_t freq, int precision,
                          bool* carry, uint64_t* shifted, int* nshifted) {
  *carry = rc_narrow(&w->low, &w->range, cum, freq, precision);
  const int k = renorm_bytes(w->range), bits = 8 * k;
  *shifted = (w->low >> 1) >> (63 - bits);  // the top k bytes of low (none for k = 0)
  w->low <<= bits;
  w->range <<= bits;
  w->nshift += k;
  *nshifted = k;
}

// ------------------------------------------------------ window symbol order
// Inside a window, each position's partition lists the symbols in CDF order,
// except that the most probable one m (the first of the largest frequencies
// among all but the last symbol, which keeps the range's remainder) may move
// first or just before the last symbol. Three placements compete: front,
// back, natural (m where it is); both sides choose from what the decoder
// knows, the interval and the CDF, so they agree. For each placement:
//   straddle: some whole b-bit cell of the interval straddles a boundary, so
//             a window that ends here can be told apart from a longer one;
//   cells:    the whole cells inside m's sub-interval, so that m, if it
//             comes, keeps the window going.
// When m is likely (p >= 0.9), the best placement has (cells > 0, straddle,
// cells), else (straddle, cells), compared in that order; ties go to the
// earlier placement. The two differ only when the interval holds one whole
// cell: m's sub-interval either covers it (a bet on m: if another symbol
// comes, the window ends without a straddle and gives symbols back) or a
// boundary splits it (a safe end). Widths do not change, so neither do code
// lengths: only the alignment of the sub-intervals against the cell grid
// moves, which is also why greedy capacity changes. With the fixed CDF order
// (window rule 1), b=16 gave back 0.76% of greedy capacity on the held-out
// corpus with the trained M1; docs/performance.md, "Equal-Info rule vs greedy
// packing", has the current rule's figures (the earlier ones are in git history).
enum WindowPlacement : int32_t { kPlaceFront = 0, kPlaceBack = 1, kPlaceNatural = 2 };

struct WindowOrder {
  const uint32_t* cdf;  // the CDF in symbol order, [V + 1]
  int64_t V;
  int64_t m;            // the symbol that may move
  uint32_t fm;          // its frequency
  int32_t place;        // kPlaceFront: m at position 0; kPlaceBack: at V - 2; kPlaceNatural: at m
};

// Cumulative frequency at the start of position j, 0 <= j <= V.
NCX_HD uint32_t order_cum(const WindowOrder& o, int64_t j) {
  if (o.place == kPlaceFront) {
    if (j == 0) return 0;
    return j <= o.m + 1 ? o.fm + o.cdf[j - 1] : o.cdf[j];
  }
  if (o.place == kPlaceBack && j > o.m && j < o.V - 1) return o.cdf[j + 1] - o.fm;
  return o.cdf[j];
}

NCX_HD int64_t order_symbol(const WindowOrder& o, int64_t j) {
  if (o.place == kPlaceFront) return j == 0 ? o.m : (j <= o.m ? j - 1 : j);
  if (o.place == kPlaceNatural || j < o.m || j == o.V - 1) return j;
  return j == o.V - 2 ? o.m : j + 1;
}

NCX_HD int64_t order_position(const WindowOrder& o, int64_t s) {
  if (o.place == kPlaceFront) return s == o.m ? 0 : (s < o.m ? s + 1 : s);
  if (o.place == kPlaceNatural || s < o.m || s == o.V - 1) return s;
  return s == o.m ? o.V - 2 : s - 1;
}

// The position whose sub-interval holds cumulative frequency t (< 2^P).
NCX_HD int64_t order_search(const WindowOrder& o, uint32_t t) {
  int64_t lo = 0, hi = o.V;  // invariant: cum(lo) <= t < cum(hi)
  while (hi - lo > 1) {
    int64_t mid = (lo + hi) >> 1;
    if (order_cum(o, mid) <= t) lo = mid; else hi = mid;
  }
  return lo;
}

// A cell inside the interval that straddles a boundary between the next
// position's sub-intervals (boundaries at r * cum(j), j = 1..V-1). Returns
// its offset from low in *cell_offset.
NCX_HD bool window_find_straddle(const WindowInterval& w, int budget_bits, const WindowOrder& o,
                                 int precision, uint64_t* cell_offset) {
  int d = window_cell_shift(w, budget_bits);
  if (d < 0 || d >= 64) return false;  // boundaries sit on cell edges / no cell
  uint64_t unit = uint64_t(1) << d;
  uint64_t first;
  if (!window_has_cell(w, budget_bits, &first)) return false;
  uint64_t ncells = (w.range - first) / unit;
  uint64_t end = first + ncells * unit;  // cells cover [first, end)
  uint64_t r = w.range >> precision;
  // First boundary strictly above `first`: cum(j) > first / r.
  uint64_t tq = first / r;
  if (tq >= (uint64_t(1) << precision)) return false;
  for (int64_t j = order_search(o, uint32_t(tq)) + 1; j < o.V; ++j) {
    uint64_t x = r * order_cum(o, j);
    if (x >= end) break;
    if (x <= first) continue;
    uint64_t rel = x - first;
    if (rel & (unit - 1)) {
      *cell_offset = first + (rel & ~(unit - 1));
      return true;
    }
  }
  return false;
}

// Whole cells inside [low + a, low + a + width), saturated where cells are
// finer than a coder unit (only the comparison of two counts uses it).
NCX_HD uint64_t window_cells_in(const WindowInterval& w, int budget_bits, uint64_t a, uint64_t width) {
  int d = window_cell_shift(w, budget_bits);
  if (d < 0) return width;
  if (d >= 64) return 0;
  uint64_t gap = (uint64_t(0) - (w.low + a)) & ((uint64_t(1) << d) - 1);  // to the next cell edge
  return width < gap ? 0 : (width - gap) >> d;
}

// The symbol that may move (see above), placed at the front. The CUDA
// kernels find it with warp reductions instead, the same integers.
NCX_HD WindowOrder window_candidate(const uint32_t* cdf, int64_t V) {
  // Two reductions that vectorize: the largest frequency, then the smallest
  // index that has it.
  uint32_t fm = 0;
  for (int64_t s = 0; s < V - 1; ++s) {
    uint32_t f = cdf[s + 1] - cdf[s];
    fm = f > fm ? f : fm;
  }
  uint32_t first = uint32_t(V);
  for (int64_t s = 0; s < V - 1; ++s) {
    uint32_t i = cdf[s + 1] - cdf[s] == fm ? uint32_t(s) : uint32_t(V);
    first = i < first ? i : first;
  }
  return WindowOrder{cdf, V, int64_t(first), fm, kPlaceFront};
}

// The order of this position (see above), from its candidate. *straddle and
// *cell_offset give the straddle check's result under the chosen order.
NCX_HD WindowOrder window_order(const WindowInterval& w, const WindowOrder& candidate, int precision,
                                int budget_bits, bool* straddle, uint64_t* cell_offset) {
  // p(m) >= 0.9, exactly: 10 fm >= 9 * 2^P.
  const bool bet = uint64_t(candidate.fm) * 10 >= (uint64_t(9) << precision);
  const uint64_t r = w.range >> precision;
  WindowOrder best = candidate;
  bool best_st = false;
  uint64_t best_cells = 0, best_off = 0;
  for (int32_t place = kPlaceFront; place <= kPlaceNatural; ++place) {
    WindowOrder o = candidate;
    o.place = place;
    uint64_t off = 0;
    bool st = window_find_straddle(w, budget_bits, o, precision, &off);
    uint64_t cells = window_cells_in(w, budget_bits, r * order_cum(o, order_position(o, o.m)), r * o.fm);
    bool better;
    if (place == kPlaceFront) {
      better = true;
    } else if (bet && (cells > 0) != (best_cells > 0)) {
      better = cells > 0;
    } else if (st != best_st) {
      better = st;
    } else {
      better = cells > best_cells;
    }
    if (better) {
      best = o;
      best_st = st;
      best_cells = cells;
      best_off = off;
    }
  }
  *straddle = best_st;
  *cell_offset = best_off;
  return best;
}

// The b-bit value of the cell at `offset` from low, given the prefix bytes.
NCX_HD U128 window_cell_value(U128 prefix, const WindowInterval& w, int budget_bits,
                              uint64_t offset) {
  int d = window_cell_shift(w, budget_bits);
  uint64_t sum = w.low + offset;
  if (sum < offset) prefix = u128_add64(prefix, 1);
  if (d < 0) {
    // value = (prefix * 2^64 + sum) << -d, exactly b bits.
    return u128_shl(U128{sum, prefix.lo}, -d);
  }
  U128 v = u128_shr(U128{sum, 0}, d);
  U128 hi = u128_shl(prefix, 64 - d);
  v.lo |= hi.lo;
  v.hi |= hi.hi;
  return v;
}

struct WindowEncoder {
  WindowInterval iv;
  U128 prefix;        // bytes shifted out since the window began
  int32_t count;      // symbols in the window
  int32_t good_count; // largest j >= 1 whose interval had a straddling cell (0: none)
  U128 good_value;    // that cell's value
};

NCX_HD bool window_encoder_valid(const WindowEncoder& e) {
  return window_interval_valid(e.iv) && e.count >= 0 && e.good_count >= 0 && e.good_count <= e.count;
}

NCX_HD void window_encoder_init(WindowEncoder* e) {
  window_interval_init(&e->iv);
  e->prefix = U128{0, 0};
  e->count = 0;
  e->good_count = 0;
  e->good_value = U128{0, 0};
}

enum WindowEvent : int32_t {
  kWindowAccepted = 0,   // the symbol joined the window
  kWindowClosed = 1,     // the window closed; the symbol was not taken
  kWindowException = 2,  // closed as an exception: its symbol count must be stored
};

struct WindowClose {
  U128 value;           // the b-bit code
  int32_t symbols;      // symbols the window holds
  int32_t given_back;   // trailing symbols the next window must take again
};

// Encodes one symbol into the window, or closes it. candidate is this
// position's window_candidate (over its full CDF in symbol order, which the
// window order and the straddle check of the current interval need).
// max_symbols caps a window's length (M1's context): a window closed by the
// cap needs no straddle, the decoder stops by count.
NCX_HD int32_t window_encode(WindowEncoder* e, const WindowOrder& candidate, int64_t symbol,
                             int precision, int budget_bits, int32_t max_symbols,
                             WindowClose* close) {
  uint64_t off = 0;  // set by window_order / window_has_cell whenever it is read
  bool straddle;
  WindowOrder order = window_order(e->iv, candidate, precision, budget_bits, &straddle, &off);
  if (e->count >= 1 && straddle) {
    e->good_count = e->count;
    e->good_value = window_cell_value(e->prefix, e->iv, budget_bits, off);
  }
  if (e->count < max_symbols) {
    WindowInterval next = e->iv;
    bool carry;
    uint64_t shifted;
    int nshifted;
    window_narrow(&next, order_cum(order, order_position(order, symbol)),
                  order.cdf[symbol + 1] - order.cdf[symbol], precision, &carry, &shifted, &nshifted);
    uint64_t first;
    if (window_has_cell(next, budget_bits, &first)) {
      U128 p = carry ? u128_add64(e->prefix, 1) : e->prefix;
      p = u128_shl(p, 8 * nshifted);
      p.lo |= shifted;
      e->prefix = p;
      e->iv = next;
      e->count += 1;
      return kWindowAccepted;
    }
  }
  int32_t event;
  if (e->count >= max_symbols) {
    window_has_cell(e->iv, budget_bits, &off);
    close->value = window_cell_value(e->prefix, e->iv, budget_bits, off);
    close->symbols = e->count;
    close->given_back = 0;
    event = kWindowClosed;
  } else if (e->good_count >= 1) {
    close->value = e->good_value;
    close->symbols = e->good_count;
    close->given_back = e->count - e->good_count;
    event = kWindowClosed;
  } else {
    window_has_cell(e->iv, budget_bits, &off);
    close->value = window_cell_value(e->prefix, e->iv, budget_bits, off);
    close->symbols = e->count;
    close->given_back = 0;
    event = kWindowException;
  }
  window_encoder_init(e);
  return event;
}

// Closes the window at the end of a document (its last symbol is EOS, where
// the decoder stops anyway): any cell of the final interval will do.
NCX_HD bool window_encode_finish(WindowEncoder* e, int budget_bits, WindowClose* close) {
  if (e->count == 0) return false;
  uint64_t off = 0;  // set by window_has_cell whenever it is read
  window_has_cell(e->iv, budget_bits, &off);
  close->value = window_cell_value(e->prefix, e->iv, budget_bits, off);
  close->symbols = e->count;
  close->given_back = 0;
  window_encoder_init(e);
  return true;
}

struct WindowDecoder {
  WindowInterval iv;
  U128 value;           // the window's b-bit code
  int32_t count;        // symbols decoded so far
  int32_t max_symbols;  // cap (M1's context, or an exception's stored count)
  int32_t done;
};

NCX_HD bool window_decoder_valid(const WindowDecoder& d) {
  return window_interval_valid(d.iv) && d.count >= 0;
}

NCX_HD void window_decoder_init(WindowDecoder* d, U128 value, int32_t max_symbols) {
  window_interval_init(&d->iv);
  d->value = value;
  d->count = 0;
  d->max_symbols = max_symbols;
  d->done = 0;
}

// The cell's start relative to low (mod 2^64, exact because it lies inside
// the interval, which is narrower than 2^64 units).
NCX_HD uint64_t window_cell_offset(const WindowDecoder& d, int budget_bits) {
  int s = window_cell_shift(d.iv, budget_bits);
  uint64_t start = s >= 0 ? (d.value.lo << s) : u128_shr(d.value, -s).lo;
  return start - d.iv.low;
}

// The candidate symbol's target cumulative frequency, or false when the
// window has ended by count.
NCX_HD uint32_t window_decode_target(const WindowDecoder& d, int budget_bits, int precision) {
  uint64_t off = window_cell_offset(d, budget_bits);
  uint64_t r = d.iv.range >> precision;
  uint64_t t = off / r;
  uint64_t top = (uint64_t(1) << precision) - 1;
  return uint32_t(t < top ? t : top);
}

// Takes the candidate symbol (cum, freq) if the whole cell lies inside its
// sub-interval; otherwise the window has ended. Returns true if taken.
NCX_HD bool window_decode_consume(WindowDecoder* d, uint32_t cum, uint32_t freq, int precision,
                                  int budget_bits) {
  int s = window_cell_shift(d->iv, budget_bits);
  uint64_t off = window_cell_offset(*d, budget_bits);
  uint64_t r = d->iv.range >> precision;
  uint64_t sub = r * cum;
  bool last = (uint64_t(cum) + freq) == (uint64_t(1) << precision);
  uint64_t width = last ? d->iv.range - sub : r * freq;
  if (off < sub || off - sub >= width) return false;  // value outside: cannot be ours
  if (s >= 0) {
    if (s >= 64) return false;
    uint64_t unit = uint64_t(1) << s;
    if (width < unit || off - sub > width - unit) return false;  // cell straddles
  }
  bool carry;
  uint64_t shifted;
  int nshifted;
  window_narrow(&d->iv, cum, freq, precision, &carry, &shifted, &nshifted);
  d->count += 1;
  return true;
}

// One decoding step given the full CDF of the window's next position (in
// symbol order): the symbol whose sub-interval, in the window order, holds
// the whole cell, or false when none does (the window has ended).
NCX_HD bool window_decode_symbol(WindowDecoder* d, const WindowOrder& candidate, int precision,
                                 int budget_bits, int64_t* symbol) {
  bool straddle;
  uint64_t unused;
  WindowOrder o = window_order(d->iv, candidate, precision, budget_bits, &straddle, &unused);
  int64_t j = order_search(o, window_decode_target(*d, budget_bits, precision));
  uint32_t cum = order_cum(o, j);
  if (!window_decode_consume(d, cum, order_cum(o, j + 1) - cum, precision, budget_bits)) return false;
  *symbol = order_symbol(o, j);
  return true;
}

}  // namespace NCX_LEVEL_NAMESPACE
}  // namespace ncx
