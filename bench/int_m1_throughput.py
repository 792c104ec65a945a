"""Integer M1 vs float M1: held-out bits/byte and coding throughput, measured
in the same run on the same text (issue: integer-exact M1).

For each M1 (a trained checkpoint, and the paper's 3x256 shape with random
weights, since speed does not depend on the weights) the float coding path
(M1Coder) and the integer one (IntM1Coder of the converted model) encode and
decode the same held-out pieces with AC and EqualInfoAC[b=16]; the script
prints kB/s of text and the integer/float ratio, and the held-out bits/byte
of both models for the trained one.

    python bench/int_m1_throughput.py --m1 runs/m1-small-27min.safetensors \
        [--int-m1 runs/m1-small-27min-int.safetensors] [--device cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from methods_table import pieces, take, throughput  # noqa: E402

from ncx import corpus, m1, methods  # noqa: E402
from ncx.int_m1 import load_int_m1, quantize_m1  # noqa: E402
from ncx.train_m1 import heldout_bits_per_byte  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", help="trained float M1 checkpoint (default: only the random paper-shaped M1)")
    ap.add_argument("--int-m1", help="its integer twin (default: converted here without smoothing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bytes", type=int, default=32768, help="held-out text bytes timed per M1")
    ap.add_argument("--piece-bytes", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256, help="streams coded at once")
    ap.add_argument("--no-bpb", action="store_true", help="skip the held-out bits/byte comparison")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    heldout = corpus.default_corpus("heldout")
    text = take(pieces(heldout, args.piece_bytes), args.bytes)
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": args.threads, "device": args.device, "text_bytes": sum(map(len, text)), "models": {}}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()

    models = []
    if args.m1:
        fm, info = m1.load_m1(args.m1)
        im = load_int_m1(args.int_m1)[0] if args.int_m1 else quantize_m1(fm)
        models.append((f"trained {info['config'].n_layer}x{info['config'].n_embd}", fm, im, True))
    torch.manual_seed(0)
    paper = m1.M1(m1.preset("paper")).eval()
    models.append(("paper 3x256 (random weights)", paper, quantize_m1(paper), False))

    for name, fm, im, trained in models:
        fm, im = fm.to(args.device), im.to(args.device)
        row = {}
        if trained and not args.no_bpb:
            fb = heldout_bits_per_byte(fm, heldout)
            ib = heldout_bits_per_byte(im, heldout)
            row["heldout_bits_per_byte"] = {"float": round(fb, 5), "integer": round(ib, 5),
                                            "difference_percent": round((ib / fb - 1) * 100, 3)}
            print(f"{name}: held-out bits/byte float {fb:.4f}, integer {ib:.4f} ({(ib / fb - 1) * 100:+.2f}%)")
        for label, factory in (("AC", lambda c: methods.ACMethod(c, batch=args.batch)),
                               ("EqualInfoAC b=16", lambda c: methods.EqualInfoACMethod(c, b=16, batch=args.batch))):
            res = {}
            # Alternate float and integer twice so machine load hits both alike; keep the faster run of each.
            for _ in range(2):
                for arith, model in (("float", fm), ("integer", im)):
                    r = throughput(factory, model.coder(), text)
                    best = res.get(arith)
                    if best is None or r["encode_s"] + r["decode_s"] < best["encode_s"] + best["decode_s"]:
                        res[arith] = r
            for ph in ("encode", "decode"):
                res[f"{ph}_integer_over_float"] = res["integer"][f"{ph}_MBps"] / res["float"][f"{ph}_MBps"]
            # Both twins code the same text losslessly (throughput() checks); their sizes:
            res["tokens_integer_over_float"] = res["integer"]["tokens"] / res["float"]["tokens"]
            row[label] = res
            print(f"{label:17s} {name}: " + "  ".join(
                f"{ph} float {res['float'][ph + '_MBps'] * 1e3:7.2f} kB/s, integer "
                f"{res['integer'][ph + '_MBps'] * 1e3:7.2f} kB/s (x{res[ph + '_integer_over_float']:.2f}, "
                f"M1 share {100 * res['float'][ph + '_m1_share']:.0f}% / {100 * res['integer'][ph + '_m1_share']:.0f}%)"
                for ph in ("encode", "decode"))
                + f"  tokens float {res['float']['tokens']}, integer {res['integer']['tokens']} "
                  f"({(res['tokens_integer_over_float'] - 1) * 100:+.2f}%)", flush=True)
        out["models"][name] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
