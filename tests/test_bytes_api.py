"""ncx.coder.compress / decompress: bytes in, the same bytes out, for every
kind of input, with the built-in order-0 model and with caller probs; sizes
close to the model's ideal."""
from __future__ import annotations

import struct

import pytest
import torch

from ncx import coder, ops

RNG = torch.Generator().manual_seed(5)


def random_bytes(n: int) -> bytes:
    return bytes(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=RNG).tolist()) if n else b""


INPUTS = {
    "empty": b"",
    "one byte": b"\x00",
    "one byte ff": b"\xff",
    "all 256 values": bytes(range(256)),
    "all 256 values reversed x3": bytes(range(255, -1, -1)) * 3,
    "long run": b"a" * 100_000,
    "runs": b"".join(bytes([i]) * (1 + 37 * i % 500) for i in range(256)),
    "invalid utf-8": b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x90\x28\xbc\xed\xa0\x80" * 50,
    "text": "Grüße, 世界! Equal-Info windows ✓\n".encode() * 300,
    "random 4k": random_bytes(4096),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_round_trip_static_model(name):
    data = INPUTS[name]
    blob = coder.compress(data)
    assert coder.decompress(blob) == data


@pytest.mark.parametrize("name", list(INPUTS))
def test_round_trip_caller_probs(name):
    data = INPUTS[name]
    g = torch.Generator().manual_seed(len(data))
    static = torch.rand(256, generator=g) ** 3  # unnormalized weights
    assert coder.decompress(coder.compress(data, static), static) == data
    if len(data) <= 20_000:  # one distribution per byte
        per_byte = torch.softmax(torch.randn(len(data), 256, generator=g) * 3, -1)
        assert coder.decompress(coder.compress(data, per_byte), per_byte) == data


@pytest.mark.parametrize("precision", [8, 12, 16, 24])
def test_precisions(precision):
    data = INPUTS["text"] + INPUTS["random 4k"]
    blob = coder.compress(data, precision=precision)
    assert coder.decompress(blob) == data


def test_one_megabyte_random():
    data = random_bytes(1 << 20)
    blob = coder.compress(data)
    assert coder.decompress(blob) == data
    # Random bytes cannot shrink: the code is within 0.1% of 8 bits/byte (+ table).
    assert len(data) <= len(blob) <= len(data) * 1.001 + 1024 + 64


def test_size_matches_the_static_model():
    """The code is within 0.1% + 64 bits of the ideal under the stored model as
    quantized (add-one smoothed counts, P = 16)."""
    for data in (INPUTS["text"], b"a" * 100_000, INPUTS["runs"]):
        blob = coder.compress(data)
        counts = torch.bincount(torch.tensor(list(data)), minlength=256)
        cdf = ops.quantize(coder._static_probs(counts), 16).double()
        freq = (cdf[1:] - cdf[:-1])[torch.tensor(list(data))]
        ideal_bits = float((16 - torch.log2(freq)).sum())
        code_bytes = len(blob) - coder._HEADER.size - 1024
        assert code_bytes * 8 <= ideal_bits * 1.001 + 64


def test_input_types():
    data = b"hello bytes"
    assert coder.decompress(coder.compress(bytearray(data))) == data
    assert coder.decompress(coder.compress(memoryview(data))) == data
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        coder.compress("text")


def test_probs_mismatch_errors():
    data = b"abc"
    probs = torch.full((256,), 1 / 256)
    blob = coder.compress(data, probs)
    with pytest.raises(ValueError, match="coded with caller-supplied probs: pass the same probs"):
        coder.decompress(blob)
    with pytest.raises(ValueError, match="carries its own static model: call decompress without probs"):
        coder.decompress(coder.compress(data), probs)
    with pytest.raises(ValueError, match=r"probs must have shape \[256\] or \[len\(data\)=3, 256\]"):
        coder.compress(data, torch.ones(4, 256))
    with pytest.raises(TypeError, match="probs must be a torch.Tensor"):
        coder.compress(data, [1.0] * 256)
    other = torch.rand(256)
    with pytest.raises(ValueError, match="corrupt|CRC"):
        coder.decompress(coder.compress(b"some longer text to decode " * 20, probs), other)


def test_corrupt_length_is_a_clear_error():
    """A corrupted length field (caller probs: nothing else pins it) must be a
    ValueError, not an attempt to allocate and decode 2^40 symbols (today: a
    RuntimeError from the allocator for 8 TB; a flip of bit 28..32 instead
    allocates GBs and decodes for minutes before the CRC check)."""
    data = b"abc" * 10
    probs = torch.full((256,), 1 / 256)
    blob = bytearray(coder.compress(data, probs))
    n = struct.unpack_from("<Q", blob, 8)[0]
    struct.pack_into("<Q", blob, 8, n | (1 << 40))
    with pytest.raises(ValueError):
        coder.decompress(bytes(blob), probs)
