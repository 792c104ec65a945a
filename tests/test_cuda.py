"""CPU and CUDA back ends give identical integers: CDFs (probabilities,
bfloat16, logits, bad rows), whole-sequence bytes and nbits, decoded symbols,
and every step op's outputs and states, on fresh random and adversarial
inputs at realistic sizes (B = 512 streams, V = 257). Skipped without a GPU
(conftest: a CUDA device and an ncx build with CUDA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import context_models as cm
from context_models import KINDS, random_rows, row_probs
from ncx import ops
from ncx.model_coding import decode_windows, encode_windows

pytestmark = pytest.mark.cuda
nc = torch.ops.ncx
CUDA = "cuda"


def same(cpu: torch.Tensor, cuda: torch.Tensor, what: str) -> None:
    cuda = cuda.cpu()
    assert cpu.dtype == cuda.dtype and cpu.shape == cuda.shape, what
    if not torch.equal(cpu, cuda):
        bad = torch.nonzero(cpu != cuda)[0].tolist()
        raise AssertionError(f"{what}: CPU and CUDA differ first at {bad}: {cpu[tuple(bad)]} vs {cuda[tuple(bad)]}")


def case(kind: str, B: int, T: int, V: int, seed: int):
    rng = np.random.default_rng(seed)
    rows, logits = random_rows(kind, B * T, V, rng)
    dist = rows.reshape(B, T, V)
    p = row_probs(dist, logits).reshape(-1, V).float()
    sym = torch.multinomial(p + 1e-30, 1, generator=torch.Generator().manual_seed(seed)).view(B, T)
    sym[: B // 8] = p.view(B, T, V)[: B // 8].argmin(-1)  # some streams: always the least likely symbol
    lengths = torch.tensor(rng.integers(0, T + 1, B))
    lengths[:4] = torch.tensor([T, 0, 1, T])[: min(4, B)]
    return dist, logits, sym, lengths


# ------------------------------------------------------------------ quantize
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("precision", [9, 14, 16, 24])
def test_quantize_identical(kind, precision):
    rng = np.random.default_rng(precision * 100 + KINDS.index(kind))
    dist, logits = random_rows(kind, 512, 257, rng)
    cdf, st = nc.quantize(dist, precision, logits)
    cdf_g, st_g = nc.quantize(dist.to(CUDA), precision, logits)
    same(st, st_g, f"{kind} status")
    same(cdf, cdf_g, f"{kind} P={precision} cdf")


@pytest.mark.parametrize("V", [2, 3, 1000, 65536])
def test_quantize_identical_alphabets(V):
    rng = np.random.default_rng(V)
    for kind in ("dirichlet", "logits", "logits_bf16", "peaked", "tiny"):
        dist, logits = random_rows(kind, 8 if V == 65536 else 256, V, rng)
        for precision in sorted({max(1, (V - 1).bit_length()), 16, 24}):
            same(nc.quantize(dist, precision, logits)[0], nc.quantize(dist.to(CUDA), precision, logits)[0],
                 f"V={V} {kind} P={precision}")


def test_quantize_bad_rows_identical():
    x = torch.rand(64, 257)
    x[1, 3], x[2, 7], x[3], x[4, 0] = float("nan"), -1.0, 0.0, float("inf")
    x[5, 1], x[5, 2] = float("nan"), -2.0
    for logits in (False, True):
        y = x.clone()
        if logits:
            y[3] = -float("inf")
        cdf, st = nc.quantize(y, 16, logits)
        cdf_g, st_g = nc.quantize(y.to(CUDA), 16, logits)
        same(st, st_g, "status")
        same(cdf, cdf_g, "cdf")
        assert st[:6].tolist()[1:] != [0] * 5


def test_quantize_non_contiguous_and_batched_shapes():
    d = torch.rand(7, 33, 257)
    t = d.transpose(0, 1)
    same(nc.quantize(t, 20, False)[0], nc.quantize(t.to(CUDA), 20, False)[0], "transposed")
    same(nc.quantize(d, 20, True)[0], nc.quantize(d.to(CUDA), 20, True)[0], "3-d logits")


# ------------------------------------------------------- whole sequences
@pytest.mark.parametrize("kind", ["dirichlet", "bf16", "logits", "logits_bf16", "peaked", "unnormalized", "tiny"])
def test_encode_decode_identical(kind):
    B, T, V = 512, 48, 257
    dist, logits, sym, lengths = case(kind, B, T, V, 7)
    for precision in (14, 24):
        data, nbits, st = nc.encode(dist, sym, lengths, precision, logits, 0)
        g = nc.encode(dist.to(CUDA), sym.to(CUDA), lengths.to(CUDA), precision, logits, 0)
        same(st, g[2], "status")
        same(nbits, g[1], f"{kind} nbits")
        same(data, g[0], f"{kind} bytes")
        out, st = nc.decode(dist, data, nbits, lengths, precision, logits)
        out_g, st_g = nc.decode(dist.to(CUDA), data.to(CUDA), nbits.to(CUDA), lengths.to(CUDA), precision, logits)
        same(out, out_g, f"{kind} decoded symbols")
        same(st, st_g, "decode status")
        mask = torch.arange(T)[None] < lengths[:, None]
        assert torch.equal(out[mask], sym[mask])


def test_encode_identical_static_model_and_errors():
    B, T, V = 512, 64, 257
    row = torch.rand(V) ** 3
    dist = row.view(1, 1, V).expand(B, T, V)
    sym = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    sym[5, 7] = V  # one bad stream
    lengths = torch.full((B,), T)
    a = nc.encode(dist, sym, lengths, 16, False, 0)
    b = nc.encode(row.to(CUDA).view(1, 1, V).expand(B, T, V), sym.to(CUDA), lengths.to(CUDA), 16, False, 0)
    for x, y, w in zip(a, b, ("bytes", "nbits", "status")):
        same(x, y, f"stride-0 {w}")
    assert int(a[2][5]) == 5
    small = nc.encode(dist, sym.clamp(max=V - 1), lengths, 16, False, 20)  # output full
    small_g = nc.encode(dist.to(CUDA), sym.clamp(max=V - 1).to(CUDA), lengths.to(CUDA), 16, False, 20)
    same(small[2], small_g[2], "output-full status")


def test_corrupt_data_identical():
    """Random bytes decode the same on both (including kErrCorrupt at 0xff..)."""
    B, T, V = 512, 32, 257
    dist, logits, _, lengths = case("logits", B, T, V, 3)
    data = torch.randint(0, 256, (B, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    data[:8, :8] = 255
    nbits = torch.randint(0, 321, (B,), generator=torch.Generator().manual_seed(3))
    out, st = nc.decode(dist, data, nbits, lengths, 16, True)
    out_g, st_g = nc.decode(dist.to(CUDA), data.to(CUDA), nbits.to(CUDA), lengths.to(CUDA), 16, True)
    same(out, out_g, "symbols")
    same(st, st_g, "status")


# ------------------------------------------------------------- step ops
def test_stream_step_ops_identical():
    B, T, V, P = 512, 40, 257, 16
    dist, logits, sym, lengths = case("logits_bf16", B, T, V, 11)
    cap = ops.max_encoded_bytes(T, P)
    st, out = ops.new_state("stream_encoder", B), torch.zeros(B, cap, dtype=torch.uint8)
    st_g, out_g = ops.new_state("stream_encoder", B, CUDA), torch.zeros(B, cap, dtype=torch.uint8, device=CUDA)
    for t in range(T):
        s = torch.where(t < lengths, sym[:, t], -1)
        a = nc.stream_encode_step(st, out, dist[:, t], s, P, logits)
        b = nc.stream_encode_step(st_g, out_g, dist[:, t].to(CUDA), s.to(CUDA), P, logits)
        same(a, b, f"step {t} status")
        same(st, st_g, f"step {t} state")
        same(out, out_g, f"step {t} bytes")
    nbits = nc.stream_encode_finish(st, out)
    same(nbits, nc.stream_encode_finish(st_g, out_g), "finish nbits")
    same(out, out_g, "finished bytes")
    same(st, st_g, "reset state")
    whole = ops.encode(dist, sym, lengths, precision=P, logits=logits)
    assert torch.equal(out, whole[0]) and torch.equal(nbits, whole[1])
    dst, dst_g = ops.new_state("stream_decoder", B), ops.new_state("stream_decoder", B, CUDA)
    data_g, nbits_g = out.to(CUDA), nbits.to(CUDA)
    for t in range(T):
        active = t < lengths
        a = nc.stream_decode_step(dst, out, nbits, dist[:, t], active, P, logits)
        b = nc.stream_decode_step(dst_g, data_g, nbits_g, dist[:, t].to(CUDA), active.to(CUDA), P, logits)
        same(a[0], b[0], f"decode step {t} symbols")
        same(a[1], b[1], f"decode step {t} status")
        same(dst, dst_g, f"decode step {t} state")
        assert torch.equal(a[0][active], sym[active, t])


@pytest.mark.parametrize("b,precision", [(16, 14), (24, 20), (32, 24), (64, 24), (128, 24)])
def test_window_step_ops_identical(b, precision):
    """Lockstep window encoding on both devices: events, codes, counts,
    given-back counts and states agree at every step; then decoding."""
    B, V = 512, 257
    for model in (cm.dirichlet_model(V, 2048, b), cm.logit_model(V, 1024, b + 1, dtype=torch.bfloat16),
                  cm.dyadic_model(64, 256, b + 2, precision), cm.exception_model(precision)):
        g = torch.Generator().manual_seed(b)
        docs = (cm.exception_docs(B, 3, 60, g) if model.name.startswith("exception")
                else model.sample_docs(B, 3 * b // 4, g))
        seqs = [torch.cat([d, torch.tensor([model.eos])]) for d in docs]
        lens = torch.tensor([len(s) for s in seqs])
        flat, end = torch.cat(seqs), torch.cumsum(lens, 0)
        pos = end - lens
        mg = model.to(CUDA)
        st, st_g = ops.new_state("window_encoder", B), ops.new_state("window_encoder", B, CUDA)
        wlen = torch.zeros(B, dtype=torch.int64)
        tokens = torch.full((B,), model.bos)
        n_windows = 0
        codes_all, caps_all = [], []
        active = pos < end
        while bool(active.any()):
            sym = torch.where(active, flat[pos.clamp(max=len(flat) - 1)], -1)
            a = nc.window_encode_step(st, model(tokens, wlen), sym, precision, model.logits, b, model.max_symbols)
            r = nc.window_encode_step(st_g, mg(tokens.to(CUDA), wlen.to(CUDA)), sym.to(CUDA), precision,
                                      model.logits, b, model.max_symbols)
            for x, y, w in zip(a, r, ("event", "codes", "window_symbols", "given_back", "status")):
                same(x, y, f"{model.name} b={b} {w}")
            same(st, st_g, f"{model.name} b={b} state")
            event, codes, nsym, back, _ = a
            closed = event >= 1
            n_windows += int(closed.sum())
            codes_all.append(codes[closed])
            caps_all.append(torch.where(event[closed] == 2, nsym[closed], model.max_symbols))
            taken = event == 0
            pos = pos + taken.long() - torch.where(closed, back.long(), 0)
            wlen = torch.where(taken, wlen + 1, 0)
            tokens = torch.where(taken, sym, model.bos)
            done = active & (pos == end)
            if bool(done.any()):
                f = nc.window_encode_finish(st, done, b)
                f_g = nc.window_encode_finish(st_g, done.to(CUDA), b)
                for x, y, w in zip(f, f_g, ("has", "codes", "window_symbols", "status")):
                    same(x, y, f"finish {w}")
                n_windows += int(f[0].sum())
                codes_all.append(f[1][f[0]])
                caps_all.append(torch.full((int(f[0].sum()),), model.max_symbols))
            active = pos < end
        assert n_windows > 0
        # Decode the windows (and as many random codes) on both devices.
        codes = torch.cat(codes_all + [torch.randint(0, 256, (B, b // 8), dtype=torch.uint8, generator=g)])
        caps = torch.cat(caps_all + [torch.full((B,), model.max_symbols)])
        codes, caps = codes[:1024], caps[:1024]
        N = len(codes)
        dst, dst_g = ops.new_state("window_decoder", N), ops.new_state("window_decoder", N, CUDA)
        ones = torch.ones(N, dtype=torch.bool)
        nc.window_decode_start(dst, codes, ones, caps, b)
        nc.window_decode_start(dst_g, codes.to(CUDA), ones.to(CUDA), caps.to(CUDA), b)
        same(dst, dst_g, "decoder start state")
        tokens = torch.full((N,), model.bos)
        wlen = torch.zeros(N, dtype=torch.int64)
        ended = torch.zeros(N, dtype=torch.bool)
        for _ in range(model.max_symbols + 2):
            a = nc.window_decode_step(dst, model(tokens, wlen), precision, model.logits, b, model.eos)
            r = nc.window_decode_step(dst_g, mg(tokens.to(CUDA), wlen.to(CUDA)), precision, model.logits, b,
                                      model.eos)
            for x, y, w in zip(a, r, ("symbols", "ended", "status")):
                same(x, y, f"{model.name} b={b} decode {w}")
            same(dst, dst_g, "decoder state")
            got = a[0] >= 0
            tokens = torch.where(got, a[0], tokens)
            wlen = wlen + got.long()
            ended |= a[1]
            if bool(ended.all()):
                break
        assert bool(ended.all())


def test_model_coding_on_cuda_round_trips_and_matches_cpu():
    """encode_windows / decode_windows with the model (and so the coder) on the
    GPU: the same windows as on the CPU, and exact round trips."""
    b, precision = 16, 14
    model = cm.dirichlet_model(257, 2048, 5)
    docs = model.sample_docs(600, 40, torch.Generator().manual_seed(5))
    enc = encode_windows(docs, model, b, precision, model.eos, batch=512)
    enc_g = encode_windows(docs, model.to(CUDA), b, precision, model.eos, batch=333)
    for e, f in zip(enc, enc_g):
        assert torch.equal(e.codes, f.codes) and torch.equal(e.window_symbols, f.window_symbols)
        assert e.exceptions == f.exceptions
    dec = decode_windows(enc, model.to(CUDA), b, precision, model.eos, batch=257)
    assert all(torch.equal(d, x.cpu()) for d, x in zip(docs, dec))


def test_device_mismatch_is_an_error():
    d = torch.rand(4, 5, 7, device=CUDA)
    s = torch.randint(0, 7, (4, 5))
    with pytest.raises(ValueError, match="tensors must be on one device"):
        ops.encode(d, s, precision=8)
    with pytest.raises(RuntimeError, match="must be on the same device|must be a CUDA tensor"):
        nc.encode(d, s, torch.full((4,), 5), 8, False, 0)
