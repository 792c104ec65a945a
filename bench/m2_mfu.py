"""M2 training throughput and model FLOPs utilization (MFU), measured through ncx.train_m2 itself.

    python bench/m2_mfu.py --out m2_mfu.json [--presets 25m,113m] [--steps 30] [--batch-size 64]
    python bench/m2_mfu.py --dry-run --out /tmp/m.json    # CPU, the nano preset, seconds

For each preset, train_m2 trains on a dataset of random tokens (speed does not depend on them)
over a vocabulary of --vocab (65,536: EqualInfoAC b=16's tokens) at --seq-len, with torch.compile
and bf16 autocast on CUDA (train_m2's defaults there), and reports tokens/s over the steady steps
(its first step, which pays for compilation, left out). MFU = model FLOPs per second / peak:

    model FLOPs per token = 6 (N + V d) + 12 n_layer d T

N the non-embedding parameters, V d the tied output projection (a matmul per token, though its
weight is the embedding), T the sequence length; the attention term counts the full T x T score
matrix (the PaLM convention; causal masking halves the work done). The peak is the card's dense
bf16 rate from its data sheet (--peak-tflops overrides; unknown cards get none), and the
bf16 matmul rate measured here (8192^3, torch.matmul) is given beside it as a reachable ceiling.
On the CPU (dry run) the measured float32 matmul rate stands in for the peak; figures meaningless.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # ncx without an install

from ncx.dataset import write_dataset  # noqa: E402
from ncx.m2 import M2, preset  # noqa: E402
from ncx.train_m2 import train_m2  # noqa: E402
from peers import provenance  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s, by a substring of the card's name.
PEAK_BF16 = (("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12), ("A100", 312.0e12))


def peak_for(card: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name in card), None)


def matmul_rate(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of torch.matmul on n x n matrices (best of `repeats` after a warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def random_dataset(path: str, tokens: int, vocab: int, seed: int):
    """A dataset of documents of random tokens (1,024 each; bytes = tokens, as for a 1-byte token)."""
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    docs = [rng.integers(0, vocab, 1024).astype(dtype) for _ in range(max(1, tokens // 1024))]
    return write_dataset(path, docs, [len(d) for d in docs], [zlib.crc32(d.tobytes()) for d in docs],
                         vocab_size=vocab, method={"name": "random tokens"})


def flops_per_token(model: M2, seq_len: int) -> float:
    c = model.config
    return 6 * (model.non_embedding_params() + c.vocab_size * c.n_embd) + 12 * c.n_layer * c.n_embd * seq_len


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=None, help="comma-separated M2 presets (default 25m,113m; nano dry run)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 65536; 256 dry run)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; 64 dry run)")
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 64; 4 dry run)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per preset (default 30; 3 dry run)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds per preset for train_m2 (it stops and reports what it measured)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's peak, dense bf16 (default: by name)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, not the speed")
    ap.add_argument("--out", required=True, help="JSON with every figure")
    args = ap.parse_args(argv)
    dry = args.dry_run
    cuda = torch.cuda.is_available() and not dry
    device = "cuda" if cuda else "cpu"
    presets = (args.presets or ("nano" if dry else "25m,113m")).split(",")
    vocab = args.vocab or (256 if dry else 1 << 16)
    seq_len = args.seq_len or (64 if dry else 512)
    batch = args.batch_size or (4 if dry else 64)
    steps = args.steps or (3 if dry else 30)
    card = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    if cuda:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_for(card)
        measured = matmul_rate(device, torch.bfloat16, 8192)
    else:
        measured = matmul_rate(device, torch.float32, 512 if dry else 2048)
        peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    r = {"dry_run": dry, "device": device, "card": card, "torch": torch.__version__,
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "provenance": provenance(), "vocab": vocab, "seq_len": seq_len, "batch_size": batch, "steps": steps,
         "peak_flops": peak, "matmul_flops_measured": measured,
         "matmul_measured": "bf16 8192^3" if cuda else "float32 (CPU)", "presets": {}}
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        need = (steps + 2) * batch * (seq_len + 1)
        train = random_dataset(os.path.join(tmp, "train"), need, vocab, 0)
        valid = random_dataset(os.path.join(tmp, "valid"), 2 * (seq_len + 1), vocab, 1)
        for name in presets:
            res = r["presets"][name] = {}
            try:
                model = M2(preset(name, vocab, context=seq_len))
                res["flops_per_token"] = flops_per_token(model, seq_len)
                res["non_embedding_params"] = model.non_embedding_params()
                del model
                t = time.perf_counter()
                summary = train_m2(train, valid, name, steps, batch_size=batch, seq_len=seq_len, device=device,
                                   warmup=max(1, steps // 10), progress=False, time_limit=args.time_limit)
                res["wall_s"] = time.perf_counter() - t
                tps = summary["tokens_per_second"]
                res.update(tokens_per_second=tps, steps_done=summary["steps"], completed=summary["completed"],
                           compile=cuda, bf16=cuda, model_flops_per_s=tps * res["flops_per_token"])
                res["mfu"] = res["model_flops_per_s"] / peak if peak else None
                res["of_measured_matmul"] = res["model_flops_per_s"] / measured
                res["status"] = "ok"
            except Exception as e:  # one preset failing must not lose the other's figures
                res.update(status="failed", error=f"{type(e).__name__}: {e}")
                status = 1
            if cuda:
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(r, f, indent=1)
    peak_txt = f"peak {peak / 1e12:.0f} TFLOP/s" if peak else "no peak known for this card"
    print(f"M2 training on {card} ({'DRY RUN, figures meaningless' if dry else device}, torch {torch.__version__}), "
          f"vocab {vocab}, {batch} x {seq_len} tokens a step; {peak_txt}; measured "
          f"{r['matmul_measured']} matmul {measured / 1e12:.1f} TFLOP/s")
    for name, res in r["presets"].items():
        if res["status"] != "ok":
            print(f"  {name:<6} FAILED {res['error'][:200]}")
            continue
        mfu = f"MFU {100 * res['mfu']:.1f}%" if res["mfu"] is not None else "MFU -"
        print(f"  {name:<6} {res['tokens_per_second']:>12,.0f} tokens/s  {res['model_flops_per_s'] / 1e12:7.1f} TFLOP/s  "
              f"{mfu}  ({100 * res['of_measured_matmul']:.1f}% of the measured matmul), {res['steps_done']} steps "
              f"in {res['wall_s']:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
