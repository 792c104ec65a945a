"""ncx's native coder against its named peers, constriction and torchac, in one run.

    python bench/peers.py                     # 1,000,000 symbols (about 2-3 minutes on 2 cores)
    python bench/peers.py --quick             # 100,000 symbols, a smoke run
    python bench/peers.py --json peers.json   # also write every figure as JSON

The data: N positions, each with its own 256-ary distribution shaped like a
language model's next-byte prediction (Zipf-like logits over a random order of
the bytes, with an exponent that wanders along the sequence, so the entropy is
about 0.5-4 bits, mean about 2), float32 probabilities [N, 256], and a symbol
sampled from each. Every coder takes the float32 probabilities and does its own
quantization inside the timed region:

- ncx: ops.encode / ops.decode over [1, N, 256] (one stream), precision 24
  (the precision constriction's default range coder uses) and 16 (torchac's);
- constriction: stream.queue.RangeEncoder / RangeDecoder with the model family
  stream.model.Categorical(perfect=False) and one probability row per symbol;
- torchac: encode_float_cdf / decode_float_cdf. torchac consumes CDFs, so its
  time includes building them (a cumsum with a leading 0: [N, 257]) and its own
  float-to-int16 normalization.

Everything single-stream runs on one CPU thread (torch.set_num_threads(1)).
Sizes are exact code lengths in bits (ncx's nbits; constriction's whole
32-bit words; torchac's bytes), without any container or per-stream length.
Each figure is the median of --repeats rounds that interleave the coders, as
symbols per wall second and per CPU second (the steadier one on a shared
machine); every round trip is checked for exactness. Then the same data split into B streams ([B, N / B, 256]) goes
through ops.encode / ops.decode with 1 and 2 threads, for the multi-core
speedup.

Targets (issue 2): ncx >= 2.5x constriction for encode and for decode on one
thread; >= 1.8x speedup on 2 cores for multi-stream.

The data generator (lm_like), started_window_decoder and the provenance record
are shared with the other bench scripts; the peers are imported lazily, where
used, because the GPU machine does not have them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from anywhere without an install

from ncx import _C, ops  # noqa: E402


# ------------------------------------------------------------------ data
def _fold(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Reflect x into [lo, hi] (a random walk that bounces off both walls)."""
    w = hi - lo
    y = torch.remainder(x - lo, 2 * w)
    return lo + torch.where(y > w, 2 * w - y, y)


def lm_like(n: int, V: int = 256, seed: int = 0, device="cpu", chunk: int = 1 << 16):
    """LM-like distributions and symbols sampled from them.

    Returns (probs float32 [n, V], each row summing to ~1; symbols int64 [n]).
    Row t: logits = -s_t * log(1 + V * u), u ~ U(0, 1)^V (a Zipf law over a
    random order of the alphabet), s_t a random walk folded into [1.6, 4.5];
    entropy about 0.5-4 bits (5th-95th percentile), mean about 2.1 bits.
    Deterministic for a given (n, V, seed, device); built in chunks of rows so
    a large request never holds more than one chunk of temporaries.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    steps = torch.randn(n, generator=g, device=device).mul_(0.05)
    s = _fold(2.5 + torch.cumsum(steps, 0), 1.6, 4.5)  # (n,)
    probs = torch.empty(n, V, dtype=torch.float32, device=device)
    symbols = torch.empty(n, dtype=torch.int64, device=device)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        u = torch.rand(b - a, V, generator=g, device=device)
        logits = torch.log1p(u.mul_(V)).mul_(-s[a:b, None])
        p = torch.softmax(logits, -1)  # (c, V)
        probs[a:b] = p
        # Inverse-CDF sampling (much faster than torch.multinomial on CPU).
        cdf = torch.cumsum(p, -1)
        r = torch.rand(b - a, 1, generator=g, device=device).mul_(cdf[:, -1:])
        symbols[a:b] = torch.searchsorted(cdf, r).clamp_(max=V - 1).squeeze(1)
    return probs, symbols


def ideal_bits(probs: torch.Tensor, symbols: torch.Tensor) -> float:
    """sum of -log2 p(symbol) in float64: what an ideal coder would spend."""
    p = probs.gather(-1, symbols.unsqueeze(-1)).double()
    p = p / probs.double().sum(-1, keepdim=True)
    return float(-torch.log2(p).sum())


def provenance() -> dict:
    """Where a figure came from: git commit, machine, versions, date."""
    def run(cmd):
        try:
            return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    cpu = ""
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": run(["git", "rev-parse", "HEAD"]),
        # Uncommitted changes to what the figures depend on (the coder and its build).
        "git_dirty": run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                          "../csrc", "../ncx", "../setup.py"]).splitlines(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # Other work on a shared machine skews timings: keep the load beside them.
        "loadavg_1min": os.getloadavg()[0],
        # An in-place rebuild of the extension during a run would mix two builds.
        "ncx_C_mtime": os.path.getmtime(_C.__file__),
    }


def started_window_decoder(dist: torch.Tensor, symbols: torch.Tensor, precision: int, budget_bits: int,
                           cap: int = 64) -> torch.Tensor:
    """A window decoder state (int64 [B, words]) holding one real window per
    stream, before its first symbol: the window the encoder closes first when
    fed the row dist[b] (float32 [B, V]) and symbols[b] ([B]) again and again.
    Windows are capped at cap symbols (M1's context in real use), so a
    near-certain symbol still closes its window soon."""
    _ops = torch.ops.ncx
    B, device = dist.shape[0], dist.device
    enc = ops.new_state("window_encoder", B, device)
    codes = torch.zeros(B, budget_bits // 8, dtype=torch.uint8, device=device)
    counts = torch.full((B,), cap, dtype=torch.int64, device=device)
    closed = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(cap + 1):
        event, c, nsym, _, status = _ops.window_encode_step(enc, dist, symbols, precision, False, budget_bits, cap)
        ops.check_status(status, "stream")
        new = (event > 0) & ~closed
        codes[new] = c[new]
        exc = new & (event == 2)  # an exception decodes by its stored count
        counts[exc] = nsym[exc].to(torch.int64)
        closed |= new
    assert bool(closed.all()), "some window never closed"
    state = ops.new_state("window_decoder", B, device)
    _ops.window_decode_start(state, codes, torch.ones(B, dtype=torch.bool, device=device), counts, budget_bits)
    return state


# ---------------------------------------------------------------- timing
def timed(fn):
    """(wall seconds, process CPU seconds, fn's result). On a shared machine
    CPU time is the steadier measure of single-threaded work: other processes
    stretch the wall time, not the CPU time the work itself takes."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


# ----------------------------------------------------------------- coders
# Each coder is (encode: () -> code, decode: code -> symbols, size_bits: code -> int,
# same: decoded -> bool). The rounds interleave the coders, so a change of load on
# a shared machine hits all of them alike and the ratios stay fair.
def ncx_coder(probs, symbols, precision):
    dist, sym = probs[None], symbols[None]  # (1, N, 256), (1, N)
    return (
        lambda: ops.encode(dist, sym, precision=precision),
        lambda code: ops.decode(dist, code[0], code[1], precision=precision),
        lambda code: int(code[1][0]),
        lambda out: torch.equal(out[0], symbols),
    )


def constriction_coder(probs, symbols):
    import constriction
    import numpy as np

    family = constriction.stream.model.Categorical(perfect=False)
    sym = symbols.to(torch.int32).numpy()

    def encode():
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(sym, family, probs.numpy())
        return encoder.get_compressed()

    def decode(code):
        return constriction.stream.queue.RangeDecoder(code).decode(family, probs.numpy())

    # The queue coder's output is whole 32-bit words.
    return encode, decode, lambda code: int(code.nbytes) * 8, lambda out: np.array_equal(out, sym)


def torchac_cdf(probs):
    """torchac consumes CDFs [N, V+1] starting at 0 (it normalizes them itself)."""
    cdf = torch.zeros(probs.shape[0], probs.shape[1] + 1, dtype=torch.float32)
    torch.cumsum(probs, -1, out=cdf[:, 1:])
    return cdf


def torchac_coder(probs, symbols):
    import torchac

    sym = symbols.to(torch.int16)
    return (
        lambda: torchac.encode_float_cdf(torchac_cdf(probs), sym),
        lambda code: torchac.decode_float_cdf(torchac_cdf(probs), code),
        lambda code: len(code) * 8,
        lambda out: torch.equal(out.to(torch.int64), symbols),
    )


def race(coders: dict, repeats: int) -> dict:
    """Per coder: median (encode wall s, decode wall s, encode CPU s, decode
    CPU s) over interleaved rounds, and its size in bits. Every round trip
    must be exact."""
    t = {k: {"enc": [], "dec": [], "enc_cpu": [], "dec_cpu": []} for k in coders}
    size = {}
    for _ in range(repeats):
        for name, (encode, decode, size_bits, same) in coders.items():
            wall, cpu, code = timed(encode)
            t[name]["enc"].append(wall)
            t[name]["enc_cpu"].append(cpu)
            wall, cpu, out = timed(lambda: decode(code))
            t[name]["dec"].append(wall)
            t[name]["dec_cpu"].append(cpu)
            if not same(out):
                raise SystemExit(f"{name}: round trip is not exact")
            size[name] = size_bits(code)
    return {k: ({m: statistics.median(v) for m, v in t[k].items()}, size[k]) for k in coders}


def run_multistream(probs, symbols, streams, precision, repeats):
    """ops.encode / decode over [B, N / B, V] with 1 and 2 threads (interleaved).

    Besides wall time, each run's process CPU time is kept: CPU / wall is the
    concurrency the threads got (2.0 on an idle 2-core machine; less when other
    work shares the cores), CPU time 2t / 1t is the cost of splitting the work.
    Each round also streams the probabilities with torch.sum on as many
    threads: the memory system's own 2t / 1t in the same conditions, which
    bounds a coder that reads faster than half of it on one thread.
    """
    rows = []
    for B in streams:
        T = probs.shape[0] // B
        dist = probs[: B * T].view(B, T, -1)
        sym = symbols[: B * T].view(B, T)
        wall = {(op, th): [] for op in ("encode", "decode", "read") for th in (1, 2)}
        cpu = {k: [] for k in wall}
        for _ in range(repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t, c, (data, nbits) = timed(lambda: ops.encode(dist, sym, precision=precision))
                wall["encode", threads].append(t)
                cpu["encode", threads].append(c)
                t, c, out = timed(lambda: ops.decode(dist, data, nbits, precision=precision))
                wall["decode", threads].append(t)
                cpu["decode", threads].append(c)
                if not torch.equal(out, sym):
                    raise SystemExit(f"ncx B={B}: round trip is not exact")
                t, c, _ = timed(lambda: dist.sum())
                wall["read", threads].append(t)
                cpu["read", threads].append(c)
        ideal = ideal_bits(probs[: B * T], symbols[: B * T])
        row = {"B": B, "T": T, "symbols": B * T, "bits": int(nbits.sum()),
               "over_ideal_pct": 100.0 * (int(nbits.sum()) - ideal) / ideal}
        for (op, th), ts in wall.items():
            row[f"{op}_msym_s_{th}t"] = B * T / statistics.median(ts) / 1e6
            row[f"{op}_concurrency_{th}t"] = statistics.median(c / w for c, w in zip(cpu[op, th], ts))
        for op in ("encode", "decode", "read"):
            row[f"{op}_speedup"] = row[f"{op}_msym_s_2t"] / row[f"{op}_msym_s_1t"]
            row[f"{op}_cpu_2t_over_1t"] = statistics.median(cpu[op, 2]) / statistics.median(cpu[op, 1])
        row["read_gb_s_1t"], row["read_gb_s_2t"] = (
            row[f"read_msym_s_{th}t"] * 1e6 * dist.shape[-1] * dist.element_size() / 1e9 for th in (1, 2))
        rows.append(row)
    torch.set_num_threads(1)
    return rows


# ------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="symbols (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="100,000 symbols, 3 repeats: a smoke run")
    ap.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported")
    ap.add_argument("--streams", default="1,2,64",
                    help="comma-separated B for the multi-stream part (B=1: the same-run single-stream baseline)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write all figures to this path")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 100_000, 3
    streams = [int(b) for b in args.streams.split(",") if b]

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    prov = provenance()  # at the start: the commit and build the figures come from
    probs, symbols = lm_like(args.n, 256, args.seed)
    n = args.n
    ideal = ideal_bits(probs, symbols)
    print(f"data: {n:,} symbols, V=256, ideal {ideal / n:.4f} bits/symbol "
          f"(generated in {time.perf_counter() - t0:.1f} s)", flush=True)

    results = []

    def record(name, t, bits, note=""):
        r = {
            "coder": name,
            "encode_msym_s": n / t["enc"] / 1e6,
            "decode_msym_s": n / t["dec"] / 1e6,
            # Symbols per CPU second: the same work, less the other processes' share of the core.
            "encode_msym_per_cpu_s": n / t["enc_cpu"] / 1e6,
            "decode_msym_per_cpu_s": n / t["dec_cpu"] / 1e6,
            "bits": bits,
            "bits_per_symbol": bits / n,
            "over_ideal_pct": 100.0 * (bits - ideal) / ideal,
            "over_ideal_bits_per_symbol": (bits - ideal) / n,
            "note": note,
        }
        results.append(r)
        print(f"  {name:<20} encode {r['encode_msym_s']:7.3f} ({r['encode_msym_per_cpu_s']:7.3f})  "
              f"decode {r['decode_msym_s']:7.3f} ({r['decode_msym_per_cpu_s']:7.3f})  "
              f"{r['bits_per_symbol']:.5f} bits/sym ({r['over_ideal_pct']:+.4f}% over ideal)", flush=True)
        return r

    print(f"one stream, one thread, median of {args.repeats} interleaved rounds; Msym/s of wall time "
          f"(Msym per CPU second):", flush=True)
    coders = {
        "ncx P=24": ncx_coder(probs, symbols, 24),
        "ncx P=16": ncx_coder(probs, symbols, 16),
        "constriction (P=24)": constriction_coder(probs, symbols),
        "torchac (P=16)": torchac_coder(probs, symbols),
    }
    timings = race(coders, args.repeats)
    t_cdf = statistics.median(timed(lambda: torchac_cdf(probs))[0] for _ in range(args.repeats))
    notes = {
        "constriction (P=24)": "RangeEncoder, Categorical(perfect=False); size in whole 32-bit words",
        "torchac (P=16)": f"times include building the CDF (cumsum, {n / t_cdf / 1e6:.1f} Msym/s alone) "
                          f"and torchac's float->int16 normalization",
    }
    for name, (t, bits) in timings.items():
        record(name, t, bits, notes.get(name, ""))
    ncx = {24: results[0], 16: results[1]}
    con, tac = results[2], results[3]
    tac["cdf_only_msym_s"] = n / t_cdf / 1e6

    def ratio(a, b):
        return {op: a[f"{op}_msym_s"] / b[f"{op}_msym_s"] for op in ("encode", "decode")} | {
            f"{op}_cpu": a[f"{op}_msym_per_cpu_s"] / b[f"{op}_msym_per_cpu_s"] for op in ("encode", "decode")}

    # The ceiling of any coder that reads every probability once: one thread
    # streaming them with torch.sum (vectorized, the hardware prefetchers
    # alone), in the same process and conditions.
    t_read = statistics.median(timed(lambda: probs.sum())[0] for _ in range(args.repeats))
    read_ceiling = {"gb_s": probs.numel() * probs.element_size() / t_read / 1e9, "msym_s": n / t_read / 1e6}
    read_ceiling |= {f"over_constriction_{op}": read_ceiling["msym_s"] / con[f"{op}_msym_s"]
                     for op in ("encode", "decode")}
    print(f"  read ceiling: torch.sum streams the probabilities at {read_ceiling['gb_s']:.1f} GB/s, "
          f"{read_ceiling['msym_s']:.2f} Msym/s: {read_ceiling['over_constriction_encode']:.2f}x / "
          f"{read_ceiling['over_constriction_decode']:.2f}x constriction's encode / decode", flush=True)

    ratios = {f"ncx_P{P}_over_constriction": ratio(ncx[P], con) for P in (24, 16)}
    ratios["ncx_P16_over_torchac"] = ratio(ncx[16], tac)
    for k, v in ratios.items():
        print(f"  {k:<28} encode {v['encode']:.2f}x ({v['encode_cpu']:.2f}x)  "
              f"decode {v['decode']:.2f}x ({v['decode_cpu']:.2f}x)", flush=True)

    print(f"multi-stream ncx P=24, median of {args.repeats} interleaved rounds:", flush=True)
    multi = run_multistream(probs, symbols, streams, 24, args.repeats)
    for r in multi:
        print(f"  B={r['B']:<5} T={r['T']:<8} encode {r['encode_msym_s_1t']:.3f} -> {r['encode_msym_s_2t']:.3f} "
              f"Msym/s ({r['encode_speedup']:.2f}x)  decode {r['decode_msym_s_1t']:.3f} -> "
              f"{r['decode_msym_s_2t']:.3f} Msym/s ({r['decode_speedup']:.2f}x)  {r['over_ideal_pct']:+.4f}% over ideal",
              flush=True)
        print(f"          2 threads: concurrency (CPU/wall) encode {r['encode_concurrency_2t']:.2f} decode "
              f"{r['decode_concurrency_2t']:.2f}; CPU time 2t/1t encode {r['encode_cpu_2t_over_1t']:.2f} decode "
              f"{r['decode_cpu_2t_over_1t']:.2f}; torch.sum of the probabilities {r['read_gb_s_1t']:.1f} -> "
              f"{r['read_gb_s_2t']:.1f} GB/s ({r['read_speedup']:.2f}x)", flush=True)

    targets = {
        "encode_ncx_ge_2.5x_constriction": ratios["ncx_P24_over_constriction"]["encode"] >= 2.5,
        "decode_ncx_ge_2.5x_constriction": ratios["ncx_P24_over_constriction"]["decode"] >= 2.5,
        "multistream_ge_1.8x_on_2_cores": all(
            min(r["encode_speedup"], r["decode_speedup"]) >= 1.8 for r in multi if r["B"] >= 2
        ),
    }
    print(f"load average (1 min): {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          f"({os.cpu_count()} CPUs)")
    if os.path.getmtime(_C.__file__) != prov["ncx_C_mtime"]:
        print("WARNING: ncx._C was rebuilt during this run: the figures mix two builds")
    print("targets: " + ", ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in targets.items()), flush=True)
    report = {
        "provenance": prov,
        "ncx_rebuilt_during_run": os.path.getmtime(_C.__file__) != prov["ncx_C_mtime"],
        "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
        "args": vars(args),
        "symbols": n,
        "ideal_bits": ideal,
        "ideal_bits_per_symbol": ideal / n,
        "single_stream_1_thread": results,
        "ratios": ratios,
        "read_ceiling": read_ceiling,
        "multi_stream": multi,
        "targets": targets,
        "wall_s": time.perf_counter() - t0,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
