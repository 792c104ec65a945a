"""A slow, readable pure-Python reference of the ncx coder, written from the
specification in csrc/core/quantize.h and csrc/core/coder.h (their header
comments), not from their code. The tests check the native ops against it bit
for bit.

Where the C++ keeps a 64-bit window of the code value and propagates carries
into bytes already written, this reference keeps the whole interval as Python
integers: `low` and `range` are exact integers in units of 2^-(64 + 8n), n the
number of bytes renormalized out so far. Carries, 128-bit prefixes and the
shortest terminating code then need no special handling.

Contents:
  exp_ncx, quantize_row, quantize       the quantizer (probabilities or logits)
  StreamEncoderRef, stream_decode       the stream range coder
  window_order                          the window's per-position symbol order
  WindowEncoderRef, window_decode       Equal-Info windows (greedy + straddle +
                                        back-off + exception)
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

# Status codes (quantize.h).
OK, ERR_NAN, ERR_NEGATIVE, ERR_ZERO_ROW, ERR_INF, ERR_SYMBOL = 0, 1, 2, 3, 4, 5

RANGE_BOTTOM = 1 << 56
RANGE_FULL = (1 << 64) - 1  # a fresh interval: [0, 1 - 2^-64)

# ----------------------------------------------------------------- quantizer
F32 = np.float32


def _f(hexlit: str) -> np.float32:
    v = F32(float.fromhex(hexlit))
    assert float(v) == float.fromhex(hexlit), hexlit  # exactly representable
    return v


LOG2E = _f("0x1.715476p+0")
LN2_HI = _f("0x1.62e4p-1")
LN2_LO = _f("0x1.7f7d1cp-20")
EXP_POLY = [_f("0x1.a01a02p-13"), _f("0x1.6c16c2p-10"), _f("0x1.111112p-7"), _f("0x1.555556p-5"),
            _f("0x1.555556p-3"), F32(0.5), F32(1.0), F32(1.0)]


def exp_ncx(x: np.ndarray) -> np.ndarray:
    """exp(x) for float32 x <= 0, elementwise, every step a single correctly
    rounded float32 operation (numpy never fuses a*b+c across ufunc calls):
    n = round-half-away(x log2e), r = x - n ln2 (two-part ln2), degree-7
    Taylor polynomial in Horner form, 2^n added to the exponent field; results
    that would be subnormal flush to zero, x <= -87 gives 0, x >= 0 gives 1."""
    x = np.asarray(x, dtype=F32)
    with np.errstate(all="ignore"):
        t = x * LOG2E
        n = np.trunc(t + F32(-0.5))
        n = np.where(np.isfinite(n), n, 0).astype(np.int32)  # only where x <= -87 (masked below)
        nf = n.astype(F32)
        r = x + (-(nf * LN2_HI))
        r = r + (-(nf * LN2_LO))
        p = np.full_like(x, EXP_POLY[0])
        for c in EXP_POLY[1:]:
            p = p * r + c
        pb = p.view(np.uint32)
        e = ((pb >> 23) & 0xFF).astype(np.int64) + n
        out = ((pb & np.uint32(0x807FFFFF)) | (np.clip(e, 0, 255).astype(np.uint32) << 23)).view(F32)
        out = np.where(e <= 0, F32(0), out)
        out = np.where(x > F32(-87.0), out, F32(0))
        out = np.where(x >= F32(0), F32(1), out)
    return out.astype(F32)


def _fixed_point(w_bits: np.ndarray, max_bits: int) -> np.ndarray:
    """floor(w * 2^k) with k the power of two that puts the largest weight's
    mantissa at bit 22 (so max in [2^22, 2^23) for a normal float): the
    float's exponent and mantissa, shifted. Subnormals have exponent field 0
    and no implicit bit, i.e. the exponent of 1."""
    w = w_bits.astype(np.int64)
    ex = w >> 23
    mant = w & 0x7FFFFF
    mant = np.where(ex == 0, mant, mant | 0x800000)
    ex = np.where(ex == 0, 1, ex)
    ex_max = max(max_bits >> 23, 1)
    # <= 0; floor(mant * 2^shift), and 0 once mant < 2^-shift. A subnormal max
    # (exponent field 0) is not shifted, so it stays >= 1.
    shift = ex - ex_max - (1 if max_bits >> 23 else 0)
    left = mant << np.clip(shift, 0, 7)
    right = mant >> np.clip(-shift, 0, 40)  # mant < 2^24: a shift of 40 already gives 0
    return np.where(shift >= 0, left, right)


def quantize_row(bits: np.ndarray, precision: int, logits: bool) -> tuple[np.ndarray | None, int]:
    """One row of float32 bit patterns (uint32 [V]; bfloat16 widened with << 16)
    -> (cdf int64 [V+1] with cdf[V] = 2^precision, status), or (None, status)."""
    bits = np.asarray(bits, dtype=np.uint32)
    V = len(bits)
    mag = bits & np.uint32(0x7FFFFFFF)
    bad = set()
    if (mag > 0x7F800000).any():
        bad.add(ERR_NAN)
    if logits:
        if (bits == 0x7F800000).any():  # +inf logit; -inf is a zero weight
            bad.add(ERR_INF)
    else:
        if (mag == 0x7F800000).any():
            bad.add(ERR_INF)
        if ((bits >> 31).astype(bool) & (mag != 0)).any():  # -0.0 is a zero
            bad.add(ERR_NEGATIVE)
    if bad:
        return None, min(bad)
    if logits:
        x = bits.view(F32)
        m = x.max()
        if m == -np.inf:
            return None, ERR_ZERO_ROW
        with np.errstate(all="ignore"):
            w = exp_ncx(x + (-m)).view(np.uint32)
        max_w = int(np.uint32(0x3F800000))  # exp_ncx(0) = 1.0
    else:
        w = mag
        max_w = int(mag.max())
        if max_w == 0:
            return None, ERR_ZERO_ROW
    q = _fixed_point(w, max_w)
    q_sum = int(q.sum())
    free = (1 << precision) - V  # mass left once every symbol has its 1
    shift = 54 - precision
    scale = (free << shift) // q_sum
    f = (q.astype(object) * scale) >> shift  # Python ints: exact
    rem = free - int(f.sum())
    assert rem >= 0
    argmax = int(np.argmax(q))  # first index of the largest fixed-point weight
    freq = f.astype(np.int64) + 1
    freq[argmax] += rem
    cdf = np.zeros(V + 1, dtype=np.int64)
    cdf[1:] = np.cumsum(freq)
    assert cdf[-1] == 1 << precision
    return cdf, OK


def float_bits(t) -> np.ndarray:
    """A float32 or bfloat16 torch tensor -> its float32 bit patterns (uint32 numpy)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16
    if t.dtype == torch.float32:
        return t.numpy().view(np.uint32)
    raise TypeError(t.dtype)


def quantize(dist, precision: int, logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """dist torch [..., V] -> (cdf int64 [..., V+1] (zeros for bad rows), status [...])."""
    bits = float_bits(dist)
    V = bits.shape[-1]
    rows = bits.reshape(-1, V)
    cdf = np.zeros((len(rows), V + 1), dtype=np.int64)
    status = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        c, s = quantize_row(row, precision, logits)
        status[i] = s
        if c is not None:
            cdf[i] = c
    return cdf.reshape(*bits.shape[:-1], V + 1), status.reshape(bits.shape[:-1])


# ------------------------------------------------------------ the range coder
def split(rng: int, cdf, s: int, precision: int) -> tuple[int, int]:
    """Symbol s's sub-interval of [0, rng): (offset, width). r = rng >> P;
    symbol s gets [r cdf[s], r cdf[s+1]), except the last symbol, which takes
    everything up to rng (so every value decodes to some symbol)."""
    r = rng >> precision
    lo = r * int(cdf[s])
    hi = rng if s == len(cdf) - 2 else r * int(cdf[s + 1])
    return lo, hi - lo


def symbol_at(rng: int, cdf, offset: int, precision: int) -> int:
    """The symbol whose sub-interval of [0, rng) contains offset."""
    r = rng >> precision
    target = min(offset // r, (1 << precision) - 1)
    return bisect.bisect_right(list(cdf), target) - 1


class StreamEncoderRef:
    """Exact interval [low, low + range) * 2^-(64 + 8 n)."""

    def __init__(self):
        self.low, self.range, self.n = 0, RANGE_FULL, 0

    def encode(self, cdf, s: int, precision: int) -> None:
        off, width = split(self.range, cdf, s, precision)
        self.low += off
        self.range = width
        while self.range < RANGE_BOTTOM:  # byte renormalization
            self.low <<= 8
            self.range <<= 8
            self.n += 1

    def finish(self) -> tuple[bytes, int]:
        """The shortest bit string c (nbits bits) whose zero-padded value
        c * 2^-nbits lies in the final interval. Returns its bytes (zero
        padded to whole bytes) and nbits."""
        scale = 64 + 8 * self.n
        for nbits in range(scale + 1):
            unit = 1 << (scale - nbits)
            c = -(-self.low // unit)  # ceil
            if c * unit < self.low + self.range:
                nbytes = (nbits + 7) // 8
                return (c << (8 * nbytes - nbits)).to_bytes(nbytes, "big"), nbits
        raise AssertionError("unreachable: nbits = scale always works")


def stream_encode(cdfs, symbols, precision: int) -> tuple[bytes, int]:
    enc = StreamEncoderRef()
    for cdf, s in zip(cdfs, symbols):
        enc.encode(cdf, int(s), precision)
    return enc.finish()


def stream_decode(data: bytes, nbits: int, cdfs, precision: int) -> list[int]:
    """Decodes len(cdfs) symbols from the code value data[:nbits] (zero padded)."""
    code = int.from_bytes(bytes(data), "big") >> (8 * len(data) - nbits) if nbits else 0
    low, rng, n = 0, RANGE_FULL, 0
    out = []
    for cdf in cdfs:
        scale = 64 + 8 * n
        value = (code << scale) >> nbits  # floor(code * 2^-nbits) in units of 2^-scale
        s = symbol_at(rng, cdf, value - low, precision)
        off, width = split(rng, cdf, s, precision)
        assert 0 <= value - low - off < width
        low += off
        rng = width
        while rng < RANGE_BOTTOM:
            low <<= 8
            rng <<= 8
            n += 1
        out.append(s)
    return out


# ------------------------------------------------------- Equal-Info windows
def _cells(low: int, rng: int, n: int, budget_bits: int) -> tuple[int, int, int]:
    """The interval in units fine enough for b-bit cells: returns (low', range',
    u) with cells [V u, (V + 1) u), u >= 1, and the interval scaled to match."""
    d = 64 + 8 * n - budget_bits  # cell = 2^d coder units
    if d >= 0:
        return low, rng, 1 << d
    return low << -d, rng << -d, 1


def whole_cells(low: int, rng: int, n: int, budget_bits: int) -> tuple[int, int, int, int]:
    """(first, last) cell indices V inside the interval (first > last: none), u, shift."""
    lo, r, u = _cells(low, rng, n, budget_bits)
    first = -(-lo // u)
    last = (lo + r) // u - 1
    return first, last, u, lo


def lowest_cell(low: int, rng: int, n: int, budget_bits: int) -> int | None:
    first, last, _, _ = whole_cells(low, rng, n, budget_bits)
    return first if first <= last else None


def straddling_cell(low: int, rng: int, n: int, budget_bits: int, cdf, precision: int) -> int | None:
    """The lowest whole cell inside the interval that contains a boundary
    between two of the next position's sub-intervals strictly inside it (so no
    next symbol's sub-interval contains the whole cell)."""
    first, last, u, _ = whole_cells(low, rng, n, budget_bits)
    if first > last:
        return None
    d = 64 + 8 * n - budget_bits
    mul = 1 << -d if d < 0 else 1
    r = rng >> precision
    # Boundaries r cdf[s], s = 1..V-1, from the first one above the first cell.
    cdf = [int(c) for c in cdf]
    s = max(1, bisect.bisect_right(cdf, (first * u - low * mul) // (r * mul)))
    for s in range(s, len(cdf) - 1):
        x = (low + r * cdf[s]) * mul
        if x >= (last + 1) * u:
            break
        if x > first * u and x % u:
            return x // u
    return None


def _cells_inside(low: int, rng: int, n: int, budget_bits: int) -> int:
    """How many whole cells the interval [low, low + rng) holds."""
    first, last, _, _ = whole_cells(low, rng, n, budget_bits)
    return max(0, last - first + 1)


def window_order(low: int, rng: int, n: int, budget_bits: int, cdf, precision: int) -> tuple[list[int], list[int]]:
    """The order of a window position's sub-intervals (coder.h, "window symbol
    order"). The most probable symbol m (lowest index among equal frequencies;
    never the last symbol) goes to the front, to just before the last symbol,
    or stays: of these three placements (ties: that order), the best has
    (m's sub-interval holds a whole cell, a whole cell straddles a boundary,
    whole cells in m's sub-interval) when p(m) >= 0.9, else (a whole cell
    straddles, whole cells in m's sub-interval). Returns (order, cdf of the
    order), order[j] being the symbol at position j."""
    cdf = [int(c) for c in cdf]
    V = len(cdf) - 1
    freq = [cdf[s + 1] - cdf[s] for s in range(V)]
    m = max(range(V - 1), key=lambda s: (freq[s], -s))
    rest = [s for s in range(V - 1) if s != m]
    bet = 10 * freq[m] >= 9 * (1 << precision)
    best = None
    for order in ([m] + rest + [V - 1], rest + [m, V - 1], list(range(V))):
        ocdf = [0]
        for s in order:
            ocdf.append(ocdf[-1] + freq[s])
        straddle = straddling_cell(low, rng, n, budget_bits, ocdf, precision) is not None
        off, width = split(rng, ocdf, order.index(m), precision)
        cells = _cells_inside(low + off, width, n, budget_bits)
        key = (cells > 0, straddle, cells) if bet else (straddle, cells)
        if best is None or key > best[0]:
            best = (key, order, ocdf)
    return best[1], best[2]


@dataclass
class WindowClose:
    code: int          # the b-bit cell value
    symbols: int       # symbols the window holds
    given_back: int    # symbols the next window takes again
    exception: bool    # no straddling cell for any length: symbols must be stored


class WindowEncoderRef:
    """One stream's Equal-Info window encoder, fed like the native step op:
    step(cdf, symbol) with the distribution of the window's next position;
    returns None (symbol taken) or a WindowClose (symbol NOT taken)."""

    def __init__(self, budget_bits: int, precision: int, max_symbols: int):
        self.b, self.P, self.max_symbols = budget_bits, precision, max_symbols
        self.reset()

    def reset(self):
        self.low, self.range, self.n = 0, RANGE_FULL, 0
        self.count = 0
        self.best = None  # (count, cell) of the longest prefix with a straddling cell

    def _narrowed(self, cdf, j):
        off, width = split(self.range, cdf, j, self.P)
        low, rng, n = self.low + off, width, self.n
        while rng < RANGE_BOTTOM:
            low, rng, n = low << 8, rng << 8, n + 1
        return low, rng, n

    def step(self, cdf, symbol: int) -> WindowClose | None:
        order, ocdf = window_order(self.low, self.range, self.n, self.b, cdf, self.P)
        if self.count >= 1:
            cell = straddling_cell(self.low, self.range, self.n, self.b, ocdf, self.P)
            if cell is not None:
                self.best = (self.count, cell)
        if self.count < self.max_symbols:
            low, rng, n = self._narrowed(ocdf, order.index(symbol))
            if lowest_cell(low, rng, n, self.b) is not None:  # greedy: still holds a whole cell
                self.low, self.range, self.n = low, rng, n
                self.count += 1
                return None
        if self.count >= self.max_symbols:  # capped: decodes by count
            close = WindowClose(lowest_cell(self.low, self.range, self.n, self.b), self.count, 0, False)
        elif self.best is not None:
            k, cell = self.best
            close = WindowClose(cell, k, self.count - k, False)
        else:
            close = WindowClose(lowest_cell(self.low, self.range, self.n, self.b), self.count, 0, True)
        self.reset()
        return close

    def finish(self) -> WindowClose | None:
        if self.count == 0:
            return None
        close = WindowClose(lowest_cell(self.low, self.range, self.n, self.b), self.count, 0, False)
        self.reset()
        return close


def window_decode(code: int, budget_bits: int, precision: int, next_cdf, max_symbols: int,
                  eos: int = -1) -> list[int]:
    """Decodes one window: next_cdf(decoded_so_far) gives the next position's
    CDF. A symbol belongs to the window while the whole cell lies inside its
    sub-interval; stops there, at max_symbols, or after eos."""
    low, rng, n = 0, RANGE_FULL, 0
    out: list[int] = []
    while len(out) < max_symbols:
        d = 64 + 8 * n - budget_bits
        lo, r, u = _cells(low, rng, n, budget_bits)
        mul = 1 << -d if d < 0 else 1
        cell = code * u
        if not lo <= cell < lo + r:
            break
        order, ocdf = window_order(low, rng, n, budget_bits, next_cdf(out), precision)
        j = symbol_at(rng, ocdf, (cell - lo) // mul, precision)
        off, width = split(rng, ocdf, j, precision)
        if not (lo + off * mul <= cell and cell + u <= lo + (off + width) * mul):
            break  # the cell straddles a boundary: the window ended
        low, rng = low + off, width
        while rng < RANGE_BOTTOM:
            low, rng, n = low << 8, rng << 8, n + 1
        s = order[j]
        out.append(s)
        if s == eos:
            break
    return out
