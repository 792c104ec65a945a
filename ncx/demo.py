"""`ncx demo`: the paper's experiment in miniature, on the embedded corpus, on a CPU.

1. Train a small M1 on the embedded corpus's train split (a few minutes).
2. Compress a subset (cut into short documents) with Bytes, SentencePiece, GZip, StaticAC, AC
   and EqualInfoAC[b=16] at v=256 and v=65k; decode each held-out dataset back and check it
   matches the text exactly (one "ok" line per method). EqualInfoAC[b=16] goes through M1's
   window vocabulary (built once, then longest match; checked against M1 in the loop on the
   first 16 KB of held-out text).
3. Train one small M2 per method (one CPU preset, the same steps for every method), score it on
   the held-out tokens, print the paper's table and draw its main figure.
4. Sample a few texts from the M2 over EqualInfoAC[b=16, v=256], decoded by the window vocabulary.

Everything goes under --out (default runs/demo): m1.safetensors, data/, m2/, results.md,
results.json, results.png, samples.txt. A second run reuses the M1, datasets and M2 runs it
finds there when they were made with the same settings. --quick is a smoke version of every
step (tiny M1, tiny data, a few M2 steps) that finishes in well under a minute.

The full demo is sized to finish within 15 minutes on a 2-core machine. The M2 over
EqualInfoAC[b=16, v=65k] is not trained by default: on a CPU its 65,536-way output layer costs
about 20 times the rest of a nano M2, so a run of the same steps would take longer than the
whole demo (and ~100k training tokens cannot teach a 65,536-token vocabulary much anyway);
--m2-65k trains it too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .corpus import corpus_hash, default_corpus
from .dataset import open_dataset
from .experiment import chunk_documents, default_threads, parse_method, results_table, run_experiment
from .generate import dataset_prompts, format_sample, method_of_dataset, prompt_length, sample_texts
from .int_m1 import calibrate_smoothing, save_int_m1
from .m1 import load_m1, preset as m1_preset, save_m1
from .methods import EqualInfoACMethod
from .train_m1 import heldout_bits_per_byte, train_m1
from .train_m2 import load_model

__all__ = ["DemoSettings", "FULL", "QUICK", "DEMO_METHODS", "SAMPLE_METHOD", "run_demo", "add_arguments", "run"]


@dataclass(frozen=True)
class DemoSettings:
    # M1
    m1_preset: str
    m1_train_bytes: int | None      # cap on the train split for M1 (None: all of it)
    m1_steps: int
    m1_batch_size: int
    m1_lr: float
    m1_time_limit_s: float | None   # None: a step budget, the same M1 on every machine (however slow)
    # data for M2
    train_bytes: int
    heldout_bytes: int
    chunk_bytes: int
    sentencepiece_vocab: int
    # M2
    m2_size: str
    m2_steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    # samples
    n_samples: int
    sample_tokens: int


# Chosen from measurements on a 2-core machine shared with other jobs (one torch thread):
# M1 "small" trains ~4 steps/s at batch 16 x 256 (800 steps: ~3 min, ~2.5 held-out bits/byte);
# M1 coding runs at ~10 KB/s, so AC codes the 440 KB in ~1 min (EqualInfoAC b=16 goes through
# the window vocabulary: seconds);
# a nano M2 trains ~20k tokens/s at v=256 (300 steps of 16 x 256: ~1 min), ~15k at v=2048.
FULL = DemoSettings(
    m1_preset="small", m1_train_bytes=None, m1_steps=800, m1_batch_size=16, m1_lr=3e-3, m1_time_limit_s=None,
    train_bytes=400_000, heldout_bytes=40_000, chunk_bytes=2048, sentencepiece_vocab=2048,
    m2_size="nano", m2_steps=300, batch_size=16, seq_len=256, lr=3e-3, warmup=30,
    n_samples=4, sample_tokens=96)
QUICK = DemoSettings(
    m1_preset="tiny", m1_train_bytes=60_000, m1_steps=300, m1_batch_size=16, m1_lr=3e-3, m1_time_limit_s=30,
    train_bytes=24_000, heldout_bytes=6_000, chunk_bytes=1024, sentencepiece_vocab=512,
    m2_size="nano", m2_steps=8, batch_size=4, seq_len=64, lr=3e-3, warmup=2,
    n_samples=2, sample_tokens=24)


def demo_methods(settings: DemoSettings) -> list[str]:
    return ["bytes", f"sentencepiece[v={settings.sentencepiece_vocab}]", "gzip[v=256]", "static_ac[v=256]",
            "ac[v=256]", "equal_info_ac[b=16,v=256]", "equal_info_ac[b=16,v=65k]"]


DEMO_METHODS = demo_methods(FULL)
SAMPLE_METHOD = "equal_info_ac[b=16,v=256]"
V65K_METHOD = "equal_info_ac[b=16,v=65k]"


def _log(message: str) -> None:
    print(message, flush=True)


def _m1(settings: DemoSettings, out: Path, m1_train, heldout, seed: int):
    """Train M1, or reuse out/m1.safetensors when it was trained with these settings on this data."""
    path = out / "m1.safetensors"
    identity = {"preset": settings.m1_preset, "steps": settings.m1_steps, "batch_size": settings.m1_batch_size,
                "lr": settings.m1_lr, "time_limit_s": settings.m1_time_limit_s, "seed": seed,
                "train_sha256": corpus_hash(m1_train), "heldout_sha256": corpus_hash(heldout)}
    if path.exists():
        try:
            model, info = load_m1(str(path))
            if info["summary"].get("demo") == identity:
                _log(f"[M1] reusing {path} (held-out {info['summary'].get('heldout_bits_per_byte')} bits/byte)")
                return model, info["summary"]
        except ValueError:
            pass
    config = m1_preset(settings.m1_preset)
    _log(f"[M1] training M1 '{settings.m1_preset}' ({config.non_embedding_params:,} non-embedding params) on "
         f"{sum(map(len, m1_train)):,} bytes: {settings.m1_steps} steps"
         + (f" or {settings.m1_time_limit_s:.0f} s" if settings.m1_time_limit_s else ""))
    model, summary = train_m1(config, m1_train, heldout, steps=settings.m1_steps, batch_size=settings.m1_batch_size,
                              lr=settings.m1_lr, seed=seed, time_limit_s=settings.m1_time_limit_s,
                              eval_every=max(1, settings.m1_steps // 4), progress=False, log=_log)
    summary["demo"] = identity
    save_m1(model, str(path), summary)
    return model, summary


def _integer_twin(m1, m1_train, heldout, out: Path) -> dict:
    """Convert M1 into its integer twin (ncx.int_m1), compare held-out bits/byte,
    and check that EqualInfoAC[b=16] through the integer path decodes exactly
    and gives the same bytes in another batch size."""
    twin = calibrate_smoothing(m1, m1_train, alphas=(None, 0.5), max_symbols=1 << 14, log=None)
    save_int_m1(twin, str(out / "m1-int.safetensors"))
    float_bpb, int_bpb = heldout_bits_per_byte(m1, heldout), heldout_bits_per_byte(twin, heldout)
    sample = heldout[:16]
    encoded = EqualInfoACMethod(twin.coder(), b=16, batch=64).encode_batch(sample)
    again = EqualInfoACMethod(twin.coder(), b=16, batch=3).encode_batch(sample)
    same = [e.tokens.tobytes() for e in encoded] == [e.tokens.tobytes() for e in again]
    exact = EqualInfoACMethod(twin.coder(), b=16, batch=7).decode_batch(encoded) == sample
    info = {"heldout_bits_per_byte": round(int_bpb, 4), "float_heldout_bits_per_byte": round(float_bpb, 4),
            "smoothing": twin.calibration["smoothing"], "weights_hash": twin.weights_hash,
            "equal_info_decode_ok": exact, "batch_independent": same, "checked_bytes": sum(map(len, sample))}
    _log(f"[M1] integer twin: held-out {int_bpb:.4f} bits/byte (float {float_bpb:.4f}, "
         f"{(int_bpb / float_bpb - 1) * 100:+.2f}%); EqualInfoAC[b=16] with it on {info['checked_bytes']:,} bytes: "
         f"{'exact' if exact else 'NOT EXACT'}, {'same bytes' if same else 'DIFFERENT bytes'} at batch 64 and 3")
    return info


def run_demo(out: str | Path, settings: DemoSettings = FULL, seed: int = 0, m2_65k: bool = False,
             progress: bool = False) -> dict:
    """Run every step of the demo; returns the experiment's results with "m1", "samples" and
    "seconds" added (also written to out/results.json)."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"ncx demo -> {out} (torch threads: {torch.get_num_threads()})")
    _log("[data] loading the embedded corpus")
    m1_train = default_corpus("train", max_bytes=settings.m1_train_bytes)
    train = chunk_documents(default_corpus("train", max_bytes=settings.train_bytes), settings.chunk_bytes)
    heldout = chunk_documents(default_corpus("heldout", max_bytes=settings.heldout_bytes), settings.chunk_bytes)
    _log(f"[data] M1: {sum(map(len, m1_train)):,} train bytes; M2: {len(train)} train documents "
         f"({sum(map(len, train)):,} bytes), {len(heldout)} held-out ({sum(map(len, heldout)):,} bytes), "
         f"cut at {settings.chunk_bytes} bytes")

    m1, m1_summary = _m1(settings, out, m1_train, heldout, seed)
    integer_twin = _integer_twin(m1, m1_train, heldout, out)
    methods = demo_methods(settings)
    results = run_experiment(
        methods, [settings.m2_size], train, heldout, m1, out, settings.m2_steps,
        compress_only=[] if m2_65k else [V65K_METHOD], batch_size=settings.batch_size, seq_len=settings.seq_len,
        lr=settings.lr, warmup=settings.warmup, seed=seed, progress=progress, log=_log)

    # Samples from the M2 over EqualInfoAC[b=16, v=256], decoded by M1.
    slug = parse_method(SAMPLE_METHOD).slug
    heldout_ds = out / "data" / slug / "heldout"
    method = method_of_dataset(heldout_ds, m1)
    model = load_model(out / "m2" / slug / settings.m2_size)
    prompts = dataset_prompts(open_dataset(heldout_ds), settings.n_samples, prompt_length(method))
    samples = sample_texts(model, method, prompts, settings.sample_tokens, temperature=1.0, seed=seed)
    text = "\n".join(format_sample(i, s) for i, s in enumerate(samples))
    (out / "samples.txt").write_text(f"{method.name}, M2 {settings.m2_size}, temperature 1.0, seed {seed}\n{text}\n")

    results["m1"] = {**(results["m1"] or {}), "preset": settings.m1_preset,
                     "heldout_bits_per_byte": m1_summary.get("heldout_bits_per_byte"),
                     "steps": m1_summary.get("steps"), "train_seconds": m1_summary.get("seconds"),
                     "integer_twin": integer_twin}
    results["samples"] = [{"prompt": s["prompt_text"].decode("utf-8", "replace"),
                           "text": s["text"].decode("utf-8", "replace")} for s in samples]
    results["settings"] = dataclasses.asdict(settings)
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    _log("")
    _log(results_table(results))
    _log("")
    _log(f"M1 '{settings.m1_preset}': held-out {results['m1']['heldout_bits_per_byte']} bits/byte, "
         f"{results['m1']['flops_per_byte'] / 1e6:.2f} MFLOPs/byte; integer twin (decodes on any device) "
         f"{integer_twin['heldout_bits_per_byte']} bits/byte, EqualInfoAC check "
         f"{'ok' if integer_twin['equal_info_decode_ok'] and integer_twin['batch_independent'] else 'FAILED'}")
    _log("decode check (held-out documents decoded back exactly):")
    for m in results["methods"]:
        _log(f"  {m['name']}: {'ok' if m['decode_ok'] else 'FAILED: ' + str(m['decode_problem'])}")
    _log(f"\nsamples ({method.name} M2, decoded by M1):\n{text}\n")
    _log(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}, {out / 'samples.txt'}")
    _log(f"demo finished in {results['seconds'] / 60:.1f} min")
    return results


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where everything goes (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke version of every step (well under a minute)")
    parser.add_argument("--m2-steps", type=int, default=None, help="M2 steps per method (default 300; quick 8)")
    parser.add_argument("--m2-65k", action="store_true",
                        help="also train M2 over EqualInfoAC[b=16, v=65k] (slow on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: half the cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars for M2 training")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads or default_threads())
    settings = QUICK if args.quick else FULL
    if args.m2_steps is not None:
        settings = dataclasses.replace(settings, m2_steps=args.m2_steps)
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    results = run_demo(out, settings, seed=args.seed, m2_65k=args.m2_65k,
                       progress=not args.no_progress and sys.stderr.isatty())
    return 0 if results["all_decoded"] else 1
