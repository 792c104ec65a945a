"""decompress gives back the input as it was given (ncx.layout): a directory of any files
comes back as the same tree (`diff -r` clean), JSONL as its records, --lines files as their
lines; --flat gives doc-N.bin files; a tampered sources record never makes ncx write outside
the output folder; an interrupted decompression is marked as such."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ncx import cli
from ncx.corpus import read_documents
from ncx.layout import INCOMPLETE_MARKER, SOURCES_FILE


def ncx(*argv) -> int:
    return cli.main([str(a) for a in argv])


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def jsonl(*texts: str) -> bytes:
    return b"".join(json.dumps({"text": t, "id": i}).encode() + b"\n" for i, t in enumerate(texts))


@pytest.fixture
def tree(tmp_path) -> Path:
    """A source tree as users have them: code, markup, licences, binary data, empty files,
    every byte value, long runs, invalid UTF-8, a longer random file, nested folders."""
    rng = np.random.default_rng(7)
    root = tmp_path / "corpus"
    files = {
        "README.md": b"# Project\n\nSome *markup*.\n",
        "LICENSE": b"Permission is hereby granted, free of charge...\n" * 5,
        "b.txt": b"plain text\n",
        "src/main.py": b"def main():\n    return 0\n",
        "src/pkg/util.c": b"int f(void) { return 1; }\n",
        "data/all_bytes.bin": bytes(range(256)) * 2,
        "data/empty": b"",
        "data/one": b"\x00",
        "data/runs.bin": b"a" * 5000 + b"\xff" * 3000,
        "data/not_utf8.txt": b"caf\xe9 \xc3\x28 \xed\xa0\x80 \xf8\x88\x80\x80\x80",
        "data/random.bin": rng.integers(0, 256, 20000, dtype=np.uint8).tobytes(),
        "deep/a/b/c/d.txt": "\u2581 \u4e2d\u6587 \U0001f600\r\n".encode(),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("method", ["bytes", "gzip"])
def test_directory_comes_back_as_the_same_tree(tmp_path, tree, capsys, method):
    out, back = tmp_path / "ds", tmp_path / "back"
    assert ncx("compress", "--method", method, "--data", tree, "--out", out, "--shard-docs", 3, "--no-progress") == 0
    assert "read 12 file(s)" in capsys.readouterr().out
    assert ncx("decompress", out, "--out", back, "--batch", 2, "--no-progress") == 0
    assert "into 12 files by their paths" in capsys.readouterr().out
    assert files_of(back) == files_of(tree)
    subprocess.run(["diff", "-r", str(tree), str(back)], check=True)
    # --flat: one file per document, listed in documents.json.
    assert ncx("decompress", out, "--out", tmp_path / "flat", "--flat", "--no-progress") == 0
    index = json.loads((tmp_path / "flat" / "documents.json").read_text())
    assert [(tmp_path / "flat" / e["file"]).read_bytes() for e in index["documents"]] == list(files_of(tree).values())


def test_jsonl_gz_and_lines_come_back_as_records_and_lines(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    raw = b"raw \x80\xff bytes"
    texts = ["first", "", "caf\u00e9 \u4e2d", raw.decode("utf-8", "surrogateescape")]
    (src / "a.jsonl").write_bytes(jsonl(*texts) + b"\n")
    (src / "b.jsonl.gz").write_bytes(gzip.compress(jsonl("zipped", "records")))
    (src / "c.txt.gz").write_bytes(gzip.compress(b"whole gzip file\n"))
    (src / "empty.jsonl").write_bytes(b"")
    out, back = tmp_path / "ds", tmp_path / "back"
    assert ncx("compress", "--method", "bytes", "--data", src, "--out", out, "--no-progress") == 0
    assert ncx("decompress", out, "--out", back, "--no-progress") == 0
    assert sorted(files_of(back)) == ["a.jsonl", "b.jsonl.gz", "c.txt.gz", "empty.jsonl"]
    # Records keep their text (other fields are not in a token dataset); any bytes survive.
    assert [json.loads(line)["text"] for line in (back / "a.jsonl").read_text().splitlines()] == texts
    assert [d for _, d in read_documents(str(back))] == [d for _, d in read_documents(str(src))]
    assert gzip.decompress((back / "c.txt.gz").read_bytes()) == b"whole gzip file\n"
    assert (back / "empty.jsonl").read_bytes() == b""

    lines_src = tmp_path / "lines.txt"
    lines_src.write_bytes(b"one\n\ntwo\r\nthree")
    assert ncx("compress", "--method", "bytes", "--lines", "--data", lines_src, "--out", tmp_path / "ds2",
               "--no-progress") == 0
    assert ncx("decompress", tmp_path / "ds2", "--out", tmp_path / "back2", "--no-progress") == 0
    assert (tmp_path / "back2" / "lines.txt").read_bytes() == b"one\ntwo\nthree\n"


def test_several_inputs_each_under_its_name(tmp_path, tree):
    single = tmp_path / "single.txt"
    single.write_bytes(b"alone")
    out, back = tmp_path / "ds", tmp_path / "back"
    assert ncx("compress", "--method", "bytes", "--data", tree / "src", tree / "data", single, "--out", out,
               "--include", "*.py", "--include", "*.bin", "--no-progress") == 0
    assert ncx("decompress", out, "--out", back, "--no-progress") == 0
    assert files_of(back) == {"src/main.py": files_of(tree)["src/main.py"], "single.txt": b"alone",
                              **{f"data/{n}": files_of(tree)[f"data/{n}"]
                                 for n in ("all_bytes.bin", "random.bin", "runs.bin")}}
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {Path(s["path"]).name for s in manifest["extra"]["input_files"]["skipped"]}
    assert skipped == {"util.c", "empty", "one", "not_utf8.txt"}


def test_output_folder_must_be_empty(tmp_path, tree, capsys):
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "bytes", "--data", tree, "--out", out, "--no-progress") == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_bytes(b"mine")
    capsys.readouterr()
    assert ncx("decompress", out, "--out", busy, "--no-progress") == 2
    assert "never overwrites" in capsys.readouterr().err
    assert files_of(busy) == {"keep.txt": b"mine"}


def _retamper(out: Path, record: dict) -> None:
    """Rewrite sources.json and its sha256 in the manifest, as someone editing both would."""
    raw = (json.dumps(record, indent=2) + "\n").encode()
    (out / SOURCES_FILE).write_bytes(raw)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["extra"]["sources"]["sha256"] = hashlib.sha256(raw).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name, message", [
    ("../escaped.txt", "not a plain relative path"),
    ("/etc/owned", "not a plain relative path"),
    ("a/./b", "not a plain relative path"),
    ("README.md", "appears twice"),
    ("LICENSE/inside", "inside another recorded file"),
    (INCOMPLETE_MARKER, "reserves"),
])
def test_tampered_sources_are_refused_before_writing(tmp_path, tree, capsys, name, message):
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "bytes", "--data", tree, "--out", out, "--no-progress") == 0
    record = json.loads((out / SOURCES_FILE).read_text())
    record["files"][-1]["name"] = name
    _retamper(out, record)
    capsys.readouterr()
    assert ncx("decompress", out, "--out", tmp_path / "back", "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "back").exists() and not (tmp_path / "escaped.txt").exists()


def test_sources_edits_and_count_mismatch_are_refused(tmp_path, tree, capsys):
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "bytes", "--data", tree, "--out", out, "--no-progress") == 0
    original = (out / SOURCES_FILE).read_bytes()
    (out / SOURCES_FILE).write_bytes(original.replace(b"README.md", b"README.mx"))
    capsys.readouterr()
    assert ncx("decompress", out, "--out", tmp_path / "b1", "--no-progress") == 2
    assert "sha256 checksum mismatch" in capsys.readouterr().err
    record = json.loads(original)
    record["files"][0]["documents"] += 1
    _retamper(out, record)
    assert ncx("decompress", out, "--out", tmp_path / "b2", "--no-progress") == 2
    assert "records 13 documents, the dataset holds 12" in capsys.readouterr().err
    (out / SOURCES_FILE).unlink()
    assert ncx("decompress", out, "--out", tmp_path / "b3", "--no-progress") == 2
    assert "missing" in capsys.readouterr().err
    # --flat does not need the record.
    assert ncx("decompress", out, "--out", tmp_path / "b4", "--flat", "--no-progress") == 0


def test_interrupted_decompression_stays_marked(tmp_path, tree, capsys):
    """A document that does not decode stops the run; the marker says the folder is
    incomplete, so it is never taken for the whole tree."""
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "gzip", "--data", tree, "--out", out, "--shard-docs", 4, "--no-progress") == 0
    tokens = out / "shard-00002.tokens"
    data = bytearray(tokens.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tokens.write_bytes(bytes(data))
    back = tmp_path / "back"
    capsys.readouterr()
    assert ncx("decompress", out, "--out", back, "--no-verify", "--no-progress") == 2
    assert "does not decode" in capsys.readouterr().err
    assert (back / INCOMPLETE_MARKER).exists()
    shutil.rmtree(back)
