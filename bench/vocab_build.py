"""What a window vocabulary costs to build: b = 16 in full, b = 24 estimated from a sample.

    python bench/vocab_build.py [--m1 CKPT ...] [--threads 1 2] [--b24-sample 65536]

For each M1 (default: the paper-size M1 with random weights, float and its integer twin), the
b = 16 table is built in full (all 65,536 lone windows through M1, one M1 row per distinct
prefix) at each thread count. b = 24 has 16.7M codes: a few chunks of consecutive codes,
spread over the code space, are decoded the way the build decodes them and the time scaled
up to all 256 chunks (an estimate, labelled so).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from ncx import int_m1, m1
from ncx.m1_loader import load_m1_coder
from ncx.window_vocab import build_window_vocab, decode_lone_windows

from machine import cpu_line  # bench/machine.py


def coders(paths):
    if paths:
        return {p: load_m1_coder(p)[0] for p in paths}
    torch.manual_seed(0)
    model = m1.M1(m1.preset("paper"))
    return {"paper, random weights, float": model.coder(),
            "paper, random weights, integer": int_m1.quantize_m1(model).coder()}


def b24_estimate(coder, slices: int) -> tuple[float, float]:
    """(seconds the whole b=24 build would take, mean symbols per code), from `slices` chunks
    of 65,536 consecutive codes spread over the code space, decoded as the build decodes them."""
    chunk = 1 << 16
    seconds, symbols = 0.0, 0
    for i in range(slices):
        lo = (i * (1 << 24)) // slices
        values = torch.arange(lo, lo + chunk)
        codes = torch.stack([values >> 16, (values >> 8) & 255, values & 255], 1).to(torch.uint8)
        t0 = time.perf_counter()
        syms, _ = decode_lone_windows(coder, codes, 24, 16)
        seconds += time.perf_counter() - t0
        symbols += len(syms)
    return seconds * (1 << 24) / (slices * chunk), symbols / (slices * chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", nargs="*", help="M1 checkpoints (default: the paper-size M1, random weights)")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--b24-slices", type=int, default=4,
                    help="chunks of 65,536 b=24 codes to time for the b=24 estimate (0: skip)")
    args = ap.parse_args()
    print(f"# {cpu_line()}; `python bench/vocab_build.py {' '.join(sys.argv[1:])}`")
    print("| M1 | threads | b=16 build (s) | mean bytes/code | distinct strings | trie nodes | b=24 estimate (min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, coder in coders(args.m1).items():
        for threads in args.threads:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            vocab = build_window_vocab(coder, b=16)
            seconds = time.perf_counter() - t0
            lengths = (vocab.offsets[1:] - vocab.offsets[:-1]).double()
            distinct = len({vocab.string(c) for c in range(vocab.num_codes)})
            est = "-"
            if args.b24_slices and threads == max(args.threads):
                s, mean = b24_estimate(coder, args.b24_slices)
                est = f"{s / 60:.0f} (from {args.b24_slices} x 65,536 codes; {mean:.2f} symbols/code)"
            print(f"| {name} | {threads} | {seconds:.1f} | {float(lengths.mean()):.2f} | {distinct:,} | "
                  f"{len(vocab.trie):,} | {est} |", flush=True)


if __name__ == "__main__":
    main()
