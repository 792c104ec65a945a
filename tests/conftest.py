"""Shared pytest setup for the coder tests.

The per-step tensors here are small ([B, V] with B in the thousands), so
intra-op threads buy nothing and, on a loaded 2-core machine, cost a lot
(each parallel region waits for a descheduled thread): the suite runs the
ops single-threaded. test_stream_coder checks that more threads give the same
bytes, since at::parallel_for splits streams across threads.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # reference_coder, context_models

import ncx.ops  # noqa: E402,F401  (registers torch.ops.ncx.*)

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available() and bool(getattr(ncx.ops._C, "WITH_CUDA", False))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and an ncx build with CUDA")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread (tests that try more threads
    set them themselves; this puts it back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
