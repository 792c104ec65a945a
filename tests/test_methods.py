"""The compression methods (ncx.methods): lossless on every document, specs
that rebuild the same method, clear errors for another M1 or corrupt tokens,
and decoding independent of batch size and order."""
import random
import zlib

import numpy as np
import pytest
import torch

from ncx import corpus, m1, methods
from ncx.coder import WINDOW_RULE

EOS = m1.EOS


@pytest.fixture(scope="module")
def coder():
    torch.manual_seed(0)
    return m1.M1(m1.preset("tiny")).coder()


@pytest.fixture(scope="module")
def train_docs():
    return corpus.default_corpus("train", max_bytes=150_000)


def adversarial_docs(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        b"",
        b"a",
        bytes(range(256)),
        b"\xff\xfe\x80 invalid UTF-8 \xc3 then \xed\xa0\x80 a surrogate",
        b"e" * 700,                                   # a long run of one likely byte
        "caf\u00e9 \u2581 piece marker, \u4e2d\u6587, \U0001F600".encode(),
        bytes(rng.getrandbits(8) for _ in range(400)),  # fresh random bytes
        b"\n\n\t  trailing spaces  \n",
        bytes([EOS % 256]) * 3 + b"\x00\x00",
    ]


def fast_methods(train_docs):
    return [
        methods.BytesMethod(),
        methods.GZipMethod(256),
        methods.GZipMethod(65536),
        methods.SentencePieceMethod.train(train_docs, 1000),
        methods.StaticACMethod.fit(train_docs),
        methods.StaticACMethod.fit(train_docs, v=65536),
    ]


def m1_methods(coder):
    return [
        methods.ACMethod(coder, v=256),
        methods.ACMethod(coder, v=65536),
        methods.EqualInfoACMethod(coder, b=16, v=256),
        methods.EqualInfoACMethod(coder, b=16, v=65536),
        methods.EqualInfoACMethod(coder, b=24, v=65536),   # tokens cross windows
        methods.EqualInfoACMethod(coder, b=32, v=256),
        methods.EqualInfoACMethod(coder, b=128, v=65536),
    ]


def test_fast_methods_round_trip_including_1mb(train_docs):
    rng = random.Random(1)
    docs = adversarial_docs(2) + corpus.default_corpus("heldout", max_bytes=20_000)[:3]
    big = [bytes(rng.getrandbits(8) for _ in range(1 << 20)), b"the " * (1 << 18)]
    for method in fast_methods(train_docs):
        enc = method.encode_batch(docs + big)
        assert method.decode_batch(enc) == docs + big, method.name
        for e in enc:
            assert e.tokens.dtype == method.token_dtype
            assert int(e.tokens.max(initial=0)) < method.vocab_size


def test_m1_methods_round_trip_any_batch_and_order(coder):
    docs = adversarial_docs(3)
    order = list(range(len(docs)))
    random.Random(4).shuffle(order)
    for method in m1_methods(coder):
        method.batch = 4
        enc = method.encode_batch(docs)
        # Decode a shuffled subset in another batch size: windows and streams
        # depend only on their own document.
        method.batch = 3
        dec = method.decode_batch([enc[i] for i in order])
        assert dec == [docs[i] for i in order], method.name
        assert sum(len(e.exceptions) for e in enc) <= len(enc), method.name


def test_spec_rebuilds_the_same_method(coder, train_docs):
    docs = adversarial_docs(5)
    for method in fast_methods(train_docs) + m1_methods(coder)[:3]:
        enc = method.encode_batch(docs)
        twin = methods.method_from_spec(method.spec(), coder)
        assert twin.name == method.name
        assert twin.decode_batch(enc) == docs
        assert [e.tokens.tolist() for e in twin.encode_batch(docs)] == [e.tokens.tolist() for e in enc]


def test_windows_of_another_window_rule_are_a_clear_error(coder):
    """Equal-Info windows written under the rule before the window order (specs
    without window_rule, or rule 1) would decode to other bytes: refused."""
    spec = methods.EqualInfoACMethod(coder, b=16).spec()
    assert spec["window_rule"] == WINDOW_RULE
    old = {k: v for k, v in spec.items() if k != "window_rule"}
    for stale in (old, {**spec, "window_rule": 1}):
        with pytest.raises(ValueError, match="window rule 1, this ncx decodes rule 2"):
            methods.method_from_spec(stale, coder)


def test_another_m1_is_a_clear_error(coder):
    method = methods.EqualInfoACMethod(coder, b=16)
    torch.manual_seed(123)
    other = m1.M1(m1.preset("tiny")).coder()
    with pytest.raises(ValueError, match="wrong M1"):
        methods.method_from_spec(method.spec(), other)
    with pytest.raises(ValueError, match="give that M1"):
        methods.method_from_spec(method.spec(), None)
    # Decoding the tokens with another M1 directly is caught by the checksum.
    enc = method.encode_batch([b"some text that another model will not reproduce"])
    with pytest.raises(methods.DecodeError, match="another M1"):
        methods.EqualInfoACMethod(other, b=16).decode_batch(enc)


def test_corrupt_tokens_are_a_clear_error(coder, train_docs):
    doc = corpus.default_corpus("heldout", max_bytes=3000)[0][:600]
    for method in fast_methods(train_docs)[1:] + [methods.EqualInfoACMethod(coder, b=16),
                                                   methods.ACMethod(coder)]:
        enc = method.encode(doc)
        assert len(enc.tokens) > 4, method.name
        tokens = enc.tokens.copy()
        tokens[len(tokens) // 2] ^= 0x5A
        bad = methods.Encoded(tokens, enc.byte_count, enc.crc32, enc.exceptions)
        with pytest.raises(ValueError):
            method.decode(bad)


def test_generated_tokens_always_decode(coder, train_docs):
    rng = np.random.default_rng(0)
    for method in fast_methods(train_docs) + m1_methods(coder):
        seqs = [rng.integers(0, method.vocab_size, size=n) for n in (0, 1, 7, 24)]
        out = method.decode_tokens(seqs)
        assert len(out) == len(seqs) and all(isinstance(o, bytes) for o in out), method.name


def test_bytes_per_token_and_token_layout():
    doc = b"abc" * 100
    assert methods.BytesMethod().bytes_per_token([doc]) == 1.0
    g256, g65k = methods.GZipMethod(256), methods.GZipMethod(65536)
    z = zlib.compress(doc)
    assert g256.encode(doc).tokens.tobytes() == z
    # 16-bit tokens are the same bytes, big-endian, zero-padded to even length.
    t = g65k.encode(doc).tokens
    assert len(t) == (len(z) + 1) // 2 and methods.tokens_to_bytes(t, 65536)[: len(z)] == z


def test_names_follow_the_paper(coder, train_docs):
    assert methods.EqualInfoACMethod(coder, b=16, v=65536).name == "EqualInfoAC[b=16, v=65k]"
    assert methods.StaticACMethod.fit(train_docs[:3]).name == "StaticAC[v=256]"
    with pytest.raises(ValueError, match="b must be one of"):
        methods.EqualInfoACMethod(coder, b=20)
    with pytest.raises(ValueError, match="v \\(the token vocabulary\\) must be 256 or 65536"):
        methods.GZipMethod(1000)
    with pytest.raises(ValueError, match="give an M1 checkpoint"):
        methods.method_from_name("ac")


def test_registry_builds_and_rebuilds_every_method(coder, train_docs):
    """One registry serves names and specs: each name builds its method, whose spec
    rebuilds the same method, and the registry's flags say what building needs."""
    docs = adversarial_docs(7)
    small = {"sentencepiece": {"vocab_size": 1000}}
    assert methods.METHOD_NAMES == ("bytes", "sentencepiece", "gzip", "static_ac", "ac", "equal_info_ac")
    assert methods.FITTED_METHODS == ("sentencepiece", "static_ac")
    assert methods.M1_METHODS == ("ac", "equal_info_ac")
    assert methods.BIT_STREAM_METHODS == ("gzip", "static_ac", "ac", "equal_info_ac")
    for name, kind in methods.METHODS.items():
        method = methods.method_from_name(name, train_docs, coder, **small.get(name, {}))
        assert method.spec()["kind"] == name and (method.m1_hash is not None) == kind.uses_m1, name
        twin = methods.method_from_spec(method.spec(), coder if kind.uses_m1 else None)
        assert type(twin) is type(method) and twin.spec() == method.spec(), name
        assert twin.decode_batch(method.encode_batch(docs)) == docs, name
        if kind.fitted:
            with pytest.raises(ValueError, match=f"method {name} is fitted on training documents"):
                methods.method_from_name(name, None, coder)
        if kind.uses_m1:
            with pytest.raises(ValueError, match=f"method {name} codes with M1: give an M1 checkpoint"):
                methods.method_from_name(name, train_docs)
    with pytest.raises(ValueError, match="unknown method 'lzma'; choose from bytes, sentencepiece, gzip"):
        methods.method_from_name("lzma")
    with pytest.raises(ValueError, match="unknown method spec kind 'lzma'"):
        methods.method_from_spec({"kind": "lzma"})


def test_window_count_is_whole_b_bit_windows():
    """Method.window_count, which jobs and experiment record per document: the whole b-bit
    windows in the tokens for EqualInfoAC in either token view, 0 for other methods."""
    coder = m1.M1(m1.preset("tiny")).coder()
    for b, v, n, windows in [(16, 256, 10, 5), (16, 65536, 3, 3), (24, 256, 9, 3), (24, 65536, 6, 4)]:
        m = methods.EqualInfoACMethod(coder, b=b, v=v)
        assert m.window_count(np.zeros(n, m.token_dtype)) == windows
    assert methods.method_from_name("bytes").window_count(np.zeros(5, np.uint8)) == 0
