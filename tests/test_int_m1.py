"""The integer-exact M1 (ncx.int_m1, csrc/core/int_m1.h).

Proves: the native integer ops equal a pure-Python reference of the number
formats; the integer coder's weights for a window are bit-identical whatever
the batch size, order, padding (other streams at other positions), thread
count, and in stepwise vs full-window evaluation; compressed output is
byte-identical across batch sizes; a float M1 and its integer twin both code
losslessly (sizes reported); conversion keeps bits/byte close; checkpoints
and artifacts record the arithmetic, and bad checkpoints are clear errors.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

import context_models as cm
import int_reference as ref
from ncx import model_coding, ops
from ncx.int_m1 import (
    IntM1,
    calibrate_smoothing,
    finetune_m1_quantized,
    load_int_m1,
    quantize_m1,
    save_int_m1,
)
from ncx.m1 import BOS, M1, save_m1
from ncx.m1_loader import load_m1_coder
from ncx.methods import ACMethod, EqualInfoACMethod, method_from_spec
from ncx.train_m1 import heldout_bits_per_byte


@pytest.fixture(scope="module")
def float_m1() -> M1:
    return cm.peaky_m1()


@pytest.fixture(scope="module")
def int_m1(float_m1) -> IntM1:
    return quantize_m1(float_m1)


def _rand_docs(seed: int, n: int, max_len: int) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(rng.randrange(max_len + 1))) for _ in range(n)]


# ------------------------------------------------------------ ops vs reference
def _ints(gen, shape, lo, hi, dtype=torch.int32):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("seed", range(4))
def test_int_linear_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    # D = 37: two groups of 16 channels (the VNNI path's 16-way reduction) and a tail of 5.
    N, K, D = 5, [7, 64, 130, 33][seed], 37
    x = _ints(gen, (N, K), -(1 << 22), 1 << 22)
    x[1] = 0  # a zero row
    x[2, 0] = (1 << 31) - 1  # the largest magnitude
    x[3] = _ints(gen, (K,), -3, 4)  # tiny values
    w = _ints(gen, (D, K), -127, 128, torch.int8)
    w[4] = 0
    mult = _ints(gen, (D,), 1 << 14, (1 << 15) + 1)
    shift = _ints(gen, (D,), 20, 45)
    shift[0] = -3  # a left shift (saturates)
    got = ops.int_linear(x, w, mult, shift)
    want = ref.linear(x.tolist(), w.tolist(), mult.tolist(), shift.tolist())
    assert got.tolist() == want


@pytest.mark.parametrize("seed", range(4))
def test_int_rms_norm_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    C = [8, 32, 100, 256][seed]
    x = _ints(gen, (6, C), -(1 << 26), 1 << 26)
    x[1] = 0
    x[2] = _ints(gen, (C,), -2, 3)
    x[3, :] = -(1 << 31) + 1
    gain = _ints(gen, (C,), -(1 << 18), 1 << 18)
    assert ops.int_rms_norm(x, gain).tolist() == ref.rms_norm(x.tolist(), gain.tolist())


@pytest.mark.parametrize("gain_bits", [27, 28, 31])
def test_int_rms_norm_saturates_and_takes_large_gains(gain_bits):
    """Gains below 2^28 take the CPU's division-free path, larger ones the
    exact one; a row with one large value (x / rms ~ sqrt(C)) times a large
    gain saturates at +-(2^31 - 1)."""
    gen = torch.Generator().manual_seed(gain_bits)
    C = 256
    x = _ints(gen, (5, C), -(1 << 20), 1 << 20)
    x[1] = 0
    x[1, 7] = 1 << 25  # x / rms = 16 there
    x[2, 9] = -(1 << 30)
    x[3] = _ints(gen, (C,), -3, 4)
    gain = _ints(gen, (C,), -(1 << gain_bits) + 1, 1 << gain_bits)
    gain[7], gain[9] = (1 << gain_bits) - 1, -(1 << gain_bits) + 1
    got = ops.int_rms_norm(x, gain)
    assert got.tolist() == ref.rms_norm(x.tolist(), gain.tolist())
    if gain_bits >= 28:
        assert got.abs().max() == 2 ** 31 - 1


def test_int_coder_weights_matches_reference_and_exp():
    gen = torch.Generator().manual_seed(0)
    logits = _ints(gen, (8, 257), -(40 << 16), 40 << 16)
    logits[1] = 0  # uniform
    logits[2] = -(1 << 31) + 1
    logits[2, 7] = (1 << 31) - 1  # extremes: one-hot
    got = ops.int_coder_weights(logits)
    assert got.tolist() == ref.coder_weights(logits.tolist())
    assert (got.amax(1) == 1 << 22).all()  # the largest weight is exactly 2**22
    d = torch.arange(-20 << 16, 1, 997)
    approx = torch.tensor([ref.exp_nonpositive(int(v), 22) for v in d], dtype=torch.float64) / 2 ** 22
    exact = torch.exp(d.double() / 65536)
    # d * log2(e) is rounded to Q16 (error <= 2**-17, i.e. ln 2 * 2**-17 ~ 5.3e-6 relative) and
    # the result to Q22 (2.4e-7 absolute): far below what could change a code length.
    assert ((approx - exact).abs() <= 5.5e-6 * exact + 2.5e-7).all()


@pytest.mark.parametrize("hd, L, q_bits", [(8, 10, 20), (16, 37, 20), (12, 21, 20), (40, 70, 12), (64, 300, 10),
                                            (64, 300, 20)])
def test_int_rope_and_attention_match_reference(hd, L, q_bits):
    """Key counts below, at and above the vector widths (4 and 8 keys at a
    time), head_dim 12 and 40 not multiples of the blocks of dimensions (the
    scalar tails), 64 the paper M1's. Queries of 2^20 make most scores far
    below the peak (weights clamp to 0); of 2^10-2^12, the weights spread over
    the whole exp range."""
    gen = torch.Generator().manual_seed(hd + q_bits)
    N, H, S = 6, 2, 3
    cos, sin = ref.random_rope_tables(gen, L, hd)
    x = _ints(gen, (N, H, hd), -(1 << 25), 1 << 25)
    positions = _ints(gen, (N,), 0, L, torch.int64)
    positions[0], positions[1], positions[2] = 0, 7, L - 1
    assert ops.int_rope(x, cos, sin, positions).tolist() == ref.rope(x.tolist(), cos.tolist(), sin.tolist(),
                                                                    positions.tolist())
    q = _ints(gen, (N, H, hd), -(1 << q_bits), 1 << q_bits)
    k = _ints(gen, (S, H, L, hd), -(1 << 20), 1 << 20)
    v = _ints(gen, (S, H, L, hd), -(1 << 24), 1 << 24)
    streams = _ints(gen, (N,), 0, S, torch.int64)
    got = ops.int_attention(q, k, v, streams, positions)
    assert got.tolist() == ref.attention(q.tolist(), k.tolist(), v.tolist(), streams.tolist(), positions.tolist())


def test_number_formats_are_the_extensions():
    """ncx.int_m1 reads the formats from the native core; the reference was written from them."""
    from ncx import int_m1
    assert (int_m1.ACT_FRAC, int_m1.QKV_LIMIT, int_m1.ROPE_FRAC, int_m1.CODER_ONE) == (ref.FRAC, ref.LIMIT, 30, 1 << 22)


def test_int_ops_reject_bad_arguments():
    x = torch.zeros(2, 8, dtype=torch.int32)
    w = torch.zeros(4, 8, dtype=torch.int8)
    m = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="weight must be a Char tensor"):
        ops.int_linear(x, w.float(), m, m)
    with pytest.raises(RuntimeError, match="columns"):
        ops.int_linear(x, torch.zeros(4, 9, dtype=torch.int8), m, m)
    with pytest.raises(RuntimeError, match="x must be a Int tensor"):
        ops.int_rms_norm(x.float(), torch.zeros(8, dtype=torch.int32))
    caches = torch.zeros(1, 1, 4, 8, dtype=torch.int32)
    q = torch.zeros(1, 1, 8, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="positions must lie in"):
        ops.int_attention(q, caches, caches, torch.zeros(1, dtype=torch.int64), torch.tensor([4]))
    with pytest.raises(RuntimeError, match="streams must lie in"):
        ops.int_attention(q, caches, caches, torch.ones(1, dtype=torch.int64), torch.tensor([0]))
    tab = torch.zeros(4, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="positions must lie in"):
        ops.int_rope(q, tab, tab, torch.tensor([9]))


def test_int_ops_opcheck():
    gen = torch.Generator().manual_seed(0)
    x = _ints(gen, (3, 16), -(1 << 20), 1 << 20)
    w = _ints(gen, (5, 16), -127, 128, torch.int8)
    m = _ints(gen, (5,), 1 << 14, 1 << 15)
    s = _ints(gen, (5,), 25, 30)
    torch.library.opcheck(torch.ops.ncx.int_linear, (x, w, m, s))
    torch.library.opcheck(torch.ops.ncx.int_rms_norm, (x, _ints(gen, (16,), 1, 1 << 17)))
    torch.library.opcheck(torch.ops.ncx.int_coder_weights, (x,))
    qh = x.view(3, 2, 8)
    tab = _ints(gen, (4, 4), -(1 << 30), 1 << 30)
    pos = torch.tensor([0, 3, 1])
    torch.library.opcheck(torch.ops.ncx.int_rope, (qh, tab, tab, pos))
    cache = _ints(gen, (2, 2, 4, 8), -(1 << 20), 1 << 20)
    torch.library.opcheck(torch.ops.ncx.int_attention, (qh, cache, cache, torch.tensor([1, 0, 1]), pos))


def _composed_forward(model: IntM1, tokens, streams, positions, k_cache, v_cache) -> torch.Tensor:
    """IntM1.forward_rows written with the single ops, layer by layer in Python,
    as ncx.int_m1 documents the model: what the one-op forward must equal."""
    c, t = model.config, model.tensors
    N, H, hd = tokens.shape[0], c.n_head, c.head_dim
    limit = (1 << 31) - 1

    def linear(name, x):
        return ops.int_linear(x, t[f"{name}.weight"], t[f"{name}.multiplier"], t[f"{name}.shift"])

    def add(x, y):  # the saturating residual add
        return (x.to(torch.int64) + y).clamp(-limit, limit).to(torch.int32)

    x = t["wte"][tokens]
    for i in range(c.n_layer):
        p = f"layers.{i}."
        qkv = linear(p + "qkv", ops.int_rms_norm(x, t[p + "norm1"])).view(N, 3, H, hd)
        q, k = ops.int_rope(qkv[:, :2].reshape(N, 2 * H, hd), t["rope_cos"], t["rope_sin"], positions).view(
            N, 2, H, hd).unbind(1)
        k_cache[i][streams, :, positions] = k
        v_cache[i][streams, :, positions] = qkv[:, 2].clamp(-ref.LIMIT, ref.LIMIT)
        a = ops.int_attention(q, k_cache[i], v_cache[i], streams, positions)
        x = add(x, linear(p + "proj", a.view(N, c.n_embd)))
        x = add(x, linear(p + "fc_proj", linear(p + "fc", ops.int_rms_norm(x, t[p + "norm2"])).clamp_min(0)))
    return ops.int_coder_weights(linear("head", ops.int_rms_norm(x, t["norm_f"])))


def _loud(model: IntM1) -> IntM1:
    """model with embeddings near the int32 limits and the largest value
    projections, so residual adds and v saturate."""
    t = dict(model.tensors)
    gen = torch.Generator().manual_seed(11)
    t["wte"] = torch.randint(-(1 << 31) + 1, 1 << 31, t["wte"].shape, generator=gen, dtype=torch.int64).to(torch.int32)
    for i in range(model.config.n_layer):
        t[f"layers.{i}.qkv.multiplier"] = torch.full_like(t[f"layers.{i}.qkv.multiplier"], 1 << 15)
        t[f"layers.{i}.qkv.shift"] = torch.full_like(t[f"layers.{i}.qkv.shift"], 8)
    return IntM1(model.config, t)


@pytest.mark.parametrize("loud", [False, True])
def test_one_op_forward_equals_the_single_ops(int_m1, loud):
    """ops.int_m1_forward (every layer in one native op) gives the integers,
    and leaves the caches, that composing the single ops gives: whole windows,
    and stepwise rows of streams in shuffled order at uneven positions."""
    model = _loud(int_m1) if loud else int_m1
    c = model.config
    gen = torch.Generator().manual_seed(3)
    S, L = 6, c.context

    def run(forward, tokens, streams, positions, caches):
        return forward(tokens, streams, positions, *caches)

    caches = {name: ([torch.zeros(S, c.n_head, L, c.head_dim, dtype=torch.int32) for _ in range(c.n_layer)],
                     [torch.zeros(S, c.n_head, L, c.head_dim, dtype=torch.int32) for _ in range(c.n_layer)])
              for name in ("native", "composed")}
    forwards = {"native": model.forward_rows, "composed": lambda *a: _composed_forward(model, *a)}
    # Three whole windows, then single rows of all six streams at positions that differ per stream.
    windows = _windows(4, 3, L)
    calls = [(windows.reshape(-1), torch.arange(3).repeat_interleave(L), torch.arange(L).repeat(3))]
    filled = torch.zeros(S, dtype=torch.int64)
    filled[:3] = L
    for step in range(12):
        streams = torch.randperm(S, generator=gen)
        positions = torch.where(filled[streams] >= L, torch.randint(0, L, (S,), generator=gen), filled[streams])
        filled[streams] = torch.maximum(filled[streams], positions + 1)
        calls.append((torch.randint(0, 257, (S,), generator=gen), streams, positions))
    for tokens, streams, positions in calls:
        out = {n: run(forwards[n], tokens, streams, positions, caches[n]) for n in forwards}
        assert out["native"].dtype == torch.int32 and torch.equal(out["native"], out["composed"])
    for a, b in zip(caches["native"][0] + caches["native"][1], caches["composed"][0] + caches["composed"][1]):
        assert torch.equal(a, b)
    if loud:  # the saturations were reached, so the test covers them
        assert any(int(v.abs().max()) == ref.LIMIT for v in caches["native"][1])


def test_one_op_forward_rejects_bad_arguments(int_m1):
    c = int_m1.config
    cache = [torch.zeros(2, c.n_head, 4, c.head_dim, dtype=torch.int32) for _ in range(c.n_layer)]
    one = torch.zeros(1, dtype=torch.int64)
    w = int_m1.flat_weights
    with pytest.raises(RuntimeError, match="weights must hold"):
        ops.int_m1_forward(one, one, one, w[:-1], cache, cache, c.n_head)
    with pytest.raises(RuntimeError, match="one cache per layer"):
        ops.int_m1_forward(one, one, one, w, cache, cache[:-1], c.n_head)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.int_m1_forward(one, one + 2, one, w, cache, cache, c.n_head)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.int_m1_forward(one, one, one + 4, w, cache, cache, c.n_head)
    with pytest.raises(RuntimeError, match="caches of layer 0 must be"):
        ops.int_m1_forward(one, one, one, w, [cache[0][:, :, :, :1].contiguous()] + cache[1:], cache, c.n_head)
    with pytest.raises(RuntimeError, match="1-D of one length"):
        ops.int_m1_forward(one, one.int(), one, w, cache, cache, c.n_head)


def test_one_op_forward_opcheck(int_m1):
    c = int_m1.config
    caches = [[torch.zeros(2, c.n_head, 8, c.head_dim, dtype=torch.int32) for _ in range(c.n_layer)]
              for _ in range(2)]
    args = (torch.tensor([BOS, 5, 9]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), int_m1.flat_weights,
            caches[0], caches[1], c.n_head)
    torch.library.opcheck(torch.ops.ncx.int_m1_forward, args)


# ------------------------------------------------------------ determinism
def _windows(seed: int, n: int, T: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 257, (n, T), generator=gen)
    w[:, 0] = BOS
    w[n // 2, 1:] = 32  # a long run of one byte
    return w


def test_full_window_equals_stepwise(int_m1):
    """Stepwise (KV cache, one position per call) and full-window evaluation
    give identical weights."""
    T = int_m1.config.context
    windows = _windows(0, 5, T)
    full = int_m1.window_weights(windows)
    coder = int_m1.coder()
    for t in range(T):
        step = coder(windows[:, t], torch.full((5,), t))
        assert torch.equal(step, full[:, t].float()), t


@pytest.mark.parametrize("batch", [1, 3, 64, 1000])
def test_weights_do_not_depend_on_batch_order_or_padding(int_m1, batch):
    """Window w's weights at every position are the same when it runs alone,
    in a batch of `batch` windows, at any row, next to streams at other
    positions (the others start at random offsets: 'padding')."""
    T = 24
    target = _windows(1, 1, T)[0]
    alone = int_m1.window_weights(target[None])[0]
    others = _windows(2 + batch, batch, T)
    row = random.Random(batch).randrange(batch)
    others[row] = target
    lag = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(batch))
    lag[row] = 0
    coder = int_m1.coder()
    for t in range(T + 5):
        pos = (t - lag).clamp(min=0, max=T - 1)
        tok = others[torch.arange(batch), pos]
        out = coder(tok, pos)
        if t < T:
            assert torch.equal(out[row], alone[t].float()), (batch, t)


def test_weights_do_not_depend_on_threads(int_m1):
    windows = _windows(3, 64, int_m1.config.context)
    one = int_m1.window_weights(windows)
    torch.set_num_threads(2)
    assert torch.equal(int_m1.window_weights(windows), one)


# ------------------------------------------------------------ coding
def _adversarial_docs(T: int) -> list[bytes]:
    rng = random.Random(7)
    return [b"", b"a", bytes(range(256)), b"\x00" * 300, b"\xff\xfe\xc3\x28\xa0\xa1" * 20,
            bytes(rng.randrange(256) for _ in range(40 * T)), "naïve café — ok".encode() * 30]


class _OneStepAtATime:
    """A coder without steps(): the AC encoder then calls it once per position."""

    def __init__(self, coder):
        self.coder = coder
        for attr in ("vocab_size", "bos", "logits", "max_symbols", "arithmetic", "device", "weights_hash"):
            setattr(self, attr, getattr(coder, attr))

    def __call__(self, tokens, positions):
        return self.coder(tokens, positions)


@pytest.mark.parametrize("rows", [1, 7, 100, 2048])
def test_block_encoding_equals_stepwise(int_m1, rows, monkeypatch):
    """The AC encoder hands the integer M1 blocks of positions (steps()); the
    code is the same bytes as one position per call, for blocks of any size,
    across the context restarts of long documents (context 64 here)."""
    docs = _adversarial_docs(int_m1.config.context) + _rand_docs(21, 5, 300)
    stepwise = ACMethod(_OneStepAtATime(int_m1.coder()), batch=4).encode_batch(docs)
    monkeypatch.setattr(model_coding, "TEACHER_FORCED_ROWS", rows)
    blocks = ACMethod(int_m1.coder(), batch=4).encode_batch(docs)
    for a, b in zip(stepwise, blocks):
        assert a.tokens.tobytes() == b.tokens.tobytes()
    assert ACMethod(int_m1.coder(), batch=3).decode_batch(blocks) == docs


def test_steps_equal_step_and_check_positions(int_m1):
    windows = _windows(5, 3, 40)
    one = int_m1.coder()
    want = torch.stack([one(windows[:, t], torch.full((3,), t)) for t in range(40)], 1)
    blocks = int_m1.coder()
    got = torch.cat([blocks.steps(windows[:, t:t + 9], torch.arange(t, min(t + 9, 40)).expand(3, -1))
                     for t in range(0, 40, 9)], 1)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="consecutive"):
        int_m1.coder().steps(windows[:, :3], torch.tensor([[0, 1, 3]] * 3))
    with pytest.raises(ValueError, match="skipped ahead"):
        int_m1.coder().steps(windows[:, :3], torch.tensor([[1, 2, 3]] * 3))


@pytest.mark.parametrize("method_cls, kw", [(ACMethod, {}), (EqualInfoACMethod, {"b": 16}),
                                            (EqualInfoACMethod, {"b": 32})])
def test_integer_coding_is_lossless_and_batch_independent(int_m1, method_cls, kw):
    docs = _adversarial_docs(int_m1.config.context) + _rand_docs(11, 6, 200)
    big = method_cls(int_m1.coder(), batch=64, **kw)
    small = method_cls(int_m1.coder(), batch=1, **kw)
    enc_big = big.encode_batch(docs)
    enc_small = small.encode_batch(docs)
    for a, b in zip(enc_big, enc_small):
        assert a.tokens.tobytes() == b.tokens.tobytes() and a.exceptions == b.exceptions
    assert big.decode_batch(enc_small) == docs
    assert big.spec()["m1_arithmetic"] == "integer"


def test_float_and_integer_twins_both_lossless(float_m1, int_m1, record_property):
    docs = _adversarial_docs(float_m1.config.context) + _rand_docs(12, 4, 300)
    sizes = {}
    for name, coder in (("float", float_m1.coder()), ("integer", int_m1.coder())):
        method = EqualInfoACMethod(coder, b=16, batch=32)
        encoded = method.encode_batch(docs)
        assert method.decode_batch(encoded) == docs
        sizes[name] = sum(len(e.tokens) for e in encoded)
    diff = (sizes["integer"] / sizes["float"] - 1) * 100
    record_property("twin_sizes_tokens", json.dumps({**sizes, "difference_percent": round(diff, 3)}))
    print(f"\nEqualInfoAC[b=16] tokens: float {sizes['float']}, integer {sizes['integer']} ({diff:+.3f}%)")


def test_conversion_keeps_bits_per_byte(float_m1, int_m1):
    docs = _rand_docs(13, 3, 400) + [b"the cat sat on the mat. " * 20]
    f = heldout_bits_per_byte(float_m1, docs)
    i = heldout_bits_per_byte(int_m1, docs)
    assert abs(i / f - 1) < 0.02, (f, i)


def test_calibration_and_finetune(float_m1):
    docs = [b"the quick brown fox jumps over the lazy dog. " * 12, bytes(range(256)) * 3]
    before = float_m1.weights_hash
    float_m1.train()
    chosen = calibrate_smoothing(float_m1, docs, alphas=(None, 0.5), max_symbols=2048, log=None)
    assert float_m1.training and float_m1.weights_hash == before  # the caller's model is untouched
    float_m1.eval()
    cal = chosen.calibration
    assert [c[0] for c in cal["candidates"]] == [None, 0.5]
    assert cal["smoothing"] == min(cal["candidates"], key=lambda c: c[1])[0]
    assert cal["calibration_float_bits_per_byte"] > 0
    # A smoothed model computes nearly the same function.
    smoothed = quantize_m1(float_m1, 0.5, stats=__import__("ncx.int_m1", fromlist=["_input_amax"])._input_amax(
        float_m1, docs, 2048))
    assert abs(heldout_bits_per_byte(smoothed, docs) / heldout_bits_per_byte(float_m1, docs) - 1) < 0.03
    tuned = finetune_m1_quantized(float_m1, docs, steps=2, batch_size=2)
    assert isinstance(tuned, M1) and tuned.config == float_m1.config
    assert not torch.equal(tuned.blocks[0].qkv.weight, float_m1.blocks[0].qkv.weight)
    assert isinstance(tuned.blocks[0].qkv, torch.nn.Linear)


# ------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_dispatch(tmp_path, float_m1, int_m1):
    path = str(tmp_path / "int.safetensors")
    digest = save_int_m1(int_m1, path)
    loaded, info = load_int_m1(path)
    assert digest == info["weights_hash"] == loaded.weights_hash == int_m1.weights_hash
    assert info["source_weights_hash"] == float_m1.weights_hash
    coder, cinfo = load_m1_coder(path)
    assert coder.arithmetic == cinfo["arithmetic"] == "integer"
    windows = _windows(4, 2, 16)
    assert torch.equal(loaded.window_weights(windows), int_m1.window_weights(windows))
    fpath = str(tmp_path / "float.safetensors")
    save_m1(float_m1, fpath)
    assert load_m1_coder(fpath)[0].arithmetic == "float"
    with pytest.raises(ValueError, match="a float M1 checkpoint, not an integer M1 checkpoint"):
        load_int_m1(fpath)
    with pytest.raises(FileNotFoundError):
        load_m1_coder(str(tmp_path / "missing.safetensors"))


def test_corrupt_integer_checkpoint_is_a_clear_error(tmp_path, int_m1):
    path = tmp_path / "int.safetensors"
    save_int_m1(int_m1, str(path))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_m1_coder(str(path))
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_m1_coder(str(path))


def test_wrong_m1_arithmetic_is_named(float_m1, int_m1):
    spec = EqualInfoACMethod(int_m1.coder(), b=16).spec()
    with pytest.raises(ValueError, match="coded with the integer M1 .* given checkpoint is the float M1"):
        method_from_spec(spec, float_m1.coder())


def test_compress_job_records_integer_arithmetic(tmp_path, int_m1):
    """ncx compress/decompress with an integer checkpoint: the manifest
    records the integer arithmetic, and the documents come back exactly."""
    from test_jobs import ncx, restored, write_jsonl

    ckpt = tmp_path / "int.safetensors"
    save_int_m1(int_m1, str(ckpt))
    docs = [b"hello integer world", b"", bytes(range(256)), b"zz" * 100, b"\xff\xfe not UTF-8 \x80"]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "equal_info_ac", "--b", 16, "--m1", ckpt, "--data", src, "--out", out,
               "--no-progress", "--device", "cpu", "--engine", "m1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["m1_arithmetic"] == manifest["method"]["m1_arithmetic"] == "integer"
    from ncx.jobs import inspect_dataset

    assert "integer arithmetic (decodes on any device)" in inspect_dataset(out)
    assert ncx("decompress", out, "--out", tmp_path / "r", "--m1", ckpt, "--device", "cpu", "--no-progress") == 0
    assert restored(tmp_path / "r") == docs


# ------------------------------------------------------------ across devices
# A GPU run of bench/gpu_check.sh writes a compressed dataset made on the GPU
# (with its integer M1) to this folder; committed, CI decodes it on the CPU.
GPU_ARTIFACT = os.path.join(os.path.dirname(__file__), "data", "gpu_int_m1")


def _cross_device_docs() -> list[bytes]:
    rng = random.Random(2026)
    return _adversarial_docs(64) + [bytes(rng.randrange(256) for _ in range(rng.randrange(600))) for _ in range(40)]


@pytest.mark.cuda
def test_cuda_and_cpu_weights_identical_on_100k_windows(int_m1):
    """The integer M1 on CUDA and on the CPU: identical weights, hence
    identical CDFs, for 100,000 windows (random bytes, runs, BOS resets)."""
    gpu = int_m1.to("cuda")
    T, per_call, total = 16, 5000, 100_000
    for start in range(0, total, per_call):
        windows = _windows(100 + start, per_call, T)
        cpu_w = int_m1.window_weights(windows)
        gpu_w = gpu.window_weights(windows.cuda())
        assert torch.equal(cpu_w, gpu_w.cpu()), start
        assert torch.equal(ops.quantize(cpu_w.float(), 16), ops.quantize(gpu_w.float(), 16).cpu()), start


@pytest.mark.cuda
@pytest.mark.parametrize("method_cls, kw", [(ACMethod, {}), (EqualInfoACMethod, {"b": 32})])
def test_cuda_graphs_code_the_same_bytes(int_m1, method_cls, kw):
    """Steps replayed from captured CUDA graphs give the bytes of eager steps,
    and decode (with graphs) to the input; the graphs were really used."""
    docs = _cross_device_docs()
    gpu = int_m1.to("cuda")
    eager = method_cls(gpu.coder(), batch=64, **kw).encode_batch(docs)
    coder = gpu.coder(cuda_graphs=True)
    graphed = method_cls(coder, batch=64, **kw).encode_batch(docs)
    assert [e.tokens.tobytes() for e in graphed] == [e.tokens.tobytes() for e in eager]
    assert coder.graphs.captured >= 1
    assert method_cls(gpu.coder(cuda_graphs=True), batch=64, **kw).decode_batch(graphed) == docs


def test_cuda_graphs_need_a_cuda_model(int_m1):
    with pytest.raises(ValueError, match="cuda_graphs needs the integer M1 on a CUDA device"):
        int_m1.coder(cuda_graphs=True)


@pytest.mark.cuda
@pytest.mark.parametrize("method_cls, kw", [(ACMethod, {}), (EqualInfoACMethod, {"b": 16})])
def test_compressed_on_cuda_decodes_on_cpu(int_m1, method_cls, kw):
    docs = _cross_device_docs()
    encoded = method_cls(int_m1.to("cuda").coder(), batch=64, **kw).encode_batch(docs)
    assert method_cls(int_m1.coder(), batch=16, **kw).decode_batch(encoded) == docs
    # and the other way round
    encoded_cpu = method_cls(int_m1.coder(), batch=7, **kw).encode_batch(docs)
    assert [e.tokens.tobytes() for e in encoded_cpu] == [e.tokens.tobytes() for e in encoded]


@pytest.mark.cuda
def test_write_gpu_artifact(int_m1, tmp_path):
    """With NCX_GPU_ARTIFACT_DIR set (bench/gpu_check.sh sets it), compress
    on the GPU with `ncx compress` and leave the integer checkpoint, the
    dataset and the source documents there, for CI to decode on a CPU."""
    out_dir = os.environ.get("NCX_GPU_ARTIFACT_DIR")
    if not out_dir:
        pytest.skip("NCX_GPU_ARTIFACT_DIR not set")
    from test_jobs import ncx, write_jsonl

    os.makedirs(out_dir, exist_ok=True)
    ckpt = os.path.join(out_dir, "int_m1.safetensors")
    save_int_m1(int_m1, ckpt)
    src = write_jsonl(Path(out_dir) / "docs.jsonl", _cross_device_docs())
    # M1 in the loop on the GPU (not the window vocabulary): the CPU decodes with M1 again.
    assert ncx("compress", "--method", "equal_info_ac", "--b", 16, "--m1", ckpt, "--data", src,
               "--out", os.path.join(out_dir, "dataset"), "--no-progress", "--device", "cuda", "--engine", "m1") == 0


def test_gpu_compressed_dataset_decodes_on_cpu(tmp_path):
    """A dataset compressed on a GPU with an integer M1 (committed from a run
    of bench/gpu_check.sh) decodes exactly on this CPU."""
    if not os.path.isdir(GPU_ARTIFACT):
        pytest.skip("no GPU-made artifact committed yet (bench/gpu_check.sh writes one)")
    from test_jobs import ncx, restored

    manifest = json.loads(Path(GPU_ARTIFACT, "dataset", "manifest.json").read_text())
    assert manifest["extra"]["m1_device_type"] == "cuda" and manifest["extra"]["m1_arithmetic"] == "integer"
    out = tmp_path / "restored"
    assert ncx("decompress", Path(GPU_ARTIFACT, "dataset"), "--out", out, "--m1",
               Path(GPU_ARTIFACT, "int_m1.safetensors"), "--device", "cpu", "--no-progress") == 0
    docs = [json.loads(line)["text"].encode("utf-8", "surrogateescape")
            for line in Path(GPU_ARTIFACT, "docs.jsonl").read_text().splitlines()]
    assert restored(out) == docs


def test_quantize_m1_command(tmp_path, float_m1, capsys):
    """`ncx quantize-m1`: converts with calibration on the given documents,
    reports both held-out bits/byte, writes a loadable integer checkpoint;
    mistakes are one clear line."""
    from test_jobs import ncx, write_jsonl

    ckpt = tmp_path / "m1.safetensors"
    save_m1(float_m1, str(ckpt))
    docs = write_jsonl(tmp_path / "cal.jsonl", [b"calibration text, plain and simple. " * 8, bytes(range(256))])
    assert ncx("quantize-m1", "--m1", ckpt, "--data", docs, "--heldout", docs, "--calibration-symbols", 1024,
               "--smoothing", "none,0.5") == 0
    out = capsys.readouterr().out
    assert "held-out bits/byte: float M1" in out and "integer M1" in out
    model, info = load_int_m1(str(tmp_path / "m1-int.safetensors"))
    assert info["source_weights_hash"] == float_m1.weights_hash
    assert [c[0] for c in info["calibration"]["candidates"]] == [None, 0.5]
    assert "heldout_int_bits_per_byte" in info["summary"]

    assert ncx("quantize-m1", "--m1", ckpt, "--smoothing", "2") == 2
    assert "outside [0, 1]" in capsys.readouterr().err
    assert ncx("quantize-m1", "--m1", tmp_path / "m1-int.safetensors", "--no-eval") == 2
    assert "an integer M1 checkpoint, not a float M1 checkpoint" in capsys.readouterr().err
    assert ncx("quantize-m1", "--m1", tmp_path / "nope.safetensors") == 2
    assert "no such M1 checkpoint" in capsys.readouterr().err
