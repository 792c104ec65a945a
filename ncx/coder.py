"""The arithmetic coder for users: stateful batched coders for a model in the
loop, and bytes-in / bytes-out compression with a static model.

Coders are objects that hold one state per stream; models are separate (the
caller computes each step's distributions, M1 or anything else). Every step
is one native op over all B streams: no Python loop per stream.

Compatibility policy: the bitstream a given (distributions, precision) pair
produces is part of ncx's format; it does not change without a format
version bump (FORMAT_VERSION below and in each artifact's header). Equal-Info
windows have their own version, WINDOW_RULE, recorded in every EqualInfoAC
method spec (datasets, M2 checkpoints): rule 2 added the window order of
csrc/core/coder.h, so windows of rule 1 no longer decode.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import torch

from . import ops

__all__ = [
    "FORMAT_VERSION",
    "WINDOW_RULE",
    "StreamEncoder",
    "StreamDecoder",
    "WindowEncoder",
    "WindowDecoder",
    "WindowStep",
    "compress",
    "decompress",
]

FORMAT_VERSION = 1
WINDOW_RULE = 2
_ops = torch.ops.ncx


def _device_of(dist: torch.Tensor, state: torch.Tensor, name: str) -> None:
    if dist.device != state.device:
        raise ValueError(f"{name}: dist is on {dist.device} but the coder's state is on {state.device}")


class _BatchCoder:
    """The status codes of a coder's steps. A step checks them at once (one
    host synchronization on a GPU), or, with check=False, keeps each stream's
    first non-zero code on the device until check_deferred(): a coding loop
    then waits for the device only every few steps (ncx.model_coding)."""

    _deferred: torch.Tensor | None = None

    def _status(self, status: torch.Tensor, check: bool) -> None:
        if check:
            ops.check_status(status, "stream")
        elif self._deferred is None:
            self._deferred = status.clone()
        else:
            self._deferred = torch.where(self._deferred != 0, self._deferred, status)

    def deferred_status(self) -> torch.Tensor | None:
        """int32 [B]: each stream's first non-zero status code of the steps
        taken with check=False since the last check_deferred() (None if none)."""
        return self._deferred

    def check_deferred(self) -> None:
        """Raise NcxError (a ValueError) for the first stream whose deferred
        status is not zero, naming the stream and what went wrong."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            ops.check_status(deferred, "stream")


class StreamEncoder(_BatchCoder):
    """B independent arithmetic-coded streams, one symbol per stream per step.

    Each stream's code goes to a row of a [B, capacity] byte buffer. Use for
    plain AC with a model in the loop; for distributions known up front,
    ops.encode codes whole sequences in one call.
    """

    def __init__(self, batch: int, capacity_bytes: int, precision: int = 16, device="cpu"):
        ops.check_precision(precision, 2)
        self.precision = precision
        self.state = ops.new_state("stream_encoder", batch, device)
        self.out = torch.zeros(batch, capacity_bytes, dtype=torch.uint8, device=device)

    def step(self, dist: torch.Tensor, symbols: torch.Tensor, logits: bool = False, check: bool = True) -> None:
        """dist [B, V] float32/bfloat16 probabilities (or logits), symbols [B]
        int (a negative symbol leaves that stream untouched this step).
        check=False defers the status check (check_deferred)."""
        B = self.state.shape[0]
        V = ops.check_dist(dist, 2, f"[B={B}, V]")
        ops.check_precision(self.precision, V)
        ops.check_index(symbols, "symbols", (B,))
        _device_of(dist, self.state, "StreamEncoder.step")
        status = _ops.stream_encode_step(self.state, self.out, dist, symbols, self.precision, logits)
        self._status(status, check)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Terminates every stream. Returns (data uint8 [B, capacity], nbits int64 [B]);
        the coder is reset for reuse. Checks the deferred status first."""
        self.check_deferred()
        nbits = _ops.stream_encode_finish(self.state, self.out)
        if bool((nbits == -2).any()):
            raise ValueError("StreamEncoder.finish: " + ops.STATUS_MESSAGES[9])
        if bool((nbits < 0).any()):
            raise ValueError("StreamEncoder.finish: capacity_bytes is too small for the code")
        data = self.out.clone()
        self.out.zero_()
        return data, nbits


class StreamDecoder(_BatchCoder):
    """Decodes B streams produced by StreamEncoder / ops.encode, one symbol per
    active stream per step, given the same distributions the encoder saw."""

    def __init__(self, data: torch.Tensor, nbits: torch.Tensor, precision: int = 16):
        ops.check_precision(precision, 2)
        self.precision = precision
        self.data, self.nbits = data, nbits
        self.state = ops.new_state("stream_decoder", data.shape[0], data.device)

    def step(self, dist: torch.Tensor, active: torch.Tensor | None = None, logits: bool = False,
             check: bool = True) -> torch.Tensor:
        """dist [B, V] -> symbols int64 [B] (-1 for inactive streams).
        check=False defers the status check (check_deferred)."""
        B = self.state.shape[0]
        V = ops.check_dist(dist, 2, f"[B={B}, V]")
        ops.check_precision(self.precision, V)
        _device_of(dist, self.state, "StreamDecoder.step")
        if active is None:
            active = torch.ones(B, dtype=torch.bool, device=dist.device)
        symbols, status = _ops.stream_decode_step(
            self.state, self.data, self.nbits, dist, active, self.precision, logits
        )
        self._status(status, check)
        return symbols


@dataclass
class WindowStep:
    """What one WindowEncoder.step did to each stream (all tensors [B]).

    event: -1 idle, 0 symbol taken, 1 window closed (symbol NOT taken: feed it
      again, with fresh-context distributions, after the given-back symbols),
      2 window closed as an exception (its symbol count must be stored).
    codes: uint8 [B, budget_bits // 8], the closed windows' codes (big-endian).
    window_symbols: how many symbols the closed window holds.
    given_back: how many of the window's last symbols the disambiguation rule
      returned; the next window starts with them.
    """

    event: torch.Tensor
    codes: torch.Tensor
    window_symbols: torch.Tensor
    given_back: torch.Tensor


class WindowEncoder(_BatchCoder):
    """Equal-Info windows: B streams, each cut into windows of budget_bits bits
    that decode on their own (docs/design.md, "Equal-Info windows that always
    decode"; the rule, with the per-position window order that keeps its
    give-back low, is described at the top of csrc/core/coder.h). At a window
    boundary both the coder and the model's context reset.

    max_symbols caps a window's length (M1's context length): a window that
    reaches it closes and decodes by count.
    """

    def __init__(self, batch: int, budget_bits: int, precision: int, max_symbols: int = (1 << 31) - 1,
                 device="cpu"):
        ops.check_precision(precision, 2)
        ops.check_budget(budget_bits, precision)
        if not 1 <= max_symbols < 1 << 31:
            raise ValueError(f"max_symbols must be in [1, 2**31), got {max_symbols}")
        self.budget_bits, self.precision, self.max_symbols = budget_bits, precision, max_symbols
        self.state = ops.new_state("window_encoder", batch, device)

    def step(self, dist: torch.Tensor, symbols: torch.Tensor, logits: bool = False, check: bool = True) -> WindowStep:
        """dist [B, V], symbols [B] (negative: stream idle) -> what each stream
        did (WindowStep). check=False defers the status check (check_deferred)."""
        B = self.state.shape[0]
        V = ops.check_dist(dist, 2, f"[B={B}, V]")
        ops.check_precision(self.precision, V)
        ops.check_index(symbols, "symbols", (B,))
        _device_of(dist, self.state, "WindowEncoder.step")
        event, codes, nsym, back, status = _ops.window_encode_step(
            self.state, dist, symbols, self.precision, logits, self.budget_bits, self.max_symbols
        )
        self._status(status, check)
        return WindowStep(event, codes, nsym, back)

    def finish(self, active: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Closes the open window of each active stream (a document's end: its
        last symbol is EOS, where the decoder stops). Returns (has_window bool
        [B], codes uint8 [B, budget_bits // 8], window_symbols int32 [B]);
        ValueError for a stream whose state is not a window encoder's.
        check=False defers the status check (check_deferred)."""
        has, codes, nsym, status = _ops.window_encode_finish(self.state, active, self.budget_bits)
        self._status(status, check)
        return has, codes, nsym


class WindowDecoder(_BatchCoder):
    """Decodes Equal-Info windows, one symbol per stream per step. A window
    ends when its cell leaves the current interval (the rule), when it has
    max_symbols symbols (M1's context cap, or an exception's stored count), or
    after EOS."""

    def __init__(self, batch: int, budget_bits: int, precision: int, eos: int = -1, device="cpu"):
        ops.check_precision(precision, 2)
        ops.check_budget(budget_bits, precision)
        self.budget_bits, self.precision, self.eos = budget_bits, precision, eos
        # A zeroed state is a window with max_symbols 0: ended until start().
        self.state = ops.new_state("window_decoder", batch, device)

    def start(self, codes: torch.Tensor, mask: torch.Tensor, max_symbols: torch.Tensor) -> None:
        """Gives the streams in mask (bool [B]) a new window: codes uint8
        [B, budget_bits // 8], max_symbols int [B]."""
        B = self.state.shape[0]
        nb = self.budget_bits // 8
        if codes.dtype != torch.uint8 or tuple(codes.shape) != (B, nb):
            raise ValueError(f"codes must be uint8 [{B}, {nb}], got {codes.dtype} {list(codes.shape)}")
        _ops.window_decode_start(self.state, codes, mask, max_symbols, self.budget_bits)

    def step(self, dist: torch.Tensor, logits: bool = False, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """dist [B, V] -> (symbols int64 [B], -1 where no symbol; ended bool [B],
        true where the stream's window ended at this step). check=False defers
        the status check (check_deferred)."""
        B = self.state.shape[0]
        V = ops.check_dist(dist, 2, f"[B={B}, V]")
        ops.check_precision(self.precision, V)
        _device_of(dist, self.state, "WindowDecoder.step")
        symbols, ended, status = _ops.window_decode_step(
            self.state, dist, self.precision, logits, self.budget_bits, self.eos
        )
        self._status(status, check)
        return symbols, ended


# ------------------------------------------------- bytes in, bytes out
# Container: magic, format version, precision, flags, original length, crc32
# of the original, code length in bits, crc32 of the header fields before it
# (so a corrupt length is caught before it is trusted), then (static model)
# 256 uint32 counts, then the code bytes.
_MAGIC = b"NCXa"
_FIELDS = struct.Struct("<4sBBHQIQ")
_HEADER = struct.Struct("<4sBBHQIQI")
_FLAG_STATIC = 1


def _static_probs(counts: torch.Tensor) -> torch.Tensor:
    # Add-one smoothing: a byte absent from the histogram still has a code.
    return (counts.to(torch.float64) + 1.0).div_(float(counts.sum()) + 256.0).to(torch.float32)


def compress(data: bytes, probs: torch.Tensor | None = None, precision: int = 16) -> bytes:
    """Arithmetic-code a byte string.

    probs: None (an order-0 model of data itself, stored in the header),
    float32 [256] (one static distribution) or [len(data), 256] (one per byte).
    The caller must pass the same probs to decompress. The container records
    the length and a CRC-32, so truncation or corruption is a clear error.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    ops.check_precision(precision, 256)
    flags, model_blob = 0, b""
    symbols = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) if n else torch.zeros(0, dtype=torch.int64)
    if probs is None:
        counts = torch.bincount(symbols, minlength=256).to(torch.int64)
        model_blob = counts.to(torch.int32).numpy().astype("<u4").tobytes()
        flags |= _FLAG_STATIC
        dist = _static_probs(counts).expand(1, n, 256)
    else:
        dist = _expand_probs(probs, n)
    code, nbits = ops.encode(dist, symbols.view(1, n), precision=precision)
    nbytes = (int(nbits[0]) + 7) // 8
    fields = _FIELDS.pack(_MAGIC, FORMAT_VERSION, precision, flags, n, zlib.crc32(data), int(nbits[0]))
    header = fields + struct.pack("<I", zlib.crc32(fields))
    return header + model_blob + code[0, :nbytes].numpy().tobytes()


def decompress(blob: bytes, probs: torch.Tensor | None = None) -> bytes:
    """Inverse of compress. Raises ValueError for data that is not an ncx
    container, is truncated, or does not decode to its recorded checksum."""
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise ValueError(f"not an ncx compressed blob: {len(blob)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, precision, flags, n, crc, nbits, header_crc = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError(f"not an ncx compressed blob (magic {magic!r}, expected {_MAGIC!r})")
    if zlib.crc32(blob[:_FIELDS.size]) != header_crc:
        raise ValueError("corrupt ncx blob: the header does not match its CRC-32")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported ncx format version {version} (this ncx reads {FORMAT_VERSION})")
    ops.check_precision(precision, 256)
    pos = _HEADER.size
    if flags & _FLAG_STATIC:
        if probs is not None:
            raise ValueError("this blob carries its own static model: call decompress without probs")
        if len(blob) < pos + 1024:
            raise ValueError("truncated ncx blob: the static model table is incomplete")
        counts = torch.tensor(list(struct.unpack_from("<256I", blob, pos)), dtype=torch.int64)
        pos += 1024
        if int(counts.sum()) != n:
            raise ValueError("corrupt ncx blob: the static model does not match the recorded length")
        dist = _static_probs(counts).expand(1, n, 256)
    else:
        if probs is None:
            raise ValueError("this blob was coded with caller-supplied probs: pass the same probs")
        dist = _expand_probs(probs, n)
    code = blob[pos:]
    if len(code) != (nbits + 7) // 8:
        raise ValueError(
            f"truncated or padded ncx blob: {len(code)} code bytes, the header records {(nbits + 7) // 8}"
        )
    data = torch.frombuffer(bytearray(code), dtype=torch.uint8).view(1, -1) if code else torch.zeros(1, 1, dtype=torch.uint8)
    symbols = ops.decode(dist, data, torch.tensor([nbits]), precision=precision)
    out = symbols[0].to(torch.uint8).numpy().tobytes()
    if zlib.crc32(out) != crc:
        raise ValueError("corrupt ncx blob: decoded bytes do not match the recorded CRC-32")
    return out


def _expand_probs(probs: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if probs.shape == (256,):
        return probs.view(1, 1, 256).expand(1, n, 256)
    if probs.shape == (n, 256):
        return probs.view(1, n, 256)
    raise ValueError(f"probs must have shape [256] or [len(data)={n}, 256], got {list(probs.shape)}")
