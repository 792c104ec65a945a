"""The coding loops of ncx.model_coding wait for the device only every few
steps (every step on a CPU, GPU_SYNC_EVERY on a GPU): between waits they keep
every decision on the device and defer the coders' status checks. These tests
run the GPU's schedule on the CPU (SYNC_EVERY["cpu"] patched) and hold it to
the same bytes as waiting at every step, to lossless decoding, to errors that
still name the stream, and to no reads of device values between waits."""
from __future__ import annotations

import random

import pytest
import torch

import context_models as cm
from ncx import model_coding
from ncx.errors import NcxError
from ncx.int_m1 import quantize_m1
from ncx.methods import ACMethod, EqualInfoACMethod


@pytest.fixture(scope="module")
def int_coder():
    return quantize_m1(cm.peaky_m1(1))


def _docs() -> list[bytes]:
    rng = random.Random(5)
    return ([b"", b"a", bytes(range(256)), b"\x00" * 700, b"\xff\xfe\xc3\x28" * 50,
             bytes(rng.randrange(256) for _ in range(2000))]
            + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 90))) for _ in range(20)])


def _methods(model):
    return [ACMethod(model, batch=5), EqualInfoACMethod(model, b=32, batch=7),
            EqualInfoACMethod(model, b=24, precision=12, batch=64)]


def test_waiting_every_k_steps_codes_the_same_bytes(int_coder, monkeypatch):
    """Every method coded with waits every 1, 3 and 16 steps: the same tokens,
    decoded back to the input by any schedule. The 700-byte run fills whole
    64-symbol contexts, so the caches grow between waits."""
    docs = _docs()
    coded = {}
    for every in (1, 3, 16):
        monkeypatch.setitem(model_coding.SYNC_EVERY, "cpu", every)
        coded[every] = [m.encode_batch(docs) for m in _methods(int_coder.coder())]
    for every in (3, 16):
        for a, b in zip(coded[1], coded[every]):
            assert [e.tokens.tobytes() for e in a] == [e.tokens.tobytes() for e in b], every
    for every in (1, 16):
        monkeypatch.setitem(model_coding.SYNC_EVERY, "cpu", every)
        for method, enc in zip(_methods(int_coder.coder()), coded[3]):
            assert method.decode_batch(enc) == docs, (every, method.name)


class _Counting:
    """A ContextModel passed through, its calls counted."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, tokens, positions):
        self.calls += 1
        return self.model(tokens, positions)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _count_reads(monkeypatch) -> list[int]:
    """Counts the reads of tensor values into Python made inside a coding
    loop's `with _Loop` body (the host waits of a GPU); the loops' set-up and
    their grouping of the results on the CPU afterwards are not counted."""
    reads, inside = [0], [False]
    for name in ("tolist", "item", "__bool__", "__int__", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            reads[0] += inside[0]
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)
    original_nonzero = torch.nonzero

    def nonzero(*a, **kw):
        reads[0] += inside[0]
        return original_nonzero(*a, **kw)
    monkeypatch.setattr(torch, "nonzero", nonzero)
    enter, exit_ = model_coding._Loop.__enter__, model_coding._Loop.__exit__

    def entered(self):
        inside[0] = True
        return enter(self)

    def exited(self, *exc):
        inside[0] = False
        return exit_(self, *exc)
    monkeypatch.setattr(model_coding._Loop, "__enter__", entered)
    monkeypatch.setattr(model_coding._Loop, "__exit__", exited)
    return reads


@pytest.mark.parametrize("window", [True, False])
def test_loops_read_the_device_only_when_they_wait(int_coder, monkeypatch, window):
    """Between two waits a loop reads no value from the device: with waits
    every 8 steps, at most two reads per wait (the flags, the compaction of
    the records) for hundreds of steps; waiting at every step reads several
    times more."""
    gen = torch.Generator().manual_seed(2)
    docs = [torch.randint(0, 256, (int(n),), generator=gen) for n in torch.randint(20, 200, (24,), generator=gen)]
    reads_at = {}
    for every in (1, 8):
        monkeypatch.setitem(model_coding.SYNC_EVERY, "cpu", every)
        model = _Counting(int_coder.coder())
        if window:
            encoded = model_coding.encode_windows(docs, model, 32, 16, eos=256, batch=8)
            reads = _count_reads(monkeypatch)
            calls = model.calls
            decoded = model_coding.decode_windows(encoded, model, 32, 16, eos=256, batch=8)
        else:
            encoded = model_coding.encode_streams(docs, model, 16, eos=256, batch=8)
            reads = _count_reads(monkeypatch)
            calls = model.calls
            decoded = model_coding.decode_streams(encoded, model, 16, eos=256, batch=8)
        steps = model.calls - calls
        monkeypatch.undo()
        assert all(torch.equal(a, b) for a, b in zip(decoded, docs))
        reads_at[every] = reads[0]
        if every == 8:  # a wait reads its flags in one transfer and compacts the records with one nonzero
            waits = -(-steps // 8) + len(docs) // 8 + 1  # decode_streams: a loop per batch of 8 streams
            assert steps > 150 and reads[0] <= 2 * waits, (steps, reads[0])
    assert reads_at[1] >= 5 * reads_at[8]


class _Poisoned:
    """A context model whose distribution for stream `row` turns to NaN at call `at`."""

    def __init__(self, model, row: int, at: int):
        self.model, self.row, self.at, self.calls = model, row, at, 0

    def __call__(self, tokens, positions):
        self.calls += 1
        dist = self.model(tokens, positions).clone()
        if self.calls >= self.at and self.row < dist.shape[0]:
            dist[self.row] = float("nan")
        return dist

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize("every", [1, 5])
def test_deferred_status_still_names_the_stream(every, monkeypatch):
    """A bad distribution found only at the next wait is reported as at once:
    an NcxError naming the stream and the reason, and no result."""
    monkeypatch.setitem(model_coding.SYNC_EVERY, "cpu", every)
    model = cm.dirichlet_model(V=17, H=64, seed=3, max_symbols=40)
    docs = model.sample_docs(6, 60, torch.Generator().manual_seed(4))
    for code in (lambda m: model_coding.encode_windows(docs, m, 32, 12, eos=16, batch=6),
                 lambda m: model_coding.encode_streams(docs, m, 12, eos=16, batch=6)):
        with pytest.raises(NcxError, match="stream 3: a distribution row contains NaN") as info:
            code(_Poisoned(model, row=3, at=7))
        assert info.value.index == 3 and info.value.code == 1
    encoded = model_coding.encode_windows(docs, model, 32, 12, eos=16, batch=6)
    with pytest.raises(NcxError, match="stream 2: a distribution row contains NaN"):
        model_coding.decode_windows(encoded, _Poisoned(model, row=2, at=3), 32, 12, eos=16, batch=6)


def test_trusted_inputs_skip_the_checks_only_inside(int_coder):
    coder = int_coder.coder()
    coder.reserve(2, 16)
    tokens, skipped = torch.tensor([5, 6]), torch.tensor([3, 0])
    with pytest.raises(ValueError, match="skipped ahead"):
        coder(tokens, skipped)
    with coder.trusted_inputs():
        assert coder(tokens, skipped).shape == (2, 257)  # meaningless weights, no error, no read
    with pytest.raises(ValueError, match="skipped ahead"):
        int_coder.coder()(tokens, skipped)
    with pytest.raises(ValueError, match="tokens must be in"):
        coder(torch.tensor([300, 1]), torch.tensor([1, 1]))
