"""M1: the byte-level language model whose next-byte distributions drive the
arithmetic coder: config and presets, the model (full-window forward for
training), the float coding path (M1Coder, on the KV cache of ncx.kv_cache),
and saving and loading float checkpoints (file format: ncx.checkpoint; to
code with either a float or an integer checkpoint: ncx.m1_loader).

Symbols (ncx.byte_stream). M1 predicts 257 symbols: the 256 byte values and
EOS = 256, which the paper appends to every document. EOS doubles as BOS:
position 0 of every context holds symbol 256, so a context starts as if right
after a document ended. This is also the T5-style decoder start the paper's
M1 had, and it needs no 258th input symbol.

Positions. The paper's M1 used T5 relative position biases; M1 uses rotary
embeddings (RoPE) instead: they need no learned tables, cost nothing per
cached key (keys are stored already rotated), and are the common choice of
current decoders. ALiBi would also fit the cache; T5 biases would need a
bucketed bias lookup per cached key.

Determinism of the coding path (docs/design.md, "Determinism of M1"). The coder
needs bit-identical logits on encode and decode, where the same stream is
batched with other streams, in another order, with other padding. Float
matmuls do not give that: BLAS picks kernels and blockings by shape and thread
count, and the order of a sum changes its rounding. M1Coder.step therefore
uses only operations whose result for a stream cannot depend on anything but
that stream's own inputs:
- Linear layers run in exact fixed point: each activation row and each weight
  row is scaled by a power of two and rounded to a 21-bit integer
  (|x| <= 2**20), and the integer products are summed in float64. Every
  partial sum is an integer below 2**53 (fan-in <= 8192), so float64 holds it
  exactly and the sum is the same in any order, blocking, batch or device.
  The result is then scaled back (exactly, a power of two) and rounded once
  to float32.
- Other reductions (RMS norm, attention scores, softmax sums, attention
  output) are pairwise trees of elementwise adds over a zero-padded
  power-of-two length: a fixed order, and padding with zeros only adds exact
  zeros, so the attention window may be longer for one batch than another.
- exp in the softmax is computed with elementwise IEEE operations only
  (Cody-Waite reduction, a polynomial, an exact power of two), because
  torch.exp may take a vectorized or a scalar path per element depending on
  where the element falls in the tensor.
- Everything else is elementwise IEEE arithmetic (add, multiply, divide,
  round, compare), which is correctly rounded whatever the path; and sqrt,
  whose vectorized CPU path (MKL) is not, so its result is rounded correctly
  by an exact check (_sqrt_rounded): the same logits on every x86 CPU.
The training forward uses ordinary float ops (fast matmuls, fused attention);
it computes the same function up to float rounding (tests check closeness),
but it is never used for coding.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .byte_stream import BOS, EOS, VOCAB_SIZE
from .checkpoint import FLOAT_FORMAT, read_checkpoint, weights_hash, write_checkpoint
from .kv_cache import KVCacheCoder

__all__ = [
    "VOCAB_SIZE",
    "EOS",
    "BOS",
    "M1Config",
    "PRESETS",
    "preset",
    "M1",
    "M1Coder",
    "save_m1",
    "load_m1",
]

# Fixed-point fraction bits of the exact linear layers: operands are integers
# with |v| <= 2**FRAC_BITS, so a fan-in of K sums to at most K * 2**(2*FRAC_BITS),
# which must stay <= 2**53 to be exact in float64.
FRAC_BITS = 20
MAX_FAN_IN = 1 << (53 - 2 * FRAC_BITS)


@dataclass(frozen=True)
class M1Config:
    """Shape of an M1. Head dimension is n_embd // n_head and must be even (RoPE)."""

    n_layer: int = 3
    n_embd: int = 256
    n_head: int = 4
    mlp: int = 1024  # hidden width of the ReLU MLP
    context: int = 1024  # positions per context, BOS included
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "mlp", "context"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"M1Config.{name} must be a positive int, got {v!r}")
        if self.context < 2:
            raise ValueError(f"M1Config.context must be >= 2 (BOS and one byte), got {self.context}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"M1Config: n_embd ({self.n_embd}) / n_head ({self.n_head}) must be an even integer")
        if max(self.n_embd, self.mlp) > MAX_FAN_IN:
            raise ValueError(f"M1Config: n_embd and mlp must be <= {MAX_FAN_IN} for exact fixed-point coding")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def non_embedding_params(self) -> int:
        """Parameters outside the (tied) byte embedding: the paper's count."""
        C = self.n_embd
        per_layer = 2 * C + 3 * C * C + C * C + 2 * C * self.mlp
        return self.n_layer * per_layer + C

    @property
    def flops_per_byte(self) -> int:
        """Inference FLOPs per coded byte by the paper's convention:
        2 x non-embedding parameters (attention over the context ignored)."""
        return 2 * self.non_embedding_params

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "M1Config":
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"M1Config: unknown fields {sorted(unknown)}")
        return cls(**fields)


PRESETS = {
    # The paper's M1: 3 layers, width 256, 4 heads of 64, MLP 1024, context 1024.
    "paper": M1Config(n_layer=3, n_embd=256, n_head=4, mlp=1024, context=1024),
    # Trains in minutes on a laptop CPU; the demo's M1.
    "small": M1Config(n_layer=2, n_embd=128, n_head=2, mlp=512, context=256),
    # For tests: seconds on a CPU.
    "tiny": M1Config(n_layer=2, n_embd=32, n_head=2, mlp=128, context=64),
}


def preset(name: str, **overrides) -> M1Config:
    """A preset config ("tiny", "small", "paper"), with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown M1 preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ------------------------------------------------------------ shared pieces
def _rope_tables(config: M1Config) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float32 (context, head_dim), computed once in float64 on
    the CPU so that every device gets the same table."""
    half = config.head_dim // 2
    inv_freq = config.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(config.context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)  # (context, head_dim), rotate-half layout
    return angles.cos().float(), angles.sin().float()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., head_dim) by the angles in cos/sin (broadcast to x).
    Separate elementwise multiplies and one add: the same rounding everywhere."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    """T5-style norm: scale by the root mean square, no centering, no bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, config: M1Config):
        super().__init__()
        C = config.n_embd
        self.config = config
        self.norm1 = RMSNorm(C, config.norm_eps)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.norm2 = RMSNorm(C, config.norm_eps)
        self.fc = nn.Linear(C, config.mlp, bias=False)
        self.fc_proj = nn.Linear(config.mlp, C, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, hd = self.config.n_head, self.config.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.fc_proj(F.relu(self.fc(self.norm2(x))))


class M1(nn.Module):
    """Decoder-only byte transformer: RMSNorm pre-norm blocks, RoPE attention,
    ReLU MLP, no biases, output head tied to the byte embedding."""

    def __init__(self, config: M1Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(VOCAB_SIZE, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        cos, sin = _rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections shrink with depth so the residual
        # stream's variance does not grow with the number of layers.
        for block in self.blocks:
            for p in (block.proj.weight, block.fc_proj.weight):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training/evaluation path. tokens: int64 (B, T), T <= context, with
        BOS at position 0 of each row. Returns float32 logits (B, T, 257);
        logits[:, t] predict the symbol at position t + 1."""
        T = tokens.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds M1's context {self.config.context}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd)
        x = self.wte(tokens)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.norm_f(x), self.wte.weight)  # (B, T, 257)

    arithmetic = "float"

    @property
    def weights_hash(self) -> str:
        return weights_hash(self)

    def coder(self) -> "M1Coder":
        """The coding path over a snapshot of the current weights."""
        return M1Coder(self)


# ------------------------------------------------------------ exact coding path
def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2**k as float64, built from the exponent bits: exact, no pow()."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def _to_fixed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (..., K) as integers: x ~= x_int * 2**(e - FRAC_BITS), with
    x_int float64 holding integers in [-2**FRAC_BITS, 2**FRAC_BITS] and e
    int64 (..., 1) the row's exponent (max |x| < 2**e). Exact operations only."""
    e = torch.frexp(x.abs().amax(-1, keepdim=True)).exponent.to(torch.int64)
    return torch.round(x.double() * _pow2(FRAC_BITS - e)), e


def _fixed_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's weight (D, K) prepared for _linear_exact: integers
    transposed to (K, D) float64, and each output's scale 2**(e - 2*FRAC_BITS)
    (D,) float64, which folds in the activation's FRAC_BITS too."""
    w_int, w_exp = _to_fixed(weight.detach().float())  # (D, K), (D, 1)
    return w_int.t().contiguous(), _pow2(w_exp[:, 0] - 2 * FRAC_BITS)


def _linear_exact(x: torch.Tensor, w_int_t: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x (B, K) float32 times a weight from _fixed_weight -> (B, D) float32.
    The float64 matmul sums integers below 2**53, so it is exact in any order;
    the two scalings are powers of two, so they are exact too; the only
    rounding is the final one to float32."""
    x_int, x_exp = _to_fixed(x)
    acc = x_int @ w_int_t  # (B, D), exact integers
    return (acc * _pow2(x_exp) * w_scale).float()


def _tree_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over dim as a pairwise tree (first half + second half, repeated)
    over the length zero-padded to a power of two; dim is removed. Adding a
    zero half is exact, so the result does not depend on the padding."""
    n = x.shape[dim]
    size = 1 << (n - 1).bit_length()
    if size != n:
        pad = list(x.shape)
        pad[dim] = size - n
        x = torch.cat([x, x.new_zeros(pad)], dim=dim)
    while size > 1:
        size //= 2
        x = x.narrow(dim, 0, size) + x.narrow(dim, size, size)
    return x.squeeze(dim)


# Cephes expf: ln 2 split so that n * _LN2_HI is exact, and a degree-5
# polynomial for e**r - 1 - r on |r| <= ln(2)/2.
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _exp_nonpositive(z: torch.Tensor) -> torch.Tensor:
    """exp(z) for float32 z <= 0, from elementwise IEEE operations only, so
    every element is computed the same way wherever it sits. z below -87 is
    treated as -87 (exp ~ 1.6e-38, negligible next to exp(0) = 1)."""
    z = z.clamp(min=-87.0)
    n = torch.round(z * _LOG2E)  # integer in [-126, 0]
    r = z - n * _LN2_HI
    r = r - n * _LN2_LO
    p = torch.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    e_r = p * r * r + r + 1.0
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)  # 2**n, exact
    return e_r * two_n


def _sqrt_rounded(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 sqrt of x >= 0. On the CPU torch.sqrt of a
    large tensor runs MKL's vector math, whose last bit depends on the
    instruction set it picks (AVX-512, AVX2, SSE4.2), so it alone would give
    another CPU other logits. Its result is within an ulp; each pass moves
    the candidate to the neighbour whose rounding interval holds sqrt(x),
    judged exactly in float64 (a float32 midpoint has 25 significant bits, its
    square 50; sqrt(x) of a float32 x is never a midpoint)."""
    r = torch.sqrt(x)
    x64 = x.double()
    inf, zero = torch.tensor(math.inf, device=x.device), torch.tensor(0.0, device=x.device)
    for _ in range(2):
        up, down = torch.nextafter(r, inf), torch.nextafter(r, zero)
        hi = (r.double() + up.double()) * 0.5
        lo = (r.double() + down.double()) * 0.5
        r = torch.where(x64 > hi * hi, up, torch.where(x64 < lo * lo, down, r))
    return r


def _rms_norm_exact(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of rows x (B, C) with a fixed summation order."""
    mean_sq = _tree_sum(x * x, -1)[:, None] * (1.0 / x.shape[-1])
    return x * (1.0 / _sqrt_rounded(mean_sq + eps)) * weight


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Causal attention of one query per stream. q (B, H, hd); k, v (B, H, L, hd)
    cached keys/values; positions (B,) int64, the query's position (keys at
    positions <= it are attended). Returns (B, H, hd) float32."""
    L = k.shape[2]
    valid = (torch.arange(L, device=q.device)[None, :] <= positions[:, None])[:, None, :]  # (B, 1, L)
    scores = _tree_sum(q[:, :, None, :] * k, -1) * (q.shape[-1] ** -0.5)  # (B, H, L)
    peak = torch.where(valid, scores, -math.inf).amax(-1, keepdim=True)  # max is exact in any order
    w = torch.where(valid, _exp_nonpositive(torch.where(valid, scores - peak, 0.0)), 0.0)  # (B, H, L)
    num = _tree_sum(w[..., None] * v, 2)  # (B, H, hd)
    return num / _tree_sum(w, -1)[..., None]


class M1Coder(KVCacheCoder):
    """M1's float coding path: one step of many independent streams with a
    KV cache (see KVCacheCoder), `coder(tokens, positions)` -> float32 logits
    (B, 257).

    The logits a stream gets are bit-identical whatever the batch size, the
    other streams, their order and positions, and the thread count (see the
    module docstring for why), on one device type: CPU and CUDA logits may
    differ in their last bits. ncx.int_m1 gives logits that do not depend on
    the device either. The coder works on a snapshot of the model's weights
    taken at construction.
    """

    logits = True
    arithmetic = "float"

    def __init__(self, model: M1):
        super().__init__(model.config, model.wte.weight.device, torch.float32)
        self.weights_hash = weights_hash(model)
        # Snapshot the weights; linear weights in fixed point.
        def copy(p: torch.Tensor) -> torch.Tensor:
            return p.detach().float().clone()

        self.wte = copy(model.wte.weight)  # (257, C)
        self.head = _fixed_weight(model.wte.weight)  # tied output head
        self.norm_f = copy(model.norm_f.weight)
        self.layers = [
            dict(norm1=copy(b.norm1.weight), qkv=_fixed_weight(b.qkv.weight), proj=_fixed_weight(b.proj.weight),
                 norm2=copy(b.norm2.weight), fc=_fixed_weight(b.fc.weight), fc_proj=_fixed_weight(b.fc_proj.weight))
            for b in model.blocks
        ]
        cos, sin = _rope_tables(self.config)
        self.rope_cos, self.rope_sin = cos.to(self.device), sin.to(self.device)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions: integer (B,) on the coder's device -> float32
        logits (B, 257) of each stream's next symbol."""
        checked, positions, hi_pos = self._begin_step(tokens, positions)
        L = min(1 << hi_pos.bit_length(), self.k_cache[0].shape[2])  # window covering every stream
        # Bound the (B, H, L, hd) attention temporaries; rows are independent, so chunking is free.
        chunk = max(1, (1 << 24) // (L * self.config.n_embd))
        return self._forward(checked, positions, L, chunk)

    __call__ = step

    def _cache_length(self, length: int) -> int:
        """A power of two: attention sums over the cache as pairwise trees of
        power-of-two length, and a cache of another length would be padded
        with zeros at every step (40% slower with the demo's M1)."""
        return 1 << (length - 1).bit_length()

    @torch.no_grad()
    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, L: int, chunk: int) -> torch.Tensor:
        c = self.config
        B, eps = tokens.shape[0], c.norm_eps
        rows = torch.arange(B, device=self.device)
        cos, sin = self.rope_cos[positions][:, None, :], self.rope_sin[positions][:, None, :]  # (B, 1, hd)
        x = self.wte[tokens]  # (B, C)
        for layer, w in enumerate(self.layers):
            q, k, v = _linear_exact(_rms_norm_exact(x, w["norm1"], eps), *w["qkv"]).view(
                B, 3, c.n_head, c.head_dim).unbind(1)  # 3 x (B, H, hd)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
            k_cache[rows, :, positions] = k
            v_cache[rows, :, positions] = v
            a = torch.cat([
                _attend(q[i:i + chunk], k_cache[i:min(i + chunk, B), :, :L], v_cache[i:min(i + chunk, B), :, :L],
                        positions[i:i + chunk])
                for i in range(0, B, chunk)])  # (B, H, hd)
            x = x + _linear_exact(a.reshape(B, c.n_embd), *w["proj"])
            h = torch.relu(_linear_exact(_rms_norm_exact(x, w["norm2"], eps), *w["fc"]))
            x = x + _linear_exact(h, *w["fc_proj"])
        return _linear_exact(_rms_norm_exact(x, self.norm_f, eps), *self.head)  # (B, 257)


# ------------------------------------------------------------ checkpoints
_FORMAT_VERSION = "1"


def save_m1(model: M1, path: str, summary: dict | None = None) -> str:
    """Write model to a safetensors file (atomically). Metadata: the config
    (JSON), the weights hash and an optional JSON-serializable training
    summary. Returns the weights hash."""
    return write_checkpoint(model.state_dict(), path, FLOAT_FORMAT, _FORMAT_VERSION, model.config, summary)


def load_m1(path: str, device: str | torch.device = "cpu") -> tuple[M1, dict]:
    """Read an M1 checkpoint -> (model in eval mode, info) where info holds
    "config" (M1Config), "weights_hash" and "summary" (dict). Raises
    FileNotFoundError if path is missing, ValueError if it is not a float M1
    safetensors checkpoint or its weights do not match their recorded hash."""
    metadata, state, digest = read_checkpoint(path, FLOAT_FORMAT, _FORMAT_VERSION)
    config = M1Config.from_json(metadata["config"])
    model = M1(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the recorded config ({e})") from None
    model.to(device).eval()
    info = {"config": config, "weights_hash": digest, "summary": json.loads(metadata.get("summary") or "{}")}
    return model, info
