"""End-to-end compression and decompression with the paper-size integer M1 on the GPU: MB/s of
text, time per step, and where the time goes (M1 / native coder / Python driver); and what a
window vocabulary costs to build (b = 16 in full, b = 24 estimated).

    python bench/gpu_pipeline.py --out gpu_pipeline.json [--streams 8192] [--budget-s 25]
    python bench/gpu_pipeline.py --dry-run --out /tmp/p.json    # tiny sizes on the CPU, seconds

M1 is the paper's 3x256 shape with random weights (speed does not depend on the weights),
converted to the integer M1 (ncx.int_m1.quantize_m1) and moved to --device. The text is the
embedded default corpus (ncx.corpus), repeated as needed and cut into documents of --doc-bytes
(127 by default: a document plus its EOS is 128 symbols, so plain AC's positions stay below
128 and the KV cache stays at 128 positions, half of what 128-byte documents would need);
there are 2 x --streams of them by default (--bytes sets the total instead).

Stages, each in its own try/except (a failing stage is reported as failed and the next runs):
  a. AC: ncx.methods.ACMethod with the integer M1, batch = --streams;
  b. EqualInfoAC b=32 with M1 in the loop (encode: WindowEncoder; decode: every window alone);
     then, on a GPU, the same again with each M1 step replayed from a CUDA graph
     (IntM1Coder(cuda_graphs=True)): what graphs save over the one-op forward's ~100 launches;
  c. window vocabulary b=16: build_window_vocab (all 65,536 lone windows through M1), its time;
  d. b=24 vocabulary: bench/vocab_build.py's b24_estimate, which decodes slices of 65,536
     consecutive codes as the build does and scales the time up to all 2^24 (an estimate);
  e. EqualInfoAC b=16 through the vocabulary of (c): native longest match / lookup on the CPU.

(a), (b) (both), (e) code the documents in chunks of --streams documents (each chunk: encode, decode,
check decoded == input) and stop between chunks once the next one would end past --budget-s
(measured from the stage's start); whatever the budget, a stage is aborted inside a chunk at
2 x --budget-s (raised from the M1 wrapper; status "capped", figures of the chunks done), so no
stage runs away. (c) is one call and stops only at that hard cap; (d) times 1 slice, then
--b24-slices of them if the budget leaves time for it. Before the
timed chunks a warm-up chunk (--streams documents of 8 bytes) loads the kernels and grows the KV
cache. With the default sizes a stage takes at most about --budget-s, and 2 x --budget-s in the
worst case: 25 s gives about 2 to 2.5 minutes for the script on a GPU, setup included.

Time shares: chunks 0, 2, 4, ... are profiled, chunks 1, 3, ... run plain (their wall time gives
MB/s; with a single chunk done, the profiled chunk's MB/s stand in, and the table says so). In a
profiled chunk the M1 calls (a thin wrapper around the ContextModel's __call__ and steps) and the native
coder's calls (ncx.coder's StreamEncoder / StreamDecoder / WindowEncoder / WindowDecoder
methods, monkeypatched for the stage, see methods_table.CoderClock) run between two
torch.cuda.synchronize() calls, so each one's time is its own; the driver's share is the rest
(Python, and the driver's own tensor ops). The coding loops themselves wait for the device only
every ncx.model_coding.GPU_SYNC_EVERY steps, so the profiled chunks' syncs stop the host from
running ahead: their MB/s are lower than the plain chunks', and are reported apart. Time per step = a phase's wall
time / its M1 calls (one per step in ncx.model_coding's loops; the AC encoder's block of
positions for the integer M1, IntM1Coder.steps, is one call).

Exit status 1 if any stage failed, decoded wrongly or was capped before any figure; the JSON
(--out: every figure, device name, torch version, date, commit) and the table are written
whatever happens.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # sibling bench modules: methods_table, peers, vocab_build
sys.path.insert(0, os.path.dirname(HERE))  # ncx without an install

from ncx import _C, corpus, m1, methods  # noqa: E402
from ncx.int_m1 import quantize_m1  # noqa: E402
from ncx.window_vocab import build_window_vocab  # noqa: E402

from methods_table import CoderClock, TimedModel  # noqa: E402
from peers import provenance  # noqa: E402

HARD_CAP_FACTOR = 2.0  # a stage is aborted inside a chunk at this many times --budget-s
STAGES = ("ac", "eqinfo_b32", "eqinfo_b32_graphs", "vocab_b16_build", "vocab_b24_estimate", "eqinfo_b16_vocab")
LABELS = {"ac": "AC (M1)", "eqinfo_b32": "EqualInfoAC b=32 (M1)", "eqinfo_b32_graphs": "  same, M1 in CUDA graphs",
          "vocab_b16_build": "vocab build b=16",
          "vocab_b24_estimate": "vocab build b=24 (est.)", "eqinfo_b16_vocab": "EqualInfoAC b=16 (vocab)"}


class StageCapped(RuntimeError):
    """The stage ran past its hard cap (HARD_CAP_FACTOR x --budget-s) inside a chunk."""


# ------------------------------------------------------------------ timing
class TimedM1(TimedModel):
    """The ContextModel with its calls counted and, when profiling, timed between two device
    syncs. Also the stage's hard cap: a call past the deadline raises StageCapped."""

    def __init__(self, model, sync):
        super().__init__(model)
        self.sync, self.profile, self.calls, self.deadline = sync, False, 0, None
        self.phase_start = None
        if hasattr(model, "steps"):  # the AC encoder's blocks of positions: one M1 call each
            self.steps = lambda tokens, positions: self._call(model.steps, tokens, positions)

    def __call__(self, tokens, positions):
        return self._call(self.model, tokens, positions)

    def _call(self, fn, tokens, positions):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise StageCapped(f"hard cap reached after {self.calls} M1 calls")
        self.calls += 1
        if not self.profile:
            return fn(tokens, positions)
        self.sync()
        t = time.perf_counter()
        out = fn(tokens, positions)
        self.sync()
        self.seconds += time.perf_counter() - t
        return out

    def __getattr__(self, name):
        """Whatever else the model offers (e.g. KVCacheCoder.fork, which a vocabulary build may call
        to branch its KV cache): the model's own; fork is M1's work, so it is timed as M1's."""
        if name == "model":  # not set yet: no recursion
            raise AttributeError(name)
        attr = getattr(self.model, name)
        if name != "fork" or not callable(attr):
            return attr

        def timed(*a, **kw):
            if not self.profile:
                return attr(*a, **kw)
            self.sync()
            t = time.perf_counter()
            out = attr(*a, **kw)
            self.sync()
            self.seconds += time.perf_counter() - t
            return out
        return timed


class TimedCoder(CoderClock):
    """methods_table.CoderClock (monkeypatches ncx.coder's coder classes for the stage; close()
    restores them) with the calls counted and, when profiling, timed between two device syncs."""

    def __init__(self, sync):
        self.sync, self.profile, self.calls = sync, False, 0
        super().__init__()

    def _timed(self, fn):
        def wrapper(*a, **kw):
            self.calls += 1
            if not self.profile:
                return fn(*a, **kw)
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                self.seconds += time.perf_counter() - t
        return wrapper


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds
        self.hard_deadline = self.t0 + HARD_CAP_FACTOR * seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, next_s: float) -> bool:
        return self.elapsed() + next_s <= self.seconds


def measure(fn, model: TimedM1, clock: TimedCoder | None, profile: bool, sync):
    """(fn(), figures of the call: wall_s, steps (M1 calls), coder_calls, and m1_s / coder_s when profiled)."""
    model.profile = profile
    model.seconds = 0.0
    steps0 = model.calls
    if clock is not None:
        clock.profile, clock.seconds = profile, 0.0
    calls0 = clock.calls if clock is not None else 0
    sync()
    t = time.perf_counter()
    model.phase_start = (t, steps0)  # for the figures of a phase cut short (see partial_phase)
    out = fn()
    sync()
    wall = time.perf_counter() - t
    model.phase_start = None
    fig = {"wall_s": wall, "steps": model.calls - steps0, "coder_calls": (clock.calls - calls0) if clock else 0}
    if profile:
        fig["m1_s"] = model.seconds
        fig["coder_s"] = clock.seconds if clock is not None else 0.0
    return out, fig


def partial_phase(model: TimedM1, clock: TimedCoder | None) -> dict | None:
    """What the phase in progress had done when it stopped (an error or the hard cap): steps,
    time per step and, when profiled, M1's and the coder's time so far."""
    start = getattr(model, "phase_start", None)
    if start is None:
        return None
    wall, steps = time.perf_counter() - start[0], model.calls - start[1]
    out = {"wall_s": wall, "steps": steps, "ms_per_step": wall / steps * 1e3 if steps else None,
           "profiled": model.profile}
    if model.profile:
        out.update({"m1_s": model.seconds, "coder_s": clock.seconds if clock is not None else 0.0})
    return out


def summarize(parts: list[dict], nbytes: int) -> dict | None:
    """Sum of a phase's figures over chunks -> MB/s, ms per step, shares."""
    if not parts:
        return None
    wall = sum(p["wall_s"] for p in parts)
    steps = sum(p["steps"] for p in parts)
    out = {"bytes": nbytes, "wall_s": wall, "MBps": nbytes / wall / 1e6 if wall else None, "steps": steps,
           "ms_per_step": wall / steps * 1e3 if steps else None, "coder_calls": sum(p["coder_calls"] for p in parts)}
    if all("m1_s" in p for p in parts):
        m1_s, coder_s = sum(p["m1_s"] for p in parts), sum(p["coder_s"] for p in parts)
        out.update({"m1_s": m1_s, "coder_s": coder_s, "driver_s": wall - m1_s - coder_s,
                    "m1_share": m1_s / wall, "coder_share": coder_s / wall, "driver_share": 1 - (m1_s + coder_s) / wall,
                    "m1_ms_per_step": m1_s / steps * 1e3 if steps else None,
                    "coder_ms_per_step": coder_s / steps * 1e3 if steps else None})
    return out


# ------------------------------------------------------------------ text
def make_documents(n_docs: int, doc_bytes: int) -> tuple[list[bytes], str]:
    """n_docs documents of doc_bytes bytes cut from the embedded corpus (repeated as needed)."""
    source = "ncx.corpus.default_corpus('train')"
    try:
        text = b"\n".join(corpus.default_corpus("train"))
    except Exception as e:  # e.g. a Python without pydoc_data: any text will do for speed
        source = f"ncx/*.py sources (the default corpus failed: {type(e).__name__}: {e})"
        pkg = os.path.join(os.path.dirname(HERE), "ncx")
        text = b"\n".join(open(os.path.join(pkg, f), "rb").read() for f in sorted(os.listdir(pkg)) if f.endswith(".py"))
    need = n_docs * doc_bytes
    text = (text * (need // len(text) + 1))[:need]
    return [text[i * doc_bytes:(i + 1) * doc_bytes] for i in range(n_docs)], source


# ------------------------------------------------------------------ stages
def codec_stage(res: dict, factory, coder_factory, docs: list[bytes], streams: int, budget_s: float, sync,
                profile_chunks: bool = True) -> None:
    """Encode, decode and check the documents in chunks of `streams`, within the budget. The figures of
    the chunks done are summarized even when the stage stops on an error or its hard cap."""
    budget = Budget(budget_s)
    model = TimedM1(coder_factory(), sync)
    model.deadline = budget.hard_deadline
    clock = TimedCoder(sync)
    figs = {(mode, ph): [] for mode in ("plain", "profiled") for ph in ("encode", "decode")}
    done_bytes = {"plain": 0, "profiled": 0}
    code_bytes = 0
    chunks = [docs[i:i + streams] for i in range(0, len(docs), streams)]
    res.update({"chunks_total": len(chunks), "chunks_done": 0})
    try:
        method = factory(model)
        res["method"] = method.name
        warm = [d[:8] for d in docs[:streams]]
        enc = method.encode_batch(warm)
        if method.decode_batch(enc) != warm:
            res["exact"] = False
            raise AssertionError("warm-up: decoded bytes differ from the input")
        res["warmup_s"] = budget.elapsed()
        last = 0.0
        for k, chunk in enumerate(chunks):
            if k and not budget.fits(last):
                res["stopped_early"] = (f"--budget-s {budget_s:g}: stopped after {k} of {len(chunks)} chunks "
                                        f"({budget.elapsed():.1f} s, the next would take about {last:.1f} s)")
                break
            t = time.perf_counter()
            mode = "profiled" if (profile_chunks and k % 2 == 0) else "plain"
            enc, fe = measure(lambda: method.encode_batch(chunk), model, clock, mode == "profiled", sync)
            dec, fd = measure(lambda: method.decode_batch(enc), model, clock, mode == "profiled", sync)
            if dec != chunk:
                res["exact"] = False
                bad = sum(a != b for a, b in zip(dec, chunk))
                raise AssertionError(f"chunk {k}: {bad} of {len(chunk)} documents decoded wrongly")
            res["exact"] = True
            figs[(mode, "encode")].append(fe)
            figs[(mode, "decode")].append(fd)
            done_bytes[mode] += sum(map(len, chunk))
            code_bytes += sum(len(e.tokens) * e.tokens.itemsize for e in enc)
            res["chunks_done"] = k + 1
            last = time.perf_counter() - t
        if res["chunks_done"] < 2 and profile_chunks:
            res["note"] = "one chunk only: no plain chunk, the MB/s are the profiled chunk's (syncs around M1 and coder)"
        if getattr(method, "vocab_fallbacks", 0):
            res["vocab_fallbacks"] = method.vocab_fallbacks
    finally:
        clock.close()
        cut = partial_phase(model, clock)
        if cut is not None:
            res["phase_cut_short"] = cut
        res["m1_calls"] = model.calls
        res["bytes_done"] = sum(done_bytes.values())
        res["code_bits_per_byte"] = 8 * code_bytes / res["bytes_done"] if res["bytes_done"] else None
        for mode in ("plain", "profiled"):
            for ph in ("encode", "decode"):
                res[f"{ph}_{mode}"] = summarize(figs[(mode, ph)], done_bytes[mode])
        res["stage_s"] = budget.elapsed()


def vocab_build_stage(res: dict, coder, budget_s: float, sync):
    budget = Budget(budget_s)
    model = TimedM1(coder, sync)
    model.deadline = budget.hard_deadline
    clock = TimedCoder(sync)
    try:
        # One call (it cannot stop half-way); profiled, as it runs once: its shares say where a build goes.
        vocab, fig = measure(lambda: build_window_vocab(model, b=16), model, clock, True, sync)
    finally:
        clock.close()
        res["stage_s"] = budget.elapsed()
    lengths = (vocab.offsets[1:] - vocab.offsets[:-1]).double()
    res.update({"b": 16, "codes": vocab.num_codes, "build_s": fig["wall_s"], "steps": fig["steps"],
                "ms_per_step": fig["wall_s"] / fig["steps"] * 1e3 if fig["steps"] else None,
                "m1_share": fig["m1_s"] / fig["wall_s"], "coder_share": fig["coder_s"] / fig["wall_s"],
                "driver_share": 1 - (fig["m1_s"] + fig["coder_s"]) / fig["wall_s"],
                "mean_bytes_per_code": float(lengths.mean()), "eos_codes": int(vocab.eos.sum()),
                "stage_s": budget.elapsed()})
    return vocab


def vocab_b24_stage(res: dict, coder, max_slices: int, budget_s: float, sync) -> None:
    """bench/vocab_build.py's b24_estimate (imported, not copied: a sibling module of this script):
    1 slice of 65,536 consecutive codes first, then max_slices spread over the code space if the
    budget leaves time for them."""
    from vocab_build import b24_estimate

    budget = Budget(budget_s)
    model = TimedM1(coder, sync)
    model.deadline = budget.hard_deadline
    runs, slices = [], 1
    try:
        while True:
            sync()
            t = time.perf_counter()
            estimate_s, mean_syms = b24_estimate(model, slices)
            sync()
            wall = time.perf_counter() - t
            runs.append({"slices": slices, "codes": slices << 16, "seconds": wall, "estimate_full_build_s": estimate_s,
                         "mean_symbols_per_code": mean_syms})
            if slices >= max_slices or not budget.fits(1.2 * wall / slices * max_slices):
                break
            slices = max_slices
    finally:
        res["stage_s"] = budget.elapsed()
        res["runs"] = runs
    best = runs[-1]
    res.update({"b": 24, "slices": best["slices"], "codes_decoded": best["codes"], "sample_s": best["seconds"],
                "us_per_code": best["seconds"] / best["codes"] * 1e6,
                "mean_symbols_per_code": best["mean_symbols_per_code"],
                "estimate_full_build_s": best["estimate_full_build_s"],
                "note": "estimate (vocab_build.b24_estimate): slices of 65,536 consecutive b=24 codes spread over "
                        "the code space, decoded as the build decodes them, time scaled to all 2^24 codes"})
    if best["slices"] < max_slices:
        res["stopped_early"] = f"--budget-s {budget_s:g}: {best['slices']} of the {max_slices} slices asked"


# ------------------------------------------------------------------ report
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(r: dict) -> str:
    c = r["config"]
    lines = [f"ncx pipeline on {r['card']} ({'DRY RUN on the CPU, figures meaningless' if r['dry_run'] else r['device']}"
             f", torch {r['torch']}): integer M1 {c['preset']} (random weights), {c['streams']:,} streams, "
             f"{c['documents']:,} docs x {c['doc_bytes']} B = {c['text_bytes'] / 1e6:.3f} MB, budget {c['budget_s']:g} s/stage",
             f"  {'stage':<26} {'status':<7} {'enc MB/s':>9} {'dec MB/s':>9} {'enc ms/st':>9} {'dec ms/st':>9}"
             f"  {'enc M1/coder/drv %':>18}  {'dec M1/coder/drv %':>18}  exact"]
    codecs = ("ac", "eqinfo_b32", "eqinfo_b32_graphs", "eqinfo_b16_vocab")
    shares = lambda p: (f"{_pct(p.get('m1_share'))}/{_pct(p.get('coder_share'))}/{_pct(p.get('driver_share'))}"  # noqa: E731
                        if p and p.get("m1_share") is not None else "-")
    for name in STAGES:
        if name not in r["stages"]:
            continue
        s, label = r["stages"][name], LABELS[name]
        st = s["status"]
        why = s["error"].splitlines()[0][:150] if s.get("error") else ""
        if name in codecs and (s.get("encode_plain") or s.get("encode_profiled")):
            ep, dp = s.get("encode_profiled") or {}, s.get("decode_profiled") or {}
            e, d = s.get("encode_plain") or ep, s.get("decode_plain") or dp
            exact = {True: "yes", False: "NO"}.get(s.get("exact"), "-")
            lines.append(f"  {label:<26} {st:<7} {_f(e['MBps']):>9} {_f(d['MBps']):>9} "
                         f"{_f(e['ms_per_step'], '{:.2f}'):>9} {_f(d['ms_per_step'], '{:.2f}'):>9}"
                         f"  {shares(ep):>18}  {shares(dp):>18}  {exact}")
            extra = [f"{s['chunks_done']}/{s['chunks_total']} chunks"]
            if ep and s.get("encode_plain"):
                extra.append(f"profiled chunks enc {_f(ep.get('MBps'))} / dec {_f(dp.get('MBps'))} MB/s")
            elif ep:
                extra.append("MB/s from the profiled chunk (no plain chunk done)")
            if s.get("code_bits_per_byte") is not None:
                extra.append(f"{s['code_bits_per_byte']:.2f} bits/byte")
            if s.get("vocab_fallbacks"):
                extra.append(f"{s['vocab_fallbacks']} docs fell back to M1")
            if s.get("stopped_early"):
                extra.append("stopped early (budget)")
            lines.append(f"  {'':<26} {', '.join(extra)}")
            if why:
                lines.append(f"  {'':<26} {st.upper()}: {why}")
        elif name == "vocab_b16_build" and st == "ok":
            lines.append(f"  {label:<26} {'ok':<7} {s['build_s']:.2f} s for {s['codes']:,} codes ("
                         f"{s['steps']} steps, {s['ms_per_step']:.2f} ms/step, M1/coder/drv "
                         f"{_pct(s['m1_share'])}/{_pct(s['coder_share'])}/{_pct(s['driver_share'])} %), "
                         f"{s['mean_bytes_per_code']:.2f} B/code")
        elif name == "vocab_b24_estimate" and st == "ok":
            lines.append(f"  {label:<26} {'ok':<7} about {s['estimate_full_build_s'] / 60:.1f} min for 2^24 codes "
                         f"(from {s['slices']} x 65,536 codes in {s['sample_s']:.2f} s, {s['us_per_code']:.1f} us/code, "
                         f"{s['mean_symbols_per_code']:.2f} symbols/code)"
                         f"{', stopped early (budget)' if s.get('stopped_early') else ''}")
        else:
            lines.append(f"  {label:<26} {st.upper():<7} {why}")
        cut = s.get("phase_cut_short")
        if cut and cut["steps"]:
            m1 = f", M1 {_pct(cut['m1_s'] / cut['wall_s'])} %" if cut.get("profiled") and cut["wall_s"] else ""
            lines.append(f"  {'':<26} the phase cut short: {cut['steps']} steps, {cut['ms_per_step']:.2f} ms/step{m1}")
    lines.append(f"  int_linear products: {r['int8_gemm']}")
    lines.append(f"  wall {r['wall_s']:.0f} s, {r['date']}, commit {r['provenance'].get('git_commit', '')[:10]}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="write the figures as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (tiny M1): exercise the code path")
    ap.add_argument("--device", default=None, help="cuda if available (and ncx has CUDA), else cpu")
    ap.add_argument("--preset", default=None, help="M1 shape (default: paper; tiny with --dry-run)")
    ap.add_argument("--streams", type=int, default=None, help="streams coded at once (default 8192; 16 with --dry-run)")
    ap.add_argument("--doc-bytes", type=int, default=127, help="bytes per document")
    ap.add_argument("--bytes", type=int, default=None, help="text bytes in all (default: 2 x streams documents)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock cap per stage (default 25; 20 dry run)")
    ap.add_argument("--b24-slices", type=int, default=None,
                    help="b=24 estimate: most slices of 65,536 codes to time (default 4; 2 dry run)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    dry = args.dry_run
    has_cuda = torch.cuda.is_available() and bool(getattr(_C, "WITH_CUDA", False))
    device = args.device or ("cpu" if dry or not has_cuda else "cuda")
    if device.startswith("cuda") and not has_cuda:
        sys.exit("gpu_pipeline.py: --device cuda needs a CUDA device and an ncx built with CUDA (NCX_CUDA=1); "
                 "use --dry-run to check the script on the CPU")
    preset = args.preset or ("tiny" if dry else "paper")
    streams = args.streams or (16 if dry else 8192)
    budget_s = args.budget_s if args.budget_s is not None else (20.0 if dry else 25.0)
    b24_slices = args.b24_slices or (2 if dry else 4)
    doc_bytes = max(1, args.doc_bytes)
    if args.bytes is not None:
        doc_bytes = max(1, min(doc_bytes, args.bytes // streams))
        n_docs = max(streams, args.bytes // doc_bytes)
    else:
        n_docs = 2 * streams
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        sys.exit(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    r = {"dry_run": dry, "device": device, "card": torch.cuda.get_device_name() if cuda else "CPU",
         "torch": torch.__version__, "python": platform.python_version(),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "ncx_with_cuda": bool(getattr(_C, "WITH_CUDA", False)), "cpu_threads": torch.get_num_threads(),
         "provenance": provenance(), "stages": {},
         "int8_gemm": (_C.cpu_int8_gemm() if not cuda else _C.cuda_int8_gemm(torch.cuda.current_device())
                       if getattr(_C, "WITH_CUDA", False) else "none: ncx was built without CUDA")}

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    docs, source = make_documents(n_docs, doc_bytes)
    torch.manual_seed(0)
    cfg = m1.preset(preset)
    model = quantize_m1(m1.M1(cfg).eval()).to(device)
    r["config"] = {"preset": preset, "m1": f"{cfg.n_layer}x{cfg.n_embd}, {cfg.n_head} heads, mlp {cfg.mlp}, "
                   f"context {cfg.context}", "arithmetic": "integer", "weights": "random (torch.manual_seed(0))",
                   "streams": streams, "documents": n_docs, "doc_bytes": doc_bytes, "text_bytes": n_docs * doc_bytes,
                   "text_source": source, "budget_s": budget_s, "hard_cap_s": HARD_CAP_FACTOR * budget_s,
                   "b24_slices_max": b24_slices}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        H, hd = cfg.n_head, cfg.head_dim
        L = min(max(16, 1 << doc_bytes.bit_length()), cfg.context)  # AC's positions 0..doc_bytes
        r["config"]["ac_kv_cache_bytes"] = 2 * cfg.n_layer * streams * H * L * hd * 4
        r["config"]["gpu_free_bytes_at_start"], r["config"]["gpu_total_bytes"] = free, total
    log(f"{preset} integer M1 on {device}, {n_docs:,} documents of {doc_bytes} B, {streams:,} streams")

    vocab = None

    def run_stage(name, fn):
        if name not in wanted:
            return None
        log(f"stage {name}")
        res = r["stages"][name] = {"status": "running"}
        try:
            out = fn(res)
            res["status"] = "ok"
            return out
        except Exception as e:  # one failing stage must not stop the others
            res["status"] = "capped" if isinstance(e, StageCapped) else "failed"
            res["error"] = f"{type(e).__name__}: {e}"
            res["traceback"] = traceback.format_exc()
            print(res["traceback"], file=sys.stderr, flush=True)
            return None
        finally:
            if cuda:
                res["max_memory_allocated"] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.empty_cache()
            log(f"stage {name}: {res['status']} ({res.get('stage_s', 0):.1f} s)")

    # Each stage gets a fresh coder (its own KV cache), so one stage's cache does not stay allocated into the next.
    run_stage("ac", lambda res: codec_stage(
        res, lambda c: methods.ACMethod(c, batch=streams), model.coder, docs, streams, budget_s, sync))
    run_stage("eqinfo_b32", lambda res: codec_stage(
        res, lambda c: methods.EqualInfoACMethod(c, b=32, batch=streams), model.coder, docs, streams, budget_s, sync))
    if cuda:  # the same stage with each M1 step replayed from a CUDA graph (IntM1Coder's cuda_graphs)
        run_stage("eqinfo_b32_graphs", lambda res: codec_stage(
            res, lambda c: methods.EqualInfoACMethod(c, b=32, batch=streams),
            lambda: model.coder(cuda_graphs=True), docs, streams, budget_s, sync))
    elif "eqinfo_b32_graphs" in wanted:
        r["stages"]["eqinfo_b32_graphs"] = {"status": "skipped", "error": "CUDA graphs need a CUDA device"}
    vocab = run_stage("vocab_b16_build", lambda res: vocab_build_stage(res, model.coder(), budget_s, sync))
    run_stage("vocab_b24_estimate", lambda res: vocab_b24_stage(
        res, model.coder(), b24_slices, budget_s, sync))

    def vocab_stage(res):
        if vocab is None:
            raise RuntimeError("needs the b=16 vocabulary of stage vocab_b16_build, which did not build")
        res["op_device"] = "cpu"
        # M1 given as well: a document the table cannot encode (a gap) falls back to it and is counted.
        codec_stage(res, lambda c: methods.EqualInfoACMethod(c, b=16, batch=streams, vocab=vocab), model.coder,
                    docs, streams, budget_s, sync, profile_chunks=False)

    run_stage("eqinfo_b16_vocab", vocab_stage)

    r["wall_s"] = time.perf_counter() - t0
    # "capped" (the hard cap hit inside a chunk) is a budget event, not an error, when chunks were done before it:
    # the figures cover those. A stage capped before any figure (or any other error) is a failure.
    failed = [n for n, s in r["stages"].items()
              if s.get("exact") is False or s["status"] == "failed" or (s["status"] == "capped" and not s.get("chunks_done"))]
    r["all_ok"] = not failed
    with open(args.out, "w") as f:
        json.dump(r, f, indent=1)
    print(f"wrote {args.out}")
    print(table(r), flush=True)
    if failed:
        print(f"FAILED stages: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
