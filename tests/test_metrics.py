"""The paper's measures on hand-checkable numbers."""
import math

import pytest

from ncx import metrics


def test_bits_per_byte():
    # 100 tokens over 250 bytes at ln 2 nats = 1 bit per token: 100 bits / 250 bytes.
    assert metrics.bits_per_byte(math.log(2), tokens=100, raw_bytes=250) == pytest.approx(0.4)
    # Bytes as tokens (1 byte/token): bits/byte is the loss in bits per token.
    assert metrics.bits_per_byte(2 * math.log(2), tokens=7, raw_bytes=7) == pytest.approx(2.0)
    # The same model loss over a 5x shorter token stream costs 5x fewer bits per byte.
    assert metrics.bits_per_byte(1.0, 20, 100) == pytest.approx(metrics.bits_per_byte(1.0, 100, 100) / 5)


def test_uniform_bits_per_byte():
    assert metrics.uniform_bits_per_byte(256, 2.0) == pytest.approx(4.0)
    assert metrics.uniform_bits_per_byte(65536, 2.0) == pytest.approx(8.0)
    # EqualInfoAC b=16 v=65k: 16 bits per 5.31 bytes, about 3.01 bits/byte.
    assert metrics.uniform_bits_per_byte(65536, 5.31) == pytest.approx(16 / 5.31)


def test_flops_per_byte():
    # 19M-parameter M2 at 5 bytes/token plus the paper's M1 (2 x 3M):
    # 2 x 19e6 / 5 + 6e6 = 7.6e6 + 6e6.
    m1 = metrics.m1_flops_per_byte(3_000_000)
    assert m1 == 6e6
    assert metrics.flops_per_byte(19_000_000, 5.0, m1) == pytest.approx(13.6e6)
    # Bytes: no M1, one byte per token.
    assert metrics.flops_per_byte(19_000_000, 1.0) == pytest.approx(38e6)


def test_bytes_per_token_and_errors():
    assert metrics.bytes_per_token(531, 100) == pytest.approx(5.31)
    with pytest.raises(ValueError, match="tokens > 0"):
        metrics.bits_per_byte(1.0, 0, 10)
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        metrics.uniform_bits_per_byte(1, 2.0)
    with pytest.raises(ValueError, match="bytes_per_token > 0"):
        metrics.flops_per_byte(10, 0.0)
