"""Microbenchmarks of the native coder (pytest-benchmark).

    pytest bench/ --benchmark-only                                  # CPU (+ CUDA when present), < 1 min on CPU
    pytest bench/ --benchmark-only --ncx-threads 1                  # one CPU thread
    pytest bench/ --benchmark-only --ncx-threads 1 --benchmark-timer time.process_time
                                        # per core on a shared machine: CPU time (not for CUDA)
    pytest bench/ --benchmark-only --benchmark-json bench.json      # every figure as JSON

(bench/ is outside the default testpaths, so name it.) Each benchmark records
symbols per call and symbols/s (from the median) in extra_info; a table of
Msym/s is printed at the end of the run.

Data: LM-like float32 probabilities over V = 257 (256 bytes + EOS; see
peers.lm_like), symbols sampled from them. Sizes:
- quantize: R rows for R in (1, 64, 4096, 65536);
- encode / decode (whole sequences): B streams of T = 65536 / B symbols for
  B in (1, 64, 4096), i.e. 65536 symbols per call, so the figures compare;
- step ops (one symbol for each of B streams): stream_encode_step,
  stream_decode_step, window_encode_step, window_decode_step, B in (1, 64, 4096).
Step ops are called as the raw torch.ops.ncx ops (the coder classes add
Python-side checks and a status sync on top). CUDA variants synchronize inside
the timed function.
"""
from __future__ import annotations

import pytest
import torch

from ncx import ops
from peers import lm_like, started_window_decoder

V = 257
TOTAL = 65536          # symbols per whole-sequence call
STREAMS = (1, 64, 4096)
P_STREAM = 16          # stream coding precision
P_WINDOW, BUDGET = 14, 16  # Equal-Info windows of 16 bits need P <= 14

_ops = torch.ops.ncx
# About a second per benchmark: the whole CPU run stays under a minute.
bench_mark = pytest.mark.benchmark(max_time=1.0, min_rounds=5, warmup=False)


@pytest.fixture(scope="module")
def cpu_data():
    return lm_like(TOTAL, V, seed=1)  # (TOTAL, V) float32, (TOTAL,) int64


@pytest.fixture
def data(cpu_data, device):
    probs, symbols = cpu_data
    return probs.to(device), symbols.to(device)


# ------------------------------------------------------------- whole rows
@bench_mark
@pytest.mark.parametrize("rows", (1, 64, 4096, TOTAL))
def test_quantize(benchmark, rate, data, sync, rows):
    probs = data[0][:rows]  # (rows, V)

    def run():
        cdf = ops.quantize(probs, P_STREAM)
        sync()
        return cdf

    cdf = benchmark(run)
    assert cdf.shape == (rows, V + 1) and int(cdf[0, -1]) == 1 << P_STREAM
    rate(rows)


@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_encode(benchmark, rate, data, sync, B):
    T = TOTAL // B
    dist, sym = data[0].view(B, T, V), data[1].view(B, T)

    def run():
        out = ops.encode(dist, sym, precision=P_STREAM)
        sync()
        return out

    code, nbits = benchmark(run)
    assert torch.equal(ops.decode(dist, code, nbits, precision=P_STREAM), sym)
    rate(TOTAL)


@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_decode(benchmark, rate, data, sync, B):
    T = TOTAL // B
    dist, sym = data[0].view(B, T, V), data[1].view(B, T)
    code, nbits = ops.encode(dist, sym, precision=P_STREAM)

    def run():
        out = ops.decode(dist, code, nbits, precision=P_STREAM)
        sync()
        return out

    assert torch.equal(benchmark(run), sym)
    rate(TOTAL)


# --------------------------------------------------------------- step ops
@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_stream_encode_step(benchmark, rate, data, device, sync, B):
    dist, sym = data[0][:B], data[1][:B]  # (B, V), (B,)
    # A fixed number of calls, so the output buffer can hold every one of them.
    rounds = {1: 20000, 64: 4000, 4096: 100}[B]
    warmup = rounds // 10
    capacity = (rounds + warmup) * ((P_STREAM + 1 + 7) // 8) + 16
    state = ops.new_state("stream_encoder", B, device)
    out = torch.zeros(B, capacity, dtype=torch.uint8, device=device)
    bad = []

    def run():
        status = _ops.stream_encode_step(state, out, dist, sym, P_STREAM, False)
        sync()
        bad.append(status)

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    assert not bool(torch.stack(bad).any()), "a step failed (output full?)"
    rate(B)


@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_stream_decode_step(benchmark, rate, data, device, sync, B):
    # Decoding runs on past the code's end (bytes read as zero), so the same
    # state serves any number of calls.
    dist, sym = data[0][:B], data[1][:B]
    code, nbits = ops.encode(dist[:, None].expand(B, 64, V), sym[:, None].expand(B, 64), precision=P_STREAM)
    state = ops.new_state("stream_decoder", B, device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    first, status = _ops.stream_decode_step(state, code, nbits, dist, active, P_STREAM, False)
    assert torch.equal(first, sym) and not bool(status.any())

    def run():
        out = _ops.stream_decode_step(state, code, nbits, dist, active, P_STREAM, False)
        sync()
        return out

    benchmark(run)
    rate(B)


@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_window_encode_step(benchmark, rate, data, device, sync, B):
    # The same row and symbol every step: windows fill, close (the symbol is
    # then fed again into a fresh window) and restart, as in real coding.
    dist, sym = data[0][:B], data[1][:B]
    state = ops.new_state("window_encoder", B, device)

    def run():
        out = _ops.window_encode_step(state, dist, sym, P_WINDOW, False, BUDGET, 1 << 30)
        sync()
        return out

    status = benchmark(run)[4]
    assert not bool(status.any())
    rate(B)


@bench_mark
@pytest.mark.parametrize("B", STREAMS)
def test_window_decode_step(benchmark, rate, data, sync, B):
    # A window ends after a few symbols, so each call restores the freshly
    # started state first (a copy of B * 8 * WINDOW_DECODER_WORDS bytes, which
    # is included in the time) and decodes the window's first symbol.
    dist, sym = data[0][:B], data[1][:B]
    start = started_window_decoder(dist, sym, P_WINDOW, BUDGET)
    state = start.clone()

    def run():
        state.copy_(start)
        out = _ops.window_decode_step(state, dist, P_WINDOW, False, BUDGET, -1)
        sync()
        return out

    symbols, ended, status = benchmark(run)
    assert torch.equal(symbols, sym) and not bool(ended.any()) and not bool(status.any())
    rate(B)
