"""Issue 3's figures: bytes per token of every method on the held-out default
corpus (next to the paper's figures and to gzip -9 / xz -9 / zstd -19), M1's
held-out bits/byte and plain AC's bits/byte, the Equal-Info rule's cost over
greedy packing, and coding throughput with M1's share of the time.

    python bench/methods_table.py --m1 runs/m1.safetensors --json out.json

Documents for the M1 methods are cut into pieces of --piece-bytes (each piece
ends with EOS, like a document), so that many streams run at once; the cut
costs one EOS per piece. Everything else sees the whole held-out documents.
"""
from __future__ import annotations

import argparse
import json
import lzma
import math
import platform
import subprocess
import sys
import time
import zlib

import torch

from ncx import corpus, m1, methods

# Bytes per token from the paper (Lester et al. 2024; docs/design.md, "What the paper gives the code"),
# v=256 and v=65k.
PAPER = {
    "Bytes": (1.00, None), "SentencePiece": (4.28, None), "AC": (5.49, 10.98), "StaticAC": (1.73, 3.46),
    "GZip": (2.23, 4.47), "EqualInfoAC b=16": (2.66, 5.31), "EqualInfoAC b=32": (3.49, 6.97),
    "EqualInfoAC b=64": (4.16, 8.33), "EqualInfoAC b=128": (4.61, 9.22), "EqualInfoAC b=24": (None, None),
}


class TimedModel:
    """Wraps a ContextModel and accumulates the time spent inside it."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        for attr in ("vocab_size", "bos", "logits", "arithmetic", "max_symbols", "device", "weights_hash"):
            setattr(self, attr, getattr(model, attr))
        if hasattr(model, "steps"):  # the integer M1's block forward, which the AC encoder uses
            self.steps = lambda tokens, positions: self._timed(model.steps, tokens, positions)
        if hasattr(model, "reserve"):
            self.reserve = model.reserve

    def _timed(self, fn, tokens, positions):
        t = time.perf_counter()
        out = fn(tokens, positions)
        self.seconds += time.perf_counter() - t
        return out

    def __call__(self, tokens, positions):
        return self._timed(self.model, tokens, positions)


def pieces(docs: list[bytes], size: int) -> list[bytes]:
    return [d[i:i + size] for d in docs for i in range(0, max(len(d), 1), size)]


def take(docs: list[bytes], budget: int) -> list[bytes]:
    """The first documents, until their bytes reach budget."""
    cut, total = [], 0
    for d in docs:
        if total >= budget:
            break
        cut.append(d)
        total += len(d)
    return cut


def whole_file_bits_per_byte(text: bytes) -> dict:
    out = {"gzip -9": 8 * len(zlib.compress(text, 9)) / len(text),
           "xz -9": 8 * len(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)) / len(text)}
    try:
        z = subprocess.run(["zstd", "-19", "-c", "-q"], input=text, capture_output=True, check=True).stdout
        out["zstd -19"] = 8 * len(z) / len(text)
    except (FileNotFoundError, subprocess.CalledProcessError):
        try:
            import zstandard

            out["zstd -19"] = 8 * len(zstandard.ZstdCompressor(level=19).compress(text)) / len(text)
        except ImportError:
            out["zstd -19"] = None
    return out


def bytes_per_token(method, docs) -> tuple[float, list]:
    enc = method.encode_batch(docs)
    return sum(map(len, docs)) / sum(len(e.tokens) for e in enc), enc


class CoderClock:
    """Times every call into the native coder objects (ncx.coder), so the
    coder's share is measured apart from M1's and from the Python driver's."""

    METHODS = [("StreamEncoder", "step"), ("StreamEncoder", "finish"), ("StreamDecoder", "step"),
               ("WindowEncoder", "step"), ("WindowEncoder", "finish"), ("WindowDecoder", "step"),
               ("WindowDecoder", "start")]

    def __init__(self):
        from ncx import coder as coder_module

        self.seconds = 0.0
        self.saved = []
        for cls_name, name in self.METHODS:
            cls = getattr(coder_module, cls_name)
            original = getattr(cls, name)
            self.saved.append((cls, name, original))
            setattr(cls, name, self._timed(original))

    def _timed(self, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t
        return wrapper

    def close(self):
        for cls, name, original in self.saved:
            setattr(cls, name, original)


def throughput(method_factory, coder, docs) -> dict:
    """Encode + decode MB/s of text, and the shares of M1, of the native coder
    and of the Python driver (the rest) in each."""
    timed = TimedModel(coder)
    method = method_factory(timed)
    n = sum(map(len, docs))
    out = {"bytes": n}
    clock = CoderClock()
    try:
        for phase in ("encode", "decode"):
            timed.seconds, clock.seconds = 0.0, 0.0
            t = time.perf_counter()
            if phase == "encode":
                enc = method.encode_batch(docs)
                out["tokens"] = sum(len(e.tokens) for e in enc)
            else:
                assert method.decode_batch(enc) == docs
            wall = time.perf_counter() - t
            out.update({f"{phase}_MBps": n / wall / 1e6, f"{phase}_s": wall,
                        f"{phase}_m1_share": timed.seconds / wall, f"{phase}_coder_share": clock.seconds / wall,
                        f"{phase}_driver_share": 1 - (timed.seconds + clock.seconds) / wall})
    finally:
        clock.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m1", required=True, help="trained M1 checkpoint")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--piece-bytes", type=int, default=2048)
    ap.add_argument("--m1-bytes", type=int, default=None, help="cap the held-out bytes the M1 methods see")
    ap.add_argument("--sp-vocab", type=int, default=32000)
    ap.add_argument("--throughput-bytes", type=int, default=65536)
    ap.add_argument("--throughput-piece-bytes", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only-throughput", action="store_true", help="skip the bytes-per-token table")
    ap.add_argument("--throughput-models", default="trained,paper,tiny",
                    help="which M1s to time (comma-separated: trained, paper, tiny)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    train = corpus.default_corpus("train")
    heldout = corpus.default_corpus("heldout")
    text = b"".join(heldout)
    model, info = m1.load_m1(args.m1)
    coder = model.coder()
    out = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
           "torch": torch.__version__, "heldout_bytes": len(text), "heldout_docs": len(heldout),
           "m1": {"path": args.m1, "hash": info["weights_hash"], "config": str(info["config"]),
                  "summary": info["summary"]}}
    if not args.only_throughput:
        table(args, out, train, heldout, text, model, coder)
    out["throughput"] = measure_throughput(args, heldout, info, coder)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 0


def table(args, out, train, heldout, text, model, coder) -> None:
    out["whole_file_bits_per_byte"] = whole_file_bits_per_byte(text)
    print("whole file:", {k: round(v, 3) for k, v in out["whole_file_bits_per_byte"].items() if v})

    rows = {}

    def record(label, v, bpt, seconds):
        rows.setdefault(label, {})[v] = bpt
        print(f"{label:22s} v={v:<6} bytes/token {bpt:6.3f}   ({seconds:.1f}s)", flush=True)

    for v in (256, 65536):
        for label, factory in [
            ("Bytes", lambda: methods.BytesMethod() if v == 256 else None),
            (f"SentencePiece", lambda: methods.SentencePieceMethod.train(train, args.sp_vocab) if v == 256 else None),
            ("GZip", lambda: methods.GZipMethod(v)),
            ("StaticAC", lambda: methods.StaticACMethod.fit(train, v=v)),
        ]:
            t = time.perf_counter()
            method = factory()
            if method is None:
                continue
            bpt, enc = bytes_per_token(method, heldout)
            assert method.decode_batch(enc) == heldout, method.name
            record(label, v, bpt, time.perf_counter() - t)

    m1_docs = pieces(heldout, args.piece_bytes)
    if args.m1_bytes:
        kept, total = [], 0
        for d in m1_docs:
            if total + len(d) > args.m1_bytes:
                break
            kept.append(d)
            total += len(d)
        m1_docs = kept
    m1_bytes = sum(map(len, m1_docs))
    out["m1_methods_bytes"] = m1_bytes
    out["m1_pieces"] = len(m1_docs)

    # M1's own held-out bits/byte over the same pieces (what plain AC approaches).
    from ncx.train_m1 import heldout_bits_per_byte

    out["m1_heldout_bits_per_byte"] = heldout_bits_per_byte(model, m1_docs)
    print(f"M1 held-out bits/byte: {out['m1_heldout_bits_per_byte']:.4f} over {m1_bytes} bytes", flush=True)

    for v in (256, 65536):
        t = time.perf_counter()
        ac = methods.ACMethod(coder, v=v, batch=256)
        bpt, enc = bytes_per_token(ac, m1_docs)
        record("AC", v, bpt, time.perf_counter() - t)
        if v == 256:
            bits = sum(8 * len(e.tokens) for e in enc)
            out["ac_bits_per_byte"] = bits / m1_bytes
            print(f"plain AC bits/byte (token bytes, so padding included): {out['ac_bits_per_byte']:.4f}")

    greedy = {}
    for b in (16, 24, 32, 64, 128):
        t = time.perf_counter()
        eq = methods.EqualInfoACMethod(coder, b=b, v=256, batch=256)
        from ncx.model_coding import encode_windows

        windows = encode_windows(m1_docs, coder, b, eq.precision, m1.EOS, 256)
        n_windows = sum(len(w.codes) for w in windows)
        kept = sum(int(w.window_symbols.sum()) for w in windows)
        back = sum(int(w.given_back.sum()) for w in windows)
        exceptions = sum(len(w.exceptions) for w in windows)
        seconds = time.perf_counter() - t
        # v=256: b/8 tokens a window; v=65k: the window bytes regrouped in 16-bit tokens per piece.
        tokens_256 = n_windows * b // 8
        tokens_65k = sum((len(w.codes) * b // 8 + 1) // 2 for w in windows)
        record(f"EqualInfoAC b={b}", 256, m1_bytes / tokens_256, seconds)
        record(f"EqualInfoAC b={b}", 65536, m1_bytes / tokens_65k, 0.0)
        # Symbols per window under the rule vs. greedy packing of the same windows (the rule's
        # give-back is the capacity it costs; symbols include each piece's EOS).
        greedy[b] = {"windows": n_windows, "exceptions": exceptions, "symbols_per_window": kept / n_windows,
                     "greedy_symbols_per_window": (kept + back) / n_windows,
                     "rule_over_greedy": kept / (kept + back)}
        print(f"  b={b}: {n_windows} windows, {exceptions} exceptions, rule/greedy = {kept / (kept + back):.4f}")
    out["bytes_per_token"] = rows
    out["equal_info_vs_greedy"] = greedy

    print("\n| method | v=256 | paper v=256 | v=65k | paper v=65k |\n|---|---:|---:|---:|---:|")
    for label, vals in rows.items():
        p = PAPER.get(label, (None, None))
        f = lambda x: f"{x:.2f}" if x else "-"
        print(f"| {label} | {f(vals.get(256))} | {f(p[0])} | {f(vals.get(65536))} | {f(p[1])} |")


def measure_throughput(args, heldout, info, coder) -> dict:
    """Coding throughput with the given (trained) M1, the paper's M1 and a tiny
    one (speed does not depend on the weights, so those two are untrained)."""
    tdocs = pieces(heldout, args.throughput_piece_bytes)
    results = {}
    wanted = set(args.throughput_models.split(","))
    models = [("trained", f"trained {info['config'].n_layer}x{info['config'].n_embd}", lambda: coder,
               args.throughput_bytes),
              ("paper", "paper 3x256", lambda: m1.M1(m1.preset("paper")).coder(), args.throughput_bytes // 2),
              ("tiny", "tiny 2x32", lambda: m1.M1(m1.preset("tiny")).coder(), args.throughput_bytes)]
    for key, m1_name, make, budget in models:
        if key not in wanted:
            continue
        c = make()
        cut = take(tdocs, budget)
        for label, factory in (("AC", lambda tm: methods.ACMethod(tm, batch=256)),
                               ("EqualInfoAC b=16", lambda tm: methods.EqualInfoACMethod(tm, b=16, batch=256))):
            r = throughput(factory, c, cut)
            results[f"{label} / {m1_name}"] = r
            print(f"{label:17s} {m1_name:12s} " + "  ".join(
                f"{ph} {r[ph + '_MBps'] * 1e3:7.2f} kB/s (M1 {100 * r[ph + '_m1_share']:.1f}%, coder "
                f"{100 * r[ph + '_coder_share']:.1f}%, driver {100 * r[ph + '_driver_share']:.1f}%)"
                for ph in ("encode", "decode")), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
