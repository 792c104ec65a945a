"""The KV-cache coder base that the float (ncx.m1.M1Coder) and the integer
(ncx.int_m1.IntM1Coder) coding paths of M1 share."""
from __future__ import annotations

import contextlib

import torch

from .byte_stream import BOS, VOCAB_SIZE

__all__ = ["KVCacheCoder"]


class KVCacheCoder:
    """What the float and the integer coding paths share: the ContextModel
    interface of ncx.model_coding, the checks of a step's tokens and positions,
    and the per-stream KV caches.

    Stream b is row b of every call. At position p a stream's context holds
    BOS at 0 and the tokens fed at positions 1..p-1 since its last reset; the
    call stores the token's key/value at p and returns the distribution of the
    symbol at p + 1. Position 0 starts a fresh context (the token passed
    there is ignored: position 0 always holds BOS). A stream's position may
    stay, go back, or advance by one; skipping ahead is an error. The cache
    grows with the largest batch and position seen. config is the model's
    ncx.m1.M1Config (context, n_layer, n_head, head_dim).
    """

    vocab_size = VOCAB_SIZE
    bos = BOS

    def __init__(self, config, device: torch.device, cache_dtype: torch.dtype):
        self.config = config
        self.max_symbols = config.context - 1
        self.device = device
        H, hd = config.n_head, config.head_dim
        self.k_cache = [torch.zeros(0, H, 0, hd, dtype=cache_dtype, device=device) for _ in range(config.n_layer)]
        self.v_cache = [torch.zeros(0, H, 0, hd, dtype=cache_dtype, device=device) for _ in range(config.n_layer)]
        self.filled = torch.zeros(0, dtype=torch.int64, device=device)  # (N,) valid cache entries per stream
        self._trusted = False  # inside trusted_inputs()

    def reserve(self, streams: int, length: int) -> None:
        """Make room for `streams` streams of `length` positions at once (a
        caller that knows how long its streams will get saves the growth
        steps and the memory of the doubling). New entries are zero: finite,
        so masked attention terms are exact zeros."""
        N, Lcap = self.k_cache[0].shape[0], self.k_cache[0].shape[2]
        if streams <= N and length <= Lcap:
            return
        new_N, new_L = max(N, streams), min(max(Lcap, self._cache_length(length)), self.config.context)
        for caches in (self.k_cache, self.v_cache):
            for i, old in enumerate(caches):
                new = old.new_zeros(new_N, old.shape[1], new_L, old.shape[3])
                new[:N, :, :Lcap] = old
                caches[i] = new
        self.filled = torch.cat([self.filled, self.filled.new_zeros(new_N - N)])

    @contextlib.contextmanager
    def trusted_inputs(self):
        """For a coding loop that makes every step's tokens and positions itself
        (ncx.model_coding): inside, a step reads no value back from the device,
        so on a GPU it never waits for it. The checks of tokens and positions
        are skipped (a token outside [0, 257), a stream that skips ahead or a
        stream beyond the caches gives meaningless weights, not an error) and
        the caches do not grow: the loop calls reserve() before positions
        reach the cache's length."""
        outer, self._trusted = self._trusted, True
        try:
            yield self
        finally:
            self._trusted = outer

    def _cache_length(self, length: int) -> int:
        """The cache length allocated to hold `length` positions."""
        return length

    def _grow(self, streams: int, length: int) -> None:
        """reserve() for a step: lengths double, so growth is rare."""
        Lcap = self.k_cache[0].shape[2]
        if length > Lcap:
            length = min(max(16, 1 << (length - 1).bit_length()), self.config.context)
        self.reserve(streams, length)

    def fork(self, parents: torch.Tensor) -> None:
        """Stream i becomes a copy of stream parents[i] (its cache and fill level), for every i;
        streams past len(parents) are dropped. Caches hold each stream's own rows, so a copy
        continues exactly as its parent would: the window vocabulary's build runs M1 once per
        distinct prefix and branches there."""
        parents = parents.to(self.device, torch.int64)
        for caches in (self.k_cache, self.v_cache):
            for i, cache in enumerate(caches):
                caches[i] = cache[parents]
        self.filled = self.filled[parents]

    def _begin_step(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Check a step's arguments, make room in the caches and record the new
        fill levels. tokens and positions are (B,) for one position per
        stream, or (B, C) for C consecutive positions per stream (row b feeds
        its C tokens at positions[b, 0], positions[b, 0] + 1, ...). Returns
        (tokens with BOS at position 0, positions, both int64 on the coder's
        device, and the largest position: inside trusted_inputs(), the last
        position the caches hold, read from no value)."""
        if tokens.dim() not in (1, 2) or positions.shape != tokens.shape:
            raise ValueError(f"tokens and positions must be 1-D of the same length (or 2-D of the same shape), got "
                             f"{tuple(tokens.shape)} and {tuple(positions.shape)}")
        if tokens.dim() == 2 and tokens.shape[1] == 0:
            raise ValueError("tokens and positions of shape (B, C) need C >= 1")
        B = tokens.shape[0]
        tokens = tokens.to(self.device, torch.int64)
        positions = positions.to(self.device, torch.int64)
        first, last = (positions, positions) if positions.dim() == 1 else (positions[:, 0], positions[:, -1])
        checked = torch.where(positions == 0, BOS, tokens)
        if self._trusted:
            self.filled[:B] = last + 1
            return checked, positions, self.k_cache[0].shape[2] - 1
        if positions.dim() == 2 and positions.shape[1] > 1 and not bool((positions.diff(dim=1) == 1).all()):
            raise ValueError("the positions of a row must be consecutive")
        N = self.filled.shape[0]
        filled = self.filled[:B] if B <= N else torch.cat([self.filled, self.filled.new_zeros(B - N)])
        jumped = first > filled
        lo_pos, hi_pos, lo_tok, hi_tok, n_jumped = torch.stack([
            first.min(), last.max(), checked.min(), checked.max(), jumped.sum()]).tolist() if B else (0, 0, 0, 0, 0)
        if lo_pos < 0 or hi_pos > self.max_symbols:
            raise ValueError(f"positions must be in [0, {self.max_symbols}], got [{lo_pos}, {hi_pos}]")
        if lo_tok < 0 or hi_tok >= VOCAB_SIZE:
            raise ValueError(f"tokens must be in [0, {VOCAB_SIZE - 1}], got [{lo_tok}, {hi_tok}]")
        if n_jumped:
            b = int(torch.nonzero(jumped)[0, 0])
            raise ValueError(f"stream {b} skipped ahead to position {int(first[b])} with only "
                             f"{int(filled[b])} positions filled")
        self._grow(B, hi_pos + 1)
        self.filled[:B] = last + 1
        return checked, positions, hi_pos
