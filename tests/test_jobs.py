"""ncx compress / decompress / inspect (ncx.jobs), through the CLI entry point.

Properties proved here:
- round trip: decompress restores every document byte for byte (empty documents, invalid
  UTF-8 and U+2581 included), for bytes, gzip (v=256, 65k), static_ac, sentencepiece and,
  with a tiny random M1, equal_info_ac and ac;
- the output depends on the input alone: a job killed with SIGKILL after its first shard and
  started again, a run with another --batch, and a run split over two torchrun ranks all
  give the same files, byte for byte, as one uninterrupted single-process run; fitted state
  (StaticAC counts, the SentencePiece model) is the same in another process;
- resume skips intact shards and rewrites a corrupt one;
- every user mistake is one clear line (exit status 2) naming the problem.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ncx import cli
from ncx import m1 as m1_module
from ncx.corpus import read_documents
from ncx.layout import INCOMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the model codes each byte with a probability and the coder turns those into bits "
         "windows tokens language compression arithmetic interval neural text of in to a is").split()


def ncx(*argv) -> int:
    return cli.main([str(a) for a in argv])


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under directory (hidden ones included) -> its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name] == tb[name], f"{name} differs between {a} and {b}"


def make_docs(seed: int, n: int, words: int) -> list[bytes]:
    """English-like documents of varied length, and the hard cases: an empty document,
    invalid UTF-8, U+2581 (SentencePiece's space marker), non-ASCII characters."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(1, 2 * words))
        text = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), k))
        docs.append(text.encode())
    docs[1] = b""
    docs[2] = b"raw \x80\xff\xfe bytes \xc3 cut" + docs[2]
    docs[3] = "\u2581 marker, caf\u00e9, \u4e2d\u6587, \U0001f600\n\ttabs\r\n".encode() + docs[3]
    return docs


def write_jsonl(path: Path, docs: list[bytes]) -> Path:
    # surrogateescape: JSONL carries any bytes (corpus.read_documents's convention).
    path.write_text("".join(json.dumps({"text": d.decode("utf-8", "surrogateescape")}) + "\n" for d in docs))
    return path


def restored(directory: Path) -> list[bytes]:
    """The documents decompress wrote: the input's files read back (a dataset made from
    files), or doc-N.bin files in documents.json's order (--flat, the embedded corpus)."""
    assert not (directory / INCOMPLETE_MARKER).exists()
    if not (directory / "documents.json").exists():
        return [d for _, d in read_documents(str(directory))]
    index = json.loads((directory / "documents.json").read_text())
    docs = [(directory / e["file"]).read_bytes() for e in index["documents"]]
    assert [e["doc_id"] for e in index["documents"]] == list(range(len(docs)))
    assert [e["crc32"] for e in index["documents"]] == [zlib.crc32(d) for d in docs]
    return docs


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("jobs-data")
    docs = make_docs(0, 24, 60)
    fit = make_docs(1, 40, 80)
    return {"docs": docs, "path": write_jsonl(root / "docs.jsonl", docs),
            "fit": write_jsonl(root / "fit.jsonl", fit)}


@pytest.fixture(scope="module")
def tiny_m1s(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random M1 checkpoints (different weights)."""
    root = tmp_path_factory.mktemp("m1")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = root / f"m1-{seed}.safetensors"
        m1_module.save_m1(m1_module.M1(m1_module.preset("tiny")), str(path))
        paths.append(path)
    return tuple(paths)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("method,args", [
    ("bytes", []),
    ("gzip", []),
    ("gzip", ["--v", 65536]),
    ("static_ac", ["--v", 65536]),
])
def test_round_trip_restores_every_document(tmp_path, data, capsys, method, args):
    out = tmp_path / "ds"
    fit = ["--fit-data", data["fit"]] if method == "static_ac" else []
    assert ncx("compress", "--method", method, *args, *fit, "--data", data["path"], "--out", out,
               "--shard-docs", 5, "--no-progress") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == len(data["docs"])
    assert manifest["counts"]["shards"] == 5
    assert manifest["counts"]["bytes"] == sum(map(len, data["docs"]))
    assert manifest["inputs"][0]["name"] == str(data["path"])
    assert manifest["extra"]["m1_flops_per_byte"] == 0 and manifest["m1_hash"] is None
    assert [e["name"] for e in manifest["extra"]["fit_inputs"]] == ([str(data["fit"])] if fit else [])
    job = json.loads((out / "job.json").read_text())
    assert manifest["method"] == job["method"] and manifest["method"]["kind"] == method

    capsys.readouterr()
    assert ncx("inspect", out) == 0
    text = capsys.readouterr().out
    assert manifest["method"]["name"] in text and "checksums    ok" in text
    assert f"documents    {len(data['docs'])}" in text and "shards       5" in text

    assert ncx("decompress", out, "--out", tmp_path / "restored", "--batch", 4, "--no-progress") == 0
    assert restored(tmp_path / "restored") == data["docs"]


def test_embedded_corpus_default(tmp_path, capsys):
    """No --data: the embedded corpus's train split (here capped), recorded by its hash."""
    from ncx.corpus import corpus_hash, default_corpus

    out = tmp_path / "ds"
    assert ncx("compress", "--method", "gzip", "--max-bytes", 20000, "--shard-bytes", 8000, "--out", out,
               "--no-progress") == 0
    docs = default_corpus("train", max_bytes=20000)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "ncx:default-corpus/train?max_bytes=20000",
                                   "sha256": corpus_hash(docs), "bytes": sum(map(len, docs))}]
    assert ncx("decompress", out, "--out", tmp_path / "r", "--no-progress") == 0
    assert restored(tmp_path / "r") == docs


def test_sentencepiece_fit_is_deterministic_across_processes(tmp_path, data):
    """The fitted SentencePiece model is the same in another process, so a restarted or
    multi-rank job codes with the same model; the dataset decodes."""
    args = ["compress", "--method", "sentencepiece", "--vocab-size", 300, "--fit-data", data["fit"],
            "--data", data["path"], "--shard-docs", 10, "--no-progress"]
    assert ncx(*args, "--out", tmp_path / "a") == 0
    subprocess.run([sys.executable, "-m", "ncx.cli", *map(str, args), "--out", str(tmp_path / "b")],
                   check=True, cwd=REPO, env=subprocess_env(), capture_output=True)
    assert_same_tree(tmp_path / "a", tmp_path / "b")
    assert ncx("decompress", tmp_path / "a", "--out", tmp_path / "r", "--no-progress") == 0
    assert restored(tmp_path / "r") == data["docs"]


# ---------------------------------------------------------------------- resume
def test_sigkilled_job_resumes_to_identical_output(tmp_path, data):
    """Kill the job (SIGKILL) right after its first shard lands; the rerun writes only the
    missing shards and ends with the files of an uninterrupted run, byte for byte. The
    three runs use different --batch values: batching does not change the output."""
    # Many one-document shards: the job runs on for a second or two after its first shard
    # (most of it the fsyncs of the atomic writes), time enough for the kill to land.
    docs = make_docs(2, 90, 150)
    src = write_jsonl(tmp_path / "big.jsonl", docs)
    args = ["compress", "--method", "static_ac", "--fit-data", data["fit"], "--data", src, "--shard-docs", 1,
            "--no-progress"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert ncx(*args, "--out", clean, "--batch", 3) == 0

    proc = subprocess.Popen([sys.executable, "-m", "ncx.cli", *map(str, args), "--out", str(killed)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (killed / "shard-00000.json").exists():
        assert proc.poll() is None, f"compress exited early: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no shard after 60 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (killed / "manifest.json").exists(), "the job finished before the kill: give it more data"
    assert len(list(killed.glob("shard-*.json"))) < len(docs)
    first = (killed / "shard-00000.tokens").stat()

    assert ncx(*args, "--out", killed, "--batch", 1) == 0
    assert_same_tree(clean, killed)
    again = (killed / "shard-00000.tokens").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns), "a done shard was rewritten"

    # Rerunning a finished job changes nothing.
    assert ncx(*args, "--out", killed) == 0
    assert_same_tree(clean, killed)


def test_resume_rewrites_a_corrupt_shard(tmp_path, data):
    args = ["compress", "--method", "gzip", "--data", data["path"], "--shard-docs", 5, "--no-progress"]
    assert ncx(*args, "--out", tmp_path / "clean") == 0
    shutil.copytree(tmp_path / "clean", tmp_path / "ds")
    tokens = tmp_path / "ds" / "shard-00002.tokens"
    raw = bytearray(tokens.read_bytes())
    raw[3] ^= 0x40
    tokens.write_bytes(raw)
    with pytest.warns(UserWarning, match="shard 2 will be rewritten"):
        assert ncx(*args, "--out", tmp_path / "ds") == 0
    assert_same_tree(tmp_path / "clean", tmp_path / "ds")


def test_torchrun_two_ranks_match_one_process(tmp_path, data):
    """Two CPU ranks (gloo) split the shards (i % 2); rank 0 fits StaticAC, shares it, waits
    for rank 1 and writes the manifest: the same files as a single-process run."""
    args = ["compress", "--method", "static_ac", "--fit-data", data["fit"], "--data", data["path"],
            "--shard-docs", 3]
    assert ncx(*args, "--out", tmp_path / "one", "--no-progress") == 0
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ncx.cli",
         *map(str, args), "--out", str(tmp_path / "two")],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank 0/2]" in result.stderr and "[rank 1/2]" in result.stderr
    assert_same_tree(tmp_path / "one", tmp_path / "two")

    # An error rank 0 finds while preparing (here: the directory holds another job) stops
    # both ranks with that message rather than leaving rank 1 waiting.
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ncx.cli",
         "compress", "--method", "gzip", "--data", str(data["path"]), "--out", str(tmp_path / "two")],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    message = "ncx compress: error: " + str(tmp_path / "two") + ": holds another compress job"
    assert result.stderr.count(message) == 2, result.stderr[-3000:]


# ---------------------------------------------------------------------- M1
def test_equal_info_ac_with_m1(tmp_path, tiny_m1s, capsys):
    """EqualInfoAC with M1 in the loop (and plain AC) with a tiny random M1: the manifest records
    M1's hash and FLOPs/byte, the windows and exceptions; decoding needs that M1 and no other.
    (The default engine for b=16, the window vocabulary, is tested in test_window_vocab.py.)"""
    m1_a, m1_b = tiny_m1s
    _, info_a = m1_module.load_m1(str(m1_a))
    _, info_b = m1_module.load_m1(str(m1_b))
    docs = [b"Equal-Info windows hold b bits each.", b"", b"\xff\xfe not UTF-8 \x80",
            "caf\u00e9 \u2581 tokens".encode()]
    src = write_jsonl(tmp_path / "small.jsonl", docs)
    out = tmp_path / "eq"
    assert ncx("compress", "--method", "equal_info_ac", "--b", 16, "--m1", m1_a, "--data", src, "--out", out,
               "--shard-docs", 3, "--no-progress", "--device", "cpu", "--engine", "m1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["m1_hash"] == info_a["weights_hash"] == manifest["method"]["m1"]
    assert manifest["extra"]["m1_flops_per_byte"] == m1_module.preset("tiny").flops_per_byte
    assert manifest["extra"]["windows"] == manifest["counts"]["windows"] == manifest["counts"]["tokens"] // 2
    assert manifest["extra"]["exceptions"] == manifest["counts"]["exceptions"]

    capsys.readouterr()
    assert ncx("inspect", out) == 0
    text = capsys.readouterr().out
    assert info_a["weights_hash"] in text and "EqualInfoAC[b=16, v=256]" in text

    assert ncx("decompress", out, "--out", tmp_path / "r", "--m1", m1_a, "--device", "cpu", "--no-progress") == 0
    assert restored(tmp_path / "r") == docs

    capsys.readouterr()
    assert ncx("decompress", out, "--out", tmp_path / "r2", "--m1", m1_b, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "wrong M1" in err and info_a["weights_hash"][:16] in err and info_b["weights_hash"][:16] in err
    assert ncx("decompress", out, "--out", tmp_path / "r3", "--no-progress") == 2
    assert "give that M1 checkpoint" in capsys.readouterr().err
    # Resuming the job with another M1 is refused, naming both.
    assert ncx("compress", "--method", "equal_info_ac", "--m1", m1_b, "--data", src, "--out", out,
               "--shard-docs", 3, "--no-progress", "--engine", "m1") == 2
    err = capsys.readouterr().err
    assert "m1_hash" in err and info_a["weights_hash"][:16] in err and info_b["weights_hash"][:16] in err

    ac = tmp_path / "ac"
    assert ncx("compress", "--method", "ac", "--m1", m1_a, "--data", src, "--out", ac, "--no-progress") == 0
    assert ncx("decompress", ac, "--out", tmp_path / "r4", "--m1", m1_a, "--no-progress") == 0
    assert restored(tmp_path / "r4") == docs


# ---------------------------------------------------------------------- errors
def error_of(capsys, *argv) -> str:
    capsys.readouterr()
    assert ncx(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ncx {argv[0]}: error: "), err
    return err


def test_compress_errors_are_one_line(tmp_path, data, capsys, tiny_m1s):
    out = tmp_path / "ds"
    missing = tmp_path / "nope.jsonl"
    assert "no such file or directory" in error_of(capsys, "compress", "--method", "gzip", "--data", missing,
                                                   "--out", out)
    (tmp_path / "a.csv.gz").write_text("x")
    assert "not a readable gzip file" in error_of(capsys, "compress", "--method", "gzip", "--data",
                                                  tmp_path / "a.csv.gz", "--out", out)
    assert "holds no files to read" in error_of(capsys, "compress", "--method", "gzip", "--data", data["path"].parent,
                                                "--include", "*.rs", "--out", out)
    assert "give --data" in error_of(capsys, "compress", "--method", "gzip", "--exclude", "*.md", "--out", out)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    assert "no documents" in error_of(capsys, "compress", "--method", "gzip", "--data", tmp_path / "blank.jsonl",
                                      "--out", out)
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "hold no bytes" in error_of(capsys, "compress", "--method", "gzip", "--data", tmp_path / "empty.txt",
                                       "--out", out)
    # --max-bytes 1 keeps only the empty document.
    assert "the 1 document(s) hold no bytes" in error_of(capsys, "compress", "--method", "gzip", "--data",
                                                         data["path"], "--max-bytes", 1, "--out", out)
    assert "give its checkpoint with --m1" in error_of(capsys, "compress", "--method", "equal_info_ac",
                                                       "--data", data["path"], "--out", out)
    assert "no such M1 checkpoint" in error_of(capsys, "compress", "--method", "ac", "--m1", missing,
                                               "--data", data["path"], "--out", out)
    assert "--b does not apply to method gzip" in error_of(capsys, "compress", "--method", "gzip", "--b", 24,
                                                           "--data", data["path"], "--out", out)
    assert "--m1 does not apply" in error_of(capsys, "compress", "--method", "gzip", "--m1", tiny_m1s[0],
                                             "--data", data["path"], "--out", out)
    assert "--fit-data / --fit-split do not apply" in error_of(
        capsys, "compress", "--method", "gzip", "--fit-data", data["fit"], "--data", data["path"], "--out", out)
    assert "b must be one of 16, 24" in error_of(capsys, "compress", "--method", "equal_info_ac", "--b", 20,
                                                 "--m1", tiny_m1s[0], "--data", data["path"], "--out", out)
    assert not out.exists()

    # A directory holding another job, or dataset files without a job record, is refused.
    assert ncx("compress", "--method", "bytes", "--data", data["path"], "--out", out, "--no-progress") == 0
    assert "holds another compress job, which differs in method" in error_of(
        capsys, "compress", "--method", "gzip", "--data", data["path"], "--out", out)
    (out / "job.json").unlink()
    assert "no job.json" in error_of(capsys, "compress", "--method", "bytes", "--data", data["path"], "--out", out)


def test_corrupt_and_missing_datasets_are_reported(tmp_path, data, capsys):
    out = tmp_path / "ds"
    assert ncx("compress", "--method", "bytes", "--data", data["path"], "--out", out, "--shard-docs", 10,
               "--no-progress") == 0
    tokens = out / "shard-00001.tokens"
    raw = bytearray(tokens.read_bytes())
    raw[5] ^= 0x01
    tokens.write_bytes(raw)

    capsys.readouterr()
    assert ncx("inspect", out) == 2
    captured = capsys.readouterr()
    assert "shard-00001.tokens: sha256 checksum mismatch (shard 1 is corrupt)" in captured.err
    assert "documents    24" in captured.out  # the summary still shows
    assert ncx("inspect", out, "--no-verify") == 0

    assert "sha256 checksum mismatch (shard 1 is corrupt)" in error_of(
        capsys, "decompress", out, "--out", tmp_path / "r", "--no-progress")
    # Without the sha256 check, the per-document CRC-32 catches it and names the document.
    err = error_of(capsys, "decompress", out, "--out", tmp_path / "r2", "--no-verify", "--no-progress")
    index = np.load(out / "shard-00001.index.npy")
    doc = int(index["doc_id"][np.searchsorted(index["token_offset"], 5, side="right") - 1])
    assert f"document {doc} (shard 1) does not decode" in err and "CRC-32" in err

    (out / "manifest.json").unlink()
    assert "manifest not found" in error_of(capsys, "inspect", out)
    assert "manifest not found" in error_of(capsys, "decompress", out, "--out", tmp_path / "r3")
    assert "dataset directory not found" in error_of(capsys, "inspect", tmp_path / "nowhere")

    good = tmp_path / "good"
    assert ncx("compress", "--method", "bytes", "--data", data["path"], "--out", good, "--no-progress") == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert "new or empty directory" in error_of(capsys, "decompress", good, "--out", tmp_path / "busy")


def test_write_documents_is_compress_without_the_job(tmp_path, data):
    """The in-memory path (ncx experiment's): the same shards and manifest facts as compress,
    from a ready method; refuses a folder that holds files."""
    from ncx.jobs import encoded_documents, write_documents
    from ncx.methods import GZipMethod

    method = GZipMethod(v=65536)
    made = write_documents(tmp_path / "w", method, data["docs"], shard_docs=5, extra={"note": "x"})
    assert ncx("compress", "--method", "gzip", "--v", 65536, "--data", data["path"], "--out", tmp_path / "c",
               "--shard-docs", 5, "--no-progress") == 0
    for shard in range(5):
        name = f"shard-{shard:05d}.tokens"
        assert (tmp_path / "w" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    assert made.manifest["extra"]["note"] == "x" and made.manifest["extra"]["windows"] == 0
    assert method.decode_batch(encoded_documents(made)) == data["docs"]
    # Given their encoded form, documents are written as they are, not coded again.
    again = write_documents(tmp_path / "e", method, data["docs"], encoded=encoded_documents(made))
    assert [t.tobytes() for t in again.iter_shards()] == [b"".join(t.tobytes() for t in made.iter_shards())]
    with pytest.raises(ValueError, match="new or empty"):
        write_documents(tmp_path / "w", method, data["docs"])
    with pytest.raises(ValueError, match="2 encoded documents for 24"):
        write_documents(tmp_path / "x", method, data["docs"], encoded=encoded_documents(made)[:2])
