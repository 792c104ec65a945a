"""The corpus layer: the embedded default corpus is deterministic and split
cleanly; the readers take any file (.jsonl as records, .gz decompressed) and directories
(globs, hidden and special files passed over and reported), keep arbitrary bytes intact,
name each file for decompress, and fail with messages that say where."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys

import pytest

from ncx.corpus import (JSONL_SUFFIXES, corpus_hash, default_corpus, default_documents, read_corpus, read_documents,
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
    write(tmp_path / "d" / "notes.md", b"M")
    write(tmp_path / "d" / ".hidden.txt", b"ignored: hidden")
    write(tmp_path / "d" / ".git" / "x.txt", b"ignored: hidden folder")
    docs = read_documents(str(tmp_path / "d"))
    assert [d for _, d in docs] == [b"Z", b"B", b"C", b"M"]
    assert docs[0][0].endswith(os.path.join("a", "z.jsonl.gz") + ":1")


def test_any_file_is_a_document_whatever_its_name(tmp_path):
    """Code, markup, licences, binary data: every regular file is read as its raw bytes; .gz
    is read decompressed, .jsonl(.gz) as records."""
    binary = bytes(range(256)) * 3 + b"\x00" * 1000
    files = {"README.md": b"# title\n", "sub/a.py": b"print(1)\n", "LICENSE": b"MIT", "b.txt": b"B",
             "blob.bin": binary, "empty": b"", "deep/x.gz": b"unzipped", "r.jsonl": jsonl({"text": "R"})}
    for name, data in files.items():
        write(tmp_path / "d" / name, data)
    corpus = read_corpus(str(tmp_path / "d"))
    names = [s.name for s in corpus.sources]
    assert names == sorted(names) == ["LICENSE", "README.md", "b.txt", "blob.bin", "deep/x.gz", "empty", "r.jsonl",
                                      "sub/a.py"]
    assert corpus.documents == [b"MIT", b"# title\n", b"B", binary, b"unzipped", b"", b"R", b"print(1)\n"]
    assert [s.kind for s in corpus.sources] == ["file"] * 6 + ["jsonl", "file"]
    assert [s.gzip for s in corpus.sources] == [False] * 4 + [True] + [False] * 3
    assert corpus.skipped == []
    assert "read 8 file(s)" in corpus.summary() and "nothing skipped" in corpus.summary()
    # A single file of any type, given by name.
    assert read_documents(str(tmp_path / "d" / "blob.bin")) == [(str(tmp_path / "d" / "blob.bin"), binary)]


def test_include_and_exclude_globs_and_what_is_skipped(tmp_path):
    for name in ("a.py", "sub/b.py", "sub/c.txt", "docs/d.md", ".env", ".cache/e.py"):
        write(tmp_path / "d" / name, name.encode())
    os.symlink(tmp_path / "d" / "sub", tmp_path / "d" / "linked")
    os.mkfifo(tmp_path / "d" / "pipe")
    d = str(tmp_path / "d")
    corpus = read_corpus(d, include=["*.py"])
    assert [s.name for s in corpus.sources] == ["a.py", "sub/b.py"]
    reasons = {os.path.relpath(s.path, d): s.reason for s in corpus.skipped}
    assert reasons == {".env": "hidden file(s)", ".cache": "hidden folder(s)",
                       "linked": "link(s) to a folder, not followed", "pipe": "not regular file(s)", "sub/c.txt": "not matched by --include",
                       "docs/d.md": "not matched by --include"}
    summary = corpus.summary()
    assert "read 2 file(s)" in summary and "2 not matched by --include" in summary and "1 hidden folder(s)" in summary
    # A glob matches the relative path ("*" crosses "/") or the file's name.
    assert [s.name for s in read_corpus(d, exclude=["sub/*"]).sources] == ["a.py", "docs/d.md"]
    assert [s.name for s in read_corpus(d, include=["docs/*", "c.txt"]).sources] == ["docs/d.md", "sub/c.txt"]
    with pytest.raises(ValueError, match="no files to read .*skipped"):
        read_corpus(d, include=["*.rs"])


def test_restore_names_for_several_inputs(tmp_path):
    """One directory: names relative to it; files by name or several inputs: under each
    input's base name, made unique."""
    a = write(tmp_path / "x" / "one.txt", b"1")
    write(tmp_path / "y" / "x" / "two.txt", b"2")
    c = write(tmp_path / "z" / "one.txt", b"3")
    names = [s.name for s in read_corpus([str(tmp_path / "x"), str(tmp_path / "y" / "x"), c, a, a]).sources]
    assert names == ["x/one.txt", "x-2/two.txt", "one.txt", "one.txt-2", "one.txt-3"]
    assert [s.name for s in read_corpus(a).sources] == ["one.txt"]


def test_take_keeps_sources_in_step(tmp_path):
    p = write(tmp_path / "a.jsonl", jsonl({"text": "1"}, {"text": "22"}, {"text": "333"}))
    q = write(tmp_path / "b.txt", b"4444")
    corpus = read_corpus([p, q]).take([0, 2])
    assert corpus.documents == [b"1", b"333"] and [s.documents for s in corpus.sources] == [2, 0]


def test_several_paths_keep_their_order(tmp_path):
    a, b = write(tmp_path / "a.txt", b"A"), write(tmp_path / "b.txt", b"B")
    assert [d for _, d in read_documents([b, a])] == [b"B", b"A"]


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_documents(str(tmp_path / "missing.txt"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no files to read"):
        read_documents(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no documents"):
        read_documents(write(tmp_path / "blank.jsonl", b"\n\n"))
    with pytest.raises(ValueError, match="no documents"):
        read_documents(write(tmp_path / "blank.txt", b"\n"), lines=True)
    with pytest.raises(ValueError, match="no documents"):
        read_documents([])
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.gz: not a readable gzip file"):
        read_documents(str(tmp_path / "bad.gz"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(jsonl({"text": "x" * 1000}))[:-20])
    with pytest.raises(ValueError, match="cut.jsonl.gz: not a readable gzip file"):
        read_documents(str(tmp_path / "cut.jsonl.gz"))


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


def test_jsonl_suffixes_are_the_documented_ones():
    assert set(JSONL_SUFFIXES) == {".jsonl", ".jsonl.gz"}
