"""Microbenchmarks of the window vocabulary (ncx.window_vocab) and its peers (pytest-benchmark).

    python -m pytest bench/test_bench_window_vocab.py --benchmark-only
    python -m pytest bench/test_bench_window_vocab.py --benchmark-only --benchmark-json vocab.json
    NCX_BENCH_M1=runs/m1.safetensors python -m pytest bench/test_bench_window_vocab.py --benchmark-only

The text: the whole embedded corpus (train + heldout: 225 documents, 1,356,832 bytes, all valid
UTF-8), one call codes all of it. Each benchmark records in extra_info the input text bytes per
call, MB/s (10^6 bytes of text per second, from the median and from the fastest round), tokens
and tokens per byte; the closing table of bench/conftest.py lists Msym/s, which here is MB/s (a
symbol is one byte of text).

- ncx: WindowVocab.encode_flat / decode_flat over the documents flattened into one tensor
  (outside the timing), with torch.set_num_threads(1) and (2); EqualInfoAC[b=16] windows of the
  M1 at $NCX_BENCH_M1, or else of the cached benchmark M1 that bench/vocab_speed.py trains the
  first time ("small", 300 steps, integer; the M1, its vocabulary and the peers' models are
  cached under bench/runs/window_vocab/, git-ignored). decode(encode(text)) == text is checked
  outside the timing.
- sentencepiece: unigram models trained on the train split (as M1 is), the way ncx trains them
  (SentencePieceMethod.train), at vocab 8000 and 65536 (it reaches 10,498: the test id keeps the
  asked size, extra_info the real one), sp.encode(list of str, num_threads=1) and
  sp.decode(id lists, num_threads=1);
- tokenizers: byte-level BPE trained on the train split with vocab_size 65536 (it reaches
  19,322), encode_batch and decode_batch on one thread (RAYON_NUM_THREADS=1,
  TOKENIZERS_PARALLELISM=false, set before tokenizers is imported).
The peers take the documents as str (decoded with errors="surrogateescape", outside the timing).
bench/vocab_speed.py gives the same figures as one table, the coders interleaved.
"""
from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import vocab_speed  # noqa: E402  (bench/ is on sys.path: bench/conftest.py)
from ncx import corpus, window_vocab  # noqa: E402

# About a second per ncx benchmark; the peers take up to a second a call, so at least 5 rounds.
bench_mark = pytest.mark.benchmark(max_time=1.0, min_rounds=5, warmup=False)


@pytest.fixture(scope="module")
def docs():
    return vocab_speed.text_docs()


@pytest.fixture(scope="module")
def texts(docs):
    return vocab_speed.as_str(docs)


@pytest.fixture(scope="module")
def vocab(docs):
    vocab, _ = vocab_speed.load_vocab(os.environ.get("NCX_BENCH_M1") or None)
    vocab.trie  # built once, outside the timing
    gaps = vocab_speed.encode_gaps(vocab, docs)
    assert not gaps, f"the vocabulary has no window at (document, symbol) {gaps[:5]}"
    return vocab


@pytest.fixture(scope="module")
def flat(docs):
    return window_vocab.flatten_documents(docs)


@pytest.fixture
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


@pytest.fixture
def mbps(benchmark, rate, docs):
    """Call mbps(tokens) after benchmark(...): MB/s of the text (median and fastest round),
    tokens and tokens per byte in extra_info."""
    nbytes = sum(map(len, docs))

    def record(tokens: int) -> None:
        benchmark.extra_info.update(bytes=nbytes, documents=len(docs), tokens=tokens,
                                    tokens_per_byte=tokens / nbytes)
        rate(nbytes)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            benchmark.extra_info["MB_per_s"] = nbytes / stats.stats.median / 1e6
            benchmark.extra_info["MB_per_s_best"] = nbytes / stats.stats.min / 1e6
    return record


# ----------------------------------------------------------------------------- ncx
@bench_mark
@pytest.mark.parametrize("threads", (1, 2), indirect=True)
def test_vocab_encode(benchmark, mbps, vocab, flat, threads):
    data, offsets = flat
    codes, window_offsets, failed_at = benchmark(vocab.encode_flat, data, offsets)
    assert bool((failed_at < 0).all())
    benchmark.extra_info["vocab_size"] = vocab.num_codes
    out, byte_offsets, ended = vocab.decode_flat(codes, window_offsets)
    assert torch.equal(out, data) and torch.equal(byte_offsets, offsets) and bool(ended.all())
    mbps(codes.numel())


@bench_mark
@pytest.mark.parametrize("threads", (1, 2), indirect=True)
def test_vocab_decode(benchmark, mbps, vocab, flat, threads):
    data, offsets = flat
    codes, window_offsets, _ = vocab.encode_flat(data, offsets)
    out, byte_offsets, ended = benchmark(vocab.decode_flat, codes, window_offsets)
    benchmark.extra_info["vocab_size"] = vocab.num_codes
    assert torch.equal(out, data) and torch.equal(byte_offsets, offsets) and bool(ended.all())
    mbps(codes.numel())


# ------------------------------------------------------------------- sentencepiece
@pytest.fixture(scope="module", params=vocab_speed.SP_VOCABS, ids=lambda v: f"v{v}")
def sp(request):
    return vocab_speed.sentencepiece_model(corpus.default_corpus("train"), request.param)


@bench_mark
@pytest.mark.parametrize("threads", (1,), indirect=True)
def test_sentencepiece_encode(benchmark, mbps, sp, texts, threads):
    ids = benchmark(sp.encode, texts, num_threads=1)
    benchmark.extra_info["vocab_size"] = sp.get_piece_size()
    assert sp.decode(ids, num_threads=1) == texts
    mbps(sum(map(len, ids)))


@bench_mark
@pytest.mark.parametrize("threads", (1,), indirect=True)
def test_sentencepiece_decode(benchmark, mbps, sp, texts, threads):
    ids = sp.encode(texts, num_threads=1)
    benchmark.extra_info["vocab_size"] = sp.get_piece_size()
    assert benchmark(sp.decode, ids, num_threads=1) == texts
    mbps(sum(map(len, ids)))


# ---------------------------------------------------------------------- tokenizers
@pytest.fixture(scope="module")
def bpe():
    return vocab_speed.bpe_tokenizer(corpus.default_corpus("train"), vocab_speed.BPE_VOCAB)


@bench_mark
@pytest.mark.parametrize("threads", (1,), indirect=True)
def test_bpe_encode(benchmark, mbps, bpe, texts, threads):
    encs = benchmark(bpe.encode_batch, texts)
    ids = [e.ids for e in encs]
    benchmark.extra_info["vocab_size"] = bpe.get_vocab_size()
    assert bpe.decode_batch(ids) == texts
    mbps(sum(map(len, ids)))


@bench_mark
@pytest.mark.parametrize("threads", (1,), indirect=True)
def test_bpe_decode(benchmark, mbps, bpe, texts, threads):
    ids = [e.ids for e in bpe.encode_batch(texts)]
    benchmark.extra_info["vocab_size"] = bpe.get_vocab_size()
    assert benchmark(bpe.decode_batch, ids) == texts
    mbps(sum(map(len, ids)))
