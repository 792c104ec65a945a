"""Coding many documents with a model in the loop (M1, or any model with the
same interface), batched over streams with continuous batching: each of the
`batch` stream slots takes the next document as soon as its current one is
done, and every step is one model call and one native coder op for all slots.

The model interface (ContextModel): `model(tokens, positions) -> dist`, with
tokens and positions int64 [B] and dist [B, V]. Position 0 starts a fresh
context (the token there is the model's BOS); position p > 0 feeds the token
at context position p. The result is the distribution of the next symbol. A
model must give each stream the same dist whatever the rest of the batch is
(M1's coding path guarantees this), or decoding would not reproduce encoding.
A model may also offer `steps(tokens, positions) -> dist` over [B, C] tokens
at C consecutive positions per stream ([B, C, V], equal to C calls); the
plain AC encoder then feeds it blocks of positions (it knows every symbol in
advance), while decoders stay one position per call. And `reserve(streams,
length)`: the AC encoder tells it the size its state will reach.

Equal-Info windows reset the context at each window; plain AC resets it every
`max_symbols` symbols (the model's context length) inside one stream.

The loops keep their state on the model's device (slots, positions, the next
document, the records of closed windows) and wait for it only every
GPU_SYNC_EVERY steps on a GPU (every step on a CPU, where waiting costs nothing):
to learn whether anything is left, to check the coders' status codes, to make
room in the model's caches and to gather what the steps produced. Between
waits a model with `trusted_inputs()` (ncx.kv_cache.KVCacheCoder) skips the
checks of the tokens and positions the loop made, so a step on a GPU is
launches only; a loop that waits at every step keeps the checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from .coder import StreamDecoder, StreamEncoder, WindowDecoder, WindowEncoder
from .errors import NcxError
from .ops import max_encoded_bytes

# Rows (streams x positions) per block call of a model that takes blocks:
# large enough for efficient GEMMs, small enough that M1's activations stay
# a few tens of MB.
TEACHER_FORCED_ROWS = 2048
# Steps between two waits for the device (module docstring), by device type:
# a CPU waits for nothing, a GPU runs this many steps ahead of the host.
SYNC_EVERY = {"cpu": 1}
GPU_SYNC_EVERY = 16

__all__ = [
    "ContextModel",
    "EncodedWindows",
    "encode_windows",
    "decode_windows",
    "encode_streams",
    "decode_streams",
]


class ContextModel(Protocol):
    vocab_size: int  # V, the coder's alphabet
    bos: int         # token fed at position 0
    logits: bool     # whether __call__ returns logits (else probabilities)
    max_symbols: int # symbols one context holds (context length - 1)
    arithmetic: str  # "float" or "integer" (an integer M1: the same output on every device)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EncodedWindows:
    """One document's Equal-Info windows."""

    codes: torch.Tensor                 # uint8 [n_windows, budget_bits // 8]
    window_symbols: torch.Tensor        # int32 [n_windows], symbols per window
    exceptions: list[tuple[int, int]] = field(default_factory=list)  # (window index, symbol count)
    # Symbols the disambiguation rule gave back at each window's end (greedy
    # packing would have kept them): the rule's cost in window capacity.
    given_back: torch.Tensor | None = None  # int32 [n_windows]


class _DocQueue:
    """Documents as one flat symbol tensor plus offsets; hands them to slots."""

    def __init__(self, docs: Sequence[torch.Tensor], eos: int | None, device):
        tails = [torch.tensor([eos], dtype=torch.int64)] if eos is not None else []
        parts = [torch.cat([d.to(torch.int64).reshape(-1)] + tails) for d in docs]
        lengths = torch.tensor([len(p) for p in parts], dtype=torch.int64)
        self.flat = torch.cat(parts).to(device) if parts else torch.zeros(0, dtype=torch.int64, device=device)
        self.start = (torch.cumsum(lengths, 0) - lengths).to(device)
        self.end = self.start + lengths.to(device)
        self.next_doc = 0
        self.n = len(docs)

    def take(self, k: int) -> torch.Tensor:
        """Up to k next document ids (fewer at the end)."""
        ids = torch.arange(self.next_doc, min(self.next_doc + k, self.n), dtype=torch.int64)
        self.next_doc += len(ids)
        return ids


def _as_symbol_docs(docs) -> list[torch.Tensor]:
    out = []
    for d in docs:
        if isinstance(d, (bytes, bytearray, memoryview)):
            d = torch.frombuffer(bytearray(d), dtype=torch.uint8) if len(d) else torch.zeros(0, dtype=torch.uint8)
        out.append(torch.as_tensor(d))
    return out


class _Loop:
    """A coding loop's waits for the device: every `every` steps (SYNC_EVERY,
    by device type) wait() reads whether any stream is active and the
    largest position in one transfer, checks the coders' deferred status codes,
    makes room in the model's caches for the steps up to the next wait, and
    compacts the rows recorded since the last one. Inside `with`, a model
    that has trusted_inputs() runs without its own checks when the loop
    waits less often than every step."""

    def __init__(self, model, streams: int, device: torch.device):
        self.model, self.streams = model, streams
        self.every = SYNC_EVERY.get(device.type, GPU_SYNC_EVERY)
        self.steps, self.room = 0, 0
        # Trusted inputs save waits; a loop that waits at every step anyway keeps the model's checks
        # (and lets the float M1 size its attention by the positions it sees).
        trusted = getattr(model, "trusted_inputs", None) if self.every > 1 else None
        self._context = trusted() if trusted is not None else None

    def __enter__(self) -> "_Loop":
        if self._context is not None:
            self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)

    def wait(self, active: torch.Tensor | None = None, positions: torch.Tensor | int = 0, coders=(),
             rows=()) -> bool:
        """At a wait step: whether the loop is done (no stream in `active`
        left; never, without it), after raising for a coder's bad status,
        compacting `rows` and making room for the positions up to `every` past
        the largest of `positions` now. Between waits: False, reading nothing."""
        self.steps += 1
        if (self.steps - 1) % self.every:
            return False
        deferred = [c for c in coders if c.deferred_status() is not None]
        flags = [c.deferred_status().ne(0).any() for c in deferred]
        if active is not None:
            flags.append(active.any())
        if isinstance(positions, torch.Tensor):
            flags.append(positions.max() if positions.numel() else positions.new_zeros(()))
        values = torch.stack([f.long() for f in flags]).tolist() if flags else []
        for coder, bad in zip(deferred, values):
            if bad:
                coder.check_deferred()
        for r in rows:
            r.compact()
        top = values[-1] if isinstance(positions, torch.Tensor) else positions
        self._make_room(top + self.every)
        return active is not None and not values[len(deferred)]

    def _make_room(self, positions: int) -> None:
        """Caches that hold `positions` positions (doubling, at most the context)."""
        if self._context is None or positions <= self.room:
            return
        self.room = min(max(16, 1 << (positions - 1).bit_length()), self.model.max_symbols + 1)
        self.model.reserve(self.streams, self.room)


class _Rows:
    """Rows a loop records at each step for the streams of a mask, kept on the
    device and compacted only when the loop waits anyway (_Loop.wait)."""

    def __init__(self):
        self._steps: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
        self._kept: list[list[torch.Tensor]] = []

    def add(self, mask: torch.Tensor, *columns: torch.Tensor) -> None:
        self._steps.append((mask, columns))

    def compact(self) -> None:
        if not self._steps:
            return
        keep = torch.nonzero(torch.cat([m for m, _ in self._steps])).flatten()
        width = len(self._steps[0][1])
        self._kept.append([torch.cat([cols[i] for _, cols in self._steps])[keep] for i in range(width)])
        self._steps = []

    def columns(self) -> list[torch.Tensor] | None:
        """Every recorded row in step order, per column, on the CPU (None if none)."""
        self.compact()
        if not self._kept:
            return None
        return [torch.cat([part[i] for part in self._kept]).cpu() for i in range(len(self._kept[0]))]


def _take_next(free: torch.Tensor, slot_item: torch.Tensor, next_item: torch.Tensor, n: int):
    """Continuous batching on the device: free slots take the next items (ids
    next_item, next_item + 1, ... below n) in slot order. Returns (the new
    slot_item with -1 for slots left empty, the slots that took one, next_item)."""
    new = next_item + torch.cumsum(free, 0) - 1
    take = free & (new < n)
    slot_item = torch.where(free, torch.where(take, new, -1), slot_item)
    return slot_item, take, next_item + take.sum()


def encode_windows(docs, model: ContextModel, budget_bits: int, precision: int, eos: int,
                   batch: int = 256) -> list[EncodedWindows]:
    """Equal-Info encode each document (bytes or int tensor of symbols < V,
    followed by eos) into windows of budget_bits bits. The decoder finds a
    document's end at its EOS, so eos is required."""
    if eos is None:
        raise ValueError("encode_windows needs eos: a document's last window ends at its EOS symbol")
    docs = _as_symbol_docs(docs)
    if not docs:
        return []
    device = _model_device(model)
    q = _DocQueue(docs, eos, device)  # every document has a symbol at least: its EOS
    B = max(1, min(batch, len(docs)))
    enc = WindowEncoder(B, budget_bits, precision, model.max_symbols, device)
    slot_doc = torch.full((B,), -1, dtype=torch.int64, device=device)
    pos = torch.zeros(B, dtype=torch.int64, device=device)
    end = torch.zeros(B, dtype=torch.int64, device=device)
    wlen = torch.zeros(B, dtype=torch.int64, device=device)
    tokens = torch.full((B,), model.bos, dtype=torch.int64, device=device)
    next_doc = torch.zeros((), dtype=torch.int64, device=device)
    free = torch.ones(B, dtype=torch.bool, device=device)
    last_symbol = len(q.flat) - 1
    # (doc id, code, window symbols, exception flag, given back) of each window, in step order
    windows = _Rows()
    none = torch.zeros(B, dtype=torch.int32, device=device)  # a finish's given-back, and (as bool) its exception flag
    no_exception = none.bool()
    with _Loop(model, B, device) as loop:
        while True:
            slot_doc, took, next_doc = _take_next(free, slot_doc, next_doc, q.n)
            doc = slot_doc.clamp(min=0)
            pos, end = torch.where(took, q.start[doc], pos), torch.where(took, q.end[doc], end)
            wlen = torch.where(free, 0, wlen)
            tokens = torch.where(free, model.bos, tokens)
            active = slot_doc >= 0
            if loop.wait(active, wlen, (enc,), (windows,)):
                break
            dist = model(tokens, wlen)
            sym = torch.where(active, q.flat[pos.clamp(max=last_symbol)], -1)
            step = enc.step(dist, sym, logits=model.logits, check=False)
            taken = step.event == 0
            closed = step.event >= 1
            windows.add(closed, slot_doc, step.codes, step.window_symbols, step.event == 2, step.given_back)
            pos = pos + taken.to(torch.int64) - torch.where(closed, step.given_back.to(torch.int64), 0)
            wlen = torch.where(taken, wlen + 1, 0)
            tokens = torch.where(taken, sym, model.bos)
            free = active & (pos == end)
            has, codes, nsym = enc.finish(free, check=False)
            windows.add(has, slot_doc, codes, nsym, no_exception, none)
    enc.check_deferred()
    return _group_windows(windows.columns(), len(docs), budget_bits // 8)


def _group_windows(columns, n_docs: int, nb: int) -> list[EncodedWindows]:
    if columns is not None:
        doc, codes, nsym, exc, back = columns
        order = torch.sort(doc, stable=True).indices
        doc, codes, nsym, exc, back = doc[order], codes[order], nsym[order], exc[order], back[order]
    else:
        doc, codes = torch.zeros(0, dtype=torch.int64), torch.zeros(0, nb, dtype=torch.uint8)
        nsym, exc = torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.bool)
        back = torch.zeros(0, dtype=torch.int32)
    counts = torch.bincount(doc, minlength=n_docs).tolist()
    out, at = [], 0
    for c in counts:
        e = exc[at:at + c]
        exceptions = [(int(i), int(nsym[at + i])) for i in torch.nonzero(e).flatten().tolist()]
        out.append(EncodedWindows(codes[at:at + c], nsym[at:at + c], exceptions, back[at:at + c]))
        at += c
    return out


def decode_windows(encoded: Sequence[EncodedWindows], model: ContextModel, budget_bits: int, precision: int,
                   eos: int | None, batch: int = 256, keep_eos: bool = False) -> list[torch.Tensor]:
    """Inverse of encode_windows: each document's symbols (int64, without the
    EOS). Every window is decoded as an independent unit (its own code, a
    fresh coder and a fresh model context), so a long document's windows
    decode in parallel, in any batch size and order; a document is the
    concatenation of its windows' symbols up to its EOS. Exceptions decode by
    their stored symbol count, all others by the rule. With eos=None (tokens
    from M2) a document is simply all its windows' symbols. keep_eos keeps
    the EOS that ends a document (the window vocabulary records it)."""
    device = _model_device(model)
    n = len(encoded)
    nb = budget_bits // 8
    counts = torch.tensor([len(e.codes) for e in encoded], dtype=torch.int64)
    units = int(counts.sum())
    all_codes = torch.cat([e.codes.reshape(-1, nb) for e in encoded]).to(device) if units else None
    caps = torch.full((units,), model.max_symbols, dtype=torch.int64)
    first = torch.cumsum(counts, 0) - counts
    for d, e in enumerate(encoded):
        for w, c in e.exceptions:
            if not 0 <= w < len(e.codes):
                raise NcxError(f"exception for window {w}, but it has {len(e.codes)} windows", "document", d)
            caps[first[d] + w] = c
    caps = caps.to(device)
    B = max(1, min(batch, units))
    dec = WindowDecoder(B, budget_bits, precision, eos if eos is not None else -1, device)
    stop = eos if eos is not None else -2  # the symbol that ends a unit early
    slot_unit = torch.full((B,), -1, dtype=torch.int64, device=device)
    wlen = torch.zeros(B, dtype=torch.int64, device=device)
    tokens = torch.full((B,), model.bos, dtype=torch.int64, device=device)
    next_unit = torch.zeros((), dtype=torch.int64, device=device)
    free = torch.ones(B, dtype=torch.bool, device=device)
    symbols = _Rows()  # (unit, symbol) in decoding order
    with _Loop(model, B, device) as loop:
        while units:
            slot_unit, took, next_unit = _take_next(free, slot_unit, next_unit, units)
            unit = slot_unit.clamp(min=0)
            dec.start(all_codes[unit], took, torch.where(took, caps[unit], 0))
            wlen = torch.where(took, 0, wlen)
            tokens = torch.where(took, model.bos, tokens)
            active = slot_unit >= 0
            if loop.wait(active, wlen, (dec,), (symbols,)):
                break
            dist = model(tokens, wlen)
            sym, ended = dec.step(dist, logits=model.logits, check=False)
            got = active & (sym >= 0)
            symbols.add(got, slot_unit, sym)
            wlen = torch.where(got, wlen + 1, wlen)
            tokens = torch.where(got, sym, tokens)
            free = active & (ended | (got & (sym == stop)))
    dec.check_deferred()
    # Each unit's symbols in decoding order, units in document and window order.
    per_unit = _group_symbols(symbols.columns(), units)
    docs = []
    for d in range(n):
        parts = per_unit[int(first[d]): int(first[d] + counts[d])]
        syms = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
        if eos is not None:
            cut = torch.nonzero(syms == eos)
            syms = syms[: int(cut[0, 0]) + int(keep_eos)] if len(cut) else syms
        docs.append(syms)
    return docs


def _group_symbols(columns, n: int) -> list[torch.Tensor]:
    if columns is None:
        return [torch.zeros(0, dtype=torch.int64) for _ in range(n)]
    doc, sym = columns
    order = torch.sort(doc, stable=True).indices
    doc, sym = doc[order], sym[order]
    return list(torch.split(sym, torch.bincount(doc, minlength=n).tolist()))


def _model_device(model) -> torch.device:
    return torch.device(getattr(model, "device", "cpu"))


# --------------------------------------------------------- plain AC streams
def encode_streams(docs, model: ContextModel, precision: int, eos: int | None, batch: int = 256):
    """Plain AC: each document (plus eos) is one arithmetic-coded stream; the
    model's context restarts every max_symbols symbols. Returns a list of
    (code bytes uint8 tensor, nbits)."""
    docs = _as_symbol_docs(docs)
    # A model that can take several positions per call (the integer M1) gets
    # blocks of them: the encoder knows every symbol in advance.
    steps = getattr(model, "steps", None)
    tails = [eos] if eos is not None else []
    seqs = [torch.cat([d.to(torch.int64).reshape(-1), torch.tensor(tails, dtype=torch.int64)]) for d in docs]
    device = _model_device(model)
    out: list[tuple[torch.Tensor, int]] = [None] * len(seqs)  # type: ignore[list-item]
    # Streams run in lockstep inside a batch, so batch documents of similar length.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for lo in range(0, len(order), batch):
        ids = order[lo:lo + batch]
        T = max([len(seqs[i]) for i in ids] + [0])
        sym = torch.full((len(ids), T), -1, dtype=torch.int64)
        for r, i in enumerate(ids):
            sym[r, : len(seqs[i])] = seqs[i]
        sym = sym.to(device)
        if hasattr(model, "reserve"):  # the caches' final size at once
            model.reserve(len(ids), min(T, model.max_symbols))
        enc = StreamEncoder(len(ids), max_encoded_bytes(T, precision), precision, device)
        t = 0
        with _Loop(model, len(ids), device) as loop:
            loop.room = min(T, model.max_symbols)  # reserved above
            while t < T:
                # A block of positions inside one context (never across a restart),
                # or one position for a model without steps().
                n = 1 if steps is None else min(max(1, TEACHER_FORCED_ROWS // len(ids)), T - t,
                                                model.max_symbols - t % model.max_symbols)
                tokens, positions = _block_inputs(sym, t, n, model)
                if steps is None:
                    dists = model(tokens[:, 0], positions[:, 0]).unsqueeze(1)  # [B, 1, V]
                else:
                    dists = steps(tokens, positions)  # [B, n, V]
                for c in range(n):  # the coder takes the rows where they are (any stride between streams)
                    enc.step(dists[:, c], sym[:, t + c], logits=model.logits, check=False)
                t += n
                loop.wait(coders=(enc,))
        data, nbits = enc.finish()
        data, nbits = data.cpu(), nbits.cpu()
        for r, i in enumerate(ids):
            nbytes = (int(nbits[r]) + 7) // 8
            out[i] = (data[r, :nbytes].clone(), int(nbits[r]))
    return out


def _stream_inputs(prev: torch.Tensor, t: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs that predict symbol t: BOS at position 0 at each context
    restart, else the previous symbol at its position inside the context."""
    p = t % model.max_symbols
    if p == 0:
        return torch.full_like(prev, model.bos), torch.zeros_like(prev)
    return prev.clamp(min=0), torch.full_like(prev, p)


def _block_inputs(sym: torch.Tensor, t: int, n: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs that predict symbols t..t+n-1 of every stream in one call
    (positions inside one context): what n calls of _stream_inputs give, as
    [B, n] tokens and positions."""
    B, p0 = sym.shape[0], t % model.max_symbols
    prev = sym[:, t - 1:t - 1 + n] if t else torch.cat([sym.new_zeros(B, 1), sym[:, :n - 1]], 1)
    tokens = prev.clamp(min=0)
    if p0 == 0:
        tokens[:, 0] = model.bos
    positions = torch.arange(p0, p0 + n, dtype=torch.int64, device=sym.device).expand(B, n)
    return tokens, positions


def decode_streams(encoded: Sequence[tuple[torch.Tensor, int]], model: ContextModel, precision: int,
                   eos: int | None, lengths: Sequence[int] | None = None, batch: int = 256):
    """Inverse of encode_streams: each document's symbols (without the EOS).

    lengths (symbols per document, without EOS) bounds the decoding: with eos
    given it is optional, and a stream that does not end in EOS exactly there
    is reported as corrupt (or coded with another model)."""
    if eos is None and lengths is None:
        raise ValueError("decode_streams needs eos or lengths to know where each stream ends")
    device = _model_device(model)
    n = len(encoded)
    results: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    for lo in range(0, n, batch):
        ids = list(range(lo, min(lo + batch, n)))
        N = max([len(encoded[i][0]) for i in ids] + [1])
        data = torch.zeros(len(ids), N, dtype=torch.uint8)
        for r, i in enumerate(ids):
            data[r, : len(encoded[i][0])] = encoded[i][0]
        nbits = torch.tensor([encoded[i][1] for i in ids], dtype=torch.int64)
        if lengths is not None:
            limit = torch.tensor([lengths[i] + (eos is not None) for i in ids], dtype=torch.int64)
        else:
            # Without lengths, the cheapest symbol bounds how many symbols a
            # stream of nbits can hold; past that it is corrupt.
            limit = nbits * (1 << precision) + model.max_symbols
        limit = limit.to(device)
        dec = StreamDecoder(data.to(device), nbits.to(device), precision)
        active = limit > 0
        prev = torch.zeros(len(ids), dtype=torch.int64, device=device)
        hist = []  # int16: a symbol or -1, for every stream at every step
        t = 0
        with _Loop(model, len(ids), device) as loop:
            while not loop.wait(active, t % model.max_symbols, (dec,)):
                dist = model(*_stream_inputs(prev, t, model))
                sym = dec.step(dist, active, logits=model.logits, check=False)
                hist.append(sym.to(torch.int16))
                prev = torch.where(active, sym, prev)
                t += 1
                if eos is not None:
                    active &= sym != eos
                active &= limit > t
        dec.check_deferred()
        seqs = torch.stack(hist, 1).cpu().long() if hist else torch.zeros(len(ids), 0, dtype=torch.int64)
        for r, i in enumerate(ids):
            row = seqs[r][seqs[r] >= 0]
            if eos is not None:
                if not len(row) or int(row[-1]) != eos:
                    raise NcxError("the stream did not end with EOS where expected: the data is corrupt or was "
                                   "coded with another M1", "document", i)
                row = row[:-1]
            results[i] = row
    return results
