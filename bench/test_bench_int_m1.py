"""Microbenchmarks of the integer M1 (pytest-benchmark), next to its peer, the
float coding path.

    pytest bench/test_bench_int_m1.py --benchmark-only [--ncx-threads 1]

Shapes are the paper's M1 (3 layers, width 256, 4 heads of 64, MLP 1024) with
256 streams. "Symbols" in the closing table are rows (streams) per second:
- int_linear: the paper M1's qkv, fc and fc_proj shapes, 256 rows;
- int_attention: 256 queries, 4 heads, over 256 and 1024 cached positions,
  one query per stream (a decoder's step) or blocks of 8 consecutive
  positions of 32 streams (the AC encoder's teacher-forced blocks);
- coder step: one step of 256 streams at position 255 of M1Coder (float,
  exact fixed-point float64) and IntM1Coder (integer), the same random
  paper-shaped M1 (speed does not depend on the weights).
CUDA variants synchronize inside the timed function.
"""
from __future__ import annotations

import pytest
import torch

from ncx import m1, ops
from ncx.int_m1 import quantize_m1

ROWS = 256
bench_mark = pytest.mark.benchmark(max_time=1.0, min_rounds=3, warmup=False)


def _ints(shape, lo, hi, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dtype).to(device)


@bench_mark
@pytest.mark.parametrize("K, D", [(256, 768), (256, 1024), (1024, 256)], ids=["qkv", "fc", "fc_proj"])
def test_int_linear(benchmark, rate, device, sync, K, D):
    x = _ints((ROWS, K), -(1 << 20), 1 << 20, torch.int32, device)
    w = _ints((D, K), -127, 128, torch.int8, device, 1)
    mult = torch.full((D,), 1 << 14, dtype=torch.int32, device=device)
    shift = torch.full((D,), 34, dtype=torch.int32, device=device)

    def run():
        out = ops.int_linear(x, w, mult, shift)
        sync()
        return out

    assert benchmark(run).shape == (ROWS, D)
    rate(ROWS)


@bench_mark
@pytest.mark.parametrize("block", [1, 8], ids=["step", "block8"])
@pytest.mark.parametrize("L", [256, 1024])
def test_int_attention(benchmark, rate, device, sync, L, block):
    H, hd, S = 4, 64, ROWS // block
    q = _ints((ROWS, H, hd), -(1 << 20), 1 << 20, torch.int32, device)
    k = _ints((S, H, L, hd), -(1 << 20), 1 << 20, torch.int32, device, 1)
    v = _ints((S, H, L, hd), -(1 << 20), 1 << 20, torch.int32, device, 2)
    streams = torch.arange(S, device=device).repeat_interleave(block)
    positions = (L - block + torch.arange(block, device=device)).repeat(S)

    def run():
        out = ops.int_attention(q, k, v, streams, positions)
        sync()
        return out

    assert benchmark(run).shape == (ROWS, H, hd)
    rate(ROWS)


@pytest.fixture(scope="module")
def paper_models():
    torch.manual_seed(0)
    model = m1.M1(m1.preset("paper")).eval()
    return model, quantize_m1(model)


@bench_mark
@pytest.mark.parametrize("arithmetic", ["float", "integer"])
def test_coder_step(benchmark, rate, device, sync, paper_models, arithmetic):
    float_model, int_model = paper_models
    coder = (float_model.to(device) if arithmetic == "float" else int_model.to(device)).coder()
    tokens = torch.randint(0, 256, (ROWS,), generator=torch.Generator().manual_seed(3)).to(device)
    position = 255
    for p in range(position):  # fill the caches up to the measured position
        coder(tokens, torch.full((ROWS,), p, device=device))
    at = torch.full((ROWS,), position, device=device)

    def run():
        out = coder(tokens, at)  # the same position again: a steady-state step
        sync()
        return out

    assert benchmark(run).shape == (ROWS, m1.VOCAB_SIZE)
    rate(ROWS)
