"""One long document through the M1 methods: encode, decode, check exact.

A single document is one sequential stream for AC (and a sequential chain of
windows for EqualInfoAC's encoder), so its time grows with its length at
batch 1; this script checks that documents of 1 MB (the issue's size) go
through losslessly and reports the time. The document mixes held-out text,
random bytes, invalid UTF-8 and a long run of one byte.

    python bench/long_document.py [--mb 1.0] [--m1 CKPT] [--methods ac,equal_info_ac]

Without --m1 it uses the integer twin of a random tiny M1 (speed and
correctness of the drivers do not depend on the weights).
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from ncx import corpus, m1, methods
from ncx.int_m1 import quantize_m1
from ncx.m1_loader import load_m1_coder


def long_document(n_bytes: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    text = b"".join(corpus.default_corpus("heldout"))
    parts, total = [], 0
    while total < n_bytes:
        kind = rng.randrange(4)
        if kind == 0:
            start = rng.randrange(len(text) - 4096)
            part = text[start:start + rng.randrange(512, 4096)]
        elif kind == 1:
            part = bytes(rng.randrange(256) for _ in range(rng.randrange(64, 512)))
        elif kind == 2:
            part = b"\xff\xfe\xc3\x28\xa0\xa1" * rng.randrange(8, 64)
        else:
            part = b" " * rng.randrange(100, 2000)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:n_bytes]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="document size in MB (10^6 bytes)")
    ap.add_argument("--m1", help="M1 checkpoint, float or integer (default: integer twin of a random tiny M1)")
    ap.add_argument("--methods", default="ac,equal_info_ac")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.m1:
        coder = load_m1_coder(args.m1)[0]
    else:
        torch.manual_seed(0)
        coder = quantize_m1(m1.M1(m1.preset("tiny"))).coder()
    doc = long_document(int(args.mb * 1e6))
    print(f"document: {len(doc):,} bytes; M1 {coder.config}, {coder.arithmetic} arithmetic", flush=True)
    ok = True
    for name in args.methods.split(","):
        method = methods.method_from_name(name, m1_coder=coder)
        t = time.perf_counter()
        [encoded] = method.encode_batch([doc])
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        [decoded] = method.decode_batch([encoded])
        t_dec = time.perf_counter() - t
        exact = decoded == doc
        ok &= exact
        print(f"{method.name}: {len(encoded.tokens):,} tokens ({len(doc) / len(encoded.tokens):.3f} bytes/token), "
              f"encode {t_enc:.0f} s ({len(doc) / t_enc / 1e3:.1f} kB/s), decode {t_dec:.0f} s "
              f"({len(doc) / t_dec / 1e3:.1f} kB/s): {'exact' if exact else 'NOT EXACT'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
