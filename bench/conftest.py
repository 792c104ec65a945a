"""Shared fixtures of the coder microbenchmarks (bench/test_bench_coder.py):
device (cpu, and cuda when present) and sync.

Adds --ncx-threads (CPU threads for the ops; default: torch's default) and,
after a benchmark run, a table of symbols per second per benchmark.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/peers.py: lm_like

from ncx import _C  # noqa: E402

HAS_CUDA = bool(getattr(_C, "WITH_CUDA", False)) and torch.cuda.is_available()

# Every benchmark runs on the CPU; the CUDA variant is skipped without a GPU
# (or without a CUDA build of ncx).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of ncx")),
]

_rates: list[tuple[str, float, float, int]] = []  # (test id, median s, symbols/s, threads)


def pytest_addoption(parser):
    parser.addoption("--ncx-threads", type=int, default=0,
                     help="torch.set_num_threads for the ncx benchmarks (0: leave torch's default)")


def pytest_configure(config):
    threads = config.getoption("--ncx-threads")
    if threads:
        torch.set_num_threads(threads)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def sync(device):
    """Waits for the device's work: a CUDA benchmark's timed function calls it."""
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


@pytest.fixture
def rate(benchmark, request):
    """Call rate(n) after benchmark(...): records n symbols per call as
    symbols/s (from the median) in extra_info and in the closing table."""
    def record(symbols_per_call: int) -> None:
        benchmark.extra_info["symbols_per_call"] = symbols_per_call
        benchmark.extra_info["threads"] = torch.get_num_threads()
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was timed
            return
        median = stats.stats.median
        benchmark.extra_info["symbols_per_s"] = symbols_per_call / median
        _rates.append((request.node.name, median, symbols_per_call / median, torch.get_num_threads()))
    return record


def pytest_terminal_summary(terminalreporter):
    if not _rates:
        return
    tr = terminalreporter
    tr.section("ncx coder: symbols per second (median)")
    tr.write_line(f"{'benchmark':<44} {'median':>12} {'Msym/s':>10} {'threads':>8}")
    for name, median, sps, threads in _rates:
        tr.write_line(f"{name:<44} {median * 1e6:>10.1f}us {sps / 1e6:>10.3f} {threads:>8}")
