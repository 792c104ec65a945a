"""M2: the decoder-only transformer trained over compressed tokens (one file, nanoGPT style).

Choices, fixed for every size:
- pre-LayerNorm blocks (LayerNorm with weight and bias; linear layers without biases),
- causal self-attention through F.scaled_dot_product_attention (flash / memory-efficient
  kernels where the device has them),
- **rotary** position embeddings (no position parameters; applied to queries and keys),
- **GELU** MLP (exact erf form),
- **tied** input and output embeddings (one vocab x width matrix; at vocabulary 65,536 an
  untied output layer would add more parameters than a 25m model's whole body),
- init N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer) (GPT-2).

Non-embedding parameters, the N of the paper's FLOPs/byte = 2N / bytes_per_token:
    N = n_layer * (4 d^2 + 2 d mlp + 4 d) + 2 d
(attention q, k, v, out: 4 d^2; MLP in and out: 2 d mlp; two LayerNorms: 4 d; final LayerNorm: 2 d).
For the paper's 25m size (d=512, mlp=2048, 6 layers) that is 18,887,680, about 12 L d^2 = 18.9M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["M2Config", "M2", "PRESETS", "preset"]


@dataclass
class M2Config:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int          # model width d
    mlp: int             # MLP hidden width (4 d in every preset)
    context: int = 512   # longest sequence the model sees (rotary tables are built for it)
    dropout: float = 0.0

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) "
                             f"heads of even width (rotary embeddings rotate pairs)")
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "mlp", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# name -> (n_embd, n_head, n_layer, mlp). The paper's four sizes use heads of 64; the CPU
# sizes use heads of 32 so that a few heads fit a small width.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "nano": (64, 2, 4, 256),        # 0.20M non-embedding parameters: seconds per 100 steps on a CPU
    "micro": (128, 4, 6, 512),      # 1.19M: minutes on a CPU
    "25m": (512, 8, 6, 2048),
    "113m": (768, 12, 12, 3072),
    "403m": (1024, 16, 24, 4096),
    "2b": (2048, 32, 24, 8192),
}


def preset(name: str, vocab_size: int, **overrides) -> M2Config:
    """The M2Config of a named size (PRESETS) for a vocabulary; overrides replace fields
    (e.g. context=256, dropout=0.1)."""
    if name not in PRESETS:
        raise ValueError(f"unknown M2 preset {name!r}; choose one of {', '.join(PRESETS)}")
    n_embd, n_head, n_layer, mlp = PRESETS[name]
    return M2Config(**{"vocab_size": vocab_size, "n_layer": n_layer, "n_head": n_head,
                       "n_embd": n_embd, "mlp": mlp, **overrides})


def rotary_tables(context: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin float32 [context, head_dim / 2] for rotary embeddings (base 10000)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (i, i + hd/2) of x [B, H, T, hd] by the angles of positions 0..T-1
    (cos, sin [>= T, hd/2])."""
    T, half = x.shape[-2], x.shape[-1] // 2
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # (T, hd/2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: M2Config):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: M2Config):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp, bias=False)
        self.proj = nn.Linear(cfg.mlp, cfg.n_embd, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: M2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class M2(nn.Module):
    """Token ids int64 [B, T] (T <= context) -> next-token logits float [B, T, vocab_size]."""

    def __init__(self, cfg: M2Config):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        cos, sin = rotary_tables(cfg.context, cfg.head_dim)
        # Not persistent: derived from the config, so checkpoints stay weights only.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual outputs: keep the stream's variance O(1)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def non_embedding_params(self) -> int:
        """Parameters outside the (tied) token embedding: the N of FLOPs/byte = 2N / bytes_per_token."""
        return sum(p.numel() for p in self.parameters()) - self.wte.weight.numel()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx int64 [B, T] -> logits [B, T, vocab_size] (float32, or the autocast dtype)."""
        B, T = idx.shape
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds the model's context {self.config.context}")
        x = self.drop(self.wte(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: torch.Tensor,
        n: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample n tokens after each prompt: int64 [B, T0] (or [T0]) -> [B, T0 + n] (or [T0 + n]).

        Each step recomputes the whole window (the last `context` tokens) instead of keeping
        a KV cache: simple, exact, and cheap at the sizes sampled here. temperature 0 is
        greedy; top_k keeps the k most likely tokens. The prompt must hold >= 1 token.
        """
        if n < 0 or temperature < 0:
            raise ValueError(f"n and temperature must be >= 0, got n={n}, temperature={temperature}")
        squeeze = prompt_tokens.dim() == 1
        idx = prompt_tokens.view(1, -1) if squeeze else prompt_tokens
        if idx.shape[1] == 0:
            raise ValueError("prompt_tokens must hold at least one token")
        was_training = self.training
        self.eval()
        for _ in range(n):
            logits = self(idx[:, -self.config.context:])[:, -1, :].float()  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, nxt), dim=1)
        self.train(was_training)
        return idx.view(-1) if squeeze else idx
