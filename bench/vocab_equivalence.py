"""The window vocabulary against M1's window encoder, at scale: >= 1,000,000 windows.

    python bench/vocab_equivalence.py [--m1 CKPT] [--windows 1000000] [--long-document 1000000]

Builds the b = 16 table of an M1 (default: the integer twin of a random tiny M1, the fastest
M1 to run in the loop), then encodes the same documents both ways: held-out text of the
embedded corpus, random bytes, invalid UTF-8 and long runs, in 300-byte documents, until the
M1 encoder has made --windows windows; then one --long-document-byte document (one stream:
M1 codes it symbol by symbol, so this part takes the longest). Every window must be equal,
code for code; the table then decodes everything back. Prints what it checked and the time
each engine took.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ncx import corpus, int_m1, m1
from ncx.m1_loader import load_m1_coder
from ncx.model_coding import encode_windows
from ncx.window_vocab import build_window_vocab

from machine import cpu_line  # bench/machine.py


def documents(rng, total: int) -> list[bytes]:
    text = b"\n".join(corpus.default_corpus("heldout") + corpus.default_corpus("train"))
    out, size = [], 0
    while size < total:
        kind = int(rng.integers(5))
        if kind <= 1:
            start = int(rng.integers(0, len(text) - 300))
            doc = text[start:start + 300]
        elif kind == 2:
            doc = rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        elif kind == 3:
            doc = bytes(rng.choice([0xC0, 0xFF, 0xED, 0xA0, 0x80, 0x41], 300))
        else:
            doc = bytes([int(rng.integers(256))]) * int(rng.integers(1, 300))
        out.append(doc)
        size += len(doc)
    return out


def compare(vocab, coder, docs, batch: int) -> tuple[int, float, float]:
    """(windows, M1 seconds, table seconds); raises on the first difference."""
    t0 = time.perf_counter()
    ref = encode_windows(docs, coder, 16, vocab.precision, m1.EOS, batch=batch)
    t_m1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = vocab.encode(docs)
    t_table = time.perf_counter() - t0
    windows = 0
    for i, (r, t) in enumerate(zip(ref, table)):
        codes = (r.codes[:, 0].to(torch.int64) * 256 + r.codes[:, 1]).numpy()
        if r.exceptions or not np.array_equal(codes, t):
            raise SystemExit(f"document {i}: the table's windows differ from M1's (exceptions {r.exceptions})")
        windows += len(t)
    if vocab.decode(table) != list(docs):
        raise SystemExit("the table does not decode its own windows back")
    return windows, t_m1, t_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", help="M1 checkpoint (default: integer twin of a random tiny M1)")
    ap.add_argument("--windows", type=int, default=1_000_000)
    ap.add_argument("--long-document", type=int, default=1_000_000, help="bytes (0: skip)")
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    if args.m1:
        coder = load_m1_coder(args.m1)[0]
    else:
        torch.manual_seed(0)
        coder = int_m1.quantize_m1(m1.M1(m1.preset("tiny"))).coder()
    print(f"# {cpu_line()}; `python bench/vocab_equivalence.py {' '.join(sys.argv[1:])}`", flush=True)
    t0 = time.perf_counter()
    vocab = build_window_vocab(coder, b=16)
    print(f"table built in {time.perf_counter() - t0:.1f} s: {vocab}", flush=True)
    rng = np.random.default_rng(0)
    total_windows, round_ = 0, 0
    while total_windows < args.windows:
        docs = documents(rng, 400_000)
        w, t_m1, t_table = compare(vocab, coder, docs, args.batch)
        total_windows += w
        round_ += 1
        size = sum(map(len, docs))
        print(f"round {round_}: {len(docs):,} documents, {size:,} bytes, {w:,} windows equal "
              f"(total {total_windows:,}); M1 {t_m1:.1f} s, table {t_table * 1e3:.1f} ms", flush=True)
    if args.long_document:
        doc = b"".join(documents(rng, args.long_document))[:args.long_document]
        w, t_m1, t_table = compare(vocab, coder, [doc], 1)
        total_windows += w
        print(f"one {len(doc):,}-byte document: {w:,} windows equal; M1 {t_m1:.1f} s, table {t_table * 1e3:.1f} ms",
              flush=True)
    print(f"all {total_windows:,} windows equal, and decoded back exactly")


if __name__ == "__main__":
    main()
