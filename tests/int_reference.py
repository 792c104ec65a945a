"""Pure-Python reference of the integer M1 ops (csrc/core/int_m1.h), on
Python ints: written from the number formats, not from the C++ code, so the
tests that compare the native ops with it check the formulas themselves."""
from __future__ import annotations

import math

FRAC = 16
LIMIT = 1 << 24
INT32 = (1 << 31) - 1


def shift_round(v: int, s: int) -> int:
    """round(v / 2**s), halves up; s <= 0 multiplies (saturating at 2**62)."""
    if s > 62:
        return 0
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    lim = 1 << 62
    return max(-lim, min(lim, v << -s))


def round_div(n: int, d: int) -> int:
    """round(n / d), halves away from zero."""
    q = (abs(n) + d // 2) // d
    return q if n >= 0 else -q


def sat32(v: int) -> int:
    return max(-INT32, min(INT32, v))


def linear(x: list[list[int]], w: list[list[int]], mult: list[int], shift: list[int]) -> list[list[int]]:
    out = []
    for row in x:
        amax = max((abs(v) for v in row), default=0)
        if amax == 0:
            out.append([0] * len(w))
            continue
        e = max(0, amax.bit_length() - 15)
        mant = -(-amax // (1 << e))  # ceil
        A = mant << e
        q = [round_div(127 * v, A) for v in row]
        assert all(-127 <= v <= 127 for v in q)
        res = []
        for d, wr in enumerate(w):
            acc = sum(a * b for a, b in zip(q, wr))
            res.append(sat32(shift_round(acc * mant * mult[d], shift[d] - e)))
        out.append(res)
    return out


def rms_norm(x: list[list[int]], gain: list[int]) -> list[list[int]]:
    out = []
    for row in x:
        amax = max(abs(v) for v in row)
        if amax == 0:
            out.append([0] * len(row))
            continue
        s = amax.bit_length() - 24
        xs = [v >> s if s >= 0 else v << -s for v in row]
        rms = math.isqrt(sum(v * v for v in xs) // len(row))
        out.append([sat32(round_div(v * g, rms)) for v, g in zip(xs, gain)])
    return out


_LOG2E_Q30 = round(math.log2(math.e) * 2 ** 30)
_EXP2_Q30 = [round(math.log(2) ** k / math.factorial(k) * 2 ** 30) for k in range(10)]


def exp_nonpositive(d: int, out_frac: int) -> int:
    d = max(d, -(1 << 26))
    t = shift_round(d * _LOG2E_Q30, 30)
    whole = t >> 16
    f = t - whole * 65536
    p = _EXP2_Q30[9]
    for k in range(8, -1, -1):
        p = shift_round(p * f, 16) + _EXP2_Q30[k]
    s = 30 - out_frac - whole
    return 0 if s > 62 else shift_round(p, s)


def coder_weights(logits: list[list[int]]) -> list[list[int]]:
    return [[exp_nonpositive(v - max(row), 22) for v in row] for row in logits]


def rope(x, cos, sin, positions):
    """x [N][H][hd] at positions [N], tables [context][hd/2] (Q30)."""
    out = []
    for row, p in zip(x, positions):
        heads = []
        for v in row:
            half = len(v) // 2
            lo = [max(-LIMIT, min(LIMIT, shift_round(v[i] * cos[p][i] - v[i + half] * sin[p][i], 30)))
                  for i in range(half)]
            hi = [max(-LIMIT, min(LIMIT, shift_round(v[i + half] * cos[p][i] + v[i] * sin[p][i], 30)))
                  for i in range(half)]
            heads.append(lo + hi)
        out.append(heads)
    return out


def attention(q, k_cache, v_cache, streams, positions):
    """q [N][H][hd]; caches [S][H][L][hd]."""
    out = []
    for row, s, p in zip(q, streams, positions):
        heads = []
        for h, qv in enumerate(row):
            hd = len(qv)
            inv = math.isqrt((1 << 62) // hd) >> 15
            scores = [shift_round(shift_round(sum(a * b for a, b in zip(qv, k_cache[s][h][j])), 16) * inv, 16)
                      for j in range(p + 1)]
            peak = max(scores)
            e = [exp_nonpositive(sc - peak, 16) for sc in scores]
            den = sum(e)
            heads.append([max(-LIMIT, min(LIMIT, round_div(sum(e[j] * v_cache[s][h][j][i] for j in range(p + 1)), den)))
                          for i in range(hd)])
        out.append(heads)
    return out


def random_rope_tables(gen, positions: int, head_dim: int):
    """int32 cos/sin tables [positions, head_dim / 2] in Q30 for random angle rates (the op's
    input format), from the torch.Generator gen."""
    import torch

    angles = torch.arange(positions, dtype=torch.float64)[:, None] * torch.rand(head_dim // 2, generator=gen,
                                                                                dtype=torch.float64)
    return (torch.round(angles.cos() * 2 ** 30).to(torch.int32), torch.round(angles.sin() * 2 ** 30).to(torch.int32))
