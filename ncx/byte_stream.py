"""M1's symbol alphabet and the symbol streams built from documents.

M1 predicts 257 symbols: the 256 byte values and EOS = 256, which the paper
appends to every document. EOS doubles as BOS: position 0 of every context
holds symbol 256, so a context starts as if right after a document ended.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["VOCAB_SIZE", "EOS", "BOS", "join_documents", "with_bos"]

VOCAB_SIZE = 257  # 256 byte values + EOS
EOS = 256
BOS = EOS  # fed at position 0 of every context


def join_documents(docs: Sequence[bytes]) -> torch.Tensor:
    """Documents -> one int64 symbol stream, EOS after each document."""
    parts = []
    for d in docs:
        parts.append(torch.frombuffer(bytearray(d), dtype=torch.uint8).to(torch.int64) if len(d)
                     else torch.zeros(0, dtype=torch.int64))
        parts.append(torch.tensor([EOS]))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def with_bos(chunks: torch.Tensor) -> torch.Tensor:
    """Targets (B, T) -> inputs (B, T): BOS, then the targets shifted right."""
    return torch.cat([torch.full_like(chunks[:, :1], BOS), chunks[:, :-1]], dim=1)
