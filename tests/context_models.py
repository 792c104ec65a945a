"""Context models for the Equal-Info window tests: the ncx.model_coding
ContextModel interface (model(tokens, positions) -> dist [B, V]) over a table
of distributions indexed by a hash of (last token, position in the window).
A row depends only on the window's own context, as M1's must, so windows
decode on their own and in any batch.

Each factory returns (model, docs): the model and documents sampled from it
(symbols < V - 1; V - 1 is the EOS). Adversarial factories pick documents
that stress the window rule (the least likely symbol every time, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import reference_coder as ref
from ncx.m1 import M1, preset


@dataclass
class TableModel:
    table: torch.Tensor        # [H, V] float32/bfloat16 probabilities (or logits)
    logits: bool = False
    max_symbols: int = 512     # window cap (M1's context)
    name: str = "table"
    salt: int = 0
    arithmetic = "float"  # not a dataclass field: no annotation

    @property
    def vocab_size(self) -> int:
        return self.table.shape[1]

    @property
    def bos(self) -> int:
        return self.vocab_size  # outside the alphabet: only a context key

    @property
    def eos(self) -> int:
        return self.vocab_size - 1

    @property
    def device(self) -> torch.device:  # model_coding runs the coder where the model is
        return self.table.device

    def to(self, device) -> "TableModel":
        return TableModel(self.table.to(device), self.logits, self.max_symbols, self.name, self.salt)

    def index(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = (tokens.to(torch.int64) * 1_000_003) ^ (positions.to(torch.int64) * 916_121 + self.salt)
        h = h ^ (h >> 7)
        return (h % self.table.shape[0]).to(self.table.device)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.table[self.index(tokens, positions)]

    def cdf(self, row: int, precision: int) -> np.ndarray:
        """Row `row`'s CDF from the reference quantizer (int64 [V+1]), cached."""
        cache = self.__dict__.setdefault("_cdf_cache", {})
        key = (row, precision)
        if key not in cache:
            cdf, status = ref.quantize_row(ref.float_bits(self.table[row]), precision, self.logits)
            assert status == 0
            cache[key] = cdf
        return cache[key]

    def next_cdf(self, window: list, precision: int) -> np.ndarray:
        """The CDF of the next symbol after `window` (the window's symbols so far)."""
        token = window[-1] if window else self.bos
        h = (token * 1_000_003) ^ (len(window) * 916_121 + self.salt)  # index() on Python ints
        h ^= h >> 7
        return self.cdf(h % self.table.shape[0], precision)

    def sample_docs(self, n_docs: int, length: int, gen: torch.Generator, context: int = 32) -> list[torch.Tensor]:
        """Documents drawn from the model with its context restarted every
        `context` symbols (windows restart it at data-dependent points, so this
        only makes the documents typical, not exactly distributed)."""
        probs = torch.softmax(self.table.float(), -1) if self.logits else self.table.float()
        prev = torch.full((n_docs,), self.bos, dtype=torch.int64)
        out = torch.empty(n_docs, length, dtype=torch.int64)
        for t in range(length):
            p = t % context
            if p == 0:
                prev = torch.full_like(prev, self.bos)
            row = probs[self.index(prev, torch.full_like(prev, p))]
            s = torch.multinomial(row + 1e-30, 1, generator=gen).squeeze(1)
            s = torch.where(s == self.eos, torch.zeros_like(s), s)  # docs never hold EOS
            out[:, t] = s
            prev = s
        lens = torch.randint(length // 2, length + 1, (n_docs,), generator=gen)
        return [out[i, : int(lens[i])] for i in range(n_docs)]


def dyadic_frequencies(V: int, precision: int, rng: np.random.Generator) -> np.ndarray:
    """V powers of two summing to 2^precision: split a random part in half
    until there are V parts."""
    parts = [1 << precision]
    while len(parts) < V:
        big = [i for i, p in enumerate(parts) if p >= 2]
        i = big[rng.integers(len(big))]
        h = parts[i] // 2
        parts[i] = h
        parts.insert(int(rng.integers(len(parts) + 1)), h)
    return np.array(parts, dtype=np.int64)


def weights_for_frequencies(freq: np.ndarray, precision: int) -> np.ndarray:
    """Unnormalized probability weights that the quantizer maps exactly to
    freq (sum 2^precision, each >= 1): w_i = freq_i - 1. The fixed-point step
    scales them by a power of two, the integer scaling by exactly
    2^(54-P-k), and the remainder is 0."""
    assert freq.sum() == 1 << precision and freq.min() >= 1 and freq.max() <= 1 << 24
    return (freq - 1).astype(np.float32)


# --------------------------------------------------------------- factories
def _gen(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    return torch.Generator().manual_seed(seed), np.random.default_rng(seed)


def dirichlet_model(V: int, H: int, seed: int, alpha_range=(0.02, 2.0), **kw) -> TableModel:
    """Rows of varied sharpness: Dirichlet(alpha) with alpha log-uniform per row."""
    _, rng = _gen(seed)
    alpha = np.exp(rng.uniform(np.log(alpha_range[0]), np.log(alpha_range[1]), size=(H, 1)))
    rows = rng.gamma(np.broadcast_to(alpha, (H, V))) + 1e-12
    rows = rows / rows.sum(1, keepdims=True)
    return TableModel(torch.tensor(rows, dtype=torch.float32), name=f"dirichlet(V={V})", salt=seed, **kw)


def logit_model(V: int, H: int, seed: int, dtype=torch.float32, **kw) -> TableModel:
    """Logits with a per-row temperature (sharp to flat)."""
    _, rng = _gen(seed)
    temp = np.exp(rng.uniform(np.log(0.3), np.log(8.0), size=(H, 1)))
    rows = rng.standard_normal((H, V)) * temp
    return TableModel(torch.tensor(rows, dtype=torch.float32).to(dtype), logits=True,
                      name=f"logits(V={V},{str(dtype)[6:]})", salt=seed, **kw)


def bf16_model(V: int, H: int, seed: int, **kw) -> TableModel:
    m = dirichlet_model(V, H, seed, **kw)
    m.table = m.table.to(torch.bfloat16)
    m.name = f"bf16(V={V})"
    return m


def peaked_model(V: int, H: int, seed: int, eps: float = 1e-6, **kw) -> TableModel:
    """One symbol per row holds 1 - eps; the others share eps (some rows with
    probabilities down to 1e-9 beside 1 - 1e-9)."""
    _, rng = _gen(seed)
    rows = rng.random((H, V)) * eps / V
    rows[np.arange(H), rng.integers(0, V - 1, H)] = 1.0 - eps
    rows[: H // 4] = np.where(rows[: H // 4] > 0.5, 1 - 1e-9, 1e-9 / V)
    return TableModel(torch.tensor(rows, dtype=torch.float32), name=f"peaked(V={V})", salt=seed, **kw)


def dyadic_model(V: int, H: int, seed: int, precision: int, **kw) -> TableModel:
    """Rows whose quantized frequencies are powers of two (boundaries on
    binary fractions: the case the window rule cannot always handle)."""
    _, rng = _gen(seed)
    rows = np.stack([weights_for_frequencies(dyadic_frequencies(V, precision, rng), precision) for _ in range(H)])
    return TableModel(torch.tensor(rows), name=f"dyadic(V={V},P={precision})", salt=seed, **kw)


def uniform_model(V: int, **kw) -> TableModel:
    return TableModel(torch.ones(1, V), name=f"uniform(V={V})", **kw)


def least_likely_model(V: int, H: int, seed: int, **kw) -> TableModel:
    """Random rows whose least likely symbol is always symbol 0 (with
    probability down to 1e-7); its documents are all 0s."""
    _, rng = _gen(seed)
    rows = rng.random((H, V)) + 0.05
    rows[:, 0] = np.exp(rng.uniform(np.log(1e-7), np.log(0.01), H))
    rows = rows / rows.sum(1, keepdims=True)
    return TableModel(torch.tensor(rows, dtype=torch.float32), name=f"least-likely(V={V})", salt=seed, **kw)


def exception_model(precision: int, **kw) -> TableModel:
    """A constant 3-symbol distribution with frequencies [2^P - 2, 1, 1]
    (EOS = 2), for documents [1, 0 x m, 1, 0 x m, ...]. With b = 32, P = 24 a
    window [1, 0 x m] has no straddling cell at any length under any
    placement of the window order (coder.h): the rare symbol 1 opens an
    interval that sits 2^P coder units above a cell edge at the bottom and
    nearly a cell below one at the top; the small symbols' sub-intervals
    (r = 2^-P of the interval each) fit inside those partial cells whichever
    end they take, and each 0 shaves only 2r off the top. So every window but
    the last is an exception (m < 2^15). With b = 16, P = 14 or b = 24,
    P = 20 the bottom margin is narrower than r: the rule finds a straddle
    and gives symbols back instead."""
    w = weights_for_frequencies(np.array([(1 << precision) - 2, 1, 1]), precision)
    return TableModel(torch.tensor(w).view(1, 3), name=f"exception(P={precision})", **kw)


def exception_docs(n_docs: int, runs: int, max_run: int, gen: torch.Generator) -> list[torch.Tensor]:
    docs = []
    for _ in range(n_docs):
        m = torch.randint(0, max_run, (runs,), generator=gen).tolist()
        docs.append(torch.tensor([s for k in m for s in [1] + [0] * k], dtype=torch.int64))
    return docs


def row_probs(dist: torch.Tensor, logits: bool) -> torch.Tensor:
    """float64 normalized probabilities of dist rows (for sampling and ideal code lengths)."""
    x = dist.double()
    return torch.softmax(x, -1) if logits else x / x.sum(-1, keepdim=True)


def constant_docs(n_docs: int, length: int, symbol: int, gen: torch.Generator) -> list[torch.Tensor]:
    lens = torch.randint(length // 2, length + 1, (n_docs,), generator=gen)
    return [torch.full((int(n),), symbol, dtype=torch.int64) for n in lens]


# ------------------------------------------- distribution rows for op tests
def random_rows(kind: str, rows: int, V: int, rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
    """(dist, logits) of one adversarial or random family."""
    if kind == "dirichlet":
        alpha = np.exp(rng.uniform(np.log(0.01), np.log(10), (rows, 1)))
        x = rng.gamma(np.broadcast_to(alpha, (rows, V)))
        return torch.tensor(x / x.sum(1, keepdims=True), dtype=torch.float32), False
    if kind == "unnormalized":  # any non-negative finite weights, many magnitudes
        x = np.exp(rng.uniform(-60, 60, (rows, V))) * (rng.random((rows, V)) > 0.3)
        x[:, rng.integers(V)] = 1.0
        return torch.tensor(x, dtype=torch.float32), False
    if kind == "tiny":  # subnormals, zeros, -0.0 and huge values
        x = rng.choice(np.array([0.0, -0.0, 1e-45, 3e-39, 1e-38, 1e-30, 1.0, 3e38], dtype=np.float32), (rows, V))
        x[:, 0] = rng.choice(np.array([1e-45, 3e-39, 1.0, 3e38], dtype=np.float32), rows)
        return torch.tensor(x), False
    if kind == "peaked":  # 1 - 1e-9 beside 1e-9
        x = np.full((rows, V), 1e-9, dtype=np.float32)
        x[np.arange(rows), rng.integers(0, V, rows)] = 1 - 1e-9
        return torch.tensor(x), False
    if kind == "ties":  # equal maxima: the remainder goes to the first
        x = rng.integers(0, 4, (rows, V)).astype(np.float32)
        x[:, -1] = 3
        return torch.tensor(x), False
    if kind == "bf16":
        x, _ = random_rows("dirichlet", rows, V, rng)
        return x.to(torch.bfloat16), False
    if kind == "logits":
        x = rng.standard_normal((rows, V)) * np.exp(rng.uniform(np.log(0.1), np.log(100), (rows, 1)))
        return torch.tensor(x, dtype=torch.float32), True
    if kind == "logits_wide":  # huge magnitudes, -inf entries, x - max overflowing to -inf
        x = rng.choice(np.array([-np.inf, -3e38, -1e4, -87.5, -86.9, -20.0, -1e-3, 0.0, 5.0, 3e38], dtype=np.float32), (rows, V))
        x[:, rng.integers(V)] = rng.choice(np.array([0.0, 5.0, 3e38], dtype=np.float32))
        return torch.tensor(x), True
    if kind == "logits_bf16":
        x, _ = random_rows("logits", rows, V, rng)
        return x.to(torch.bfloat16), True
    raise ValueError(kind)


KINDS = ["dirichlet", "unnormalized", "tiny", "peaked", "ties", "bf16", "logits", "logits_wide", "logits_bf16"]


def peaky_m1(seed: int = 0, context: int = 64) -> M1:
    """A random tiny M1 with weights large enough for peaked, varied
    distributions (an untrained M1 at its init is nearly uniform)."""
    torch.manual_seed(seed)
    model = M1(preset("tiny", context=context))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    return model.eval()
