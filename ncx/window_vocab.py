"""Equal-Info windows as a vocabulary: EqualInfoAC's tokens without M1 at coding time.

The coder and M1's context both restart at every window, and the window rule makes every
window self-delimiting, so a window's b-bit code alone fixes the symbols it decodes to. Decoding
each of the 2^b codes once, as a lone window, gives a table code -> symbol string (bytes, then
EOS for a document's last window); greedy longest match over that table, emitting the smallest
code of each string, gives exactly the windows of the M1-driven encoder. docs/window_vocab.md
says why, and what happens where it cannot (no string of the table starts at some position: the
M1 encoder would emit an exception window there, and the vocabulary says so instead of guessing).

    vocab = build_window_vocab(m1_coder, b=16)          # 65,536 lone windows through M1, once
    vocab.save("window_vocab.safetensors")
    codes = vocab.encode([b"some text"])                # [np.int32 codes per document]
    assert vocab.decode(codes) == [b"some text"]

The file is a safetensors file (no pickle): tensors pool / offsets / eos and metadata (format,
version, b, precision, window rule, M1's hash and arithmetic, and the table's own sha256 over
all of it), checked on load.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import _C, ops  # ops registers torch.ops.ncx
from .byte_stream import EOS
from .coder import WINDOW_RULE, WindowDecoder
from .errors import NcxError

# The native ops read EOS from their own header: it must be M1's.
if _C.VOCAB_EOS != EOS:
    raise ImportError(f"ncx._C reads symbol {_C.VOCAB_EOS} as EOS, M1's EOS is {EOS}: rebuild the extension")

__all__ = ["WindowVocab", "VocabularyGap", "build_window_vocab", "load_window_vocab", "dataset_vocab",
           "flatten_documents", "VOCAB_FILE", "FORMAT", "FORMAT_VERSION"]

FORMAT = "ncx-window-vocab"
FORMAT_VERSION = 1
VOCAB_FILE = "window_vocab.safetensors"  # its name beside a dataset's shards
_META_FIELDS = ("b", "precision", "window_rule", "m1_hash", "m1_arithmetic", "max_symbols")


class VocabularyGap(NcxError):
    """A document where no string of the vocabulary starts at some position: the M1-driven
    encoder would emit an exception window there, which the table cannot reproduce."""

    def __init__(self, document: int, position: int):
        self.document, self.position = document, position
        super().__init__(f"no window of the vocabulary starts at symbol {position} (the M1 encoder emits an "
                         f"exception window there; encode it with --engine m1)", "document", document)


@dataclass
class WindowVocab:
    """The table of one M1 at b bits: code c decodes to pool[offsets[c]:offsets[c+1]], then
    EOS when eos[c]. Tensors live on the CPU."""

    b: int
    precision: int
    window_rule: int
    m1_hash: str
    m1_arithmetic: str
    max_symbols: int
    pool: torch.Tensor     # uint8 [pool bytes]
    offsets: torch.Tensor  # int64 [2^b + 1]
    eos: torch.Tensor      # bool [2^b]
    sha256: str = ""
    _trie: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.sha256:
            self.sha256 = self.content_hash()

    @property
    def num_codes(self) -> int:
        return int(self.eos.numel())

    def meta(self) -> dict:
        return {k: getattr(self, k) for k in _META_FIELDS}

    def content_hash(self) -> str:
        h = hashlib.sha256(json.dumps(self.meta(), sort_keys=True).encode())
        for t in (self.pool, self.offsets, self.eos):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def string(self, code: int) -> tuple[bytes, bool]:
        """(bytes, ends with EOS) of one code."""
        lo, hi = int(self.offsets[code]), int(self.offsets[code + 1])
        return self.pool[lo:hi].numpy().tobytes(), bool(self.eos[code])

    @property
    def trie(self) -> torch.Tensor:
        if self._trie is None:
            self._trie = torch.ops.ncx.vocab_trie(self.pool, self.offsets, self.eos)
        return self._trie

    # ------------------------------------------------------------------ coding
    def encode_flat(self, data: torch.Tensor, doc_offsets: torch.Tensor):
        """Native longest match over documents given as one uint8 tensor and int64 offsets
        [D + 1] -> (codes int32 [W], window_offsets int64 [D + 1], failed_at int64 [D]),
        failed_at -1 where the document encoded, else the symbol where no window starts."""
        return torch.ops.ncx.vocab_encode(self.trie, data, doc_offsets)

    def encode(self, docs: Sequence[bytes], strict: bool = True) -> list[np.ndarray]:
        """Each document (bytes, then EOS) as its window codes (int32). strict: a
        VocabularyGap for the first document that cannot be encoded; else its entry is None."""
        data, offsets = flatten_documents(docs)
        codes, window_offsets, failed_at = self.encode_flat(data, offsets)
        codes, wo, fail = codes.numpy(), window_offsets.numpy(), failed_at.numpy()
        out = []
        for d in range(len(docs)):
            if fail[d] >= 0:
                if strict:
                    raise VocabularyGap(d, int(fail[d]))
                out.append(None)
            else:
                out.append(codes[wo[d]:wo[d + 1]])
        return out

    def decode_flat(self, codes: torch.Tensor, window_offsets: torch.Tensor, caps: torch.Tensor | None = None):
        """Lookup decoding: codes int32 [W], window_offsets int64 [D + 1], caps int32 [W]
        (an exception window's stored symbol count, -1 elsewhere) or None -> (bytes uint8,
        byte_offsets int64 [D + 1], ended bool [D]: the document's EOS was met)."""
        if codes.numel():
            lo, hi = (int(x) for x in torch.aminmax(codes))  # one pass; the op checks again, as a TORCH_CHECK
            if lo < 0 or hi >= self.num_codes:
                raise ValueError(f"window codes must lie in [0, {self.num_codes}), got [{lo}, {hi}]")
        empty = torch.zeros(0, dtype=torch.int32)
        return torch.ops.ncx.vocab_decode(self.pool, self.offsets, self.eos, codes, window_offsets,
                                          empty if caps is None else caps)

    def decode(self, codes: Sequence[np.ndarray], exceptions: Sequence[Sequence[tuple[int, int]]] | None = None
               ) -> list[bytes]:
        """Each document's bytes from its window codes, up to its EOS; exceptions per
        document: (window, symbols) pairs of exception windows (decoded by their count)."""
        lengths = [len(c) for c in codes]
        flat = torch.from_numpy(np.concatenate([np.asarray(c, dtype=np.int32) for c in codes])
                                if codes else np.zeros(0, np.int32))
        window_offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))
        caps = None
        if exceptions is not None and any(exceptions):
            caps = torch.full((len(flat),), -1, dtype=torch.int32)
            for d, exc in enumerate(exceptions):
                for w, count in exc:
                    if not 0 <= w < lengths[d]:
                        raise NcxError(f"exception for window {w}, but it has {lengths[d]} windows", "document", d)
                    caps[int(window_offsets[d]) + w] = count
        data, byte_offsets, _ = self.decode_flat(flat, window_offsets, caps)
        raw, bo = data.numpy().tobytes(), byte_offsets.tolist()
        return [raw[bo[d]:bo[d + 1]] for d in range(len(codes))]

    # --------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> str:
        """Write the table (atomically) and return its sha256."""
        from safetensors.torch import save_file

        path = Path(path)
        # One metadata entry of sorted JSON: safetensors writes several entries in no fixed
        # order, and the same table must make the same file, byte for byte.
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "sha256": self.sha256, **self.meta()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"pool": self.pool, "offsets": self.offsets, "eos": self.eos}, str(tmp),
                  metadata={"ncx": json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
        return self.sha256

    def __repr__(self) -> str:
        return (f"WindowVocab(b={self.b}, P={self.precision}, rule {self.window_rule}, {self.num_codes:,} codes, "
                f"M1 {self.m1_hash[:12]}..., sha256 {self.sha256[:12]}...)")


def load_window_vocab(path: str | os.PathLike) -> WindowVocab:
    """Read a table written by WindowVocab.save, checking its format and its sha256: a
    corrupt, tampered or foreign file is a ValueError, a missing one FileNotFoundError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: window vocabulary not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            try:
                meta = json.loads((f.metadata() or {}).get("ncx", "{}"))
            except json.JSONDecodeError:
                meta = None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an ncx window vocabulary")
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: window vocabulary format_version {meta.get('format_version')!r}, this "
                                 f"ncx reads {FORMAT_VERSION}")
            tensors = {k: f.get_tensor(k) for k in ("pool", "offsets", "eos")}
        fields = {k: meta[k] for k in _META_FIELDS}
    except (SafetensorError, OSError, KeyError) as e:
        raise ValueError(f"{path}: unreadable window vocabulary ({type(e).__name__}: {e})") from None
    ints = {k: fields[k] for k in ("b", "precision", "window_rule", "max_symbols")}
    if not all(type(v) is int for v in ints.values()) or ints["b"] not in (8, 16, 24) or not all(
            isinstance(fields[k], str) for k in ("m1_hash", "m1_arithmetic")):
        raise ValueError(f"{path}: window vocabulary metadata is mangled")
    pool, offsets, eos = tensors["pool"], tensors["offsets"], tensors["eos"]
    if (pool.dtype, offsets.dtype, eos.dtype) != (torch.uint8, torch.int64, torch.bool) or \
            eos.dim() != 1 or eos.numel() != 1 << ints["b"] or offsets.numel() != eos.numel() + 1:
        raise ValueError(f"{path}: window vocabulary tensors have the wrong types or sizes")
    vocab = WindowVocab(ints["b"], ints["precision"], ints["window_rule"], fields["m1_hash"],
                        fields["m1_arithmetic"], ints["max_symbols"], pool, offsets, eos)
    if vocab.sha256 != meta.get("sha256"):
        raise ValueError(f"{path}: window vocabulary content does not match its sha256 (corrupt or edited)")
    return vocab


def build_window_vocab(m1_coder, b: int = 16, precision: int | None = None, chunk: int = 1 << 16,
                       progress: bool = False) -> WindowVocab:
    """Decode every b-bit code as a lone window through M1 and keep each code's symbols.
    precision defaults to EqualInfoACMethod's (min(16, b - 2)).

    Codes go in chunks of consecutive values, which decode to strings sharing prefixes. Within
    a chunk the batched native window decoder advances every code one symbol per step, and M1
    runs once per distinct prefix: codes that took the same symbols share one M1 row, and a
    prefix that branches copies its KV cache to each child (KVCacheCoder.fork). A stream's
    distribution does not depend on the rest of the batch, so this gives every code exactly
    what decoding it alone gives (tested against ncx.model_coding.decode_windows)."""
    if b not in (8, 16, 24):
        raise ValueError(f"a window vocabulary needs b in (8, 16, 24) (2^b codes), got {b}")
    precision = precision if precision is not None else min(16, b - 2)
    ops.check_budget(b, precision)
    n, nb = 1 << b, b // 8
    shifts = torch.arange(nb - 1, -1, -1, dtype=torch.int64) * 8
    pools, lengths, eos_flags = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"window vocabulary b={b}", unit="code")
    for lo in range(0, n, chunk):
        values = torch.arange(lo, min(lo + chunk, n), dtype=torch.int64)
        codes = ((values[:, None] >> shifts) & 0xFF).to(torch.uint8)  # big-endian, [k, nb]
        symbols, counts = decode_lone_windows(m1_coder, codes, b, precision)
        ends = torch.zeros(len(codes), dtype=torch.bool)
        last = torch.cumsum(counts, 0) - 1
        has = counts > 0
        ends[has] = symbols[last[has]] == EOS
        pools.append(symbols[symbols != EOS].to(torch.uint8))  # EOS only ever ends a string
        lengths.append(counts - ends.to(torch.int64))
        eos_flags.append(ends)
        if bar is not None:
            bar.update(len(codes))
    if bar is not None:
        bar.close()
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.cat(lengths), 0)
    return WindowVocab(b, precision, WINDOW_RULE, m1_coder.weights_hash, m1_coder.arithmetic,
                       int(m1_coder.max_symbols), torch.cat(pools), offsets, torch.cat(eos_flags))


def decode_lone_windows(model, codes: torch.Tensor, b: int, precision: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each code of codes (uint8 [k, b/8]) as a lone window: (symbols int64, code by code in
    order, EOS included; symbol counts int64 [k]). See build_window_vocab."""
    k, device = len(codes), torch.device(getattr(model, "device", "cpu"))
    dec = WindowDecoder(k, b, precision, EOS, device)
    dec.start(codes.to(device), torch.ones(k, dtype=torch.bool, device=device),
              torch.full((k,), model.max_symbols, dtype=torch.int64, device=device))
    alive = torch.arange(k, device=device)           # the code of each decoder row
    node = torch.zeros(k, dtype=torch.int64, device=device)  # each row's prefix among M1's rows
    dist = model(torch.full((1,), model.bos, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    rows, syms, depth = [], [], 0
    while len(alive):
        sym, _ = dec.step(dist[node], logits=model.logits)
        got = sym >= 0
        rows.append(alive[got])
        syms.append(sym[got])
        keep = got & (sym != EOS)
        dec.state, alive, parent, sym = dec.state[keep], alive[keep], node[keep], sym[keep]
        if not len(alive):
            break
        # One M1 row per distinct (prefix, symbol): the children of this level.
        children, node = torch.unique(parent * (EOS + 1) + sym, return_inverse=True)
        model.fork(children // (EOS + 1))
        depth += 1
        dist = model(children % (EOS + 1), torch.full_like(children, depth))
    row = torch.cat(rows).cpu() if rows else torch.zeros(0, dtype=torch.int64)
    sym = torch.cat(syms).cpu() if syms else torch.zeros(0, dtype=torch.int64)
    order = torch.sort(row, stable=True).indices  # depth order within each code
    return sym[order], torch.bincount(row, minlength=k)


def dataset_vocab(data) -> WindowVocab | None:
    """The window vocabulary a dataset (ncx.dataset.TokenDataset) carries (its manifest names it and its sha256), or
    None. The file must be the plain name VOCAB_FILE inside the dataset directory."""
    entry = data.manifest.get("extra", {}).get("window_vocab")
    if not entry:
        return None
    if not isinstance(entry, dict) or entry.get("file") != VOCAB_FILE or not isinstance(entry.get("sha256"), str):
        raise ValueError(f"{data.path}: the manifest's window_vocab entry is mangled (expected file {VOCAB_FILE!r} "
                         f"and its sha256)")
    vocab = load_window_vocab(data.path / VOCAB_FILE)
    if vocab.sha256 != entry["sha256"]:
        raise ValueError(f"{data.path / VOCAB_FILE}: not the window vocabulary the dataset was coded with "
                         f"(sha256 {vocab.sha256[:16]}..., the manifest says {entry['sha256'][:16]}...)")
    return vocab


def flatten_documents(docs: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents as the native ops take them: (uint8 [total bytes], int64 offsets [D + 1])."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    joined = bytearray(b"".join(docs))
    data = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
    return data, torch.from_numpy(offsets)
