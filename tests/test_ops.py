"""The op layer: every ncx op passes torch.library.opcheck (schema, fake
kernel, autograd registration, AOT dispatch) and runs under
torch.compile(fullgraph=True) with the eager results; bad input is a clear
Python error that names the problem, never a crash; corrupted or truncated
compressed data is a ValueError that says so."""
from __future__ import annotations

import faulthandler
import os
import re
import signal

import pytest
import torch
from torch.library import opcheck

from ncx import coder, ops
from ncx.coder import StreamDecoder, StreamEncoder, WindowDecoder, WindowEncoder

nc = torch.ops.ncx
HEADER = coder._HEADER.size
B, T, V, P, BUDGET = 3, 6, 7, 10, 16


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    dist = torch.rand(B, T, V, generator=g) + 0.01
    sym = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([T, 2, 0])
    data, nbits = ops.encode(dist, sym, lengths, precision=P)
    codes = torch.randint(0, 256, (B, BUDGET // 8), dtype=torch.uint8, generator=g)
    return dict(dist=dist, sym=sym, lengths=lengths, data=data, nbits=nbits, codes=codes)


def op_calls(c):
    """(name, op, args) with valid inputs for every op; states are fresh copies."""
    d0 = c["dist"][:, 0]
    ones = torch.ones(B, dtype=torch.bool)
    # A window encoder part-way through a window, so finish has something to close.
    we = ops.new_state("window_encoder", B)
    nc.window_encode_step(we, d0, c["sym"][:, 0], P, False, BUDGET, 100)
    wd = ops.new_state("window_decoder", B)
    nc.window_decode_start(wd, c["codes"], ones, torch.full((B,), 100), BUDGET)
    se = ops.new_state("stream_encoder", B)
    out = torch.zeros(B, 32, dtype=torch.uint8)
    nc.stream_encode_step(se, out, d0, c["sym"][:, 0], P, False)
    return [
        ("quantize", nc.quantize.default, (c["dist"], P, False)),
        ("quantize_logits_bf16", nc.quantize.default, (c["dist"].log().bfloat16(), P, True)),
        ("encode", nc.encode.default, (c["dist"], c["sym"], c["lengths"], P, False, 0)),
        ("decode", nc.decode.default, (c["dist"], c["data"], c["nbits"], c["lengths"], P, False)),
        ("stream_encode_step", nc.stream_encode_step.default, (se.clone(), out.clone(), d0, c["sym"][:, 1], P, False)),
        ("stream_encode_finish", nc.stream_encode_finish.default, (se.clone(), out.clone())),
        ("stream_decode_step", nc.stream_decode_step.default,
         (ops.new_state("stream_decoder", B), c["data"], c["nbits"], d0, ones, P, False)),
        ("window_encode_step", nc.window_encode_step.default, (we.clone(), d0, c["sym"][:, 1], P, False, BUDGET, 100)),
        ("window_encode_finish", nc.window_encode_finish.default, (we.clone(), ones, BUDGET)),
        ("window_decode_start", nc.window_decode_start.default,
         (ops.new_state("window_decoder", B), c["codes"], ones, torch.full((B,), 100), BUDGET)),
        ("window_decode_step", nc.window_decode_step.default, (wd.clone(), d0, P, False, BUDGET, -1)),
    ]


def names():
    return ["quantize", "quantize_logits_bf16", "encode", "decode", "stream_encode_step", "stream_encode_finish",
            "stream_decode_step", "window_encode_step", "window_encode_finish", "window_decode_start",
            "window_decode_step"]


def pick(c, name):
    return next((op, args) for n, op, args in op_calls(c) if n == name)


def clone_args(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("name", names())
def test_opcheck(case, name):
    op, args = pick(case, name)
    opcheck(op, args)


@pytest.mark.parametrize("name", names())
def test_compile_fullgraph(case, name):
    """The raw op compiles into one graph and gives the eager outputs and the
    eager mutations of its state/out arguments."""
    op, args = pick(case, name)
    eager_args, compiled_args = clone_args(args), clone_args(args)
    want = op(*eager_args)
    torch._dynamo.reset()
    got = torch.compile(lambda *a: op(*a), fullgraph=True)(*compiled_args)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert (w is None and g is None) or torch.equal(w, g)
    for w, g in zip(eager_args, compiled_args):
        if isinstance(w, torch.Tensor):
            assert torch.equal(w, g), "a mutated argument differs under torch.compile"


def test_compile_a_coding_loop(case):
    """A whole stream-encoding loop (quantize-free ops only) in one compiled graph."""
    c = case

    def encode_all(state, out, dist, sym):
        for t in range(T):
            nc.stream_encode_step(state, out, dist[:, t], sym[:, t], P, False)
        return nc.stream_encode_finish(state, out)

    full = torch.full((B,), T)
    want_data, want_nbits = ops.encode(c["dist"], c["sym"], full, precision=P)
    state, out = ops.new_state("stream_encoder", B), torch.zeros(B, want_data.shape[1], dtype=torch.uint8)
    nbits = torch.compile(encode_all, fullgraph=True)(state, out, c["dist"], c["sym"])
    assert torch.equal(nbits, want_nbits) and torch.equal(out, want_data)


# ---------------------------------------------------------------- bad input
def raises(exc, pattern):
    return pytest.raises(exc, match=pattern)


def test_bad_dist(case):
    d = case["dist"]
    with raises(TypeError, "dist must be float32 or bfloat16, got torch.float64"):
        ops.quantize(d.double(), P)
    with raises(TypeError, "dist must be float32 or bfloat16, got torch.int64"):
        ops.encode(d.long(), case["sym"], precision=P)
    with raises(RuntimeError, "dist must be float32 or bfloat16"):
        nc.quantize(d.half(), P, False)
    with raises(ValueError, r"alphabet size V \(last dim of dist\) must be in \[2, 65536\], got 1"):
        ops.quantize(torch.ones(4, 1), P)
    with raises(RuntimeError, r"alphabet size V .* got 65537"):
        nc.quantize(torch.ones(1, 65537), 24, False)
    with raises(RuntimeError, "dist must have at least one dimension"):
        nc.quantize(torch.tensor(1.0), P, False)
    with raises(ValueError, r"dist must have shape \[B, T, V\], got \(3, 7\)"):
        ops.encode(d[:, 0], case["sym"], precision=P)
    with raises(RuntimeError, r"dist must have shape \[B, T, V\]"):
        nc.encode(d[:, 0], case["sym"], case["lengths"], P, False, 0)
    with raises(RuntimeError, "dist must be contiguous in its last dimension"):
        nc.encode(d.transpose(1, 2), case["sym"][:, :V], torch.full((B,), 1), P, False, 0)
    with raises(TypeError, "dist must be a torch.Tensor"):
        ops.quantize([[0.5, 0.5]], P)


@pytest.mark.parametrize("bad,code", [(float("nan"), 1), (-0.5, 2), (float("inf"), 4)])
def test_bad_probabilities_name_the_stream(case, bad, code):
    d = case["dist"].clone()
    d[1, 1, 3] = bad
    msg = re.escape(f"stream 1: {ops.STATUS_MESSAGES[code]}")
    with raises(ValueError, msg):
        ops.encode(d, case["sym"], precision=P)
    with raises(ValueError, msg):
        ops.decode(d, case["data"], case["nbits"], precision=P)
    with raises(ValueError, msg):
        StreamEncoder(B, 64, P).step(d[:, 1], case["sym"][:, 1])
    with raises(ValueError, msg):
        WindowEncoder(B, BUDGET, P).step(d[:, 1], case["sym"][:, 1])
    with raises(ValueError, msg):
        w = WindowDecoder(B, BUDGET, P)
        w.start(case["codes"], torch.ones(B, dtype=torch.bool), torch.full((B,), 10))
        w.step(d[:, 1])


def test_all_zero_rows(case):
    d = case["dist"].clone()
    d[2, 0] = 0
    with raises(ValueError, re.escape("stream 2: a distribution row is all zero")):
        ops.encode(d, case["sym"], precision=P)
    with raises(ValueError, re.escape("row 3: a distribution row is all zero (or all logits are -inf)")):
        ops.quantize(torch.tensor([[1.0, 0], [0, 1], [1, 1], [-float("inf")] * 2]), 2, logits=True)


def test_bad_symbols(case):
    d, sym = case["dist"], case["sym"].clone()
    sym[2, 3] = V
    with raises(ValueError, re.escape("stream 2: a symbol is outside [0, V)")):
        ops.encode(d, sym, precision=P)
    sym[2, 3] = -1
    with raises(ValueError, re.escape("stream 2: a symbol is outside [0, V)")):
        ops.encode(d, sym, precision=P)
    with raises(ValueError, re.escape("stream 0: a symbol is outside [0, V)")):
        StreamEncoder(B, 64, P).step(d[:, 0], torch.tensor([V, 0, 0]))
    with raises(ValueError, re.escape("stream 1: a symbol is outside [0, V)")):
        WindowEncoder(B, BUDGET, P).step(d[:, 0], torch.tensor([0, V + 5, 0]))
    with raises(TypeError, "symbols must be int64 or int32, got torch.float32"):
        ops.encode(d, sym.float(), precision=P)
    with raises(ValueError, r"symbols must have shape \[3, 6\], got \[3, 5\]"):
        ops.encode(d, sym[:, :5], precision=P)
    with raises(RuntimeError, r"symbols must have shape \[B, T\]"):
        nc.encode(d, sym[:, :5], case["lengths"], P, False, 0)


def test_bad_lengths_and_data(case):
    d = case["dist"]
    with raises(RuntimeError, r"lengths must lie in \[0, T\] = \[0, 6\], got min 0 max 7"):
        ops.encode(d, case["sym"], torch.tensor([7, 0, 0]), precision=P)
    with raises(RuntimeError, r"lengths must lie in \[0, T\]"):
        ops.decode(d, case["data"], case["nbits"], torch.tensor([-1, 0, 0]), precision=P)
    with raises(ValueError, r"lengths must have shape \[3\]"):
        ops.encode(d, case["sym"], torch.tensor([1, 2]), precision=P)
    with raises(ValueError, "data must be a uint8 tensor"):
        ops.decode(d, case["data"].int(), case["nbits"], precision=P)
    with raises(RuntimeError, r"nbits must lie in \[0, 8 \* N\]"):
        ops.decode(d, case["data"][:, :1], torch.tensor([9, 0, 0]), precision=P)
    with raises(ValueError, "tensors must be on one device"):
        ops.encode(d, case["sym"].to("meta"), precision=P)


@pytest.mark.parametrize("precision", [0, 25, -3])
def test_precision_out_of_range(case, precision):
    msg = re.escape(f"precision must be an int in [1, 24], got {precision}")
    with raises(ValueError, msg):
        ops.quantize(case["dist"], precision)
    with raises(ValueError, msg):
        ops.encode(case["dist"], case["sym"], precision=precision)
    with raises(ValueError, msg):
        StreamEncoder(B, 64, precision)
    with raises(RuntimeError, re.escape(f"precision must be in [1, 24], got {precision}")):
        nc.quantize(case["dist"], precision, False)


def test_precision_too_small_for_alphabet(case):
    with raises(ValueError, "precision 2 is too small for V = 7"):
        ops.quantize(case["dist"], 2)
    with raises(RuntimeError, "precision 2 is too small for an alphabet of 7 symbols"):
        nc.encode(case["dist"], case["sym"], case["lengths"], 2, False, 0)
    with raises(ValueError, "precision 2 is too small for V = 7"):
        StreamEncoder(B, 64, 2).step(case["dist"][:, 0], case["sym"][:, 0])


def test_window_budget_checks(case):
    d0 = case["dist"][:, 0]
    with raises(ValueError, "precision 15 must be at most budget_bits - 2 = 14"):
        WindowEncoder(B, 16, 15)
    with raises(ValueError, "precision 15 must be at most budget_bits - 2 = 14"):
        WindowDecoder(B, 16, 15)
    with raises(ValueError, r"budget_bits must be a multiple of 8 in \[8, 128\], got 12"):
        WindowEncoder(B, 12, 8)
    with raises(ValueError, r"budget_bits must be a multiple of 8 in \[8, 128\], got 136"):
        WindowEncoder(B, 136, 8)
    with raises(RuntimeError, "precision 15 must be at most budget_bits - 2 = 14"):
        nc.window_encode_step(ops.new_state("window_encoder", B), d0, case["sym"][:, 0], 15, False, 16, 10)
    with raises(RuntimeError, "precision 23 must be at most budget_bits - 2 = 22"):
        nc.window_decode_step(ops.new_state("window_decoder", B), d0, 23, False, 24, -1)
    with raises(RuntimeError, r"max_symbols must be in \[1, 2\^31\), got 0"):
        nc.window_encode_step(ops.new_state("window_encoder", B), d0, case["sym"][:, 0], P, False, 16, 0)
    with raises(ValueError, r"max_symbols must be in \[1, 2\*\*31\)"):
        WindowEncoder(B, 16, P, max_symbols=0)
    with raises(ValueError, r"codes must be uint8 \[3, 2\], got torch.uint8 \[3, 3\]"):
        WindowDecoder(B, 16, P).start(torch.zeros(B, 3, dtype=torch.uint8), torch.ones(B, dtype=torch.bool),
                                      torch.full((B,), 5))


def test_window_max_symbols_beyond_int32(case):
    """max_symbols >= 2^31 wraps to a negative int32 in the op: the window then
    closes at once with 0 symbols and asks for the symbol again, so
    encode_windows would loop forever. It must be rejected like 0 is."""
    d0, s0 = case["dist"][:, 0], case["sym"][:, 0]
    with raises(RuntimeError, "max_symbols"):
        nc.window_encode_step(ops.new_state("window_encoder", B), d0, s0, P, False, 16, 2**31)
    with raises(ValueError, "max_symbols"):
        WindowEncoder(B, 16, P, max_symbols=2**31)


def test_bad_states(case):
    d0, s0 = case["dist"][:, 0], case["sym"][:, 0]
    with raises(RuntimeError, r"stream encoder state must be a contiguous int64 tensor of shape \[3, 3\]"):
        nc.stream_encode_step(ops.new_state("stream_encoder", 2), torch.zeros(B, 8, dtype=torch.uint8), d0, s0, P, False)
    with raises(RuntimeError, r"window encoder state must be a contiguous int64 tensor"):
        nc.window_encode_step(ops.new_state("stream_encoder", B), d0, s0, P, False, 16, 10)
    with raises(RuntimeError, "out must be a contiguous uint8 tensor"):
        nc.stream_encode_step(ops.new_state("stream_encoder", B), torch.zeros(B, 8), d0, s0, P, False)
    with raises(RuntimeError, "active must be a bool tensor"):
        nc.stream_decode_step(ops.new_state("stream_decoder", B), case["data"], case["nbits"], d0,
                              torch.ones(B, dtype=torch.int64), P, False)
    with raises(ValueError, "StreamEncoder.step: dist is on meta but the coder's state is on cpu"):
        StreamEncoder(B, 8, P).step(d0.to("meta"), s0.to("meta"))


def _survives(fn) -> int:
    """Runs fn in a forked child: 0 if it returned or raised a Python
    exception, else the signal that killed the child."""
    pid = os.fork()
    if pid == 0:  # child
        faulthandler.disable()  # pytest's traceback dump would only add noise
        try:
            fn()
        except Exception:  # an error is fine; a crash is not
            pass
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def _encoder_state_past_its_buffer():
    # A stream encoder state used with a smaller buffer than it was written
    # into (pos beyond capacity); the next symbol carries into out[pos - 1].
    st = ops.new_state("stream_encoder", 1)
    st[0, 0], st[0, 2] = -1, 1 << 40  # low = 2^64 - 1, pos = 2^40
    nc.stream_encode_step(st, torch.zeros(1, 8, dtype=torch.uint8), torch.rand(1, 4), torch.tensor([3]), 8, False)


def _decoder_state_with_tiny_range():
    # range < 2^P makes r = range >> P zero: the target division by zero.
    st = ops.new_state("stream_decoder", 1)
    st[0, 1], st[0, 2] = 1, 8
    nc.stream_decode_step(st, torch.zeros(1, 4, dtype=torch.uint8), torch.tensor([32]), torch.rand(1, 4),
                          torch.ones(1, dtype=torch.bool), 8, False)


def _decoder_state_with_huge_pos():
    # A valid-looking state whose next byte is at 2^63 - 4: pos + 8 wraps
    # around, so the 8-byte read ahead must not test pos + 8 <= nbytes.
    st = ops.new_state("stream_decoder", 1)
    st[0, 1], st[0, 2] = -1, (1 << 63) - 4  # range 2^64 - 1
    nc.stream_decode_step(st, torch.zeros(1, 4, dtype=torch.uint8), torch.tensor([32]), torch.rand(1, 4),
                          torch.ones(1, dtype=torch.bool), 8, False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("bad_state", [_encoder_state_past_its_buffer, _decoder_state_with_tiny_range,
                                       _decoder_state_with_huge_pos])
def test_invalid_state_is_not_a_crash(bad_state):
    """State tensors are plain int64 tensors a caller can pass in; a wrong one
    must be an error (or garbage), never a segfault or SIGFPE."""
    sig = _survives(bad_state)
    assert sig == 0, f"the op crashed the process with {signal.Signals(sig).name}"


# ------------------------------------------- corrupted or truncated streams
@pytest.fixture(scope="module")
def blob():
    data = ("The quick brown fox jumps over the lazy dog. " * 40).encode()
    return data, coder.compress(data)


def test_truncated_blob(blob):
    data, b = blob
    with raises(ValueError, f"not an ncx compressed blob: 5 bytes is shorter than the {HEADER}-byte header"):
        coder.decompress(b[:5])
    with raises(ValueError, "truncated ncx blob: the static model table is incomplete"):
        coder.decompress(b[:100])
    for cut in (1, 7, len(b) - HEADER - 1024 - 1):
        with raises(ValueError, r"truncated or padded ncx blob: \d+ code bytes, the header records \d+"):
            coder.decompress(b[:-cut])
    with raises(ValueError, "truncated or padded ncx blob"):
        coder.decompress(b + b"\0")
    with raises(ValueError, "not an ncx compressed blob"):
        coder.decompress(b"")


def test_flipped_bits(blob):
    """A single bit flipped anywhere in the header, the counts table or the
    code never decodes to wrong bytes: it is a ValueError naming the problem
    (mostly the CRC-32), or (a bit nothing depends on: an unused flag, the
    low bits of nbits inside the last byte) the original bytes."""
    data, b = blob
    rng = torch.Generator().manual_seed(3)
    positions = list(range(HEADER * 8)) + torch.randint(HEADER * 8, len(b) * 8, (300,), generator=rng).tolist()
    # Header "<4sBBHQIQ": magic, version, precision, flags, length n (bytes
    # 8-15), crc, nbits. Only the low bits of n: a flipped high bit asks decode
    # for up to 2^63 symbols, an allocation of n * 8 bytes (see the report).
    positions = [p for p in positions if not 8 * 8 + 24 <= p < 16 * 8]
    expected = ("corrupt ncx blob", "not an ncx compressed blob", "unsupported ncx format version",
                "precision", "truncated or padded ncx blob", "compressed data is corrupt",
                "coded with caller-supplied probs")
    harmless = []
    for p in positions:
        bad = bytearray(b)
        bad[p // 8] ^= 1 << (p % 8)
        try:
            out = coder.decompress(bytes(bad))
        except ValueError as err:
            assert any(e in str(err) for e in expected), f"bit {p}: unclear message {err!r}"
            continue
        assert out == data, f"bit {p}: flipped bit decoded to wrong bytes without an error"
        harmless.append(p)
    assert all(6 * 8 < p < 8 * 8 or 20 * 8 <= p < 20 * 8 + 3 for p in harmless), harmless


def test_flipped_bits_with_caller_probs():
    data = bytes(range(256)) * 4
    probs = torch.full((256,), 1 / 256)
    b = coder.compress(data, probs)
    for p in list(range(8 * 8, 8 * 8 + 20)) + list(range(HEADER * 8, len(b) * 8, 37)):
        bad = bytearray(b)
        bad[p // 8] ^= 1 << (p % 8)
        with raises(ValueError, "corrupt ncx blob|truncated or padded|compressed data is corrupt"):
            coder.decompress(bytes(bad), probs)


def test_status_errors_carry_their_fields():
    """A failed row is an NcxError (a ValueError) whose fields say which item, which status
    and how many more; it survives pickling (jobs send errors between ranks)."""
    import pickle

    from ncx.errors import NcxError
    status = torch.tensor([0, 0, 8, 7, 0], dtype=torch.int32)
    with pytest.raises(NcxError) as info:
        ops.check_status(status, "stream")
    e = info.value
    assert (e.item, e.index, e.code, e.others) == ("stream", 2, 8, 1)
    assert isinstance(e, ValueError) and str(e) == f"stream 2: {ops.STATUS_MESSAGES[8]} (and 1 more)"
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is NcxError and back.__dict__ == e.__dict__ and str(back) == str(e)
