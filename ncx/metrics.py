"""The paper's measures (Lester et al. 2024; docs/design.md, "Measures"), one function each.

Every method is compared per byte of the original text, not per token, because a token of
compressed text stands for several bytes:

    bytes_per_token       = raw bytes / M2 tokens                      (the compression rate)
    bits_per_byte         = (M2 tokens / raw bytes) x (mean M2 loss in nats per token) / ln 2
    uniform_bits_per_byte = log2(vocab_size) / bytes_per_token         (an M2 that learned nothing)
    flops_per_byte        = 2 x N_M2 / bytes_per_token + M1 FLOPs/byte (inference)

N_M2 counts M2's non-embedding parameters; a forward pass costs about 2 FLOPs per parameter
per token. M1 runs once per byte, so its cost is 2 x N_M1 FLOPs/byte (2 x 3M = 6M for the
paper's M1); methods without M1 (Bytes, SentencePiece, GZip) add 0.
"""
from __future__ import annotations

import math

__all__ = ["bytes_per_token", "bits_per_byte", "uniform_bits_per_byte", "flops_per_byte",
           "m1_flops_per_byte"]


def bytes_per_token(raw_bytes: int, tokens: int) -> float:
    """raw_bytes / tokens: e.g. 5.31 for EqualInfoAC b=16 at vocabulary 65,536."""
    if tokens <= 0 or raw_bytes < 0:
        raise ValueError(f"need tokens > 0 and raw_bytes >= 0, got {tokens} and {raw_bytes}")
    return raw_bytes / tokens


def bits_per_byte(loss_nats_per_token: float, tokens: int, raw_bytes: int) -> float:
    """(tokens / raw_bytes) x loss_nats_per_token / ln 2.

    loss_nats_per_token: M2's mean cross-entropy per token on held-out text, in nats.
    tokens, raw_bytes: size of that held-out text as M2 tokens and as original bytes.
    Example: 100 tokens over 250 bytes at ln 2 nats (1 bit) per token -> 0.4 bits/byte.
    """
    if tokens <= 0 or raw_bytes <= 0:
        raise ValueError(f"need tokens > 0 and raw_bytes > 0, got {tokens} and {raw_bytes}")
    return (tokens / raw_bytes) * loss_nats_per_token / math.log(2)


def uniform_bits_per_byte(vocab_size: int, bytes_per_token: float) -> float:
    """log2(vocab_size) / bytes_per_token: the bits/byte of a uniform guess over the vocabulary
    (8 bits per token at 256, 16 at 65,536). An M2 that stays here has learned nothing.
    Example: vocabulary 256 at 2 bytes/token -> 4.0 bits/byte."""
    if vocab_size < 2 or bytes_per_token <= 0:
        raise ValueError(f"need vocab_size >= 2 and bytes_per_token > 0, got {vocab_size} "
                         f"and {bytes_per_token}")
    return math.log2(vocab_size) / bytes_per_token


def m1_flops_per_byte(m1_non_embedding_params: int) -> float:
    """2 x N_M1: M1 predicts every byte once. The paper's M1 (3M) -> 6M FLOPs/byte."""
    if m1_non_embedding_params < 0:
        raise ValueError(f"m1_non_embedding_params must be >= 0, got {m1_non_embedding_params}")
    return 2.0 * m1_non_embedding_params


def flops_per_byte(m2_non_embedding_params: int, bytes_per_token: float,
                   m1_flops_per_byte: float = 0.0) -> float:
    """Inference FLOPs per byte of text: 2 x m2_non_embedding_params / bytes_per_token + M1's
    FLOPs/byte (0 for methods without M1).
    Example: a 19M M2 over EqualInfoAC at 5 bytes/token with a 3M M1 ->
    2 x 19e6 / 5 + 6e6 = 13.6e6 FLOPs/byte."""
    if m2_non_embedding_params < 0 or bytes_per_token <= 0 or m1_flops_per_byte < 0:
        raise ValueError(f"need params >= 0, bytes_per_token > 0 and m1_flops_per_byte >= 0, got "
                         f"{m2_non_embedding_params}, {bytes_per_token}, {m1_flops_per_byte}")
    return 2.0 * m2_non_embedding_params / bytes_per_token + m1_flops_per_byte
