"""ncx at every CPU level this machine runs, against the same peers, in one run.

    python bench/cpu_levels.py [--levels avx512,avx2,baseline] [--quick] [--json out.json]

For each level, in a fresh process (the libraries pick their own instruction
sets when torch is imported), with ncx forced to that level (NCX_CPU_LEVEL)
and torch's own CPU libraries held to the same instruction set (MKL, oneDNN,
ATen), so a lower level on this CPU runs what a CPU of that level runs:

- coder: bench/peers.py, one stream on one thread, ncx P=24 against
  constriction (the ratio is the figure: both run in the same process,
  interleaved), the read ceiling (torch.sum streaming the same
  probabilities: no coder that reads each once can beat it), and 64
  streams on 1 and 2 threads;
- int_linear: the paper M1's three linear shapes with 256 rows, G MAC/s of
  ncx.ops.int_linear (quantize, exact GEMM, dequantize) against a plain
  float32 `x @ w.T` of the same shape, one thread, best of several rounds;
- integer M1: bench/int_m1_throughput.py, the paper-size integer M1 (random
  weights) coding held-out text with AC and EqualInfoAC[b=16] on 2 threads,
  against the float M1 path.

The level's instruction set is what ncx runs; the CPU underneath is still this
one (its caches, memory and clock), so a figure for a level this CPU exceeds
is an emulation, said so in the table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import cpu_line  # noqa: E402

# torch's own libraries held to a level's instruction set.
LIBRARY_CAPS = {
    "avx512": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "baseline": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "ATEN_CPU_CAPABILITY": "default"},
}

LINEAR_PROBE = r"""
import json, sys, time, torch
from ncx import ops
torch.set_num_threads(1)
rows, rounds = 256, int(sys.argv[1])
out = {"level": ops.cpu_level(), "shapes": {}}
for name, K, D in (("qkv", 256, 768), ("fc", 256, 1024), ("fc_proj", 1024, 256)):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(1 << 20), 1 << 20, (rows, K), generator=g, dtype=torch.int32)
    w = torch.randint(-127, 128, (D, K), generator=g, dtype=torch.int8)
    mult = torch.full((D,), 1 << 14, dtype=torch.int32)
    shift = torch.full((D,), 34, dtype=torch.int32)
    xf, wf = torch.randn(rows, K), torch.randn(D, K)
    best = {"int_linear": float("inf"), "float32": float("inf")}
    for _ in range(rounds):  # interleaved, best of the rounds
        for key, fn in (("int_linear", lambda: ops.int_linear(x, w, mult, shift)), ("float32", lambda: xf @ wf.T)):
            fn()
            t = time.perf_counter()
            for _ in range(5):
                fn()
            best[key] = min(best[key], (time.perf_counter() - t) / 5)
    macs = rows * K * D
    out["shapes"][name] = {k: macs / v / 1e9 for k, v in best.items()}
print(json.dumps(out))
"""


def run(cmd: list[str], env: dict, timeout: int) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=timeout,
                       cwd=os.path.dirname(HERE))
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def commit() -> str:
    """The checkout's commit, marked when files differ from it."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (modified)" if git("status", "--porcelain", "--untracked-files=no") else "")


def measure(level: str, quick: bool) -> dict:
    env = {"NCX_CPU_LEVEL": level, **LIBRARY_CAPS[level]}
    out = {"level": level, "env": env}
    with tempfile.TemporaryDirectory() as tmp:
        peers_json = os.path.join(tmp, "peers.json")
        run([sys.executable, os.path.join(HERE, "peers.py"), "--n", "100000" if quick else "400000",
             "--repeats", "3" if quick else "5", "--streams", "64", "--json", peers_json], env, 1800)
        with open(peers_json) as f:
            peers = json.load(f)
        out["coder"] = {"ncx_over_constriction": peers["ratios"]["ncx_P24_over_constriction"],
                        "ncx": peers["single_stream_1_thread"][0], "constriction": peers["single_stream_1_thread"][2],
                        "multistream": peers["multi_stream"][0], "read_ceiling": peers["read_ceiling"]}
        out["int_linear"] = json.loads(run([sys.executable, "-c", LINEAR_PROBE, "3" if quick else "7"], env,
                                           600).strip().splitlines()[-1])
        m1_json = os.path.join(tmp, "int_m1.json")
        run([sys.executable, os.path.join(HERE, "int_m1_throughput.py"), "--no-bpb", "--threads", "2",
             "--bytes", "8192" if quick else "32768", "--json", m1_json], env, 3600)
        with open(m1_json) as f:
            out["int_m1"] = json.load(f)["models"]
    assert out["int_linear"]["level"] == level
    return out


def table(results: list[dict], native: str) -> str:
    lines = ["| level | coder encode / decode vs constriction (1 thread) | read ceiling: torch.sum of the "
             "probabilities, 1 thread (x constriction encode, decode) | 64 streams, 2 threads / 1 "
             "(encode, decode; torch.sum's read) | int_linear / float32 GEMM, G MAC/s (qkv, fc, fc_proj) | integer M1 AC encode, "
             "decode kB/s (x float) | integer M1 EqualInfoAC b=16 encode, decode kB/s (x float) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["coder"]
        ratio = c["ncx_over_constriction"]
        ms = c["multistream"]
        lin = r["int_linear"]["shapes"]
        m1 = next(iter(r["int_m1"].values()))

        def coding(label):
            res = m1[label]
            return ", ".join(f"{res['integer'][ph + '_MBps'] * 1e3:.2f} (x{res[ph + '_integer_over_float']:.2f})"
                             for ph in ("encode", "decode"))

        name = r["level"] + ("" if r["level"] == native else " (emulated on this CPU)")
        lines.append(
            f"| {name} | {ratio['encode']:.2f}x ({c['ncx']['encode_msym_s']:.2f} vs "
            f"{c['constriction']['encode_msym_s']:.2f} Msym/s), {ratio['decode']:.2f}x "
            f"({c['ncx']['decode_msym_s']:.2f} vs {c['constriction']['decode_msym_s']:.2f}) | "
            f"{c['read_ceiling']['gb_s']:.1f} GB/s, {c['read_ceiling']['msym_s']:.2f} Msym/s "
            f"({c['read_ceiling']['over_constriction_encode']:.2f}x, {c['read_ceiling']['over_constriction_decode']:.2f}x) | "
            f"{ms['encode_speedup']:.2f}x, {ms['decode_speedup']:.2f}x; {ms['read_speedup']:.2f}x "
            f"({ms['read_gb_s_1t']:.0f} -> {ms['read_gb_s_2t']:.0f} GB/s) | "
            + ", ".join(f"{v['int_linear']:.1f} / {v['float32']:.1f}" for v in lin.values())
            + f" | {coding('AC')} | {coding('EqualInfoAC b=16')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", help="comma-separated (default: every level this machine runs, best first)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    available = json.loads(run([sys.executable, "-c", "import json; from ncx import ops; "
                                "print(json.dumps(ops.cpu_levels()))"], {}, 300))
    levels = args.levels.split(",") if args.levels else available[::-1]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    for level in levels:
        print(f"== level {level}", flush=True)
        results.append(measure(level, args.quick))
    machine = cpu_line()
    print(f"\n{machine}; ncx's best level here: {available[-1]}\n")
    print(table(results, available[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "best_level": available[-1], "commit": commit(),
                       "command": "python " + " ".join(["bench/cpu_levels.py", *(argv or sys.argv[1:])]),
                       "utc": f"{started:%Y-%m-%d %H:%M}-{datetime.datetime.now(datetime.timezone.utc):%H:%M}",
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
