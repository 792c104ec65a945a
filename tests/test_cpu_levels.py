"""One build, several CPU levels (csrc/cpu/kernels.h, ncx.ops.cpu_level).

Proves: every level this machine runs gives the same integers as the
baseline level and as the pure-Python references, for every kernel of the
table (quantizer rows in all three uses, the integer M1's row loops, the
window-vocabulary match) and for both exact GEMM paths of int_linear
(torch._int_mm at the avx512 level, ncx's pmaddwd kernel below it); the
decoder's symbol search at block edges; NCX_CPU_LEVEL picks a level at import and a bad one is a clear
ImportError; the built library holds AVX/AVX-512 or other post-baseline
instructions only inside the level namespaces, so a baseline CPU never
meets them.
"""
from __future__ import annotations

import os
import platform
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import context_models as cm
import int_reference as ref
import reference_coder as coder_ref
from ncx import _C, ops
from ncx.int_m1 import quantize_m1
from ncx.methods import ACMethod, EqualInfoACMethod
from ncx.window_vocab import WindowVocab

LEVELS = ops.cpu_levels()
X86 = platform.machine().lower() in ("x86_64", "amd64")
# The level in use at import: the best one, unless NCX_CPU_LEVEL chose another.
STARTING_LEVEL = os.environ.get("NCX_CPU_LEVEL") or LEVELS[-1]


@pytest.fixture
def at_level(request):
    """Runs the test's body at each level in turn (restores the level after)."""
    before = ops.cpu_level()

    def use(level: str) -> None:
        ops.set_cpu_level(level)

    yield use
    ops.set_cpu_level(before)


def _per_level(at_level, fn):
    """{level: fn()} computed at every level this machine runs."""
    out = {}
    for level in LEVELS:
        at_level(level)
        out[level] = fn()
    return out


def _assert_all_equal(results: dict):
    base = results["baseline"]
    for level, got in results.items():
        if isinstance(base, tuple):
            for a, b in zip(got, base):
                assert torch.equal(a, b), f"level {level} differs from baseline"
        else:
            assert torch.equal(got, base), f"level {level} differs from baseline"


def _ints(gen, shape, lo, hi, dtype=torch.int32):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)


# ------------------------------------------------------------ the levels themselves
def test_levels_available_and_the_starting_one():
    assert LEVELS[0] == "baseline" and ops.cpu_level() == STARTING_LEVEL
    assert set(LEVELS) <= {"baseline", "avx2", "avx512"}
    if X86:
        flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        assert ("avx2" in LEVELS) == (" avx2" in flags and " fma" in flags and " bmi2" in flags)
        assert ("avx512" in LEVELS) == (" avx512f" in flags and " avx512bw" in flags and " avx512vl" in flags
                                        and " avx512_vnni" in flags)


def test_unknown_or_missing_level_is_refused(at_level):
    with pytest.raises(ValueError, match="unknown CPU level 'sse9'"):
        ops.set_cpu_level("sse9")
    for level in {"avx2", "avx512"} - set(LEVELS):
        with pytest.raises(ValueError, match="not available here"):
            ops.set_cpu_level(level)
    assert ops.cpu_level() == STARTING_LEVEL  # unchanged by the refusals


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_environment_variable_picks_the_level_at_import():
    r = _run_python("from ncx import ops; print(ops.cpu_level())", NCX_CPU_LEVEL="baseline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "baseline"
    r = _run_python("import ncx.ops", NCX_CPU_LEVEL="avx1024")
    assert r.returncode != 0
    assert "NCX_CPU_LEVEL: unknown CPU level 'avx1024'" in r.stderr
    assert "Traceback" in r.stderr and "ImportError" in r.stderr and ".cpp" not in r.stderr


def test_python_m_ncx_says_what_runs_here():
    r = _run_python("import runpy; runpy.run_module('ncx', run_name='__main__')", NCX_CPU_LEVEL="baseline")
    assert r.returncode == 0, r.stderr
    assert "CPU kernels: baseline (this CPU and build run: " + ", ".join(LEVELS) in r.stdout
    assert "CPU int8 GEMM: ncx pmaddwd kernel" in r.stdout  # below avx512, never torch._int_mm


@pytest.mark.skipif(not X86, reason="the level namespaces split x86-64 code only")
def test_post_baseline_instructions_only_inside_level_namespaces():
    """Disassembles the built library: any function using AVX/AVX-512 (VEX or
    EVEX encoded, v*), BMI, LZCNT, POPCNT, MOVBE or SSE3-4 instructions must
    be a level's own code (ncx::level_avx2:: / ncx::level_avx512::), reached
    only through the level table. A leak (an inline function or template the
    linker shared between levels) would make a baseline CPU die on SIGILL."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to check the built library"
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", _C.__file__], capture_output=True,
                          text=True, check=True).stdout
    beyond = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+|shlx|shrx|sarx|rorx|bzhi|pdep|pext|mulx|andn|blsi|blsr|"
                        r"blsmsk|bextr|tzcnt|lzcnt|popcnt|movbe|pshufb|ptest|pminsd|pmaxsd|pminud|pmaxud|pmulld|"
                        r"round[ps][sd]|pblendvb|blendvp[sd]|pextr[bdq]|pinsr[bdq]|pmov[sz]x[a-z]+|pcmpeqq|"
                        r"pcmpgtq|crc32)\s")
    function, per_level, leaks = None, {"avx2": 0, "avx512": 0}, {}
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            function = m.group(1)
            continue
        m = beyond.match(line)
        if function and m:
            owner = next((lv for lv in per_level if f"ncx::level_{lv}::" in function), None)
            if owner:
                per_level[owner] += 1
            else:
                leaks.setdefault(function, m.group(1))
    assert not leaks, f"post-baseline instructions outside the level namespaces: {list(leaks.items())[:5]}"
    # The check sees what it looks for: the levels' own code does use them.
    assert per_level["avx2"] > 0 and per_level["avx512"] > 0


# ------------------------------------------------------------ quantizer rows
def _adversarial_rows(gen, V: int, logits: bool) -> torch.Tensor:
    rows = [torch.rand(V, generator=gen), torch.rand(V, generator=gen) ** 8, torch.zeros(V),
            torch.full((V,), 1e-40), torch.full((V,), 3e38)]
    rows[2][V // 2] = 1.0  # one-hot
    if logits:
        rows += [torch.randn(V, generator=gen) * 30, torch.full((V,), -1e30), torch.linspace(-200, 5, V)]
    bad = torch.rand(V, generator=gen)
    bad[1] = float("nan")
    neg = torch.rand(V, generator=gen)
    neg[0] = -0.5
    inf = torch.rand(V, generator=gen)
    inf[V - 1] = float("inf")
    rows += [bad, neg, inf, torch.rand(V, generator=gen) * 1e-30]
    return torch.stack(rows)


@pytest.mark.parametrize("V", [2, 3, 31, 256, 257, 1000, 65536])  # 256: the loops' copy for byte alphabets
@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantizer_rows_identical_at_every_level(at_level, V, logits, dtype):
    gen = torch.Generator().manual_seed(V)
    dist = _adversarial_rows(gen, V, logits).to(dtype)
    precision = 24 if V > 2 else 3
    results = _per_level(at_level, lambda: ops.quantize(dist, precision, logits=logits, check=False))
    _assert_all_equal(results)
    # NaN, +inf (and for probabilities a negative value) report their status at every level.
    assert (results["baseline"][1] != 0).sum() == (2 if logits else 3)


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("V", [256, 257])  # 256: the loops' copy for byte alphabets
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stream_coding_identical_at_every_level(at_level, logits, V, dtype):
    """encode (the symbol path) and decode (the find path) over whole sequences."""
    gen = torch.Generator().manual_seed(7)
    B, T = 9, 300
    dist = torch.randn(B, T, V, generator=gen) * 4 if logits else torch.rand(B, T, V, generator=gen) ** 6
    dist = dist.to(dtype)
    symbols = torch.randint(0, V, (B, T), generator=gen)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = 0, T
    enc = _per_level(at_level, lambda: ops.encode(dist, symbols, lengths, 16, logits=logits))
    _assert_all_equal(enc)
    data, nbits = enc["baseline"]
    dec = _per_level(at_level, lambda: ops.decode(dist, data, nbits, lengths, 16, logits=logits))
    _assert_all_equal(dec)
    for b in range(B):
        assert torch.equal(dec["baseline"][b, :lengths[b]], symbols[b, :lengths[b]])


@pytest.mark.parametrize("V", [256, 257])
def test_encode_reports_the_first_bad_row_or_symbol_at_every_level(at_level, V):
    """The encoder's loop checks a row's symbol, scans the row, takes it to
    fixed point and codes it, asking for a row ahead between the passes. Its
    status is the first bad row or symbol of the stream, a row's symbol
    before the row itself, nothing from past the stream's length: at the
    first row, the last, one row with both, and in streams of 0, 1 and 2 rows."""
    T, nan, inf = 9, float("nan"), float("inf")
    ok, bad_row, bad_neg, bad_inf, bad_sym = 0, 1, 2, 4, 5
    cases = [  # (length, {row: a probability put in it and/or "sym", a bad symbol}, status)
        (T, {}, ok),
        (T, {0: nan}, bad_row),
        (T, {0: "sym"}, bad_sym),
        (T, {2: (nan, "sym")}, bad_sym),  # one row, both
        (T, {3: nan, 4: "sym"}, bad_row),
        (T, {3: "sym", 4: nan}, bad_sym),
        (T, {4: -0.5, 5: "sym"}, bad_neg),
        (T, {T - 1: inf}, bad_inf),
        (T, {T - 1: "sym"}, bad_sym),
        (5, {5: nan, 6: "sym"}, ok),  # past the length
        (1, {0: inf}, bad_inf),
        (1, {1: nan}, ok),
        (2, {1: nan}, bad_row),
        (2, {0: -0.5, 1: nan}, bad_neg),
        (0, {0: nan}, ok),
    ]
    gen = torch.Generator().manual_seed(V)
    dist = torch.rand(len(cases), T, V, generator=gen) + 0.01
    symbols = torch.randint(0, V, (len(cases), T), generator=gen)
    for b, (_, put, _) in enumerate(cases):
        for t, change in put.items():
            for what in change if isinstance(change, tuple) else (change,):
                if what == "sym":
                    symbols[b, t] = V if b % 2 else -1
                else:
                    dist[b, t, (7 * b) % V] = what
    lengths = torch.tensor([length for length, _, _ in cases])
    statuses = _per_level(at_level, lambda: torch.ops.ncx.encode(dist, symbols, lengths, 24, False, 0)[2])
    _assert_all_equal(statuses)
    assert statuses["baseline"].tolist() == [status for _, _, status in cases]


def _rows_for_the_scan_ahead(gen, T: int, V: int) -> torch.Tensor:
    """Float32 probability rows of every kind the work on rows ahead meets,
    in turn: plain rows; rows holding -0.0 (valid, but their raw max has the
    sign bit, so the row takes the full scan and no fixed point ahead); rows
    whose largest weight is subnormal (the coder's scalar paths, which must
    do the work ahead too); rows whose largest weight sits in the last
    element, past the vectors when V is not a multiple of 16; one-hot rows;
    rows of tiny normal weights (exponent field below 23: fixed point by bit
    shifts, not ahead)."""
    rows = torch.rand(T, V, generator=gen) ** 4 + 1e-7
    for t in range(T):
        kind = t % 6
        if kind == 1:
            rows[t, torch.randint(0, V, (max(1, V // 7),), generator=gen)] = -0.0
        elif kind == 2:
            rows[t] = torch.rand(V, generator=gen) * 1e-39 + 1e-44
        elif kind == 3:
            rows[t, V - 1] = 1.5
        elif kind == 4:
            rows[t] = 0.0
            rows[t, (7 * t) % V] = 1.0
        elif kind == 5:
            rows[t] = torch.rand(V, generator=gen) * 1e-33 + 1e-36
    return rows


@pytest.mark.parametrize("V", [5, 256, 257, 300, 600])  # 600: past the fixed point ahead's V <= 512
def test_rows_ahead_code_as_the_reference_and_stop_at_bad_rows(at_level, V):
    """ops.encode and ops.decode over float32 probabilities take a row
    ahead's raw max in the current row's last pass and skip that row's own
    scan when the max proves it valid; the encoder also takes the next row to
    fixed point there (csrc/core/quantize.h, RowsAhead). Against the
    reference coder, with every kind of row after every other; then a stream
    whose row k is bad (NaN, negative, +inf or all zero, coming after a
    plain, a -0.0 or a subnormal row or first) decodes rows [0, k) and
    reports row k's status, at every level; the encoder reports it too."""
    gen = torch.Generator().manual_seed(V)
    T, precision = 47, 24
    dist = _rows_for_the_scan_ahead(gen, T, V)[None]
    cdf, status = coder_ref.quantize(dist[0], precision)
    assert (status == 0).all()
    symbols = torch.tensor([int(torch.multinomial(torch.from_numpy(np.diff(c).astype(np.float64)), 1, generator=gen))
                            for c in cdf])[None]
    want, want_bits = coder_ref.stream_encode(cdf, symbols[0].tolist(), precision)
    enc = _per_level(at_level, lambda: ops.encode(dist, symbols, precision=precision))
    _assert_all_equal(enc)
    data, nbits = enc["baseline"]
    assert int(nbits[0]) == want_bits and data[0].numpy().tobytes()[: len(want)] == want
    dec = _per_level(at_level, lambda: ops.decode(dist, data, nbits, precision=precision))
    _assert_all_equal(dec)
    assert torch.equal(dec["baseline"], symbols)

    nan, inf = float("nan"), float("inf")
    cases = [(0, nan, 1), (1, -0.5, 2), (2, 0.0, 3), (3, inf, 4), (T - 1, nan, 1), (T - 1, 0.0, 3)]
    for k, value, code in cases:  # row k - 1 is of kind (k - 1) % 6: plain, -0.0, subnormal, ...
        bad = dist.clone()
        if value == 0.0:
            bad[0, k] = 0.0
        else:
            bad[0, k, V // 2] = value
        lengths = torch.tensor([T])
        got = _per_level(at_level, lambda: torch.ops.ncx.decode(bad, data, nbits, lengths, precision, False))
        _assert_all_equal(got)
        decoded, st = got["baseline"]
        assert int(st[0]) == code, (k, value)
        assert torch.equal(decoded[0, :k], symbols[0, :k])
        statuses = _per_level(at_level, lambda: torch.ops.ncx.encode(bad, symbols, lengths, precision, False, 0)[2])
        _assert_all_equal(statuses)
        assert int(statuses["baseline"][0]) == code


@pytest.mark.parametrize("V", [256, 257, 280, 300])
def test_decoder_finds_symbols_at_block_edges_at_every_level(at_level, V):
    """The decoder's search goes by blocks of 32 frequencies (for byte
    alphabets all eight blocks at once, at avx2 and avx512). A symbol of frequency 1
    has a single target, its cumulative frequency, so coding one at every
    block edge checks each boundary compare for off-by-one at every level."""
    edges = sorted({s for e in range(0, V + 1, 32) for s in (e - 1, e, e + 1) if 0 <= s < V} | {V - 1})
    peak = torch.zeros(V)
    peak[V // 3] = 1.0
    dist = peak.expand(len(edges), V).clone()  # every other symbol gets frequency 1
    dist[1::2, 5] = 0.25  # a second peak moves the targets of half the rows
    symbols = torch.tensor(edges)
    for precision in (V.bit_length(), 16, 24):
        enc = _per_level(at_level, lambda: ops.encode(dist[None], symbols[None], precision=precision))
        _assert_all_equal(enc)
        data, nbits = enc["baseline"]
        dec = _per_level(at_level, lambda: ops.decode(dist[None], data, nbits, precision=precision))
        _assert_all_equal(dec)
        assert torch.equal(dec["baseline"][0], symbols)


@pytest.mark.parametrize("V", [8, 15, 16, 17, 31, 256, 257, 280])
def test_remainder_and_sums_below_every_symbol_at_every_level(at_level, V):
    """The encoder's sums below s are running totals stored per vector plus
    the lanes of s's own vector below s; the remainder goes to the first
    index of the largest fixed-point weight, which the decoder and the CDF
    find from per-lane counts at avx2. Coding every symbol of a row with the
    largest weight before, at and after it, and another weight whose fixed
    point ties with the largest (1.5 and 1.5 + 2^-23: the last mantissa bit is
    dropped) on the far side, checks every lane split and the remainder's
    place at every level against the reference coder, both ways. The
    precisions take each form of the encoder's products: f in the high
    dwords after shifting q left by 2, 1 or 0 (P = 24, 23, 22), or with the
    high dwords' low bits cleared (P = 21, 16 and the smallest P)."""
    gen = torch.Generator().manual_seed(V)
    rows, symbols = [], []
    for s in range(V):
        for peak in sorted({max(s - 1, 0), s, min(s + 1, V - 1)}):
            row = torch.rand(V, generator=gen) ** 4
            row[peak] = 1.5 + 2.0**-23
            row[(peak + V // 2) % V] = 1.5
            rows.append(row)
            symbols.append(s)
    dist, symbols = torch.stack(rows)[None], torch.tensor(symbols)[None]
    for precision in sorted({V.bit_length(), 16, 21, 22, 23, 24}):
        enc = _per_level(at_level, lambda: ops.encode(dist, symbols, precision=precision))
        _assert_all_equal(enc)
        cdf, status = coder_ref.quantize(dist[0], precision)
        assert (status == 0).all()
        want, want_bits = coder_ref.stream_encode(cdf, symbols[0].tolist(), precision)
        data, nbits = enc["baseline"]
        assert int(nbits[0]) == want_bits
        assert data[0].numpy().tobytes()[: len(want)] == want
        dec = _per_level(at_level, lambda: ops.decode(dist, data, nbits, precision=precision))
        _assert_all_equal(dec)
        assert torch.equal(dec["baseline"], symbols)
        quantized = _per_level(at_level, lambda: ops.quantize(dist[0], precision))
        _assert_all_equal(quantized)
        assert np.array_equal(quantized["baseline"].numpy(), cdf)


def _peaky_int_m1():
    return quantize_m1(cm.peaky_m1(3))


@pytest.mark.parametrize("method_cls, kw", [(ACMethod, {}), (EqualInfoACMethod, {"b": 16}),
                                            (EqualInfoACMethod, {"b": 24})])
def test_model_coding_identical_at_every_level(at_level, method_cls, kw):
    """The stepwise stream and window coders with an integer M1 in the loop:
    the same tokens at every level, and each level decodes them."""
    coder = _peaky_int_m1().coder()
    rng = random.Random(5)
    docs = [b"", b"a", bytes(range(256)), b"\xff\xfe\x00" * 40, bytes(rng.randrange(256) for _ in range(700)),
            b"The quick brown fox jumps over the lazy dog. " * 6]
    method = method_cls(coder, batch=4, **kw)
    encoded = {}
    for level in LEVELS:
        at_level(level)
        encoded[level] = method.encode_batch(docs)
        assert method.decode_batch(encoded["baseline"]) == docs
    for level in LEVELS:
        assert [(e.tokens.tolist(), e.exceptions) for e in encoded[level]] == \
            [(e.tokens.tolist(), e.exceptions) for e in encoded["baseline"]], f"level {level} gives other tokens"


# ------------------------------------------------------------ integer M1 ops
@pytest.mark.parametrize("N, K, D", [(0, 64, 5), (1, 1, 1), (5, 130, 37), (300, 256, 257), (2, 1100, 3),
                                     (40, 2100, 24)])
@pytest.mark.parametrize("shifts", [(20, 45), (40, 46)])
def test_int_linear_identical_at_every_level_and_exact(at_level, N, K, D, shifts):
    """avx512 takes torch._int_mm, the others ncx's pmaddwd kernel, with the
    avx2 level's own quantizer and dequantizer loops (K = 130, 1100 and 2100
    leave tails after their vectors of 16, D = 37 and 257 after their blocks
    of 8 channels); extremes saturate 16-bit pair sums, as an inexact int8
    GEMM would. With shifts from 20, outputs can saturate and the rows take
    the dequantizer's clamped loops; from 40 (and these activations) they
    cannot, and the rows take the loops without clamps."""
    gen = torch.Generator().manual_seed(N * 7 + K)
    x = _ints(gen, (N, K), -(1 << 22), 1 << 22)
    w = _ints(gen, (D, K), -127, 128, torch.int8)
    if N >= 3:
        x[0] = (1 << 31) - 1  # every activation quantizes to +127
        x[1] = 0
        x[2] = -((1 << 31) - 1)
        w[0] = 127
        if D > 1:
            w[1] = -127
    mult = _ints(gen, (D,), 1 << 14, (1 << 15) + 1)
    shift = _ints(gen, (D,), *shifts)
    results = _per_level(at_level, lambda: ops.int_linear(x, w, mult, shift))
    _assert_all_equal(results)
    if N * K * D <= 200_000:  # the pure-Python reference, where it is quick
        want = ref.linear(x.tolist(), w.tolist(), mult.tolist(), shift.tolist())
    else:
        want = _linear_int64(x, w, mult, shift)
    assert results["baseline"].tolist() == want


def test_int_linear_rounds_activation_halves_at_every_level(at_level):
    """The activation quantizer's float estimate and its two corrections. Its
    quotient (t + mant) / (2 mant) is an exact integer exactly where 127 |x| / A
    is a half (the tie, which rounds up), and for these mantissas the float
    estimate of some such quotients comes out one below (found by search over
    every mantissa). Rows: each scale A = mant * 2^e, with the values
    around every half, and the largest magnitudes."""
    scales = [(m, 0) for m in (82, 94, 110, 122, 164, 166, 188, 194, 214, 218, 254, 1, 3, 127)]
    scales += [(m, e) for m in (16707, 16837, 16874, 16924, 17099, 17147, 17322, 17324, 1 << 15, (1 << 15) - 1)
               for e in (1, 8, 16)]
    rows = []
    for mant, e in scales:
        A = mant << e
        vals = {A}
        for c in range(128):
            u = (2 * c + 1) * A // 254
            vals |= {v for v in (u - 1, u, u + 1, u + 2) if 0 <= v <= A}
        rows.append([v if i % 2 else -v for i, v in enumerate(sorted(vals))])
    rows.append([(1 << 31) - 1, -((1 << 31) - 1), 1, -1, 0])
    K = max(len(r) for r in rows)
    x = torch.tensor([r + [0] * (K - len(r)) for r in rows], dtype=torch.int32)
    w = torch.eye(K, dtype=torch.int8) * 127  # acc = 127 q: every rounding of q shows in the output
    mult = torch.full((K,), 1 << 15, dtype=torch.int32)
    shift = torch.full((K,), 20, dtype=torch.int32)
    results = _per_level(at_level, lambda: ops.int_linear(x, w, mult, shift))
    _assert_all_equal(results)
    assert results["baseline"].tolist() == _linear_int64(x, w, mult, shift)


def test_activation_quotient_needs_no_correction():
    """The avx2 level's activation quantizer takes floor((t + mant) / (2 mant))
    as the truncated float32 quotient, with no correction: exact for every
    mantissa, as checked here around every integer quotient (numpy's float32
    division is IEEE's correctly rounded one, as vdivps is)."""
    mant = np.arange(1, (1 << 15) + 1, dtype=np.int64)[:, None]
    den = 2 * mant
    k = np.arange(128, dtype=np.int64)[None, :]
    for step in range(-8, 9):  # n from 8 below to 8 above k * den, within [mant, 255 mant]
        n = np.clip(k * den + step, mant, 255 * mant)
        got = (n.astype(np.float32) / den.astype(np.float32)).astype(np.int64)
        bad = np.flatnonzero(got != n // den)
        assert bad.size == 0, f"mant {mant.ravel()[bad[0] // 128]}: n {n.ravel()[bad[0]]}"


def _linear_int64(x, w, mult, shift) -> list:
    """int_reference.linear in int64 tensor arithmetic, for shapes too large
    for pure Python (shifts > 0 only, as the callers' shift - exponent are)."""
    x = x.long()
    amax = x.abs().amax(1)
    bits = sum((amax >= (1 << k)).long() for k in range(33))  # bit_length
    e = (bits - 15).clamp_min(0)
    mant = (amax + (1 << e) - 1) >> e
    den = (mant << e)[:, None]
    num = x * 127
    q = torch.where(den > 0, torch.sign(num) * ((num.abs() + den // 2) // den.clamp_min(1)), 0)
    acc = q @ w.long().t()
    s = shift.long()[None, :] - e[:, None]
    assert (s > 0).all()
    out = (acc * mant[:, None] * mult.long()[None, :] + (1 << (s - 1))) >> s
    return out.clamp(-(2 ** 31 - 1), 2 ** 31 - 1).tolist()


def test_int_row_ops_identical_at_every_level_and_match_reference(at_level):
    gen = torch.Generator().manual_seed(11)
    C = 100
    x = _ints(gen, (7, C), -(1 << 26), 1 << 26)
    x[1] = 0
    x[3] = -(1 << 31) + 1
    gain = _ints(gen, (C,), -(1 << 18), 1 << 18)
    norm = _per_level(at_level, lambda: ops.int_rms_norm(x, gain))
    _assert_all_equal(norm)
    assert norm["baseline"].tolist() == ref.rms_norm(x.tolist(), gain.tolist())

    logits = _ints(gen, (6, 257), -(40 << 16), 40 << 16)
    logits[2] = -(1 << 31) + 1
    logits[2, 7] = (1 << 31) - 1
    weights = _per_level(at_level, lambda: ops.int_coder_weights(logits))
    _assert_all_equal(weights)
    assert weights["baseline"].tolist() == ref.coder_weights(logits.tolist())

    hd, L, N, H, S = 16, 37, 6, 2, 3
    cos, sin = ref.random_rope_tables(gen, L, hd)
    xr = _ints(gen, (N, H, hd), -(1 << 25), 1 << 25)
    positions = _ints(gen, (N,), 0, L, torch.int64)
    positions[0], positions[1], positions[2] = 0, 7, L - 1
    rope = _per_level(at_level, lambda: ops.int_rope(xr, cos, sin, positions))
    _assert_all_equal(rope)
    assert rope["baseline"].tolist() == ref.rope(xr.tolist(), cos.tolist(), sin.tolist(), positions.tolist())

    q = _ints(gen, (N, H, hd), -(1 << 24), 1 << 24)
    k = _ints(gen, (S, H, L, hd), -(1 << 24), 1 << 24)
    v = _ints(gen, (S, H, L, hd), -(1 << 24), 1 << 24)
    streams = _ints(gen, (N,), 0, S, torch.int64)
    att = _per_level(at_level, lambda: ops.int_attention(q, k, v, streams, positions))
    _assert_all_equal(att)
    assert att["baseline"].tolist() == ref.attention(q.tolist(), k.tolist(), v.tolist(), streams.tolist(),
                                                     positions.tolist())


@pytest.mark.parametrize("hd, q_bits, k_bits, v_bits", [
    (64, 12, 24, 24), (64, 20, 24, 24), (16, 12, 24, 24), (24, 12, 24, 24), (40, 12, 24, 24),
    (256, 24, 24, 31),  # every product at the double lanes' bound; values over the whole int32 range
    (16, 28, 28, 24),   # past that bound: the int64 sums instead
])
def test_int_attention_groups_identical_at_every_level(at_level, hd, q_bits, k_bits, v_bits):
    """Query rows in runs of one stream (a teacher-forced block), which the
    vector levels code in groups (8 rows at avx512, 4 at avx2): runs of 1 to 11
    rows (lone rows, whole groups, a group and a remainder), positions in and
    out of order within a run and repeated, key counts from 1 to past the
    blocks of 64 keys. Head sizes a multiple of both levels' chunks (16, 64,
    256), of avx2's only (24, 40), so avx512 takes its per-row path there.
    Queries of 2^12 spread the weights; of 2^20, most of them clamp to 0.
    q and k at the integer M1's limit (2^24; a whole group and its stream's
    keys all at +-2^24, one key equal to a query) put avx512's double lanes at the edge of exactness (hd / 8
    products of 2^48: 2^53); at 2^28 past it."""
    gen = torch.Generator().manual_seed(hd + q_bits)
    H, S, L = 2, 5, 150
    runs = [1, 8, 3, 11, 4, 1, 9, 5]
    streams = torch.cat([torch.full((r,), i % S, dtype=torch.int64) for i, r in enumerate(runs)])
    N = len(streams)
    positions = _ints(gen, (N,), 0, L, torch.int64)
    positions[1:9] = torch.arange(100, 108)        # a block of consecutive positions
    positions[12:23] = torch.arange(149, 138, -1)  # descending, up to the last
    positions[23:27] = 0                           # a single key, repeated
    q = _ints(gen, (N, H, hd), -(1 << q_bits), 1 << q_bits)
    k = _ints(gen, (S, H, L, hd), -(1 << k_bits), 1 << k_bits)
    v = _ints(gen, (S, H, L, hd), -(1 << v_bits), 1 << v_bits)
    if q_bits == 24:
        sign = lambda shape: torch.where(_ints(gen, shape, 0, 2) == 0, -1, 1).to(torch.int32)  # noqa: E731
        q[1:9] = sign(q[1:9].shape) << 24  # the rows of a whole group, on stream 1
        k[1] = sign(k[1].shape) << 24
        k[1, :, 5] = q[1]  # a dot product of hd products of +2^48
    att = _per_level(at_level, lambda: ops.int_attention(q, k, v, streams, positions))
    _assert_all_equal(att)
    assert att["baseline"].tolist() == ref.attention(q.tolist(), k.tolist(), v.tolist(), streams.tolist(),
                                                     positions.tolist())


def test_int_attention_past_the_double_bound(at_level):
    """Products the double lanes cannot hold exactly, arranged so that a
    rounding shows in the output: two dimensions summed in one lane, q = P at
    both and k = (A, -A), cancel exactly, but P A = 2^56 - 2^30 + 3 rounds to
    the nearest multiple of 8, leaving -3 in the lane. Key 0's remaining dot
    3 * 2^15 + 1 then scores 1 instead of 0, and the value gets weights 2^16
    and 2^16 - 1 rather than two equal ones. Every level must take exact sums
    (avx512 its int64 ones) and match the reference."""
    P, A = (1 << 28) - 1, (1 << 28) - 3
    q = torch.zeros(2, 1, 16, dtype=torch.int32)  # two rows of one stream: a group at the vector levels
    q[:, 0, 0] = q[:, 0, 8] = P
    q[:, 0, 1] = 1
    k = torch.zeros(1, 1, 2, 16, dtype=torch.int32)
    k[0, 0, :, 0], k[0, 0, :, 8] = A, -A
    k[0, 0, 0, 1] = 3 * (1 << 15) + 1
    v = torch.zeros(1, 1, 2, 16, dtype=torch.int32)
    v[0, 0, 1, :] = 1 << 24
    streams, positions = torch.zeros(2, dtype=torch.int64), torch.ones(2, dtype=torch.int64)
    att = _per_level(at_level, lambda: ops.int_attention(q, k, v, streams, positions))
    _assert_all_equal(att)
    expected = ref.attention(q.tolist(), k.tolist(), v.tolist(), streams.tolist(), positions.tolist())
    assert att["baseline"].tolist() == expected
    assert expected[0][0][0] != 1 << 23  # not the two equal weights' mean


def test_int_m1_weights_identical_at_every_level_with_threads(at_level):
    """A whole integer M1 forward, 2 threads (rows split between them)."""
    torch.set_num_threads(2)
    model = _peaky_int_m1()
    tokens = torch.randint(0, 256, (5, 60), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 256
    _assert_all_equal(_per_level(at_level, lambda: model.window_weights(tokens)))


# ------------------------------------------------------------ window vocabulary
def test_vocab_match_identical_at_every_level(at_level):
    rng = np.random.default_rng(4)
    strings = [(bytes([i]), False) for i in range(256)] + [(b"", True)]
    while len(strings) < 4096:
        strings.append((rng.integers(0, 6, int(rng.integers(1, 9)), dtype=np.uint8).tobytes(),
                        bool(rng.random() < 0.1)))
    pool = torch.tensor(list(b"".join(s for s, _ in strings)), dtype=torch.uint8)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(s) for s, _ in strings])]), dtype=torch.int64)
    vocab = WindowVocab(12, 10, 2, "0" * 64, "integer", 63, pool, offsets,
                        torch.tensor([e for _, e in strings], dtype=torch.bool))
    docs = [b"", bytes(range(256)), rng.integers(0, 6, 50_000, dtype=np.uint8).tobytes(),
            rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()]
    codes = {}
    for level in LEVELS:
        at_level(level)
        codes[level] = [c.tolist() for c in vocab.encode(docs)]
    assert all(codes[level] == codes["baseline"] for level in LEVELS)
    assert vocab.decode([np.asarray(c, np.int32) for c in codes["baseline"]]) == docs


# ------------------------------------------------------------ the float M1 on every CPU
_FLOAT_LOGITS = """
import hashlib, numpy as np, torch
from ncx import m1
# numpy draws the weights and tokens: torch's own samplers vectorize by instruction set too.
rng = np.random.default_rng(0)
model = m1.M1(m1.preset("tiny", context=64)).eval()
model.load_state_dict({k: torch.from_numpy(rng.standard_normal(tuple(v.shape)).astype(np.float32) * 0.5)
                       for k, v in model.state_dict().items()})
coder = model.coder()
tokens = torch.from_numpy(rng.integers(0, 256, (300, 40)))
h = hashlib.sha256()
for t in range(40):
    h.update(coder(tokens[:, t], torch.full((300,), t)).numpy().tobytes())
print(h.hexdigest())
"""


def test_float_m1_logits_identical_whatever_instruction_set_torch_libraries_use():
    """The float coding path promises the same logits on every CPU. torch's
    CPU libraries pick their vector code by instruction set (MKL's vector math
    takes torch.sqrt of large tensors, and its last bit differs between
    AVX-512, AVX2 and SSE4.2); held to each in turn, the logits of 300
    streams must not change."""
    caps = [{}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
            {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"}]
    digests = []
    for env in caps:
        r = _run_python(_FLOAT_LOGITS, **env)
        assert r.returncode == 0, r.stderr
        digests.append(r.stdout.strip())
    assert len(set(digests)) == 1, digests


def test_sqrt_rounded_is_the_correctly_rounded_sqrt():
    import numpy as np

    from ncx.m1 import _sqrt_rounded
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([torch.rand(300_000, generator=gen) * 10, torch.rand(1000, generator=gen) * 1e-30,
                   torch.tensor([0.0, 1e-45, 1.0, 2.0, 4.0, 3.4e38])])
    want = torch.from_numpy(np.sqrt(x.double().numpy()).astype(np.float32))  # exact, then one rounding
    assert torch.equal(_sqrt_rounded(x), want)
