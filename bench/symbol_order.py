"""Does the order of symbols in the coder's CDF change Equal-Info packing?

An experiment, not part of ncx: a static permutation of the 256 byte values
(EOS stays last) is applied around a float M1, and EqualInfoAC[b=16, P=14]
windows of the first 16 KB of held-out pieces are counted for each order:
windows, symbols per window under the rule, under greedy packing, and the
share the rule gives back.

    python bench/symbol_order.py [--m1 runs/m1-small-27min.safetensors]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from methods_table import pieces, take  # noqa: E402

from ncx import corpus, m1  # noqa: E402
from ncx.model_coding import encode_windows  # noqa: E402


class PermutedModel:
    """A ContextModel whose CDF lists the bytes in `order` (position -> byte;
    EOS stays at 256): the coder sees symbol b at position pos_of[b]."""

    def __init__(self, coder, order: list[int]):
        self.coder = coder
        for attr in ("vocab_size", "bos", "logits", "max_symbols", "device", "weights_hash", "arithmetic"):
            setattr(self, attr, getattr(coder, attr))
        self.byte_at = torch.tensor(list(order) + [m1.EOS])  # position -> symbol
        self.pos_of = torch.argsort(self.byte_at)  # symbol -> position

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.coder(self.byte_at[tokens.clamp(max=m1.EOS)], positions)[:, self.byte_at]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", default="runs/m1-small-27min.safetensors", help="float M1 checkpoint")
    ap.add_argument("--bytes", type=int, default=16384)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    docs = take(pieces(corpus.default_corpus("heldout"), 512), args.bytes)
    counts = collections.Counter(b"".join(corpus.default_corpus("train")))
    by_freq = sorted(range(256), key=lambda b: -counts.get(b, 0))
    orders = {"natural": list(range(256)), "most frequent first": by_freq, "most frequent last": by_freq[::-1],
              "most frequent in the middle": by_freq[1::2][::-1] + by_freq[0::2]}
    model, _ = m1.load_m1(args.m1)
    for name, order in orders.items():
        coder = PermutedModel(model.coder(), order)
        permuted = [bytes(int(coder.pos_of[b]) for b in d) for d in docs]
        windows = encode_windows(permuted, coder, 16, 14, m1.EOS, 256)
        n = sum(len(w.codes) for w in windows)
        kept = sum(int(w.window_symbols.sum()) for w in windows)
        back = sum(int(w.given_back.sum()) for w in windows)
        print(f"{name:28s} windows {n}  symbols/window {kept / n:.4f}  greedy {(kept + back) / n:.4f}  "
              f"given back {100 * back / (kept + back):.3f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
