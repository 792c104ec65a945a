"""Integer-exact M1: compress on one device, decompress on any other.

The float coding path (ncx.m1.M1Coder) gives a stream the same logits
whatever the batch, but only on one device type: a CPU and a GPU round
differently. IntM1 computes M1 with integers only, from the input bytes to the
weights handed to the coder, so its output is the same on every device,
batch size, order, padding and thread count, and in stepwise (KV cache) and
full-window evaluation alike. The arithmetic lives in csrc/core/int_m1.h and
runs in the native ops ncx.ops.int_* (CPU and CUDA); this module composes
them (plus exact integer torch ops: indexing, add, clamp, relu) and converts a
trained float M1.

Number formats (csrc/core/int_m1.h): activations int32 in Q16; each linear
layer quantizes its input rows to int8 with a per-row scale and multiplies
int8 weights (one scale per output channel, as an integer multiplier and
shift) with int32 accumulation; RMS norm uses an integer square root; RoPE
uses Q30 tables stored in the checkpoint; softmax uses an integer exp. The
last step turns the Q16 logits into integer weights exp(l - max) in Q22, the
largest exactly 2**22; the coder receives them as float32 values that hold
those integers exactly, and its probability-mode quantizer (quantize.h) maps
them to frequencies with integer operations only.

Conversion (quantize_m1): post-training quantization of a float M1. Weights
get per-channel int8 scales; activations need no static ranges (per-row
scales are computed on the fly). Calibration on the corpus chooses
SmoothQuant-style per-channel smoothing (activation outliers moved into the
weights by exact re-scalings of the float model: norm gains, value rows, MLP
rows) among a few strengths, by the integer model's bits/byte on calibration
text. finetune_m1_quantized optionally trains the float model for a few steps
with the same int8 rounding simulated in the loop (straight-through
gradients) before converting.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _C, ops
from .byte_stream import VOCAB_SIZE, join_documents, with_bos
from .checkpoint import INT_FORMAT, read_checkpoint, weights_hash, write_checkpoint
from .corpus import corpus_hash, default_corpus, read_documents
from .kv_cache import KVCacheCoder
from .m1 import M1, M1Config, load_m1
from .train_m1 import heldout_bits_per_byte

__all__ = [
    "IntM1",
    "IntM1Coder",
    "quantize_m1",
    "calibrate_smoothing",
    "finetune_m1_quantized",
    "save_int_m1",
    "load_int_m1",
]

_FORMAT_VERSION = "1"
# The number formats of csrc/core/int_m1.h, read from the extension.
ACT_FRAC = _C.INT_ACT_FRAC  # activations are int32 in Q16
ROPE_FRAC = _C.INT_ROPE_FRAC  # cos/sin tables in Q30
QKV_LIMIT = _C.INT_QKV_LIMIT  # q, k, v saturate at +-256.0
INT32_LIMIT = (1 << 31) - 1
CODER_ONE = 1 << _C.INT_CODER_FRAC  # the coder weight of the most likely symbol
EVAL_PRECISION = 24  # frequencies used to measure the integer model's bits


# ------------------------------------------------------------ conversion helpers
def _to_q(t: torch.Tensor, frac: int) -> torch.Tensor:
    """round(t * 2**frac) as int32 (saturating)."""
    return torch.round(t.detach().double() * 2.0 ** frac).clamp(-INT32_LIMIT, INT32_LIMIT).to(torch.int32)


def _int8_channels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float weight (D, K) -> int8 (D, K) with one scale per output channel
    (its largest magnitude maps to 127), and that channel's dequantization
    constant max|W_d| / 127**2 = multiplier * 2**-shift, multiplier in
    [2**14, 2**15] (int32 (D,) each). All-zero channels get multiplier 0."""
    w = weight.detach().double().cpu()
    wmax = w.abs().amax(1)
    safe = torch.where(wmax > 0, wmax, torch.ones_like(wmax))
    q = torch.round(w / safe[:, None] * 127).clamp(-127, 127).to(torch.int8)
    mant, exp = torch.frexp(safe / 127 ** 2)  # mant in [0.5, 1)
    multiplier = torch.round(mant * 2 ** 15).to(torch.int32)
    shift = (15 - exp).to(torch.int32)
    zero = wmax == 0
    return q, multiplier.masked_fill(zero, 0), shift.masked_fill(zero, 0)


def _rope_tables_q30(config: M1Config) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (context, head_dim/2) in Q30, computed once (float64, CPU) and
    stored in the checkpoint so that no device ever computes a cosine."""
    half = config.head_dim // 2
    inv_freq = config.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(config.context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return _to_q(angles.cos(), ROPE_FRAC), _to_q(angles.sin(), ROPE_FRAC)


_LINEARS = ("qkv", "proj", "fc", "fc_proj")


# ------------------------------------------------------------ the integer model
@dataclass
class IntM1:
    """An integer M1: its config and int tensors (names as in the checkpoint).

    tensors: "wte" int32 (257, C) Q16 input embedding; "head.weight" int8
    (257, C) with "head.multiplier"/"head.shift" int32 (257,); "norm_f" int32
    (C,) Q16; "rope_cos"/"rope_sin" int32 (context, head_dim/2) Q30; per layer
    i: "layers.i.norm1", "layers.i.norm2" int32 (C,) and for each linear
    "layers.i.{qkv,proj,fc,fc_proj}.{weight,multiplier,shift}".
    """

    config: M1Config
    tensors: dict[str, torch.Tensor]
    source_hash: str | None = None  # weights hash of the float M1 it came from
    calibration: dict = field(default_factory=dict)

    arithmetic = "integer"

    @property
    def device(self) -> torch.device:
        return self.tensors["wte"].device

    @property
    def weights_hash(self) -> str:
        return weights_hash(self.tensors)

    def to(self, device) -> "IntM1":
        return IntM1(self.config, {k: v.to(device) for k, v in self.tensors.items()}, self.source_hash,
                     self.calibration)

    def coder(self, cuda_graphs: bool = False) -> "IntM1Coder":
        return IntM1Coder(self, cuda_graphs)

    @property
    def flat_weights(self) -> list[torch.Tensor]:
        """The tensors in the order the native forward (ops.int_m1_forward)
        takes them: wte, norm_f, head.{weight,multiplier,shift}, rope_cos,
        rope_sin, then per layer norm1, norm2 and {qkv,proj,fc,fc_proj}.
        {weight,multiplier,shift}."""
        t = self.tensors
        names = ["wte", "norm_f", "head.weight", "head.multiplier", "head.shift", "rope_cos", "rope_sin"]
        for i in range(self.config.n_layer):
            p = f"layers.{i}."
            names += [p + "norm1", p + "norm2"] + [f"{p}{lin}.{part}" for lin in _LINEARS
                                                  for part in ("weight", "multiplier", "shift")]
        return [t[n] for n in names]

    def forward_rows(self, tokens: torch.Tensor, streams: torch.Tensor, positions: torch.Tensor,
                     k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]) -> torch.Tensor:
        """The integer forward of N rows: row n is token tokens[n] at position
        positions[n] of stream streams[n]. Its key/value go into the caches
        [S, H, L, hd] (one per layer) before attention, so rows of one stream
        may come in one call (a whole window) or one per call (stepwise): the
        attention of a row reads the cache at positions 0..positions[n] only.
        Returns int32 coder weights (N, 257). One native op for all layers
        (csrc/int_m1_forward.cpp), equal to composing the single ncx.ops.int_*
        ops layer by layer (tests/test_int_m1.py holds it to that)."""
        return ops.int_m1_forward(tokens, streams, positions, self.flat_weights, k_cache, v_cache, self.config.n_head)

    @torch.no_grad()
    def window_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-window evaluation. tokens int64 (B, T), T <= context, BOS at
        position 0 of each row -> int32 coder weights (B, T, 257): [:, t] is
        the distribution of the symbol at t + 1, bit-identical to what the
        stepwise coder gives."""
        c = self.config
        B, T = tokens.shape
        if T > c.context:
            raise ValueError(f"sequence length {T} exceeds M1's context {c.context}")
        dev = self.device
        tokens = tokens.to(dev, torch.int64)
        streams = torch.arange(B, device=dev).repeat_interleave(T)
        positions = torch.arange(T, device=dev).repeat(B)
        shape = (B, c.n_head, T, c.head_dim)
        k_cache = [torch.zeros(shape, dtype=torch.int32, device=dev) for _ in range(c.n_layer)]
        v_cache = [torch.zeros(shape, dtype=torch.int32, device=dev) for _ in range(c.n_layer)]
        return self.forward_rows(tokens.reshape(-1), streams, positions, k_cache, v_cache).view(B, T, VOCAB_SIZE)

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """float32 (B, T, 257) log-probabilities of the distribution the coder
        uses: the frequencies at precision 24 over 2**24 (so measured bits are
        those arithmetic coding spends, up to its termination)."""
        weights = self.window_weights(tokens).float()  # exact: integers below 2**23
        cdf = ops.quantize(weights, EVAL_PRECISION)
        freq = (cdf[..., 1:] - cdf[..., :-1]).double()
        return (freq.log2() - EVAL_PRECISION).mul(math.log(2)).float()


class IntM1Coder(KVCacheCoder):
    """The integer M1's coding path: the ContextModel interface of
    ncx.model_coding (see KVCacheCoder) with `coder(tokens, positions)` ->
    float32 (B, 257) unnormalized probabilities that are exact integers (the
    largest is 2**22). They are bit-identical on every device, for every batch
    composition, and equal to IntM1.window_weights of the same window.

    cuda_graphs (a model on a CUDA device): inside trusted_inputs(), that is in
    ncx.model_coding's loops, each step's forward is replayed from a CUDA graph
    captured at its first call of that row count: one launch instead of about
    a hundred (_CapturedForwards)."""

    logits = False
    arithmetic = "integer"

    def __init__(self, model: IntM1, cuda_graphs: bool = False):
        super().__init__(model.config, model.device, torch.int32)
        if cuda_graphs and model.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the integer M1 on a CUDA device, it is on {model.device}")
        self.model = model
        self.weights_hash = model.weights_hash
        self.graphs = _CapturedForwards(model) if cuda_graphs else None

    def _forward(self, tokens: torch.Tensor, streams: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None and self._trusted:
            return self.graphs.run(tokens, streams, positions, self.k_cache, self.v_cache)
        return self.model.forward_rows(tokens, streams, positions, self.k_cache, self.v_cache)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions: integer (B,) -> float32 (B, 257) integer weights."""
        checked, positions, _ = self._begin_step(tokens, positions)
        streams = torch.arange(checked.shape[0], device=self.device)
        return self._forward(checked, streams, positions).float()

    __call__ = step

    @torch.no_grad()
    def steps(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """C steps of every stream in one forward: tokens, positions integer
        (B, C), row b feeding its tokens at consecutive positions -> float32
        (B, C, 257), [:, c] bit-identical to what step() gives at position c.
        An encoder knows every symbol in advance (teacher forcing), so it can
        hand M1 a block of positions at once: a few large GEMMs instead of C
        small ones, and attention that reads each stream's cache while it is
        still in the CPU's caches. The float M1 has no such method: its
        block forward would round differently from the decoder's steps."""
        checked, positions, _ = self._begin_step(tokens, positions)
        B, C = checked.shape
        streams = torch.arange(B, device=self.device).repeat_interleave(C)
        weights = self._forward(checked.reshape(-1), streams, positions.reshape(-1))
        return weights.view(B, C, -1).float()


class _CapturedForwards:
    """IntM1.forward_rows captured in CUDA graphs, one per row count, and
    replayed with each step's tokens, streams and positions copied into the
    graph's own input tensors. A graph writes the caches it was captured with,
    so when the coder reallocates them (reserve) every graph is dropped and
    captured again at its next use. The first call of a row count runs the
    forward eagerly (on a side stream, as capturing asks: it also runs the
    int8 GEMM's one-time probe) and returns that; later calls replay."""

    MAX_GRAPHS = 8  # each holds its own memory pool

    def __init__(self, model: IntM1):
        self.model = model
        self.graphs: dict[int, tuple] = {}
        self.caches: tuple = ()
        self.captured = 0  # graphs captured so far (tests and benchmarks read it)

    def run(self, tokens, streams, positions, k_cache, v_cache) -> torch.Tensor:
        caches = tuple((c.data_ptr(), tuple(c.shape)) for c in k_cache + v_cache)  # memory and layout
        if caches != self.caches:
            self.graphs.clear()
            self.caches = caches
        entry = self.graphs.get(tokens.shape[0])
        if entry is not None:
            graph, inputs, out = entry
            for buffer, value in zip(inputs, (tokens, streams, positions)):
                buffer.copy_(value)
            graph.replay()
            return out.clone()
        if len(self.graphs) >= self.MAX_GRAPHS:  # many row counts (small blocks at the ends): run them eagerly
            return self.model.forward_rows(tokens, streams, positions, k_cache, v_cache)
        inputs = (tokens.clone(), streams.clone(), positions.clone())
        side = torch.cuda.Stream(device=tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):
            first = self.model.forward_rows(*inputs, k_cache, v_cache)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        first.record_stream(torch.cuda.current_stream(tokens.device))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model.forward_rows(*inputs, k_cache, v_cache)
        self.graphs[tokens.shape[0]] = (graph, inputs, out)
        self.captured += 1
        return first


# ------------------------------------------------------------ conversion
@torch.no_grad()
def _input_amax(model: M1, docs: Sequence[bytes], max_symbols: int) -> dict[str, torch.Tensor]:
    """Per-channel largest |input| of every linear layer (and of the head) over
    the first max_symbols symbols of docs, from the float forward."""
    stream = join_documents(docs)[:max_symbols]
    T = model.config.context
    n = max(1, len(stream) // T)
    if len(stream) < T:
        windows = stream[None, :]
    else:
        windows = stream[: n * T].view(n, T)
    stats: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).double().cpu()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a
        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        for lin in _LINEARS:
            handles.append(getattr(block, lin).register_forward_pre_hook(record(f"layers.{i}.{lin}")))
    handles.append(model.norm_f.register_forward_hook(lambda m, a, out: record("head")(m, (out,))))
    try:
        device = model.wte.weight.device
        for i in range(0, windows.shape[0], 16):
            model(with_bos(windows[i:i + 16]).to(device))
    finally:
        for h in handles:
            h.remove()
    return stats


def _smooth(model: M1, stats: dict[str, torch.Tensor], alpha: float) -> tuple[M1, torch.Tensor]:
    """A copy of model with SmoothQuant re-scaling of strength alpha folded
    into its weights (the float function is unchanged up to rounding), and
    the head weight (no longer tied) that goes with it. For a linear layer
    with input channel amax a_k and weight column amax w_k, s_k = a_k**alpha /
    w_k**(1 - alpha); its input is divided by s_k where it is made (norm gain,
    value rows of qkv, rows of fc: ReLU commutes with positive scales) and its
    weight columns multiplied by s_k."""
    m = copy.deepcopy(model).float()
    head = m.wte.weight.detach().clone()

    def factors(name: str, weight: torch.Tensor) -> torch.Tensor:
        a = stats[name].clamp(min=1e-5)
        w = weight.detach().double().abs().amax(0).clamp(min=1e-5).cpu()
        return (a ** alpha / w ** (1 - alpha)).clamp(1e-4, 1e4).float().to(weight.device)

    with torch.no_grad():
        C = m.config.n_embd
        for i, b in enumerate(m.blocks):
            s = factors(f"layers.{i}.qkv", b.qkv.weight)
            b.norm1.weight.div_(s)
            b.qkv.weight.mul_(s[None, :])
            s = factors(f"layers.{i}.proj", b.proj.weight)
            b.qkv.weight[2 * C:].div_(s[:, None])  # attention output is linear in v
            b.proj.weight.mul_(s[None, :])
            s = factors(f"layers.{i}.fc", b.fc.weight)
            b.norm2.weight.div_(s)
            b.fc.weight.mul_(s[None, :])
            s = factors(f"layers.{i}.fc_proj", b.fc_proj.weight)
            b.fc.weight.div_(s[:, None])
            b.fc_proj.weight.mul_(s[None, :])
        s = factors("head", head)
        m.norm_f.weight.div_(s)
        head.mul_(s[None, :])
    return m, head


def _convert(model: M1, head: torch.Tensor) -> dict[str, torch.Tensor]:
    """Integer tensors of a float M1 whose output head is `head` (257, C)."""
    t: dict[str, torch.Tensor] = {"wte": _to_q(model.wte.weight, ACT_FRAC).cpu(),
                                  "norm_f": _to_q(model.norm_f.weight, ACT_FRAC).cpu()}
    t["head.weight"], t["head.multiplier"], t["head.shift"] = _int8_channels(head)
    t["rope_cos"], t["rope_sin"] = _rope_tables_q30(model.config)
    for i, b in enumerate(model.blocks):
        p = f"layers.{i}."
        t[p + "norm1"] = _to_q(b.norm1.weight, ACT_FRAC).cpu()
        t[p + "norm2"] = _to_q(b.norm2.weight, ACT_FRAC).cpu()
        for lin in _LINEARS:
            w, mult, shift = _int8_channels(getattr(b, lin).weight)
            t[f"{p}{lin}.weight"], t[f"{p}{lin}.multiplier"], t[f"{p}{lin}.shift"] = w, mult, shift
    return {k: v.contiguous() for k, v in t.items()}


def quantize_m1(model: M1, smoothing: float | None = None, stats: dict[str, torch.Tensor] | None = None) -> IntM1:
    """The integer twin of a float M1 (on the CPU). smoothing: SmoothQuant
    strength alpha in [0, 1], which needs the per-channel activation maxima
    `stats` of _input_amax; None converts the weights as they are. The
    model itself is left as it is (device, dtype, weights)."""
    if smoothing is None:
        tensors = _convert(model, model.wte.weight)
    else:
        if stats is None:
            raise ValueError("smoothing needs calibration statistics (use calibrate_smoothing)")
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        smoothed, head = _smooth(model, stats, smoothing)
        tensors = _convert(smoothed, head)
    return IntM1(model.config, tensors, source_hash=weights_hash(model),
                 calibration={"smoothing": smoothing})


def calibrate_smoothing(model: M1, docs: Sequence[bytes], alphas: Sequence[float | None] = (None, 0.25, 0.5),
                        max_symbols: int = 1 << 15, log=print) -> IntM1:
    """Post-training quantization with calibration: convert model with each
    smoothing strength in alphas (None: no smoothing) and keep the integer
    model with the lowest bits/byte on the first max_symbols symbols of docs.
    The choice and every candidate's bits/byte are recorded in
    IntM1.calibration."""
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model keeps its device and mode
    stats = _input_amax(model, docs, max_symbols)
    results, best = [], None
    for alpha in alphas:
        candidate = quantize_m1(model, alpha, stats)
        bpb = heldout_bits_per_byte(candidate, docs, max_symbols=max_symbols)
        results.append([alpha, round(bpb, 5)])
        if log:
            log(f"calibration: smoothing {alpha}: {bpb:.4f} bits/byte")
        if best is None or bpb < best[0]:
            best = (bpb, candidate)
    float_bpb = heldout_bits_per_byte(model, docs, max_symbols=max_symbols)
    chosen = best[1]
    chosen.calibration.update(candidates=results, calibration_float_bits_per_byte=round(float_bpb, 5),
                              calibration_symbols=max_symbols, calibration_corpus_sha256=corpus_hash(docs),
                              residual_amax=round(max(float(s.max()) for s in stats.values()), 3))
    return chosen


class _FakeQuantLinear(nn.Module):
    """nn.Linear computing what int_linear computes, up to the float rounding:
    input rows and weight channels rounded to int8 with their own scales.
    Gradients pass straight through the rounding."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    @staticmethod
    def _round_rows(t: torch.Tensor) -> torch.Tensor:
        scale = t.detach().abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
        return t + (torch.round(t / scale) * scale - t).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self._round_rows(x), self._round_rows(self.linear.weight))


def finetune_m1_quantized(model: M1, docs: Sequence[bytes], steps: int, batch_size: int = 16, lr: float = 2e-4,
                          seed: int = 0) -> M1:
    """A copy of model trained for `steps` more steps with int8 rounding of
    every linear layer's input rows and weight channels simulated in the
    forward (straight-through gradients): quantization-aware fine-tuning,
    which can recover bits/byte the plain conversion loses. Returns a float M1
    to convert with quantize_m1/calibrate_smoothing."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tuned = copy.deepcopy(model).float().train()
    for block in tuned.blocks:
        for lin in _LINEARS:
            setattr(block, lin, _FakeQuantLinear(getattr(block, lin)))
    data = join_documents(docs)
    T = tuned.config.context
    if len(data) < T + 1:
        raise ValueError(f"fine-tuning data has {len(data)} symbols, fewer than one window of {T}")
    gen = torch.Generator().manual_seed(seed)
    device = tuned.wte.weight.device
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    offsets = torch.arange(T)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - T + 1, (batch_size,), generator=gen)
        y = data[starts[:, None] + offsets].to(device)
        logits = tuned(with_bos(y))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        opt.step()
    for block in tuned.blocks:
        for lin in _LINEARS:
            setattr(block, lin, getattr(block, lin).linear)
    return tuned.eval()


# ------------------------------------------------------------ checkpoints
def save_int_m1(model: IntM1, path: str, summary: dict | None = None) -> str:
    """Write an integer M1 to a safetensors file (atomically). Metadata: the
    format, the config, the integer weights' hash, the float source's hash,
    the calibration record and an optional summary. Returns the weights hash."""
    return write_checkpoint(model.tensors, path, INT_FORMAT, _FORMAT_VERSION, model.config, summary,
                            source_weights_sha256=model.source_hash or "",
                            calibration=json.dumps(model.calibration, sort_keys=True))


def _expected_shapes(config: M1Config) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    C, V, half = config.n_embd, VOCAB_SIZE, config.head_dim // 2
    shapes = {"wte": ((V, C), torch.int32), "norm_f": ((C,), torch.int32),
              "head.weight": ((V, C), torch.int8), "head.multiplier": ((V,), torch.int32),
              "head.shift": ((V,), torch.int32),
              "rope_cos": ((config.context, half), torch.int32), "rope_sin": ((config.context, half), torch.int32)}
    dims = {"qkv": (3 * C, C), "proj": (C, C), "fc": (config.mlp, C), "fc_proj": (C, config.mlp)}
    for i in range(config.n_layer):
        p = f"layers.{i}."
        shapes[p + "norm1"] = shapes[p + "norm2"] = ((C,), torch.int32)
        for lin, (D, K) in dims.items():
            shapes[f"{p}{lin}.weight"] = ((D, K), torch.int8)
            shapes[f"{p}{lin}.multiplier"] = shapes[f"{p}{lin}.shift"] = ((D,), torch.int32)
    return shapes


def load_int_m1(path: str, device: str | torch.device = "cpu") -> tuple[IntM1, dict]:
    """Read an integer M1 checkpoint -> (IntM1 on device, info) with "config",
    "weights_hash", "source_weights_hash", "calibration" and "summary".
    Raises FileNotFoundError if path is missing, ValueError if it is not an
    integer M1 checkpoint, is corrupt, or its tensors do not fit its config."""
    metadata, state, digest = read_checkpoint(path, INT_FORMAT, _FORMAT_VERSION)
    config = M1Config.from_json(metadata["config"])
    expected = _expected_shapes(config)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{path}: tensors do not fit the recorded config (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for name, (shape, dtype) in expected.items():
        if tuple(state[name].shape) != shape or state[name].dtype != dtype:
            raise ValueError(f"{path}: tensor {name} is {state[name].dtype} {tuple(state[name].shape)}, "
                             f"expected {dtype} {shape}")
    calibration = json.loads(metadata.get("calibration") or "{}")
    model = IntM1(config, {k: v.contiguous() for k, v in state.items()},
                  metadata.get("source_weights_sha256") or None, calibration).to(device)
    info = {"config": config, "weights_hash": digest, "source_weights_hash": model.source_hash,
            "calibration": calibration, "summary": json.loads(metadata.get("summary") or "{}")}
    return model, info


# ------------------------------------------------------------ CLI
def add_arguments(parser, command: str) -> None:
    parser.add_argument("--m1", required=True, metavar="CKPT", help="the float M1 checkpoint to convert")
    parser.add_argument("--out", help="integer checkpoint to write (default: CKPT with an -int suffix)")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="calibration documents (files or directories, read as by compress --data); "
                             "default: the embedded corpus's training part")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--lines", action="store_true", help="each line of a .txt file is a document")
    parser.add_argument("--calibration-symbols", type=int, default=1 << 16,
                        help="symbols of calibration text (default: 65536)")
    parser.add_argument("--smoothing", default="none,0.25,0.5",
                        help="comma-separated SmoothQuant strengths to try, 'none' for no smoothing "
                             "(default: none,0.25,0.5)")
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="quantization-aware fine-tuning steps before converting (default: 0, none)")
    parser.add_argument("--finetune-lr", type=float, default=2e-4, help="fine-tuning learning rate (default: 2e-4)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the held-out bits/byte of the float and integer models")
    parser.add_argument("--heldout", nargs="+", metavar="PATH",
                        help="held-out documents for the comparison; default: the embedded corpus's held-out part")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def _parse_smoothing(text: str) -> list[float | None]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "none":
            values.append(None)
            continue
        try:
            alpha = float(part)
        except ValueError:
            raise ValueError(f"--smoothing: {part!r} is neither 'none' nor a number") from None
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--smoothing: {alpha} is outside [0, 1]")
        values.append(alpha)
    if not values:
        raise ValueError("--smoothing: give at least one strength")
    return values


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    alphas = _parse_smoothing(args.smoothing)
    model, info = load_m1(args.m1)
    if args.data:
        docs = [d for _, d in read_documents(args.data, text_field=args.text_field, lines=args.lines)]
    else:
        docs = default_corpus("train")
    if args.finetune_steps:
        print(f"quantization-aware fine-tuning: {args.finetune_steps} steps")
        model = finetune_m1_quantized(model, docs, args.finetune_steps, lr=args.finetune_lr)
    int_model = calibrate_smoothing(model, docs, alphas, max_symbols=args.calibration_symbols)
    summary = {"source_checkpoint": os.path.basename(args.m1), "finetune_steps": args.finetune_steps}
    if not args.no_eval:
        heldout = ([d for _, d in read_documents(args.heldout, text_field=args.text_field, lines=args.lines)]
                   if args.heldout else default_corpus("heldout"))
        float_bpb = heldout_bits_per_byte(load_m1(args.m1)[0], heldout)
        int_bpb = heldout_bits_per_byte(int_model, heldout)
        summary.update(heldout_float_bits_per_byte=round(float_bpb, 5), heldout_int_bits_per_byte=round(int_bpb, 5))
        print(f"held-out bits/byte: float M1 {float_bpb:.4f}, integer M1 {int_bpb:.4f} "
              f"({(int_bpb / float_bpb - 1) * 100:+.2f}%)")
    out = args.out or (args.m1[: -len(".safetensors")] if args.m1.endswith(".safetensors") else args.m1) + \
        "-int.safetensors"
    digest = save_int_m1(int_model, out, summary)
    print(f"saved {out} (integer weights sha256 {digest[:16]}..., smoothing {int_model.calibration['smoothing']}, "
          f"from float M1 {info['weights_hash'][:16]}...)")
    return 0
