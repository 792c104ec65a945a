"""GPU figures of the native coder (issue 2), against the card's own copy bandwidth.

    python bench/gpu_bench.py --out gpu_bench.json            # needs CUDA; < 3 minutes on an H100/H200
    python bench/gpu_bench.py --dry-run --out /tmp/dry.json   # tiny sizes on the CPU: checks the code path

What it measures, in order (the table at the end collects the figures):
1. copy bandwidth: a device-to-device copy of a 2 GiB buffer (40x an H100's
   L2), CUDA events, median of 20; counted as bytes read + bytes written, i.e.
   the DRAM traffic the card sustains;
2. CPU-vs-GPU identical output on samples: quantize (probabilities and
   logits, LM-like and adversarial rows), whole-stream encode bytes, a
   sequence of stream / window encode steps and window decode steps;
3. batched encode: ops.encode of [B=8192, T=1024, V=257] float32 LM-like
   probabilities (8.6 GB), after a warm-up, median of 5 with CUDA events. The
   rate is probability bytes read / time; the target is >= half the copy
   bandwidth (time <= 2x the floor, floor = bytes read / copy bandwidth). The
   decode of the same batch is timed too and the round trip checked. If the
   batch does not fit in free memory, T is halved until it does (and noted);
4. one step of stream_encode_step, window_encode_step, stream_decode_step and
   window_decode_step over 8192 streams: per-step time from a loop of eager
   calls between two events, and from CUDA graph replays (if the op captures).
   The window decoder's window ends after a few symbols, so each of its calls
   first restores the freshly started state (a small copy); that copy is timed
   alone as well and its time subtracted for the net figure. Target: a decoder
   step < 20 us.

--dry-run runs the same code with tiny sizes on the CPU (perf_counter instead
of events, no graphs), so a mistake in this script surfaces before GPU time is
spent on it; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from ncx import _C, ops  # noqa: E402
from peers import lm_like, provenance, started_window_decoder  # noqa: E402

_ops = torch.ops.ncx
V = 257
P_STREAM = 16
P_WINDOW, BUDGET = 14, 16
DECODER_STEP_TARGET_US = 20.0


# ------------------------------------------------------------------ timing
class Clock:
    """Seconds taken by GPU work (CUDA events) or, on the CPU, wall time."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn) -> float:
        return self.loop(fn, 1)

    def loop(self, fn, n: int) -> float:
        """Seconds per call of n back-to-back calls (no sync between them)."""
        if self.cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(n):
                fn()
            e1.record()
            e1.synchronize()
            return e0.elapsed_time(e1) / 1e3 / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    def median(self, fn, reps: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        return statistics.median(self.once(fn) for _ in range(reps))

    def graph(self, fn, per_graph: int, replays: int):
        """Seconds per call from CUDA graph replays of per_graph captured
        calls; (None, reason) when the op cannot be captured or on the CPU."""
        if not self.cuda:
            return None, "no CUDA graphs on the CPU"
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(per_graph):
                    fn()
            g.replay()
            torch.cuda.synchronize()
        except Exception as e:  # an op that syncs or allocates on the host cannot be captured
            torch.cuda.synchronize()
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        t = statistics.median(self.loop(g.replay, replays) for _ in range(3))
        return t / per_graph, ""


# ----------------------------------------------------------- measurements
def copy_bandwidth(clock: Clock, device: str, nbytes: int) -> dict:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = clock.median(lambda: dst.copy_(src), reps=20, warmup=3)
    del src, dst
    return {"buffer_bytes": nbytes, "seconds": t, "read_write_GBps": 2 * nbytes / t / 1e9,
            "one_way_GBps": nbytes / t / 1e9}


def adversarial_rows(V: int) -> torch.Tensor:
    """Rows that stress the quantizer: one-hot, uniform, zeros, denormals,
    huge and tiny magnitudes, a near-certain symbol, unnormalized weights."""
    rows = [torch.zeros(V) for _ in range(10)]
    rows[0][0] = 1.0
    rows[1][:] = 1.0 / V
    rows[2][V - 1] = 1.0
    rows[3][:] = 1e-40  # denormal float32 everywhere
    rows[3][5] = 1.0
    rows[4][:] = 3e38 / V  # huge, still finite when summed in float32
    rows[5][:] = torch.logspace(-38, 0, V)
    rows[6][:] = 1e-9
    rows[6][7] = 1.0 - 1e-9 * (V - 1)
    rows[7][::2] = 1.0  # half the alphabet zero
    rows[8][:] = torch.arange(V, dtype=torch.float32) * 1000.0
    rows[9][:] = torch.rand(V, generator=torch.Generator().manual_seed(9)) ** 8
    return torch.stack(rows)


def identical_checks(device: str, probs: torch.Tensor, symbols: torch.Tensor) -> dict:
    """CPU and device outputs on the same inputs: True where bit-identical.
    probs [S, T, V] and symbols [S, T] are a sample (already on the CPU)."""
    S, T, _ = probs.shape
    out = {}
    rows = torch.cat([probs.reshape(-1, V)[:4096], adversarial_rows(V)])
    for P in (P_STREAM, 24):
        a = ops.quantize(rows, P)
        b = ops.quantize(rows.to(device), P).cpu()
        out[f"quantize_probs_P{P}"] = torch.equal(a, b)
    logits = torch.randn(4096, V, generator=torch.Generator().manual_seed(3)) * 8
    logits[0] = 0
    logits[1, :] = -1e4
    logits[1, 3] = 1e4
    out["quantize_logits"] = torch.equal(ops.quantize(logits, P_STREAM, logits=True),
                                         ops.quantize(logits.to(device), P_STREAM, logits=True).cpu())
    for P in (P_STREAM, 24):
        d0, n0 = ops.encode(probs, symbols, precision=P)
        d1, n1 = ops.encode(probs.to(device), symbols.to(device), precision=P)
        out[f"encode_bytes_P{P}"] = torch.equal(d0, d1.cpu()) and torch.equal(n0, n1.cpu())
        dec = ops.decode(probs.to(device), d1, n1, precision=P).cpu()
        out[f"decode_roundtrip_P{P}"] = torch.equal(dec, symbols)

    # Step ops: the same sequence of steps on both devices, every output compared.
    def steps(dev):
        outs = []
        se = ops.new_state("stream_encoder", S, dev)
        buf = torch.zeros(S, ops.max_encoded_bytes(T, P_STREAM), dtype=torch.uint8, device=dev)
        we = ops.new_state("window_encoder", S, dev)
        for t in range(min(T, 256)):
            dist, sym = probs[:, t].to(dev), symbols[:, t].to(dev)
            outs.append(_ops.stream_encode_step(se, buf, dist, sym, P_STREAM, False))
            outs.extend(_ops.window_encode_step(we, dist, sym, P_WINDOW, False, BUDGET, 64))
        outs.append(_ops.stream_encode_finish(se, buf))
        outs += [buf, se, we]
        wd = started_window_decoder(probs[:, 0].to(dev), symbols[:, 0].to(dev), P_WINDOW, BUDGET)
        for t in range(min(T, 64)):
            outs.extend(_ops.window_decode_step(wd, probs[:, 0].to(dev), P_WINDOW, False, BUDGET, -1))
        outs.append(wd)
        return [o.cpu() for o in outs]

    a, b = steps("cpu"), steps(device)
    out["step_ops"] = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return out


def batched_codec(clock: Clock, device: str, B: int, T: int, copy_rw_Bps: float, reps: int) -> dict:
    """ops.encode / ops.decode of [B, T, V] float32 LM-like probabilities."""
    res = {"B": B, "T_requested": T}
    max_bytes = ops.max_encoded_bytes(T, P_STREAM)
    if device == "cuda":
        need = lambda t: B * t * (V * 4 + 8 + 8) + B * ops.max_encoded_bytes(t, P_STREAM)  # noqa: E731
        free = torch.cuda.mem_get_info()[0]
        # lm_like's temporaries: about 5 chunks of (1 << 20) rows x V floats.
        while T > 1 and need(T) + 6 * (1 << 20) * V * 4 > 0.9 * free:
            T //= 2
        if T != res["T_requested"]:
            res["note"] = (f"[{B}, {res['T_requested']}, {V}] float32 does not fit in "
                           f"{free / 1e9:.1f} GB free: T halved to {T}")
        max_bytes = ops.max_encoded_bytes(T, P_STREAM)
    res["T"] = T
    probs, symbols = lm_like(B * T, V, seed=2, device=device, chunk=1 << 20)
    dist, sym = probs.view(B, T, V), symbols.view(B, T)
    res["prob_bytes"] = dist.numel() * 4
    clock.sync()

    state = {}

    def enc():
        state["code"] = ops.encode(dist, sym, precision=P_STREAM, check=False)

    t_first = clock.once(enc)
    n = reps if t_first < 5 else 1  # a very slow kernel: one more run is enough
    t_enc = clock.median(enc, reps=n, warmup=0)
    data, nbits, status = state["code"]
    ops.check_status(status, "stream")
    assert data.shape == (B, max_bytes)

    def dec():
        state["out"] = ops.decode(dist, data, nbits, precision=P_STREAM, check=False)

    t_first = clock.once(dec)
    t_dec = clock.median(dec, reps=max(1, min(3, n)), warmup=0)
    out, status = state["out"]
    ops.check_status(status, "stream")
    res["roundtrip_exact"] = bool(torch.equal(out, sym))
    res["bits_per_symbol"] = float(nbits.sum()) / (B * T)
    floor = res["prob_bytes"] / copy_rw_Bps
    res.update({
        "encode_s": t_enc, "decode_s": t_dec,
        "encode_msym_s": B * T / t_enc / 1e6, "decode_msym_s": B * T / t_dec / 1e6,
        "encode_prob_GBps": res["prob_bytes"] / t_enc / 1e9,
        "floor_s": floor, "encode_over_floor": t_enc / floor,
        "encode_ge_half_copy_bw": res["prob_bytes"] / t_enc >= 0.5 * copy_rw_Bps,
    })
    # CPU path on a sample of the same streams, for the GPU/CPU ratio on this host.
    s = min(B, 256)
    cd, cs = dist[:s].cpu(), sym[:s].cpu()
    t_cpu = statistics.median(
        _wall(lambda: ops.encode(cd, cs, precision=P_STREAM)) for _ in range(3))
    res["cpu_sample_streams"] = s
    res["cpu_threads"] = torch.get_num_threads()
    res["cpu_encode_msym_s"] = s * T / t_cpu / 1e6
    res["gpu_over_cpu_encode"] = res["encode_msym_s"] / res["cpu_encode_msym_s"]
    sample = (cd[:16, : min(T, 1024)].contiguous(), cs[:16, : min(T, 1024)].contiguous())
    del probs, symbols, dist, sym, data, nbits, out, state
    if device == "cuda":
        torch.cuda.empty_cache()
    return res, sample


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_ops(clock: Clock, device: str, B: int, loops: int, per_graph: int, replays: int) -> dict:
    """Per-step time of each step op over B streams (eager loop and CUDA graph)."""
    probs, symbols = lm_like(B, V, seed=4, device=device)  # one step: (B, V), (B,)
    res = {}

    def measure(name, fn, check):
        fn()
        clock.sync()
        check()
        eager = clock.loop(fn, loops)
        graph, why = clock.graph(fn, per_graph, replays)
        clock.sync()
        check()
        res[name] = {"eager_us": eager * 1e6, "graph_us": None if graph is None else graph * 1e6}
        if why:
            res[name]["graph_note"] = why

    # Stream encoder: runs on; the buffer holds every call this function makes.
    calls = 4 + loops + 3 + per_graph * (1 + 3 * replays) + 16
    se = ops.new_state("stream_encoder", B, device)
    buf = torch.zeros(B, calls * 3 + 16, dtype=torch.uint8, device=device)
    last = {}

    def stream_enc():
        last["s"] = _ops.stream_encode_step(se, buf, probs, symbols, P_STREAM, False)

    measure("stream_encode_step", stream_enc, lambda: ops.check_status(last["s"], "stream"))

    # Window encoder: windows close and restart as in real coding.
    we = ops.new_state("window_encoder", B, device)

    def window_enc():
        last["w"] = _ops.window_encode_step(we, probs, symbols, P_WINDOW, False, BUDGET, 1 << 30)

    measure("window_encode_step", window_enc, lambda: ops.check_status(last["w"][4], "stream"))

    # Window decoder: restore the started state, decode the window's first symbol.
    start = started_window_decoder(probs, symbols, P_WINDOW, BUDGET)
    wd = start.clone()

    def restore():
        wd.copy_(start)

    def window_dec():
        wd.copy_(start)
        last["wd"] = _ops.window_decode_step(wd, probs, P_WINDOW, False, BUDGET, -1)

    def check_wd():
        sym, ended, status = last["wd"]
        ops.check_status(status, "stream")
        assert torch.equal(sym, symbols) and not bool(ended.any()), "window decoder step decoded wrongly"

    measure("window_decode_step_with_restore", window_dec, check_wd)
    measure("restore_copy", restore, lambda: None)

    # Stream decoder, last (its argument checks read nbits on the host, which a
    # graph capture may refuse): decodes on past the code's end (bytes read as zero).
    code, nbits = ops.encode(probs[:, None].expand(B, 64, V), symbols[:, None].expand(B, 64), precision=P_STREAM)
    sd = ops.new_state("stream_decoder", B, device)
    active = torch.ones(B, dtype=torch.bool, device=device)

    def stream_dec():
        last["d"] = _ops.stream_decode_step(sd, code, nbits, probs, active, P_STREAM, False)

    measure("stream_decode_step", stream_dec, lambda: ops.check_status(last["d"][1], "stream"))
    for k in ("eager_us", "graph_us"):
        a, b = res["window_decode_step_with_restore"][k], res["restore_copy"][k]
        res.setdefault("window_decode_step_net", {})[k] = None if a is None or b is None else a - b
    net = res["window_decode_step_net"]
    # The graph figure is the step itself; the eager one adds the host's launch cost.
    res["decoder_step_from"] = "graph" if net["graph_us"] is not None else "eager"
    res["decoder_step_us"] = net[res["decoder_step_from"] + "_us"]
    res["decoder_step_lt_20us"] = res["decoder_step_us"] is not None and res["decoder_step_us"] < DECODER_STEP_TARGET_US
    return res


# --------------------------------------------------------------------- main
def table(r: dict) -> str:
    lines = [f"ncx GPU figures on {r['card']} ({'DRY RUN on the CPU, figures meaningless' if r['dry_run'] else 'CUDA'})"]
    c = r["copy"]
    lines.append(f"  copy bandwidth          {c['read_write_GBps']:10.1f} GB/s (read+write; {c['one_way_GBps']:.1f} one way)")
    e = r["batched"]
    lines.append(f"  encode [{e['B']},{e['T']},{V}]  {e['encode_s'] * 1e3:10.2f} ms  {e['encode_msym_s']:10.1f} Msym/s  "
                 f"{e['encode_prob_GBps']:8.1f} GB/s of probs = {e['encode_over_floor']:.2f}x the floor  "
                 f"(target >= half copy bw: {'MET' if e['encode_ge_half_copy_bw'] else 'NOT MET'})")
    lines.append(f"  decode [{e['B']},{e['T']},{V}]  {e['decode_s'] * 1e3:10.2f} ms  {e['decode_msym_s']:10.1f} Msym/s  "
                 f"round trip {'exact' if e['roundtrip_exact'] else 'WRONG'}")
    lines.append(f"  GPU / CPU encode        {e['gpu_over_cpu_encode']:10.1f}x  (CPU {e['cpu_encode_msym_s']:.2f} Msym/s, "
                 f"{e['cpu_threads']} threads, {e['cpu_sample_streams']} streams)")
    if "note" in e:
        lines.append(f"  note: {e['note']}")
    s = r["steps"]
    lines.append(f"  step ops, B={r['step_streams']}:          eager us/step   graph us/step")
    for name in ("stream_encode_step", "window_encode_step", "window_decode_step_with_restore", "restore_copy",
                 "window_decode_step_net", "stream_decode_step"):
        x = s[name]
        g = "n/a" if x["graph_us"] is None else f"{x['graph_us']:.2f}"
        lines.append(f"    {name:<32} {x['eager_us']:10.2f} {g:>14}")
    d = s["decoder_step_us"]
    lines.append(f"  decoder step            {'n/a' if d is None else f'{d:.2f} us'} ({s['decoder_step_from']}, net of the restore) "
                 f"(target < {DECODER_STEP_TARGET_US:.0f} us: {'MET' if s['decoder_step_lt_20us'] else 'NOT MET'})")
    ok = r["identical"]
    bad = [k for k, v in ok.items() if not v]
    lines.append(f"  CPU == GPU              {'all identical' if not bad else 'DIFFER: ' + ', '.join(bad)} "
                 f"({', '.join(ok)})")
    lines.append(f"  wall {r['wall_s']:.0f} s, commit {r['provenance']['git_commit'][:10]}"
                 f"{' + uncommitted: ' + ' '.join(r['provenance']['git_dirty']) if r['provenance']['git_dirty'] else ''}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="write the figures as JSON here")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: exercise the code path")
    ap.add_argument("--B", type=int, default=8192, help="streams of the batched encode and the step ops")
    ap.add_argument("--T", type=int, default=1024, help="symbols per stream of the batched encode")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.dry_run:
        device, B, T, copy_bytes, reps = "cpu", 64, 64, 16 << 20, 2
        loops, per_graph, replays = 20, 10, 5
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_bench.py needs a CUDA device (use --dry-run to check the script on the CPU)")
        if not getattr(_C, "WITH_CUDA", False):
            sys.exit("this ncx build has no CUDA back end: rebuild with CUDA (NCX_CUDA=1)")
        device, B, T, copy_bytes, reps = "cuda", args.B, args.T, 2 << 30, 5
        loops, per_graph, replays = 200, 20, 20
    clock = Clock(device)
    r = {"dry_run": args.dry_run, "device": device,
         "card": torch.cuda.get_device_name() if device == "cuda" else "CPU", "provenance": provenance()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        r["card_props"] = {"total_memory": p.total_memory, "L2_bytes": getattr(p, "L2_cache_size", None),
                           "sms": p.multi_processor_count, "cc": f"{p.major}.{p.minor}"}

    def stage(name):
        print(f"[{time.perf_counter() - t0:6.1f} s] {name}", flush=True)

    stage("copy bandwidth")
    r["copy"] = copy_bandwidth(clock, device, copy_bytes)
    stage(f"batched encode/decode [{B}, {T}, {V}]")
    r["batched"], sample = batched_codec(clock, device, B, T, r["copy"]["read_write_GBps"] * 1e9, reps)
    stage("CPU vs GPU identical outputs")
    r["identical"] = identical_checks(device, *sample)
    stage(f"step ops, B={B}")
    r["step_streams"] = B
    r["steps"] = step_ops(clock, device, B, loops, per_graph, replays)
    r["wall_s"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(r, f, indent=2)
    print(f"wrote {args.out}")
    print(table(r))
    return r


if __name__ == "__main__":
    main()
