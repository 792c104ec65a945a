"""The quantizer (ncx::quantize) is bit-exact with the pure-Python reference
on probabilities, bfloat16 and logits, random and adversarial, for every
precision; its CDFs are valid; bad rows get the documented status."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import context_models as cm
from context_models import KINDS, random_rows
import reference_coder as ref
import ncx.ops as ops


def assert_matches_reference(dist: torch.Tensor, precision: int, logits: bool) -> torch.Tensor:
    cdf, status = torch.ops.ncx.quantize(dist, precision, logits)
    ref_cdf, ref_status = ref.quantize(dist, precision, logits)
    np.testing.assert_array_equal(status.numpy(), ref_status)
    bad = np.argwhere(cdf.numpy() != ref_cdf)
    assert len(bad) == 0, f"first mismatch at {bad[0].tolist()}: native {cdf.numpy()[tuple(bad[0])]}, reference {ref_cdf[tuple(bad[0])]}"
    return cdf


def assert_valid_cdf(cdf: torch.Tensor, precision: int) -> None:
    freq = cdf.diff(dim=-1)
    assert (cdf[..., 0] == 0).all() and (cdf[..., -1] == 1 << precision).all()
    assert (freq >= 1).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("V", [2, 3, 257, 1000])
def test_matches_reference(kind, V):
    rng = np.random.default_rng(V * 31 + KINDS.index(kind))
    dist, logits = random_rows(kind, 24, V, rng)
    lo = max(1, (V - 1).bit_length())
    for precision in sorted({lo, min(lo + 1, 24), 14, 16, 24}):
        cdf = assert_matches_reference(dist, precision, logits)
        assert_valid_cdf(cdf, precision)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), V=st.integers(2, 600), extra=st.integers(0, 24), seed=st.integers(0, 2**32 - 1))
def test_matches_reference_hypothesis(kind, V, extra, seed):
    precision = min(24, max(1, (V - 1).bit_length()) + extra)
    dist, logits = random_rows(kind, 4, V, np.random.default_rng(seed))
    assert_valid_cdf(assert_matches_reference(dist, precision, logits), precision)


def test_large_alphabet_matches_reference():
    rng = np.random.default_rng(7)
    for kind in ["dirichlet", "logits", "logits_bf16"]:
        dist, logits = random_rows(kind, 1, 65536, rng)
        for precision in (16, 24):
            assert_valid_cdf(assert_matches_reference(dist, precision, logits), precision)


def test_exp_reference_is_exp():
    """The reference exp (and so exp_ncx, which it matches) is a faithful exp."""
    x = np.concatenate([-np.random.default_rng(0).random(200_000) * 87, [0.0, -1e-30, -1e-7, -86.999]]).astype(np.float32)
    got = ref.exp_ncx(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.all(np.abs(got - want) <= 4e-7 * want), np.max(np.abs(got - want) / want)
    assert ref.exp_ncx(np.float32(0.0)) == 1.0 and ref.exp_ncx(np.float32(-87.0)) == 0.0
    assert ref.exp_ncx(np.float32(-np.inf)) == 0.0


def test_exp_is_bit_exact_through_logits():
    """Two-symbol logit rows [x, 0] at P=24 expose exp_ncx(x) to 2^-24: many x."""
    x = -np.random.default_rng(1).random(8_000).astype(np.float32) * np.float32(20)
    dist = torch.tensor(np.stack([x, np.zeros_like(x)], 1))
    assert_matches_reference(dist, 24, True)


def test_chosen_frequencies_are_exact():
    """weights_for_frequencies (used by the dyadic window models) quantizes to
    exactly the frequencies asked for."""
    rng = np.random.default_rng(3)
    for V, precision in [(2, 1), (2, 14), (3, 2), (64, 14), (257, 24), (1024, 10)]:
        freq = cm.dyadic_frequencies(V, precision, rng) if (1 << precision) > V else np.ones(V, dtype=np.int64)
        # With 2^P = V every frequency is 1 whatever the (non-zero) weights.
        w = torch.tensor(cm.weights_for_frequencies(freq, precision)) if freq.max() > 1 else torch.rand(V)
        cdf = ops.quantize(w, precision)
        np.testing.assert_array_equal(cdf.diff().numpy(), freq)


def test_scale_invariance_of_weights():
    """Probabilities are weights: scaling a row by a power of two (no
    subnormals, no overflow) gives the same CDF; so does bfloat16 of a row
    whose values are bfloat16-exact."""
    rng = np.random.default_rng(4)
    dist, _ = random_rows("dirichlet", 16, 100, rng)
    dist = dist.clamp_min(1e-20)
    base = ops.quantize(dist, 20)
    for k in (-40, -1, 3, 60):
        assert torch.equal(ops.quantize(dist * 2.0**k, 20), base)
    b = dist.to(torch.bfloat16)
    assert torch.equal(ops.quantize(b, 20), ops.quantize(b.float(), 20))


def test_shapes_and_strides():
    rng = np.random.default_rng(5)
    dist, _ = random_rows("dirichlet", 6 * 5, 33, rng)
    d3 = dist.view(6, 5, 33)
    cdf = ops.quantize(d3, 12)
    assert cdf.shape == (6, 5, 34) and cdf.dtype == torch.int32
    assert torch.equal(cdf.view(30, 34), ops.quantize(dist, 12))
    # A non-contiguous view (rows strided) is quantized like its contiguous copy.
    t = d3.transpose(0, 1)
    assert torch.equal(ops.quantize(t, 12), ops.quantize(t.contiguous(), 12))
    one = ops.quantize(dist[0], 12)  # a single row [V]
    assert one.shape == (34,) and torch.equal(one, cdf[0, 0])


BAD_ROWS = [
    ([0.5, float("nan"), 0.5], False, 1),
    ([0.5, -0.25, 0.5], False, 2),
    ([0.0, -0.0, 0.0], False, 3),
    ([0.5, float("inf"), 0.5], False, 4),
    ([float("nan"), -1.0, float("inf")], False, 1),  # the lowest code wins
    ([-1.0, float("inf"), 1.0], False, 2),
    ([1.0, float("nan"), 0.0], True, 1),
    ([-float("inf"), -float("inf")], True, 3),
    ([1.0, float("inf")], True, 4),
]


@pytest.mark.parametrize("row,logits,code", BAD_ROWS)
def test_bad_rows_status(row, logits, code):
    dist = torch.tensor([[0.25, 0.75, 0.0][: len(row)], row], dtype=torch.float32)
    dist[0, 0] = 1.0
    cdf, status = torch.ops.ncx.quantize(dist, 8, logits)
    assert status.tolist() == [0, code]
    assert (cdf[1] == 0).all()
    _, ref_status = ref.quantize(dist, 8, logits)
    assert ref_status.tolist() == [0, code]
    with pytest.raises(ValueError, match=re.escape(f"row 1: {ops.STATUS_MESSAGES[code]}")):
        ops.quantize(dist, 8, logits)


def test_negative_zero_and_neg_inf_logit_are_fine():
    cdf = ops.quantize(torch.tensor([-0.0, 1.0, 0.0]), 4)
    assert cdf.tolist() == [0, 1, 15, 16]
    cdf = ops.quantize(torch.tensor([-float("inf"), 0.0, -float("inf")]), 4, logits=True)
    assert cdf.tolist() == [0, 1, 15, 16]
