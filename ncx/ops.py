"""Typed wrappers over the native ops (torch.ops.ncx.*) and their fake kernels.

Every op keeps static output shapes (padded buffers plus lengths), so it works
under torch.compile and CUDA graphs. Ops never raise for bad *data* (NaN rows,
symbols out of range): they return a per-row status, and the wrappers here turn
a non-zero status into a ValueError that names the row and the problem. Shape,
dtype and device mistakes are caught before the op runs.
"""
from __future__ import annotations

import torch

from . import _C
from .errors import NcxError

__all__ = [
    "STATUS_MESSAGES",
    "check_status",
    "quantize",
    "encode",
    "decode",
    "max_encoded_bytes",
    "new_state",
    "int_linear",
    "int_rms_norm",
    "int_rope",
    "int_attention",
    "int_coder_weights",
    "int_m1_forward",
    "cpu_level",
    "cpu_levels",
    "set_cpu_level",
    "build_info",
]

_ops = torch.ops.ncx

# What each per-row status code means (the native core's texts).
STATUS_MESSAGES: dict[int, str] = dict(_C.STATUS_MESSAGES)

STATE_WORDS = {
    "stream_encoder": _C.STREAM_ENCODER_WORDS,
    "stream_decoder": _C.STREAM_DECODER_WORDS,
    "window_encoder": _C.WINDOW_ENCODER_WORDS,
    "window_decoder": _C.WINDOW_DECODER_WORDS,
}

MIN_PRECISION, MAX_PRECISION = _C.MIN_PRECISION, _C.MAX_PRECISION
MAX_ALPHABET = _C.MAX_ALPHABET


# ------------------------------------------------------------ CPU levels
# The CPU ops' hot loops are built for several x86-64 levels and the best one
# the CPU has is used; NCX_CPU_LEVEL (read at import) or set_cpu_level picks a
# lower one. Every level gives the same integers.
def cpu_level() -> str:
    """The level the CPU ops use: "baseline" (any x86-64, or another
    architecture's default target), "avx2" (x86-64-v3: AVX2, FMA, BMI) or
    "avx512" (x86-64-v4 plus VNNI)."""
    return _C.cpu_level()


def cpu_levels() -> list[str]:
    """The levels this build and this CPU can run, lowest first."""
    return list(_C.cpu_levels())


def set_cpu_level(level: str) -> None:
    """Use `level` for the CPU ops from now on; ValueError when the CPU or the
    build lacks it."""
    _C.set_cpu_level(level)


def build_info() -> str:
    """What this ncx build runs here: version, torch, the CPU level and GEMM,
    CUDA. `python -m ncx` and `ncx inspect` print it."""
    from . import __version__

    cuda = ("built, " + (f"{torch.cuda.device_count()} device(s), int8 GEMM: {_C.cuda_int8_gemm()}"
                         if torch.cuda.is_available() else "no device")
            if _C.WITH_CUDA else "not built")
    return (f"ncx {__version__}, torch {torch.__version__}\n"
            f"CPU kernels: {cpu_level()} (this CPU and build run: {', '.join(cpu_levels())}; "
            f"NCX_CPU_LEVEL picks one)\n"
            f"CPU int8 GEMM: {_C.cpu_int8_gemm()}\n"
            f"CUDA: {cuda}")


def check_status(status: torch.Tensor, what: str = "row") -> None:
    """Raise NcxError (a ValueError) for the first non-zero status code, naming
    the item (`what` and its index) and the code (one sync)."""
    if not bool(status.any()):  # the common case, without nonzero's allocation
        return
    bad = torch.nonzero(status.reshape(-1))
    if bad.numel():
        i = int(bad[0, 0])
        code = int(status.reshape(-1)[i])
        raise NcxError(STATUS_MESSAGES.get(code, f"error code {code}"), what, i, code=code,
                       others=int(bad.shape[0]) - 1)


def check_dist(dist: torch.Tensor, dims: int | None, shape: str) -> int:
    """Checks a distribution tensor (dims dimensions, float32/bfloat16, V in
    range; `shape` names the expected shape in the message); returns V."""
    if not isinstance(dist, torch.Tensor):
        raise TypeError(f"dist must be a torch.Tensor, got {type(dist).__name__}")
    if dims is not None and dist.dim() != dims:
        raise ValueError(f"dist must have shape {shape}, got {tuple(dist.shape)}")
    if dist.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"dist must be float32 or bfloat16, got {dist.dtype}")
    V = dist.shape[-1]
    if not 2 <= V <= MAX_ALPHABET:
        raise ValueError(f"alphabet size V (last dim of dist) must be in [2, {MAX_ALPHABET}], got {V}")
    return V


def check_precision(precision: int, V: int) -> None:
    if not isinstance(precision, int) or not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be an int in [{MIN_PRECISION}, {MAX_PRECISION}], got {precision!r}")
    if (1 << precision) < V:
        raise ValueError(
            f"precision {precision} is too small for V = {V}: every symbol needs frequency >= 1, "
            f"so 2**precision must be >= V"
        )


def check_budget(budget_bits: int, precision: int) -> None:
    if not isinstance(budget_bits, int) or budget_bits % 8 or not 8 <= budget_bits <= 128:
        raise ValueError(f"budget_bits must be a multiple of 8 in [8, 128], got {budget_bits!r}")
    if precision > budget_bits - 2:
        raise ValueError(
            f"precision {precision} must be at most budget_bits - 2 = {budget_bits - 2} so that any "
            f"single symbol fits a window"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    """ValueError unless every named tensor is on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"tensors must be on one device, got {listing}")


def check_index(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    """Checks an integer index tensor `name` (int64/int32, the given shape)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def max_encoded_bytes(num_symbols: int, precision: int) -> int:
    """Upper bound on one stream's code in bytes (each symbol <= P+1 bits)."""
    return (num_symbols * (precision + 1) + 65 + 7) // 8 + 8


def new_state(kind: str, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A fresh per-stream coder state: int64 [batch, words].

    kind is one of stream_encoder, stream_decoder, window_encoder, window_decoder.
    Encoders start with the full interval; decoders start empty and are set up
    by their first step (stream) or by window_decode_start (window).
    """
    state = torch.zeros(batch, STATE_WORDS[kind], dtype=torch.int64, device=device)
    if kind in ("stream_encoder", "window_encoder"):
        state[:, 1] = -1  # range = 2^64 - 1: the interval [0, 1 - 2^-64)
    return state


# --------------------------------------------------------------------- ops
def quantize(dist: torch.Tensor, precision: int, logits: bool = False, check: bool = True):
    """Probabilities (or logits) [..., V] float32/bfloat16 -> int32 CDF [..., V+1].

    cdf[..., 0] = 0, cdf[..., V] = 2**precision, every frequency >= 1. The same
    float inputs give the same integers on CPU and CUDA. Probabilities need not
    be normalized (any non-negative finite weights).
    Returns (cdf, status) when check=False; with check=True bad rows raise.
    """
    V = check_dist(dist, None, "[..., V]")
    check_precision(precision, V)
    cdf, status = _ops.quantize(dist, precision, logits)
    if check:
        check_status(status, "row")
        return cdf
    return cdf, status


def encode(
    dist: torch.Tensor,
    symbols: torch.Tensor,
    lengths: torch.Tensor | None = None,
    precision: int = 16,
    logits: bool = False,
    max_bytes: int = 0,
    check: bool = True,
):
    """Arithmetic-code whole sequences whose distributions are known up front.

    dist [B, T, V] float32/bfloat16 (any strides but the last: a StaticAC model
    can be an expand()ed [V] row), symbols [B, T] int, lengths [B] int (default
    T). Returns (data uint8 [B, max_bytes], nbits int64 [B]); data[b] holds
    ceil(nbits[b] / 8) meaningful bytes, zero-padded.
    """
    V = check_dist(dist, 3, "[B, T, V]")
    B, T = dist.shape[:2]
    check_precision(precision, V)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=dist.device)
    check_index(symbols, "symbols", (B, T))
    check_index(lengths, "lengths", (B,))
    check_same_device(dist=dist, symbols=symbols, lengths=lengths)
    data, nbits, status = _ops.encode(dist, symbols, lengths, precision, logits, max_bytes)
    if check:
        check_status(status, "stream")
        return data, nbits
    return data, nbits, status


def decode(
    dist: torch.Tensor,
    data: torch.Tensor,
    nbits: torch.Tensor,
    lengths: torch.Tensor | None = None,
    precision: int = 16,
    logits: bool = False,
    check: bool = True,
):
    """Inverse of encode: (dist [B, T, V], data uint8 [B, N], nbits [B], lengths [B])
    -> symbols int64 [B, T] (-1 past each stream's length)."""
    V = check_dist(dist, 3, "[B, T, V]")
    B, T = dist.shape[:2]
    check_precision(precision, V)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.int64, device=dist.device)
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 2 or data.shape[0] != B:
        raise ValueError(f"data must be a uint8 tensor [B={B}, N], got {getattr(data, 'dtype', type(data))} "
                         f"{list(getattr(data, 'shape', []))}")
    check_index(nbits, "nbits", (B,))
    check_index(lengths, "lengths", (B,))
    check_same_device(dist=dist, data=data, nbits=nbits, lengths=lengths)
    symbols, status = _ops.decode(dist, data, nbits, lengths, precision, logits)
    if check:
        check_status(status, "stream")
        return symbols
    return symbols, status


# ------------------------------------------------------------ integer M1 ops
# Integer building blocks of ncx.int_m1 (csrc/core/int_m1.h has the number
# formats). Activations are int32 in Q16; the ops check shapes and dtypes and
# raise RuntimeError naming the argument.
def int_linear(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x int32 [N, K] (Q16) times weight int8 [D, K] with per-channel int32
    multiplier/shift [D] -> int32 [N, D] (Q16). Each row of x is quantized to
    int8 with its own scale; the int8 products are summed in int32."""
    return _ops.int_linear(x, weight, multiplier, shift)


def int_rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """RMS norm of the rows of x int32 [N, C] (Q16) times gain int32 [C] (Q16)."""
    return _ops.int_rms_norm(x, gain)


def int_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x int32 [N, H, head_dim] (Q16, rotate-half layout)
    at positions int64 [N], with int32 cos/sin tables [context, head_dim/2] (Q30)."""
    return _ops.int_rope(x, cos, sin, positions)


def int_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, streams: torch.Tensor,
                  positions: torch.Tensor) -> torch.Tensor:
    """Causal attention: query row n (q int32 [N, H, head_dim], Q16) attends the
    keys/values at positions 0..positions[n] of stream streams[n] in the int32
    caches [S, H, L, head_dim]. Returns int32 [N, H, head_dim] (Q16)."""
    return _ops.int_attention(q, k_cache, v_cache, streams, positions)


def int_coder_weights(logits: torch.Tensor) -> torch.Tensor:
    """Logits int32 [N, V] (Q16) -> unnormalized probabilities int32 [N, V]:
    exp(logit - max) in Q22, the largest exactly 2**22, which ncx.ops.quantize
    (probability mode) turns into frequencies without any rounding of its own."""
    return _ops.int_coder_weights(logits)


def int_m1_forward(tokens: torch.Tensor, streams: torch.Tensor, positions: torch.Tensor,
                   weights: list[torch.Tensor], k_cache: list[torch.Tensor], v_cache: list[torch.Tensor],
                   n_head: int) -> torch.Tensor:
    """The integer M1's forward of N rows in one op (every layer): row n is
    token tokens[n] at position positions[n] of stream streams[n] (int64 [N]);
    its key/value are written into the int32 caches [S, H, L, head_dim] (one
    per layer) before it attends. weights: ncx.int_m1.IntM1.flat_weights.
    Returns int32 coder weights [N, V]. No value is read back to the host on
    a GPU, so a CUDA graph can capture it."""
    return _ops.int_m1_forward(tokens, streams, positions, weights, k_cache, v_cache, n_head)


# ------------------------------------------------------------ fake kernels
def _fake_like(t: torch.Tensor, shape, dtype):
    return t.new_empty(shape, dtype=dtype)


@torch.library.register_fake("ncx::quantize")
def _(dist, precision, logits):
    return (_fake_like(dist, (*dist.shape[:-1], dist.shape[-1] + 1), torch.int32),
            _fake_like(dist, dist.shape[:-1], torch.int32))


@torch.library.register_fake("ncx::encode")
def _(dist, symbols, lengths, precision, logits, max_bytes):
    B, T = dist.shape[0], dist.shape[1]
    n = max_bytes if max_bytes > 0 else max_encoded_bytes(T, precision)
    return (_fake_like(dist, (B, n), torch.uint8), _fake_like(dist, (B,), torch.int64),
            _fake_like(dist, (B,), torch.int32))


@torch.library.register_fake("ncx::decode")
def _(dist, data, nbits, lengths, precision, logits):
    B, T = dist.shape[0], dist.shape[1]
    return _fake_like(dist, (B, T), torch.int64), _fake_like(dist, (B,), torch.int32)


@torch.library.register_fake("ncx::stream_encode_step")
def _(state, out, dist, symbols, precision, logits):
    return _fake_like(dist, (dist.shape[0],), torch.int32)


@torch.library.register_fake("ncx::stream_encode_finish")
def _(state, out):
    return _fake_like(state, (state.shape[0],), torch.int64)


@torch.library.register_fake("ncx::stream_decode_step")
def _(state, data, nbits, dist, active, precision, logits):
    B = dist.shape[0]
    return _fake_like(dist, (B,), torch.int64), _fake_like(dist, (B,), torch.int32)


@torch.library.register_fake("ncx::window_encode_step")
def _(state, dist, symbols, precision, logits, budget_bits, max_symbols):
    B = dist.shape[0]
    return (_fake_like(dist, (B,), torch.int32), _fake_like(dist, (B, budget_bits // 8), torch.uint8),
            _fake_like(dist, (B,), torch.int32), _fake_like(dist, (B,), torch.int32),
            _fake_like(dist, (B,), torch.int32))


@torch.library.register_fake("ncx::window_encode_finish")
def _(state, active, budget_bits):
    B = state.shape[0]
    return (_fake_like(state, (B,), torch.bool), _fake_like(state, (B, budget_bits // 8), torch.uint8),
            _fake_like(state, (B,), torch.int32), _fake_like(state, (B,), torch.int32))


@torch.library.register_fake("ncx::window_decode_start")
def _(state, codes, start, max_symbols, budget_bits):
    return None


@torch.library.register_fake("ncx::window_decode_step")
def _(state, dist, precision, logits, budget_bits, eos):
    B = dist.shape[0]
    return (_fake_like(dist, (B,), torch.int64), _fake_like(dist, (B,), torch.bool),
            _fake_like(dist, (B,), torch.int32))


@torch.library.register_fake("ncx::int_linear")
def _(x, weight, multiplier, shift):
    return _fake_like(x, (x.shape[0], weight.shape[0]), torch.int32)


@torch.library.register_fake("ncx::int_rms_norm")
def _(x, gain):
    return _fake_like(x, x.shape, torch.int32)


@torch.library.register_fake("ncx::int_rope")
def _(x, cos, sin, positions):
    return _fake_like(x, x.shape, torch.int32)


@torch.library.register_fake("ncx::int_attention")
def _(q, k_cache, v_cache, streams, positions):
    return _fake_like(q, q.shape, torch.int32)


@torch.library.register_fake("ncx::int_coder_weights")
def _(logits):
    return _fake_like(logits, logits.shape, torch.int32)


@torch.library.register_fake("ncx::int_m1_forward")
def _(tokens, streams, positions, weights, k_cache, v_cache, n_head):
    return _fake_like(tokens, (tokens.shape[0], weights[2].shape[0]), torch.int32)
