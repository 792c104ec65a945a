"""`ncx export` at corpus scale: time and peak memory per format, against a plain file copy.

Builds a synthetic token dataset of --gib GiB of tokens (uint16, documents of random length,
--shard-gib per shard; what the tokens are does not matter to export), then exports it to
each format in a fresh process and records wall time, throughput and the process's peak
resident memory. The peer is `cp` of the same shard files (what any export must at least do:
read and write every byte). Memory that stays flat as the dataset grows is the point: run
with two sizes to see it.

    python bench/export_scale.py --gib 0.5 4 --json bench/results/export_scale.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_line  # noqa: E402

from ncx import dataset as ds  # noqa: E402
from ncx.export import FORMATS  # noqa: E402

VOCAB = 65536


def build(directory: Path, gib: float, shard_gib: float, seed: int = 0) -> ds.TokenDataset:
    """A dataset of about `gib` GiB of uint16 tokens, written shard by shard (each shard made
    in memory, so this script itself needs about one shard of RAM)."""
    rng = np.random.default_rng(seed)
    total = int(gib * (1 << 30)) // 2
    per_shard = max(1, int(shard_gib * (1 << 30)) // 2)
    doc_id, shard, written = 0, 0, 0
    while written < total:
        n = min(per_shard, total - written)
        lengths = rng.integers(1, 8192, size=2 * n // 4096 + 2)
        lengths = lengths[np.cumsum(lengths) <= n]
        lengths = np.append(lengths, n - lengths.sum()) if lengths.sum() < n else lengths
        tokens = rng.integers(0, VOCAB, size=n, dtype=np.uint16)
        docs = np.split(tokens, np.cumsum(lengths)[:-1])
        ids = range(doc_id, doc_id + len(docs))
        ds.write_shard(directory, shard, docs, [2 * len(d) for d in docs], [0] * len(docs), ids, vocab_size=VOCAB)
        doc_id, shard, written = doc_id + len(docs), shard + 1, written + n
    ds.finalize_manifest(directory, method={"name": "synthetic", "kind": "synthetic"}, vocab_size=VOCAB)
    return ds.open_dataset(directory)


def _timed(argv: list[str]) -> dict:
    """Run argv in a fresh process: wall seconds, and its peak anonymous resident memory
    (RssAnon, sampled every 10 ms: the memory the process itself allocated; pages of files it
    maps or reads are the kernel's cache, which it reclaims as needed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    peak_kib = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.01)
    if proc.wait():
        raise subprocess.CalledProcessError(proc.returncode, argv)
    return {"seconds": time.perf_counter() - t0, "peak_anon_mib": peak_kib / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, nargs="+", default=[0.5, 4.0],
                    help="dataset sizes in GiB of tokens, one run each (default 0.5 4)")
    ap.add_argument("--shard-gib", type=float, default=0.25, help="shard size in GiB (default 0.25)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ncx-export-scale-"))
    sizes = []
    try:
        for gib in args.gib:
            t0 = time.perf_counter()
            data = build(work / "dataset", gib, args.shard_gib)
            print(f"built {data.total_tokens:,} tokens, {len(data):,} documents, {len(data.shards)} shards "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
            size_mib = data.total_tokens * 2 / (1 << 20)
            rows = {}
            files = [str(work / "dataset" / s.files["tokens"]) for s in data.shards]
            (work / "copy").mkdir()
            rows["cp (peer)"] = _timed(["cp", *files, str(work / "copy")])
            shutil.rmtree(work / "copy")
            for fmt in FORMATS:
                out = work / fmt
                rows[fmt] = _timed([sys.executable, "-m", "ncx.cli", "export", str(work / "dataset"), "--format", fmt,
                                    "--out", str(out), "--no-progress", "--no-verify"])
                rows[fmt]["output_mib"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / (1 << 20)
                shutil.rmtree(out)
            for name, r in rows.items():
                r["mib_per_s"] = size_mib / r["seconds"]
                print(f"{gib:5.2f} GiB {name:10s} {r['seconds']:7.1f} s  {r['mib_per_s']:7.0f} MiB/s  "
                      f"peak RssAnon {r['peak_anon_mib']:.0f} MiB", flush=True)
            sizes.append({"gib": gib, "tokens": data.total_tokens, "documents": len(data), "shards": len(data.shards),
                          "token_mib": size_mib, "runs": rows})
            shutil.rmtree(work / "dataset")
        if args.json:
            result = {"machine": cpu_line(), "command": " ".join(["python", "bench/export_scale.py", *sys.argv[1:]]),
                      "sizes": sizes}
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
