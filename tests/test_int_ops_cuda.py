"""The CUDA back end of the integer M1 ops (csrc/cuda/int_m1_kernels.cu) gives
the CPU's integers exactly: int_linear, int_rms_norm, int_rope, int_attention
and int_coder_weights on fresh random inputs of several shapes (N = 1, fan-ins
that are not a multiple of 4 or 16, misaligned weights, head dims 64 and 32,
caches up to L = 1024 with mixed positions and shuffled streams), zero rows and
values at the saturation limits, and int_linear on the shapes where torch._int_mm
computes its products. Skipped without a GPU and a CUDA build of ncx."""
from __future__ import annotations

import pytest
import torch

import ncx.ops  # noqa: F401  (registers torch.ops.ncx.*)
from ncx import _C

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and bool(getattr(_C, "WITH_CUDA", False))),
                       reason="needs a CUDA device and an ncx build with CUDA"),
]
nc = torch.ops.ncx
CUDA = "cuda"
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
QKV_LIMIT = 1 << 24


def same(cpu: torch.Tensor, cuda: torch.Tensor, what: str) -> None:
    cuda = cuda.cpu()
    assert cpu.dtype == cuda.dtype and cpu.shape == cuda.shape, (
        f"{what}: {cpu.dtype} {list(cpu.shape)} vs {cuda.dtype} {list(cuda.shape)}")
    if not torch.equal(cpu, cuda):
        bad = torch.nonzero(cpu != cuda)[0].tolist()
        n = int((cpu != cuda).sum())
        raise AssertionError(f"{what}: CPU and CUDA differ at {n} places, first at {bad}: "
                             f"{cpu[tuple(bad)]} vs {cuda[tuple(bad)]}")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixed(g: torch.Generator, shape, max_bits: int = 31) -> torch.Tensor:
    """int32 values whose magnitude scale differs per leading row: row r is
    uniform in (-2^e_r, 2^e_r) with e_r random in [0, max_bits]."""
    e = torch.randint(0, max_bits + 1, (shape[0],) + (1,) * (len(shape) - 1), generator=g)
    v = torch.randint(I32_MIN, I32_MAX + 1, tuple(shape), generator=g, dtype=torch.int64)
    return (v >> (31 - e)).to(torch.int32)


def extremes(g: torch.Generator, shape, limit: int) -> torch.Tensor:
    """Values drawn from {+-limit, +-(limit - 1), 0} (and INT32_MIN for the full range)."""
    choices = [limit, -limit, limit - 1, -(limit - 1), 0] + ([I32_MIN] if limit == I32_MAX else [])
    idx = torch.randint(0, len(choices), tuple(shape), generator=g)
    return torch.tensor(choices, dtype=torch.int64)[idx].to(torch.int32)


def special_rows(g: torch.Generator, x: torch.Tensor, limit: int) -> torch.Tensor:
    """Row 0 zero, row 1 at the limits, row 2 a single extreme value (rows that exist)."""
    x = x.clone()
    n = x.shape[0]
    if n > 2:
        x[0] = 0
        x[1] = extremes(g, x[1].shape, limit)
    if n > 3:
        x[2] = 0
        x[2].view(-1)[torch.randint(0, x[2].numel(), (1,), generator=g)] = -limit
    return x


# ------------------------------------------------------------------ int_linear
def linear_args(g: torch.Generator, N: int, K: int, D: int):
    x = special_rows(g, mixed(g, (N, K)), I32_MAX)
    w = torch.randint(-127, 128, (D, K), generator=g, dtype=torch.int8)
    if D > 2:
        w[0] = 127
        w[1] = -127
    multiplier = torch.randint(1, 2**15 + 1, (D,), generator=g, dtype=torch.int32)
    shift = torch.randint(12, 52, (D,), generator=g, dtype=torch.int32)
    if D > 3:
        multiplier[2], shift[2] = 2**15, 0  # saturates
        multiplier[3], shift[3] = 1, 62
    return x, w, multiplier, shift


def check_linear(x, w, m, s, what, w_cuda=None):
    ref = nc.int_linear(x, w, m, s)
    got = nc.int_linear(x.to(CUDA), w.to(CUDA) if w_cuda is None else w_cuda, m.to(CUDA), s.to(CUDA))
    same(ref, got, what)


@pytest.mark.parametrize(
    "N,K,D",
    [(1, 1, 1), (1, 7, 5), (1, 1024, 257), (3, 13, 70), (64, 64, 64), (65, 129, 130), (17, 1023, 96),
     (200, 1024, 257), (130, 20, 65), (40, 16384, 9)],
)
def test_int_linear_identical(N, K, D):
    g = gen(1000 + N * 7 + K * 13 + D)
    check_linear(*linear_args(g, N, K, D), f"int_linear N={N} K={K} D={D}")


@pytest.mark.parametrize("K", [16, 20, 1024, 13])
def test_int_linear_misaligned_weight(K):
    """Weights at an odd byte offset take the byte-wise tile loads."""
    g = gen(2000 + K)
    N, D = 70, 67
    x, w, m, s = linear_args(g, N, K, D)
    buf = torch.zeros(D * K + 1, dtype=torch.int8, device=CUDA)
    w_odd = buf[1:].view(D, K)
    w_odd.copy_(w.to(CUDA))
    assert w_odd.is_contiguous() and w_odd.data_ptr() % 4 != 0
    check_linear(x, w, m, s, f"int_linear misaligned K={K}", w_cuda=w_odd)


def test_int_linear_non_contiguous_and_saturating():
    g = gen(3001)
    x = mixed(g, (96, 48)).t()  # [48, 96] transposed view
    w = torch.randint(-127, 128, (33, 96), generator=g, dtype=torch.int8)
    m = torch.full((33,), 2**15, dtype=torch.int32)
    s = torch.randint(0, 8, (33,), generator=g, dtype=torch.int32)
    check_linear(x, w, m, s, "int_linear transposed x, saturating outputs")
    x = extremes(g, (37, 77), I32_MAX)
    w = torch.full((19, 77), -127, dtype=torch.int8)
    m = torch.randint(1, 2**15 + 1, (19,), generator=g, dtype=torch.int32)
    s = torch.randint(0, 40, (19,), generator=g, dtype=torch.int32)
    check_linear(x, w, m, s, "int_linear extreme inputs")


@pytest.mark.parametrize("N,K,D", [(17, 64, 8), (64, 256, 768), (8192, 256, 1024), (8192, 1024, 256),
                                   (300, 256, 768)])
def test_int_linear_identical_on_int_mm_shapes(N, K, D, record_property):
    """Shapes torch._int_mm takes (the integer M1's, at a GPU's batch sizes):
    where the probe found it exact it computes the products, else the kernel
    does; either way the CPU's integers. Saturated rows of +-127 products."""
    gemm = _C.cuda_int8_gemm()
    record_property("cuda_int8_gemm", gemm)
    g = gen(4000 + N + K + D)
    x, w, m, s = linear_args(g, N, K, D)
    x[5] = I32_MAX  # every product +127 * +-127: sums far past 16 bits
    w[4] = -127
    check_linear(x, w, m, s, f"int_linear ({gemm}) N={N} K={K} D={D}")


# ---------------------------------------------------------------- int_rms_norm
@pytest.mark.parametrize("N,C", [(1, 1), (1, 256), (3, 7), (64, 256), (33, 1000), (5, 1023), (2, 16384)])
@pytest.mark.parametrize("seed", [0, 1])
def test_int_rms_norm_identical(N, C, seed):
    g = gen(4000 + 97 * seed + N * 31 + C)
    x = special_rows(g, mixed(g, (N, C)), I32_MAX)
    gain = torch.randint(-(2**17), 2**17 + 1, (C,), generator=g, dtype=torch.int32)
    if C > 2:
        gain[0], gain[1] = I32_MAX, -I32_MAX
    same(nc.int_rms_norm(x, gain), nc.int_rms_norm(x.to(CUDA), gain.to(CUDA)), f"int_rms_norm N={N} C={C}")
    xt = mixed(g, (C, N)).t()
    same(nc.int_rms_norm(xt, gain), nc.int_rms_norm(xt.to(CUDA), gain.to(CUDA)), f"int_rms_norm transposed N={N} C={C}")


# -------------------------------------------------------------------- int_rope
def rope_tables(context: int, hd: int, g: torch.Generator, random: bool = False):
    half = hd // 2
    if random:  # any int32 table, extremes included
        cos = mixed(g, (context, half))
        sin = mixed(g, (context, half))
        cos[0], sin[0] = I32_MAX, I32_MIN
        return cos, sin
    inv = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(context, dtype=torch.float64)[:, None] * inv[None]
    one = 2**30
    return (torch.round(torch.cos(ang) * one).to(torch.int32), torch.round(torch.sin(ang) * one).to(torch.int32))


@pytest.mark.parametrize("N,H,hd", [(1, 1, 64), (1, 4, 32), (37, 4, 64), (300, 2, 32), (5, 3, 2), (9, 2, 256)])
@pytest.mark.parametrize("random_tables", [False, True])
def test_int_rope_identical(N, H, hd, random_tables):
    g = gen(5000 + N * 11 + H * 3 + hd + 7 * random_tables)
    context = 1024
    cos, sin = rope_tables(context, hd, g, random_tables)
    x = special_rows(g, mixed(g, (N, H, hd)), I32_MAX)
    positions = torch.randint(0, context, (N,), generator=g)
    positions[0] = context - 1
    if N > 1:
        positions[1] = 0
    ref = nc.int_rope(x, cos, sin, positions)
    got = nc.int_rope(x.to(CUDA), cos.to(CUDA), sin.to(CUDA), positions.to(CUDA))
    same(ref, got, f"int_rope N={N} H={H} hd={hd}")


def test_int_rope_clamps_positions():
    """Out-of-range positions (which the CPU op rejects) are clamped, not read out of bounds."""
    g = gen(5901)
    context, hd = 16, 64
    cos, sin = rope_tables(context, hd, g)
    x = mixed(g, (6, 2, hd), 24)
    positions = torch.tensor([-5, 0, 15, 16, 1000, 2**40])
    got = nc.int_rope(x.to(CUDA), cos.to(CUDA), sin.to(CUDA), positions.to(CUDA))
    same(nc.int_rope(x, cos, sin, positions.clamp(0, context - 1)), got, "int_rope clamped positions")


# --------------------------------------------------------------- int_attention
def attention_case(g: torch.Generator, N: int, H: int, hd: int, S: int, L: int, bits: int):
    q = mixed(g, (N, H, hd), bits).clamp(-QKV_LIMIT, QKV_LIMIT)
    k = mixed(g, (S, H, L, hd), bits).clamp(-QKV_LIMIT, QKV_LIMIT)
    v = mixed(g, (S, H, L, hd), 24).clamp(-QKV_LIMIT, QKV_LIMIT)
    if N > 2:
        q[0] = 0  # flat attention
        q[1] = extremes(g, (H, hd), QKV_LIMIT)
    k[0, :, : min(L, 3)] = extremes(g, (H, min(L, 3), hd), QKV_LIMIT)
    v[0, :, : min(L, 5)] = extremes(g, (H, min(L, 5), hd), QKV_LIMIT)
    streams = torch.randperm(max(S, N), generator=g)[:N] % S  # shuffled (repeated when N > S)
    positions = torch.randint(0, L, (N,), generator=g)
    positions[0] = L - 1
    if N > 1:
        positions[1] = 0
    if N > 3:
        positions[2] = min(L - 1, 1)
    return q, k, v, streams, positions


@pytest.mark.parametrize(
    "N,H,hd,S,L",
    [(1, 1, 64, 1, 1), (1, 2, 32, 3, 1024), (8, 4, 64, 8, 1024), (33, 2, 32, 40, 300), (5, 3, 64, 2, 17),
     (16, 2, 256, 4, 129), (7, 1, 24, 9, 50), (4, 2, 1, 5, 33)],
)
@pytest.mark.parametrize("bits", [12, 18, 24])
def test_int_attention_identical(N, H, hd, S, L, bits):
    g = gen(6000 + N * 17 + H * 5 + hd * 3 + S + L * 7 + bits)
    q, k, v, streams, positions = attention_case(g, N, H, hd, S, L, bits)
    ref = nc.int_attention(q, k, v, streams, positions)
    got = nc.int_attention(q.to(CUDA), k.to(CUDA), v.to(CUDA), streams.to(CUDA), positions.to(CUDA))
    same(ref, got, f"int_attention N={N} H={H} hd={hd} S={S} L={L} bits={bits}")


def test_int_attention_clamps_indices():
    g = gen(6901)
    N, H, hd, S, L = 6, 2, 32, 3, 20
    q, k, v, _, _ = attention_case(g, N, H, hd, S, L, 20)
    streams = torch.tensor([-1, 0, 2, 3, 100, 2**40])
    positions = torch.tensor([-7, 0, 19, 20, 5, 2**40])
    got = nc.int_attention(q.to(CUDA), k.to(CUDA), v.to(CUDA), streams.to(CUDA), positions.to(CUDA))
    ref = nc.int_attention(q, k, v, streams.clamp(0, S - 1), positions.clamp(0, L - 1))
    same(ref, got, "int_attention clamped indices")


# ----------------------------------------------------------- int_coder_weights
@pytest.mark.parametrize("N,V", [(1, 1), (1, 257), (5, 2), (300, 257), (3, 65536), (64, 1000)])
def test_int_coder_weights_identical(N, V):
    g = gen(7000 + N * 3 + V)
    logits = mixed(g, (N, V), 26)
    if N > 2:
        logits[0] = 0
        logits[1] = extremes(g, (V,), I32_MAX)
    if N > 3:
        logits[2] = I32_MIN
        logits[2, V // 2] = I32_MAX
    same(nc.int_coder_weights(logits), nc.int_coder_weights(logits.to(CUDA)), f"int_coder_weights N={N} V={V}")
    lt = mixed(g, (V, N), 22).t()
    same(nc.int_coder_weights(lt), nc.int_coder_weights(lt.to(CUDA)), f"int_coder_weights transposed N={N} V={V}")


# ---------------------------------------------------------------- empty inputs
def test_int_ops_cuda_empty_rows():
    """N == 0 launches nothing and returns empty outputs of the right shape."""
    dev = CUDA
    x = torch.empty(0, 13, dtype=torch.int32, device=dev)
    w = torch.ones(5, 13, dtype=torch.int8, device=dev)
    m = torch.ones(5, dtype=torch.int32, device=dev)
    out = nc.int_linear(x, w, m, m)
    assert out.shape == (0, 5) and out.is_cuda
    out = nc.int_linear(torch.ones(3, 13, dtype=torch.int32, device=dev), w[:0], m[:0], m[:0])
    assert out.shape == (3, 0)
    assert nc.int_rms_norm(x, torch.ones(13, dtype=torch.int32, device=dev)).shape == (0, 13)
    cos = torch.zeros(4, 16, dtype=torch.int32, device=dev)
    pos = torch.zeros(0, dtype=torch.int64, device=dev)
    assert nc.int_rope(torch.empty(0, 2, 32, dtype=torch.int32, device=dev), cos, cos, pos).shape == (0, 2, 32)
    kc = torch.zeros(2, 2, 8, 32, dtype=torch.int32, device=dev)
    q = torch.empty(0, 2, 32, dtype=torch.int32, device=dev)
    assert nc.int_attention(q, kc, kc, pos, pos).shape == (0, 2, 32)
    assert nc.int_coder_weights(torch.empty(0, 257, dtype=torch.int32, device=dev)).shape == (0, 257)
    torch.cuda.synchronize()


def test_int_ops_cuda_reject_cpu_tensors():
    x = torch.ones(2, 8, dtype=torch.int32, device=CUDA)
    with pytest.raises(RuntimeError):
        nc.int_rms_norm(x, torch.ones(8, dtype=torch.int32))  # gain on the CPU
