"""The stream range coder: bit-exact with the reference (bytes and nbits, the
shortest terminating code), exact round trips on random and adversarial
distributions (ops.encode/decode and the stateful StreamEncoder/Decoder),
and output length within 0.01% + 64 bits of the ideal at P = 24."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_coder as ref
from context_models import KINDS, random_rows, row_probs
from ncx import ops
from ncx.coder import StreamDecoder, StreamEncoder

SYMBOL_CHOICES = ["sampled", "least", "most", "uniform"]


def make_case(kind: str, choice: str, B: int, T: int, V: int, seed: int):
    """(dist [B, T, V], logits, symbols [B, T] int64, lengths [B])."""
    rng = np.random.default_rng(seed)
    rows, logits = random_rows(kind, max(B * T, 1), V, rng)
    dist = rows[: B * T].reshape(B, T, V)
    p = row_probs(dist, logits).reshape(-1, V)
    if B * T == 0:
        sym = torch.zeros(B * T, dtype=torch.int64)
    elif choice == "sampled":
        sym = torch.multinomial(p.float() + 1e-30, 1, generator=torch.Generator().manual_seed(seed)).flatten()
    elif choice == "least":  # the least likely symbol (probability 0 in some rows)
        sym = p.argmin(-1)
    elif choice == "most":
        sym = p.argmax(-1)
    else:
        sym = torch.tensor(rng.integers(0, V, B * T))
    lengths = torch.tensor(rng.integers(0, T + 1, B)) if B else torch.zeros(0, dtype=torch.int64)
    if B:
        lengths[0] = T  # at least one full stream
    return dist, logits, sym.reshape(B, T), lengths


def check_against_reference(dist, logits, sym, lengths, precision, data, nbits):
    cdf, status = ref.quantize(dist, precision, logits)
    assert (status == 0).all()
    for b in range(dist.shape[0]):
        L = int(lengths[b])
        want, want_bits = ref.stream_encode(cdf[b, :L], sym[b, :L].tolist(), precision)
        assert int(nbits[b]) == want_bits, f"stream {b}: nbits {int(nbits[b])}, reference {want_bits}"
        got = data[b].numpy().tobytes()
        assert got[: len(want)] == want, f"stream {b}: bytes differ from the reference"
        assert not any(got[len(want):]), f"stream {b}: bytes past nbits are not zero"
        assert ref.stream_decode(want, want_bits, cdf[b, :L], precision) == sym[b, :L].tolist()


def round_trip(dist, logits, sym, lengths, precision):
    data, nbits = ops.encode(dist, sym, lengths, precision=precision, logits=logits)
    out = ops.decode(dist, data, nbits, lengths, precision=precision, logits=logits)
    T = dist.shape[1]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    assert torch.equal(out[mask], sym[mask]), "round trip changed a symbol"
    assert (out[~mask] == -1).all()
    return data, nbits


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), choice=st.sampled_from(SYMBOL_CHOICES), V=st.integers(2, 300),
       T=st.integers(0, 40), B=st.integers(1, 4), extra=st.integers(0, 24), seed=st.integers(0, 2**32 - 1))
def test_matches_reference_and_round_trips(kind, choice, V, T, B, extra, seed):
    precision = min(24, max(1, (V - 1).bit_length()) + extra)
    dist, logits, sym, lengths = make_case(kind, choice, B, T, V, seed)
    data, nbits = round_trip(dist, logits, sym, lengths, precision)
    check_against_reference(dist, logits, sym, lengths, precision, data, nbits)


@pytest.mark.parametrize("precision", range(1, 25))
def test_every_precision(precision):
    V = min(1 << precision, 300)
    for kind, choice in [("dirichlet", "sampled"), ("peaked", "least"), ("logits", "uniform")]:
        dist, logits, sym, lengths = make_case(kind, choice, 3, 60, V, precision)
        data, nbits = round_trip(dist, logits, sym, lengths, precision)
        check_against_reference(dist, logits, sym, lengths, precision, data, nbits)


def test_binary_alphabet_at_precision_one():
    """V = 2, P = 1: both frequencies 1, every symbol exactly one bit."""
    sym = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 0, 1, 1] * 10])
    dist = torch.tensor([0.999, 0.001]).expand(1, 100, 2)
    data, nbits = round_trip(dist, False, sym, torch.tensor([100]), 1)
    assert 99 <= int(nbits[0]) <= 101
    check_against_reference(dist, False, sym, torch.tensor([100]), 1, data, nbits)


def test_one_hot_and_zero_probability_symbols():
    """One-hot rows: the hot symbol costs almost nothing, the others (probability 0,
    frequency 1) cost P bits; both round trip."""
    V, T = 17, 200
    gen = torch.Generator().manual_seed(0)
    hot = torch.randint(0, V, (T,), generator=gen)
    dist = torch.nn.functional.one_hot(hot, V).float().unsqueeze(0).expand(3, T, V).contiguous()
    sym = torch.stack([hot, (hot + 1) % V, torch.where(torch.rand(T, generator=gen) < 0.1, (hot + 5) % V, hot)])
    lengths = torch.tensor([T, T, T])
    for precision in (5, 16, 24):
        data, nbits = round_trip(dist, False, sym, lengths, precision)
        check_against_reference(dist, False, sym, lengths, precision, data, nbits)
        hot_bits = -T * math.log2(((1 << precision) - V + 1) / (1 << precision))
        assert int(nbits[0]) <= hot_bits + 2
        assert int(nbits[1]) >= T * precision - 1


def test_extreme_probabilities():
    """1e-9 beside 1 - 1e-9, for the likely and the unlikely symbol."""
    V, T = 2, 500
    dist = torch.tensor([1e-9, 1 - 1e-9]).expand(2, T, V)
    sym = torch.stack([torch.ones(T, dtype=torch.int64), torch.zeros(T, dtype=torch.int64)])
    sym[0, ::50] = 0
    sym[1, ::50] = 1
    for precision in (1, 8, 24):
        data, nbits = round_trip(dist, False, sym, torch.tensor([T, T]), precision)
        check_against_reference(dist, False, sym, torch.tensor([T, T]), precision, data, nbits)


def test_uniform_costs_log2_v_bits():
    V, T, precision = 256, 1000, 16
    sym = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(1))
    dist = torch.ones(1, T, V)
    data, nbits = round_trip(dist, False, sym, torch.tensor([T]), precision)
    assert 8 * T - 8 <= int(nbits[0]) <= 8 * T + 2


def test_large_alphabet():
    V, T = 65536, 6
    for kind in ("dirichlet", "logits_bf16", "peaked"):
        for choice in ("sampled", "least"):
            dist, logits, sym, lengths = make_case(kind, choice, 2, T, V, 5)
            for precision in (16, 24):
                data, nbits = round_trip(dist, logits, sym, lengths, precision)
                check_against_reference(dist, logits, sym, lengths, precision, data, nbits)


def test_empty_and_one_symbol_streams():
    V, precision = 5, 10
    dist = torch.rand(4, 3, V)
    sym = torch.randint(0, V, (4, 3))
    lengths = torch.tensor([0, 1, 0, 1])
    data, nbits = round_trip(dist, False, sym, lengths, precision)
    assert nbits[0] == 0 and nbits[2] == 0 and (data[0] == 0).all()
    check_against_reference(dist, False, sym, lengths, precision, data, nbits)
    # T = 0 and B = 0, with either symbol dtype.
    for dtype in (torch.int64, torch.int32):
        data, nbits = ops.encode(torch.rand(2, 0, V), torch.zeros(2, 0, dtype=dtype), precision=precision)
        assert nbits.tolist() == [0, 0]
        assert ops.decode(torch.rand(2, 0, V), data, nbits, precision=precision).shape == (2, 0)
        data, nbits = ops.encode(torch.rand(0, 4, V), torch.zeros(0, 4, dtype=dtype), precision=precision)
        assert data.shape[0] == 0 and nbits.shape == (0,)


def test_int32_symbols_give_the_int64_code():
    gen = torch.Generator().manual_seed(3)
    dist = torch.rand(3, 200, 257, generator=gen)
    sym = torch.randint(0, 257, (3, 200), generator=gen)
    lengths = torch.tensor([200, 17, 0])
    wide = ops.encode(dist, sym, lengths, precision=24)
    narrow = ops.encode(dist, sym.to(torch.int32), lengths, precision=24)
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow))
    decoded = ops.decode(dist, *narrow, lengths, precision=24)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(decoded[b, :n], sym[b, :n])


def test_static_model_stride_zero():
    """A StaticAC model: one [V] row expand()ed to [B, T, V] (stride 0), through
    ops.encode/decode and through the stateful coders ([V] -> [B, V])."""
    V, B, T, precision = 257, 3, 400, 16
    row = torch.rand(V) ** 4
    dist = row.view(1, 1, V).expand(B, T, V)
    assert dist.stride()[:2] == (0, 0)
    sym = torch.multinomial(row, B * T, replacement=True, generator=torch.Generator().manual_seed(2)).view(B, T)
    lengths = torch.tensor([T, T // 2, 1])
    data, nbits = round_trip(dist, False, sym, lengths, precision)
    check_against_reference(dist.contiguous(), False, sym, lengths, precision, data, nbits)
    enc = StreamEncoder(B, ops.max_encoded_bytes(T, precision), precision)
    for t in range(T):
        enc.step(row.expand(B, V), torch.where(t < lengths, sym[:, t], -1))
    data2, nbits2 = enc.finish()
    assert torch.equal(nbits2, nbits) and torch.equal(data2, data)
    dec = StreamDecoder(data2, nbits2, precision)
    out = torch.stack([dec.step(row.expand(B, V), t < lengths) for t in range(T)], 1)
    mask = torch.arange(T)[None] < lengths[:, None]
    assert torch.equal(out[mask], sym[mask]) and (out[~mask] == -1).all()


@pytest.mark.parametrize("kind", ["dirichlet", "bf16", "logits", "logits_bf16", "unnormalized", "peaked"])
def test_stateful_coders_match_whole_sequence(kind):
    """StreamEncoder step by step (with idle streams) writes exactly the bytes of
    ops.encode; StreamDecoder (with inactive streams) gets the symbols back."""
    B, T, V, precision = 5, 80, 40, 15
    dist, logits, sym, lengths = make_case(kind, "sampled", B, T, V, 11)
    data, nbits = ops.encode(dist, sym, lengths, precision=precision, logits=logits)
    enc = StreamEncoder(B, ops.max_encoded_bytes(T, precision), precision)
    for t in range(T):
        enc.step(dist[:, t], torch.where(t < lengths, sym[:, t], -1), logits=logits)
    data2, nbits2 = enc.finish()
    assert torch.equal(nbits2, nbits) and torch.equal(data2, data)
    dec = StreamDecoder(data2, nbits2, precision)
    out = torch.stack([dec.step(dist[:, t], t < lengths, logits=logits) for t in range(T)], 1)
    mask = torch.arange(T)[None] < lengths[:, None]
    assert torch.equal(out[mask], sym[mask]) and (out[~mask] == -1).all()
    # The encoder is reset by finish: a second use gives the same code again.
    for t in range(T):
        enc.step(dist[:, t], torch.where(t < lengths, sym[:, t], -1), logits=logits)
    data3, nbits3 = enc.finish()
    assert torch.equal(nbits3, nbits) and torch.equal(data3, data)


def test_threads_do_not_change_the_code():
    """at::parallel_for splits streams across threads: same bytes with 1 or 2."""
    dist, logits, sym, lengths = make_case("logits", "sampled", 64, 50, 30, 3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.encode(dist, sym, lengths, precision=20, logits=True)
        torch.set_num_threads(2)
        two = ops.encode(dist, sym, lengths, precision=20, logits=True)
        cdf2 = ops.quantize(dist, 20, logits=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert torch.equal(cdf2, ops.quantize(dist, 20, logits=True))


def test_output_buffer_too_small_is_an_error():
    dist = torch.ones(1, 100, 256)
    sym = torch.randint(0, 256, (1, 100))
    with pytest.raises(ValueError, match="stream 0: the output buffer is too small"):
        ops.encode(dist, sym, precision=16, max_bytes=50)
    enc = StreamEncoder(1, 10, 16)
    with pytest.raises(ValueError, match="output buffer is too small"):
        for t in range(100):
            enc.step(dist[:, t], sym[:, t])


@pytest.mark.parametrize("kind", ["dirichlet", "peaked", "logits"])
def test_tight_buffers_give_the_same_code(kind):
    """The coder moves 8 bytes at a time while 8 fit in the buffer, and byte by
    byte near its end: every buffer from the smallest that holds the code up
    gives the same bytes (zero past nbits), and decoding needs only the bytes
    that nbits covers."""
    B, T, V, precision = 3, 400, 256, 24
    dist, logits, sym, _ = make_case(kind, "sampled", B, T, V, 5)
    data, nbits = ops.encode(dist, sym, precision=precision, logits=logits)
    smallest = int((nbits.max() + 7) // 8)
    while True:  # the finish may write bytes of zeros that nbits then leaves out
        try:
            ops.encode(dist, sym, precision=precision, logits=logits, max_bytes=smallest)
            break
        except ValueError:
            smallest += 1
    assert smallest <= (int(nbits.max()) + 7) // 8 + 8
    for size in range(smallest, smallest + 10):
        got, got_bits = ops.encode(dist, sym, precision=precision, logits=logits, max_bytes=size)
        assert torch.equal(got_bits, nbits)
        assert torch.equal(got[:, : min(size, data.shape[1])], data[:, :size])
        assert not got[:, data.shape[1]:].any()
    exact = data[:, : (int(nbits.max()) + 7) // 8].clone()
    assert torch.equal(ops.decode(dist, exact, nbits, precision=precision, logits=logits), sym)


def test_overhead_at_precision_24():
    """100,000 symbols at P = 24: the code is within 0.01% + 64 bits of the ideal
    sum of -log2(freq / 2^24) over the quantized probabilities."""
    V, T, precision = 64, 100_000, 24
    rng = np.random.default_rng(8)
    table, _ = random_rows("dirichlet", 512, V, rng)
    dist = table[torch.tensor(rng.integers(0, 512, T))].unsqueeze(0)
    p = row_probs(dist, False)[0]
    sym = torch.multinomial(p.float(), 1, generator=torch.Generator().manual_seed(9)).view(1, T)
    data, nbits = round_trip(dist, False, sym, torch.tensor([T]), precision)
    cdf = ops.quantize(dist[0], precision).to(torch.int64)
    freq = (cdf.gather(1, sym.view(T, 1) + 1) - cdf.gather(1, sym.view(T, 1))).double()
    ideal_q = float((precision - torch.log2(freq)).sum())
    ideal_f = float(-torch.log2(p.gather(1, sym.view(T, 1))).sum())
    n = int(nbits[0])
    print(f"\n[overhead] {T} symbols, P={precision}: {n} bits; ideal (quantized p) {ideal_q:.1f} "
          f"(+{n - ideal_q:.1f} bits, {100 * (n - ideal_q) / ideal_q:+.5f}%); "
          f"ideal (float p) {ideal_f:.1f} ({100 * (n - ideal_f) / ideal_f:+.4f}%)")
    assert n <= ideal_q * 1.0001 + 64
    assert n >= ideal_q - 64  # not shorter than the information content, give or take the ends
    assert math.isclose(ideal_q, ideal_f, rel_tol=1e-3)  # 2^24 resolves these p well
