"""The corpus layer: the embedded default corpus is deterministic and split
cleanly; the readers take .txt/.jsonl (and .gz) files and directories, keep
arbitrary bytes intact, and fail with messages that say where."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest

from ncx.corpus import (SUPPORTED_SUFFIXES, corpus_hash, default_corpus, default_documents, read_documents,
                        split_of)


# ------------------------------------------------------------ default corpus
def test_default_corpus_is_stable_across_processes():
    """Same documents, order and split in a fresh interpreter with another
    hash seed (set and dict ordering must not leak into the corpus)."""
    code = ("from ncx.corpus import default_corpus, corpus_hash; "
            "print(corpus_hash(default_corpus('train')), corpus_hash(default_corpus('heldout')))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [corpus_hash(default_corpus("train")), corpus_hash(default_corpus("heldout"))]


def test_default_corpus_splits_are_disjoint_and_cover_everything():
    docs = default_documents()
    titles = [t for t, _ in docs]
    assert len(set(titles)) == len(titles)
    train, heldout = default_corpus("train"), default_corpus("heldout")
    assert len(train) + len(heldout) == len(docs)
    assert [d for t, d in docs if split_of(t) == "train"] == train
    assert [d for t, d in docs if split_of(t) == "heldout"] == heldout
    assert all(isinstance(d, bytes) and d for d in train + heldout)
    total = sum(map(len, train)) + sum(map(len, heldout))
    assert total > 500_000  # pydoc topics alone are about half a megabyte
    assert 0.03 < sum(map(len, heldout)) / total < 0.3  # "one document in ten", documents vary in size
    # English text: mostly ASCII letters and spaces, valid UTF-8.
    sample = b"".join(train[:20])
    sample.decode("utf-8")
    assert sum(c == 32 or 65 <= c <= 122 for c in sample) / len(sample) > 0.8


def test_default_corpus_cap_takes_a_deterministic_subset():
    full = default_corpus("train")
    capped = default_corpus("train", max_bytes=50_000)
    assert 0 < sum(map(len, capped)) <= 50_000
    assert capped == default_corpus("train", max_bytes=50_000)
    it = iter(full)  # an order-preserving subsequence of the full split
    assert all(any(doc == d for d in it) for doc in capped)


def test_default_corpus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        default_corpus("validation")
    with pytest.raises(ValueError, match="max_bytes"):
        default_corpus("train", max_bytes=0)


def test_corpus_hash_is_sha256_of_length_prefixed_documents():
    expected = hashlib.sha256((5).to_bytes(8, "little") + b"hello" + (0).to_bytes(8, "little")).hexdigest()
    assert corpus_hash([b"hello", b""]) == expected
    # Document boundaries count: moving a byte across one changes the hash.
    assert corpus_hash([b"ab", b"c"]) != corpus_hash([b"a", b"bc"])
    assert corpus_hash([]) == hashlib.sha256().hexdigest()


# ------------------------------------------------------------ readers
RAW = b"caf\xc3\xa9 \xff\xfe not utf-8 \x00\x80 end"  # invalid UTF-8 on purpose


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)
    return str(path)


def jsonl(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_txt_file_is_one_document_of_raw_bytes(tmp_path, suffix):
    p = write(tmp_path / f"a{suffix}", RAW + b"\nsecond line\n")
    assert read_documents(p) == [(p, RAW + b"\nsecond line\n")]


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_txt_lines_mode_gives_one_document_per_nonempty_line(tmp_path, suffix):
    p = write(tmp_path / f"a{suffix}", b"first\r\n\n" + RAW + b"\nlast")
    assert read_documents(p, lines=True) == [(f"{p}:1", b"first"), (f"{p}:3", RAW), (f"{p}:4", b"last")]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_reads_the_text_field(tmp_path, suffix):
    p = write(tmp_path / f"a{suffix}", jsonl({"text": "héllo", "id": 1}, {"text": ""}) + b"\n  \n"
              + jsonl({"body": "other", "text": "x"}))
    assert read_documents(p) == [(f"{p}:1", "héllo".encode()), (f"{p}:2", b""), (f"{p}:5", b"x")]
    assert read_documents(write(tmp_path / f"b{suffix}", jsonl({"body": "B"})), text_field="body")[0][1] == b"B"


def test_jsonl_carries_arbitrary_bytes_via_surrogateescape(tmp_path):
    text = RAW.decode("utf-8", "surrogateescape")
    p = write(tmp_path / "a.jsonl", jsonl({"text": text}))
    assert read_documents(p)[0][1] == RAW


def test_directory_is_read_recursively_in_sorted_order(tmp_path):
    write(tmp_path / "d" / "b.txt", b"B")
    write(tmp_path / "d" / "a" / "z.jsonl.gz", jsonl({"text": "Z"}))
    write(tmp_path / "d" / "c.txt.gz", b"C")
    write(tmp_path / "d" / "notes.md", b"ignored: unsupported suffix")
    write(tmp_path / "d" / ".hidden.txt", b"ignored: hidden")
    write(tmp_path / "d" / ".git" / "x.txt", b"ignored: hidden folder")
    docs = read_documents(str(tmp_path / "d"))
    assert [d for _, d in docs] == [b"Z", b"B", b"C"]
    assert docs[0][0].endswith(os.path.join("a", "z.jsonl.gz") + ":1")


def test_several_paths_keep_their_order(tmp_path):
    a, b = write(tmp_path / "a.txt", b"A"), write(tmp_path / "b.txt", b"B")
    assert [d for _, d in read_documents([b, a])] == [b"B", b"A"]


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unsupported file type"):
        read_documents(write(tmp_path / "a.csv", b"x"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no .* files"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no documents"):
        read_documents(write(tmp_path / "blank.jsonl", b"\n\n"))
    with pytest.raises(ValueError, match="no documents"):
        read_documents(write(tmp_path / "blank.txt", b"\n"), lines=True)
    with pytest.raises(ValueError, match="no documents"):
        read_documents([])


@pytest.mark.parametrize("line3, message", [
    (b"{not json", "not valid JSON"),
    (b'{"body": "x"}', "no field 'text'"),
    (b'["text"]', "no field 'text'"),
    (b'{"text": 5}', "is int, not a string"),
    (b'{"text": "\\ud800"}', "lone surrogate"),
    (b'{"text": "\xff"}', "not valid JSON"),
])
def test_bad_jsonl_line_is_reported_with_file_and_line(tmp_path, line3, message):
    p = write(tmp_path / "a.jsonl.gz", jsonl({"text": "ok"}) + b"\n" + line3 + b"\n")
    with pytest.raises(ValueError, match=f"a.jsonl.gz:3: .*{message}"):
        read_documents(p)


def test_supported_suffixes_are_the_documented_ones():
    assert set(SUPPORTED_SUFFIXES) == {".txt", ".txt.gz", ".jsonl", ".jsonl.gz"}
