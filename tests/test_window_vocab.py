"""The window vocabulary (ncx.window_vocab): EqualInfoAC[b=16] by table, no M1 at coding time.

Properties proved here:
- the table encoder gives M1's window encoder's tokens, token for token, for four M1s (a
  trained tiny float M1, its integer twin, a random tiny M1, a random paper-size integer M1)
  on held-out text and adversarial input (empty, one byte, all 256 values, long runs, invalid
  UTF-8, random bytes): >= 100,000 windows in all; and it decodes them back exactly;
- decoding every code through M1 again (another batch size, another order) gives the table;
- the native longest match equals a pure-Python one on synthetic tables, and a position no
  string covers is reported (VocabularyGap), never coded otherwise; with M1 at hand the
  method sends that document through M1 instead (same tokens as the M1 engine);
- vocabulary files round-trip; corrupt, edited, foreign or mismatched ones are clear errors;
- a compress job with the vocabulary engine writes the same shards as the M1 engine, and the
  dataset decompresses, inspects and rebuilds its method without M1.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ncx import cli, corpus, int_m1, m1
from ncx.methods import EqualInfoACMethod, method_from_spec
from ncx.model_coding import EncodedWindows, decode_windows, encode_windows
from ncx.train_m1 import train_m1
from ncx.window_vocab import (VOCAB_FILE, VocabularyGap, WindowVocab, flatten_documents, build_window_vocab,
                              load_window_vocab)

B, P = 16, 14


def _codes_of(windows) -> np.ndarray:
    c = windows.codes.to(torch.int32)
    return (c[:, 0] * 256 + c[:, 1]).numpy()


def _adversarial(seed: int, scale: int = 1) -> list[bytes]:
    """Empty, one byte, all 256 values, long runs, invalid UTF-8, random bytes (lengths x scale)."""
    rng = np.random.default_rng(seed)
    return [b"", b"a", b"\x00", b"\xff", bytes(range(256)), bytes(range(255, -1, -1)), b"a" * 600 * scale,
            b"\x00" * 500 * scale, b"ab" * 200 * scale, b"\xff\xfe\xfd" * 100 * scale,
            b"\xc3\x28\xa0\xa1\xe2\x28\xa1" * 40 * scale, "naïve café ☃ 𝄞 ".encode() * 20 * scale,
            rng.integers(0, 256, 1000 * scale, dtype=np.uint8).tobytes(),
            rng.integers(0, 4, 1000 * scale, dtype=np.uint8).tobytes(), bytes([7]) * 1500 * scale]


def _heldout(limit: int, piece: int) -> list[bytes]:
    """Held-out text cut into documents of about `piece` bytes (many streams keep M1's batch full)."""
    text = b"\n".join(corpus.default_corpus("heldout"))[:limit]
    return [text[i:i + piece] for i in range(0, len(text), piece)]


@pytest.fixture(scope="module")
def coders():
    torch.manual_seed(0)
    train = corpus.default_corpus("train", max_bytes=1_000_000)
    trained, _ = train_m1(m1.preset("tiny"), train, steps=120, batch_size=16, eval_every=0, progress=False,
                          log=None)
    torch.manual_seed(1)
    random_tiny = m1.M1(m1.preset("tiny"))
    torch.manual_seed(2)
    random_paper = m1.M1(m1.preset("paper"))
    return {"trained tiny float": trained.coder(), "trained tiny integer": int_m1.quantize_m1(trained).coder(),
            "random tiny float": random_tiny.coder(),
            "random paper integer": int_m1.quantize_m1(random_paper).coder()}


@pytest.fixture(scope="module")
def vocabs(coders):
    return {name: build_window_vocab(c, b=B) for name, c in coders.items()}


# Held-out bytes per M1 (cut into 300-byte documents, so M1's batch stays full), sized so that
# the four together code >= 100,000 windows; and the windows each must reach.
_TEXT = {"trained tiny float": 50_000, "trained tiny integer": 100_000, "random tiny float": 30_000,
         "random paper integer": 20_000}
_MIN_WINDOWS = {"trained tiny float": 22_000, "trained tiny integer": 38_000, "random tiny float": 28_000,
                "random paper integer": 21_000}


@pytest.mark.parametrize("name", list(_TEXT))
def test_table_encoder_equals_m1_encoder(coders, vocabs, name, record_property):
    coder, vocab = coders[name], vocabs[name]
    docs = _heldout(_TEXT[name], 300) + _adversarial(len(name))
    reference = encode_windows(docs, coder, B, P, m1.EOS, batch=256)
    table = vocab.encode(docs)
    windows = 0
    for i, (ref, got) in enumerate(zip(reference, table)):
        assert not ref.exceptions, f"{name}: M1 made an exception window in document {i}"
        assert np.array_equal(_codes_of(ref), got), f"{name}: document {i} differs from M1's windows"
        windows += len(got)
    assert vocab.decode(table) == docs
    record_property("windows", windows)
    assert windows >= _MIN_WINDOWS[name]


def test_megabyte_document_round_trip(vocabs):
    """A 1 MB document of text, random bytes, invalid UTF-8 and long runs, through the table
    (the bench run checks it against M1's encoder; too slow for the suite)."""
    rng = np.random.default_rng(11)
    text = b"\n".join(corpus.default_corpus("heldout"))
    parts, size = [], 0
    while size < 1_000_000:
        pick = int(rng.integers(4))
        part = (text[:int(rng.integers(1, 50_000))], rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
                b"\xc0\xaf\xed\xa0\x80" * 2000, bytes([int(rng.integers(256))]) * 30_000)[pick]
        parts.append(part)
        size += len(part)
    doc = b"".join(parts)[:1_000_000]
    for vocab in vocabs.values():
        codes = vocab.encode([doc, doc[:333_333]])
        assert vocab.decode(codes) == [doc, doc[:333_333]]


def test_method_tokens_equal_m1_engine(coders, vocabs):
    name = "trained tiny integer"
    docs = _heldout(8_000, 700) + _adversarial(3)
    for v in (256, 65536):
        by_m1 = EqualInfoACMethod(coders[name], b=B, v=v).encode_batch(docs)
        by_table = EqualInfoACMethod(None, b=B, v=v, vocab=vocabs[name]).encode_batch(docs)
        for a, b in zip(by_m1, by_table):
            assert np.array_equal(a.tokens, b.tokens) and a.tokens.dtype == b.tokens.dtype
            assert (a.byte_count, a.crc32, a.exceptions) == (b.byte_count, b.crc32, b.exceptions)
        method = EqualInfoACMethod(None, b=B, v=v, vocab=vocabs[name])
        assert method.decode_batch(by_m1) == docs
        # Tokens with no side information (as M2 makes them) decode the same both ways.
        rng = np.random.default_rng(v)
        noise = [rng.integers(0, v, n).astype(method.token_dtype) for n in (0, 1, 2, 3, 17, 200)]
        assert method.decode_tokens(noise) == EqualInfoACMethod(coders[name], b=B, v=v).decode_tokens(noise)


@pytest.mark.parametrize("name", ["trained tiny integer", "random tiny float"])
def test_every_code_decodes_as_the_table_says(coders, vocabs, name):
    """Each code's string, decoded by M1 again in another batch size and order."""
    vocab = vocabs[name]
    order = torch.randperm(1 << B, generator=torch.Generator().manual_seed(5))
    codes = torch.stack([order >> 8, order & 255], 1).to(torch.uint8)
    windows = [EncodedWindows(codes[i:i + 1], torch.zeros(1, dtype=torch.int32)) for i in range(len(codes))]
    syms = decode_windows(windows, coders[name], B, P, eos=m1.EOS, batch=333, keep_eos=True)
    for c, s in zip(order.tolist(), syms):
        body, ends = vocab.string(c)
        assert (s[:-1] if ends else s).to(torch.uint8).numpy().tobytes() == body, f"code {c}"
        assert ends == (len(s) > 0 and int(s[-1]) == m1.EOS), f"code {c}"


def test_exception_windows_decode_by_their_count(vocabs):
    """An exception window holds the first `count` symbols of its code's string."""
    vocab = vocabs["trained tiny float"]
    long_codes = [c for c in range(1 << B) if len(vocab.string(c)[0]) >= 3][:50]
    counts = [(0, 1), (0, 2)]
    for c in long_codes:
        body, _ = vocab.string(c)
        for w, k in counts:
            assert vocab.decode([np.array([c], np.int32)], [[(w, k)]]) == [body[:k]]


# ------------------------------------------------------------ synthetic tables
def _table(strings: list[tuple[bytes, bool]], b: int = 8) -> WindowVocab:
    """A WindowVocab over given (bytes, eos) strings, padded with empty codes to 2^b."""
    strings = strings + [(b"", False)] * ((1 << b) - len(strings))
    pool = torch.tensor(list(b"".join(s for s, _ in strings)), dtype=torch.uint8)
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(s) for s, _ in strings])]), dtype=torch.int64)
    eos = torch.tensor([e for _, e in strings], dtype=torch.bool)
    return WindowVocab(b, b - 2, 2, "0" * 64, "integer", 63, pool, offsets, eos)


def _reference_longest_match(strings, doc: bytes):
    """Pure Python: symbols are doc's bytes then EOS (256); longest string wins, smallest code."""
    best = {}
    for code, (body, ends) in enumerate(strings):
        key = tuple(body) + ((256,) if ends else ())
        if key and key not in best:
            best[key] = code
    syms = tuple(doc) + (256,)
    out, pos = [], 0
    longest = max(map(len, best))
    while pos < len(syms):
        for k in range(min(longest, len(syms) - pos), 0, -1):
            if syms[pos:pos + k] in best:
                out.append(best[syms[pos:pos + k]])
                pos += k
                break
        else:
            return out, pos
    return out, -1


def _random_strings(rng, n: int, alphabet: int) -> list[tuple[bytes, bool]]:
    strings = [(bytes([i]), False) for i in range(256)] + [(b"", True)]
    while len(strings) < n:
        k = int(rng.integers(1, 7))
        strings.append((rng.integers(0, alphabet, k, dtype=np.uint8).tobytes(), bool(rng.random() < 0.15)))
    order = rng.permutation(len(strings))
    return [strings[i] for i in order]


def test_native_longest_match_equals_reference():
    rng = np.random.default_rng(0)
    for trial in range(6):
        strings = _random_strings(rng, 1 << 10, alphabet=3 + 60 * (trial % 2))
        vocab = _table(strings, b=10)
        docs = [b"", b"\x00", bytes(range(256))] + [
            rng.integers(0, 3 + 60 * (trial % 2), int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
            for _ in range(40)]
        got = vocab.encode(docs)
        for d, g in zip(docs, got):
            ref, failed = _reference_longest_match(strings, d)
            assert failed == -1 and g.tolist() == ref
        assert vocab.decode(got) == docs


def test_threads_give_the_same_windows():
    """Documents are split between threads by their bytes: any split gives the same output,
    empty documents first and last included."""
    rng = np.random.default_rng(4)
    vocab = _table(_random_strings(rng, 1 << 10, alphabet=40), b=10)
    docs = [b""] + [rng.integers(0, 40, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
                    for _ in range(300)] + [bytes(50_000), b"", b""]
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        codes, window_offsets, failed_at = vocab.encode_flat(*flatten_documents(docs))
        data, byte_offsets, ended = vocab.decode_flat(codes, window_offsets)
        results.append([t.clone() for t in (codes, window_offsets, failed_at, data, byte_offsets, ended)])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert bool(results[0][5].all()) and bytes(results[0][3].numpy()) == b"".join(docs)


def test_a_position_no_string_covers_is_reported():
    strings = [(bytes([i]), False) for i in range(256) if i != 0x41] + [(b"", True), (b"AB", False)]
    vocab = _table(strings, b=9)
    docs = [b"xyz", b"xyABz", b"xyAz", b"A"]
    with pytest.raises(VocabularyGap, match="document 2: no window of the vocabulary starts at symbol 2"):
        vocab.encode(docs)
    lenient = vocab.encode(docs, strict=False)
    assert lenient[2] is None and lenient[3] is None and lenient[0] is not None
    codes, window_offsets, failed_at = vocab.encode_flat(*flatten_documents(docs))
    assert failed_at.tolist() == [-1, -1, 2, 0]


def test_gap_documents_go_through_m1_when_it_is_given(coders, vocabs):
    """Remove a byte's strings from a real table: documents that need it are coded by M1
    (their tokens equal the M1 engine's), counted in vocab_fallbacks; without M1 it raises."""
    name = "trained tiny integer"
    vocab = vocabs[name]
    keep = [(vocab.string(c) if b"Q" not in vocab.string(c)[0] else (b"", False)) for c in range(1 << B)]
    holed = _table(keep, b=B)
    holed.b, holed.precision, holed.m1_hash = B, P, vocab.m1_hash
    docs = [b"plain text without the letter", b"a Question", b"", b"QQQ"]
    method = EqualInfoACMethod(coders[name], b=B, vocab=holed)
    enc = method.encode_batch(docs)
    ref = EqualInfoACMethod(coders[name], b=B).encode_batch(docs)
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(enc, ref))
    assert method.vocab_fallbacks == 2
    with pytest.raises(VocabularyGap):
        EqualInfoACMethod(None, b=B, vocab=holed).encode_batch(docs)


# ------------------------------------------------------------------- files
def test_file_round_trip_and_bad_files(tmp_path, vocabs):
    vocab = vocabs["trained tiny integer"]
    path = tmp_path / "v.safetensors"
    assert vocab.save(path) == vocab.sha256
    again = load_window_vocab(path)
    assert again.sha256 == vocab.sha256 and again.meta() == vocab.meta()
    assert torch.equal(again.pool, vocab.pool) and torch.equal(again.offsets, vocab.offsets)

    with pytest.raises(FileNotFoundError, match="window vocabulary not found"):
        load_window_vocab(tmp_path / "missing.safetensors")
    raw = path.read_bytes()
    # A byte of the string pool changed: the content no longer matches its sha256.
    edited = bytearray(raw)
    edited[-3] ^= 0x01
    (tmp_path / "edited").write_bytes(bytes(edited))
    with pytest.raises(ValueError, match="does not match its sha256"):
        load_window_vocab(tmp_path / "edited")
    (tmp_path / "short").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="unreadable window vocabulary"):
        load_window_vocab(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="unreadable window vocabulary"):
        load_window_vocab(tmp_path / "junk")
    from safetensors.torch import save_file
    save_file({"pool": vocab.pool}, str(tmp_path / "foreign"), metadata={"format": "something-else"})
    # Saving twice writes the same bytes (a resumed job ends with the same files).
    vocab.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == raw
    with pytest.raises(ValueError, match="not an ncx window vocabulary"):
        load_window_vocab(tmp_path / "foreign")


def test_mismatched_vocabulary_is_refused(coders, vocabs):
    vocab = vocabs["trained tiny integer"]
    with pytest.raises(ValueError, match="built from M1"):
        EqualInfoACMethod(coders["random tiny float"], b=B, vocab=vocab)
    with pytest.raises(ValueError, match="b=16, P=14; the method is b=16, P=12"):
        EqualInfoACMethod(None, b=B, precision=12, vocab=vocab)
    spec = EqualInfoACMethod(coders["random tiny float"], b=B).spec()
    with pytest.raises(ValueError, match="wrong window vocabulary"):
        method_from_spec(spec, None, vocab=vocab)
    with pytest.raises(ValueError, match="window codes must lie in"):
        vocab.decode_flat(torch.tensor([1 << B], dtype=torch.int32), torch.tensor([0, 1]))


# ------------------------------------------------------------ in the product
def test_compress_with_vocabulary_decodes_without_m1(tmp_path, coders, capsys):
    torch.manual_seed(3)
    model = m1.M1(m1.preset("tiny"))
    ckpt = tmp_path / "m1.safetensors"
    m1.save_m1(model, str(ckpt))
    docs = _adversarial(9) + _heldout(6_000, 500)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d.decode("latin-1")}) + "\n" for d in docs))
    common = ["compress", "--method", "equal_info_ac", "--m1", ckpt, "--data", data, "--shard-docs", "7",
              "--no-progress"]
    assert cli.main([str(a) for a in common + ["--out", tmp_path / "vocab"]]) == 0
    assert cli.main([str(a) for a in common + ["--out", tmp_path / "m1", "--engine", "m1"]]) == 0
    shards = sorted(p.name for p in (tmp_path / "m1").glob("shard-*.tokens"))
    assert shards and all((tmp_path / "vocab" / s).read_bytes() == (tmp_path / "m1" / s).read_bytes()
                          for s in shards)
    manifest = json.loads((tmp_path / "vocab" / "manifest.json").read_text())
    assert manifest["extra"]["engine"] == "vocab"
    assert manifest["extra"]["window_vocab"]["file"] == VOCAB_FILE
    assert manifest["extra"]["window_vocab"]["sha256"] == load_window_vocab(tmp_path / "vocab" / VOCAB_FILE).sha256

    # No M1 anywhere from here on.
    assert cli.main(["decompress", str(tmp_path / "vocab"), "--out", str(tmp_path / "restored"), "--no-progress"]) == 0
    # The JSONL file comes back with its records' text.
    restored = [doc for _, doc in corpus.read_documents(str(tmp_path / "restored" / "docs.jsonl"))]
    assert restored == [d.decode("latin-1").encode() for d in docs]
    assert cli.main(["inspect", str(tmp_path / "vocab")]) == 0
    assert "decodes without M1" in capsys.readouterr().out
    from ncx.generate import method_of_dataset
    method = method_of_dataset(tmp_path / "vocab")
    assert method.vocab is not None and method.coder is None

    # The vocabulary file damaged, or swapped for another M1's: a clear error, no output.
    shutil.copy(tmp_path / "vocab" / VOCAB_FILE, tmp_path / "saved")
    raw = bytearray((tmp_path / "saved").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "vocab" / VOCAB_FILE).write_bytes(bytes(raw))
    assert cli.main(["decompress", str(tmp_path / "vocab"), "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
    other = build_window_vocab(coders["random tiny float"], b=B)
    other.save(tmp_path / "vocab" / VOCAB_FILE)
    assert cli.main(["decompress", str(tmp_path / "vocab"), "--out", str(tmp_path / "r3"), "--no-progress"]) == 2
    assert "not the window vocabulary the dataset was coded with" in capsys.readouterr().err
    (tmp_path / "vocab" / VOCAB_FILE).unlink()
    assert cli.main(["decompress", str(tmp_path / "vocab"), "--out", str(tmp_path / "r4"), "--no-progress"]) == 2
    assert "window vocabulary not found" in capsys.readouterr().err
    # A manifest that names another file is refused before anything is opened.
    manifest["extra"]["window_vocab"]["file"] = "../../etc/passwd"
    (tmp_path / "vocab" / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["inspect", "--no-verify", str(tmp_path / "vocab")]) == 0  # inspect only prints
    assert cli.main(["decompress", str(tmp_path / "vocab"), "--out", str(tmp_path / "r5"), "--no-progress"]) == 2
    assert "window_vocab entry is mangled" in capsys.readouterr().err


def test_engine_flag_is_checked(tmp_path, capsys):
    assert cli.main(["compress", "--method", "gzip", "--engine", "vocab", "--out", str(tmp_path / "g"),
                     "--no-progress"]) == 2
    assert "--engine applies to method equal_info_ac only" in capsys.readouterr().err


def test_exported_tokenizer_gives_the_same_ids(tmp_path, vocabs, capsys):
    """`ncx export-tokenizer`: the tokenizers library, loading tokenizer.json, gives the table's
    codes on the same text (held-out documents and hard cases; "" excepted, see the docs)."""
    import tokenizers

    vocab = vocabs["trained tiny integer"]
    path = tmp_path / "v.safetensors"
    vocab.save(path)
    assert cli.main(["export-tokenizer", "--vocab", str(path), "--out", str(tmp_path / "tok")]) == 0
    assert "tokenizer.json" in capsys.readouterr().out
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    texts = [d.decode("utf-8", "replace") for d in _heldout(60_000, 2_000)] + [
        "a", "naïve café ☃ 𝄞 " * 30, "\x00\x01\x7f" * 50, "x" * 3000, " \n\t" * 100, "\ufffd" * 10]
    ours = vocab.encode([t.encode() for t in texts])
    theirs = tok.encode_batch(texts)
    assert all(o.tolist() == t.ids for o, t in zip(ours, theirs))
    assert [tok.decode(t.ids) for t in theirs] == texts
    meta = json.loads((tmp_path / "tok" / "ncx_vocab.json").read_text())
    assert meta["window_vocab_sha256"] == vocab.sha256 and meta["m1_hash"] == vocab.m1_hash
    assert cli.main(["export-tokenizer", "--dataset", str(tmp_path), "--out", str(tmp_path / "t2")]) == 2


@pytest.mark.cuda
def test_table_built_on_cuda_equals_cpu():
    """The integer M1 builds the same table on a GPU as on the CPU (bench/gpu_check.sh runs this)."""
    torch.manual_seed(6)
    model = int_m1.quantize_m1(m1.M1(m1.preset("tiny")))
    on_cpu = build_window_vocab(model.coder(), b=B)
    on_gpu = build_window_vocab(model.to("cuda").coder(), b=B)
    assert on_gpu.sha256 == on_cpu.sha256


def test_torchrun_two_ranks_share_one_vocabulary(tmp_path):
    """Under torchrun, rank 0 builds the table and the other rank reads it: the same files as
    one process, the table included."""
    import subprocess
    import sys

    from test_jobs import REPO, assert_same_tree, subprocess_env

    torch.manual_seed(8)
    ckpt = tmp_path / "m1.safetensors"
    m1.save_m1(m1.M1(m1.preset("tiny")), str(ckpt))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d.decode("latin-1")}) + "\n" for d in _heldout(4_000, 400)))
    args = ["compress", "--method", "equal_info_ac", "--m1", str(ckpt), "--data", str(data), "--shard-docs", "3",
            "--no-progress", "--device", "cpu"]
    assert cli.main(args + ["--out", str(tmp_path / "one")]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ncx.cli",
         *args, "--out", str(tmp_path / "two")],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_tree(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / VOCAB_FILE).exists()
