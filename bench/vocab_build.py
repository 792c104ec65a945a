"""What a window vocabulary costs to build: b = 16 in full, b = 24 estimated from a sample.

    python bench/vocab_build.py [--m1 CKPT ...] [--threads 1 2] [--b24-sample 65536]

For each M1 (default: the paper-size M1 with random weights, float and its integer twin), the
b = 16 table is built in full (all 65,536 lone windows through M1, the batched native decoder)
at each thread count. b = 24 has 16.7M codes: a random sample of them is decoded the same way
and the time scaled up by 2^24 / sample (an estimate, labelled so). The lone-window decodes
are independent, so the cost is linear in the number of codes.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from ncx import int_m1, m1
from ncx.model_coding import EncodedWindows, decode_windows
from ncx.window_vocab import build_window_vocab

from machine import cpu_line  # bench/machine.py


def coders(paths):
    if paths:
        return {p: m1.load_m1_coder(p)[0] for p in paths}
    torch.manual_seed(0)
    model = m1.M1(m1.preset("paper"))
    return {"paper, random weights, float": model.coder(),
            "paper, random weights, integer": int_m1.quantize_m1(model).coder()}


def b24_estimate(coder, sample: int) -> tuple[float, float]:
    """(seconds for `sample` random b=24 codes, mean symbols per code)."""
    codes = torch.randint(0, 1 << 24, (sample,), generator=torch.Generator().manual_seed(1))
    data = torch.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).to(torch.uint8)
    windows = [EncodedWindows(data[i:i + 1], torch.zeros(1, dtype=torch.int32)) for i in range(sample)]
    t0 = time.perf_counter()
    syms = decode_windows(windows, coder, 24, 16, eos=m1.EOS, batch=2048, keep_eos=True)
    return time.perf_counter() - t0, sum(len(s) for s in syms) / sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", nargs="*", help="M1 checkpoints (default: the paper-size M1, random weights)")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--b24-sample", type=int, default=1 << 16, help="b=24 codes to decode for the estimate (0: skip)")
    args = ap.parse_args()
    print(f"# {cpu_line()}; `python bench/vocab_build.py {' '.join(sys.argv[1:])}`")
    print("| M1 | threads | b=16 build (s) | mean bytes/code | distinct strings | b=24 estimate (min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, coder in coders(args.m1).items():
        for threads in args.threads:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            vocab = build_window_vocab(coder, b=16)
            seconds = time.perf_counter() - t0
            lengths = (vocab.offsets[1:] - vocab.offsets[:-1]).double()
            distinct = len({vocab.string(c) for c in range(vocab.num_codes)})
            est = "-"
            if args.b24_sample and threads == max(args.threads):
                s, _ = b24_estimate(coder, args.b24_sample)
                est = f"{s * (1 << 24) / args.b24_sample / 60:.0f} (from {args.b24_sample:,} codes in {s:.1f} s)"
            print(f"| {name} | {threads} | {seconds:.1f} | {float(lengths.mean()):.2f} | {distinct:,} | {est} |",
                  flush=True)


if __name__ == "__main__":
    main()
