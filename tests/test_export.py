"""ncx export (ncx.export): token datasets as Megatron, Hugging Face and nanoGPT files.

Properties proved here:
- round trip: for bytes, gzip (v=256, 65k), static_ac, sentencepiece and EqualInfoAC (a tiny
  random M1, through its window vocabulary), each format read by its framework's own reader
  (Megatron-Core's IndexedDataset, datasets.load_dataset, np.memmap + documents.npy) gives the
  dataset's tokens exactly, and open_export(...).method() decodes them to the original
  documents (empty, one byte, all 256 byte values, long runs, invalid UTF-8, random bytes);
  token chunks and Parquet row groups far smaller than the data change nothing;
- the token dtype follows the vocabulary (uint8 / uint16 / int32 for Megatron, the dataset's
  own for Parquet, uint16 / uint32 for nanoGPT), and what no format can hold is refused;
- an existing, non-empty --out is refused and left as it was; a corrupt shard is refused
  unless --no-verify; the CLI prints one summary line, or one error line with exit status 2;
- a missing, tampered or unfinished sidecar is a clear FileNotFoundError / ValueError;
- exception windows, M1-coded data without a vocabulary, and an empty dataset go through.
"""
from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ncx import cli, export, jobs
from ncx import dataset as ds
from ncx import m1 as m1_module
from ncx.export import export_dataset, open_export

WORDS = ("the model codes each byte with a probability and the coder turns those into bits "
         "windows tokens language compression arithmetic interval neural text of in to a is").split()
FORMATS = ("megatron", "hf", "bin")


def english(rng: np.random.Generator, words: int) -> bytes:
    return " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), words)).encode()


def adversarial_docs() -> list[bytes]:
    rng = np.random.default_rng(7)
    return [
        b"",
        b"x",
        bytes(range(256)),
        b"a" * 3000 + b"\x00" * 1000 + b"\xff" * 500,
        b"raw \x80\xff\xfe bytes \xc3 cut \xed\xa0\x80 " + "caf\u00e9 \u2581 \u4e2d \U0001f600".encode(),
        rng.bytes(4000),
        english(rng, 300),
        b"\n",
        english(rng, 40),
    ]


def write_jsonl(path: Path, docs: list[bytes]) -> Path:
    # surrogateescape: JSONL carries any bytes (corpus.read_documents's convention).
    path.write_text("".join(json.dumps({"text": d.decode("utf-8", "surrogateescape")}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export-corpus")
    docs = adversarial_docs()
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    m1_path = root / "m1.safetensors"
    m1_module.save_m1(m1_module.M1(m1_module.preset("tiny")), str(m1_path))
    return {"docs": docs, "data": write_jsonl(root / "docs.jsonl", docs), "m1": m1_path,
            "fit": write_jsonl(root / "fit.jsonl", [english(rng, 80) for _ in range(30)]), "root": root}


_METHODS = {
    "bytes": dict(method="bytes"),
    "gzip-256": dict(method="gzip", v=256),
    "gzip-65k": dict(method="gzip", v=65536),
    "static_ac-65k": dict(method="static_ac", v=65536, fit=True),
    "sentencepiece-300": dict(method="sentencepiece", vocab_size=300, fit=True),
    "equal_info_ac-vocab": dict(method="equal_info_ac", b=16, v=256, m1=True),
}


@pytest.fixture(scope="module")
def datasets_by_method(corpus) -> dict:
    """The corpus compressed with each method (3 documents per shard), built on first use."""
    built = {}

    def get(name: str) -> ds.TokenDataset:
        if name not in built:
            spec = dict(_METHODS[name])
            method, fit, m1 = spec.pop("method"), spec.pop("fit", False), spec.pop("m1", False)
            out = corpus["root"] / name
            jobs.compress(out, method, data=[corpus["data"]], shard_docs=3, progress=False,
                          fit_data=[corpus["fit"]] if fit else None, m1=corpus["m1"] if m1 else None,
                          device="cpu" if m1 else None, **spec)
            built[name] = ds.open_dataset(out)
        return built[name]

    return get


# ------------------------------------------------------------------------- readers
def megatron_reader():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    return IndexedDataset


def read_megatron(out: Path) -> list[np.ndarray]:
    indexed = megatron_reader()(str(out / "tokens"))
    assert len(indexed) == len(np.load(out / "documents.npy"))
    return [np.array(indexed[i]) for i in range(len(indexed))]


def read_hf(out: Path, cache: Path, how: str = "directory") -> list[np.ndarray]:
    import datasets

    if how == "directory":
        rows = datasets.load_dataset(str(out), split="train", cache_dir=str(cache))
    else:
        rows = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train", cache_dir=str(cache))
    documents = np.load(out / "documents.npy")
    assert rows["doc_id"] == documents["doc_id"].tolist()
    assert rows["byte_count"] == documents["byte_count"].tolist()
    assert rows["crc32"] == documents["crc32"].tolist()
    return [np.array(ids, dtype=np.int64) for ids in rows["input_ids"]]


def read_bin(out: Path) -> list[np.ndarray]:
    record = json.loads((out / "ncx_export.json").read_text())
    tokens = np.memmap(out / "train.bin", dtype=np.dtype(record["token_dtype"]), mode="r")
    return [tokens[o:o + c] for o, c in np.load(out / "documents.npy")[["token_offset", "token_count"]].tolist()]


def read_tokens(out: Path, format: str, cache: Path) -> list[np.ndarray]:
    return {"megatron": read_megatron, "bin": read_bin}.get(format, lambda o: read_hf(o, cache))(out)


def decode_all(out: Path, tokens: list[np.ndarray], **method_kw) -> dict[int, bytes]:
    """doc_id -> the document decoded from tokens read by a framework."""
    exported = open_export(out)
    method = exported.method(**method_kw)
    decoded = method.decode_batch([exported.encoded(i, t) for i, t in enumerate(tokens)])
    return dict(zip(exported.documents["doc_id"].tolist(), decoded))


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("name", list(_METHODS))
def test_round_trip_through_the_framework_reader(tmp_path, corpus, datasets_by_method, monkeypatch, name, format):
    # Chunks and row groups much smaller than the data: every boundary case of the copy.
    monkeypatch.setattr(export, "CHUNK_TOKENS", 1000)
    monkeypatch.setattr(export, "ROW_GROUP_TOKENS", 1500)
    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 2)
    data = datasets_by_method(name)
    out = tmp_path / "out"
    record = export_dataset(data, out, format, progress=False)
    assert record["counts"]["documents"] == len(corpus["docs"]) and record["counts"]["tokens"] == data.total_tokens
    assert record["source"]["manifest"] == data.manifest

    tokens = read_tokens(out, format, tmp_path / "hf-cache")
    exported = open_export(out)
    for i, doc_id in enumerate(exported.documents["doc_id"].tolist()):
        assert np.array_equal(np.asarray(tokens[i], dtype=np.int64), data.tokens_of(doc_id).astype(np.int64))
    assert decode_all(out, tokens) == dict(enumerate(corpus["docs"]))
    if name.startswith("equal_info_ac"):
        assert (out / "window_vocab.safetensors").read_bytes() == (data.path / "window_vocab.safetensors").read_bytes()
        assert exported.method().coder is None  # the copied vocabulary decodes alone
    else:
        assert not (out / "window_vocab.safetensors").exists()
    if format == "hf":
        import pyarrow.parquet as pq

        files = sorted((out / "data").glob("*.parquet"))
        assert [f.name for f in files] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
        groups = [pq.ParquetFile(f).read_row_group(g) for f in files
                  for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
        assert len(groups) > len(files)
        for group in groups:
            assert group.num_rows <= 2
            assert group.num_rows == 1 or sum(map(len, group["input_ids"].to_pylist())) <= 1500


def test_hf_parquet_builder_reads_the_data_folder(tmp_path, corpus, datasets_by_method):
    out = tmp_path / "hf"
    export_dataset(datasets_by_method("gzip-65k"), out, "hf", progress=False)
    tokens = read_hf(out, tmp_path / "cache", how="parquet")
    assert decode_all(out, tokens) == dict(enumerate(corpus["docs"]))


def test_m1_method_without_a_vocabulary_decodes_with_its_checkpoint(tmp_path, corpus):
    docs = [b"", b"x", b"caf\xc3\xa9 \xff\xfe"]
    data = tmp_path / "ac"
    jobs.compress(data, "ac", m1=corpus["m1"], data=[write_jsonl(tmp_path / "d.jsonl", docs)], progress=False,
                  device="cpu")
    out = tmp_path / "out"
    export_dataset(data, out, "bin", progress=False)
    with pytest.raises(ValueError, match="give that M1 checkpoint"):
        open_export(out).method()
    assert decode_all(out, read_bin(out), m1=corpus["m1"], device="cpu") == dict(enumerate(docs))


# ------------------------------------------------------------------------ dtypes
def synthetic(path: Path, vocab_size: int, docs: list[list[int]], exceptions=None) -> ds.TokenDataset:
    """A dataset of given token ids (not decodable: for layout and dtype checks)."""
    return ds.write_dataset(path, [np.array(d, dtype=np.int64) for d in docs], [len(d) for d in docs],
                            [0] * len(docs), vocab_size=vocab_size, method={"name": "Bytes", "kind": "bytes"},
                            shard_tokens=3, exceptions=exceptions)


@pytest.mark.parametrize("vocab_size,megatron,hf,bin_", [
    (256, "uint8", "uint8", "uint16"),
    (65536, "uint16", "uint16", "uint16"),
    (70000, "int32", "uint32", "uint32"),
])
def test_token_dtype_follows_the_vocabulary(tmp_path, vocab_size, megatron, hf, bin_):
    docs = [[0, vocab_size - 1, 5], [], [vocab_size - 2], [1, 2, 3, 4, 5, 6, 7]]
    data = synthetic(tmp_path / "ds", vocab_size, docs)
    for format, dtype in zip(FORMATS, (megatron, hf, bin_)):
        out = tmp_path / format
        assert export_dataset(data, out, format, progress=False)["token_dtype"] == np.dtype(dtype).str
        tokens = read_tokens(out, format, tmp_path / "cache")
        assert [t.tolist() for t in tokens] == docs
        if format == "megatron":
            assert megatron_reader()(str(out / "tokens"))[0].dtype == np.dtype(dtype)
    assert (tmp_path / "bin" / "train.bin").stat().st_size == 11 * np.dtype(bin_).itemsize

    # The index's layout, field by field.
    raw = (tmp_path / "megatron" / "tokens.idx").read_bytes()
    magic, version, code, sequences, doc_indices = struct.unpack_from("<9sQBQQ", raw)
    assert (magic, version, sequences, doc_indices) == (b"MMIDIDX\x00\x00", 1, 4, 5)
    assert code == {"uint8": 1, "uint16": 8, "int32": 4}[megatron]
    lengths = np.frombuffer(raw, "<i4", 4, 34)
    pointers = np.frombuffer(raw, "<i8", 4, 34 + 16)
    indices = np.frombuffer(raw, "<i8", 5, 34 + 48)
    assert lengths.tolist() == [3, 0, 1, 7] and indices.tolist() == [0, 1, 2, 3, 4]
    assert pointers.tolist() == [k * np.dtype(megatron).itemsize for k in (0, 3, 3, 4)]
    assert len(raw) == 34 + 4 * 4 + 4 * 8 + 5 * 8


def test_what_no_format_holds_is_refused(tmp_path):
    assert export.export_token_dtype("megatron", 1 << 31) == np.dtype("<i4")
    with pytest.raises(ValueError, match="does not fit Megatron"):
        export.export_token_dtype("megatron", (1 << 31) + 1)
    data = synthetic(tmp_path / "ds", 1 << 32, [[0, (1 << 32) - 1]])
    with pytest.raises(ValueError, match="does not fit Megatron"):
        export_dataset(data, tmp_path / "out", "megatron", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown export format"):
        export_dataset(data, tmp_path / "out", "tfrecord", progress=False)


# ------------------------------------------------------------------ refusals, CLI
def ncx(*argv) -> int:
    return cli.main([str(a) for a in argv])


def test_cli_exports_and_refuses_a_non_empty_out(tmp_path, datasets_by_method, capsys):
    data = datasets_by_method("gzip-256").path
    out = tmp_path / "out"
    assert ncx("export", data, "--format", "megatron", "--out", out, "--no-progress") == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "megatron export of 9 documents" in line and "5 files written" in line

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert ncx("export", data, "--format", "bin", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ncx export: error: ") and "new or empty directory" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(ValueError, match="export never overwrites"):
        export_dataset(data, out, "hf", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        export_dataset(data, tmp_path / "file", "bin", progress=False)
    (tmp_path / "empty").mkdir()
    assert ncx("export", data, "--format", "hf", "--out", tmp_path / "empty", "--no-progress") == 0
    assert "3 Parquet files" in capsys.readouterr().out


def test_a_corrupt_shard_is_refused_unless_no_verify(tmp_path, corpus, capsys):
    data = tmp_path / "ds"
    jobs.compress(data, "bytes", data=[corpus["data"]], shard_docs=3, progress=False)
    raw = bytearray((data / "shard-00001.tokens").read_bytes())
    raw[0] ^= 1
    (data / "shard-00001.tokens").write_bytes(bytes(raw))
    assert ncx("export", data, "--format", "bin", "--out", tmp_path / "a", "--no-progress") == 2
    assert "sha256 checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert ncx("export", data, "--format", "bin", "--out", tmp_path / "b", "--no-progress", "--no-verify") == 0


# ------------------------------------------------------------------- the sidecar
def test_a_damaged_sidecar_is_a_clear_error(tmp_path, datasets_by_method):
    out = tmp_path / "out"
    export_dataset(datasets_by_method("bytes"), out, "bin", progress=False)
    record_path, documents_path = out / "ncx_export.json", out / "documents.npy"
    record, documents = record_path.read_text(), documents_path.read_bytes()

    def edit_record(change):
        obj = json.loads(record)
        change(obj)
        record_path.write_text(json.dumps(obj))

    def restore():
        record_path.write_text(record)
        documents_path.write_bytes(documents)

    damaged = bytearray(documents)
    damaged[-3] ^= 0xFF
    documents_path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="documents.npy: does not match its sha256"):
        open_export(out)

    # Files that match their (edited) hash but not what numpy or the record expect.
    for content, message in [(b"not a numpy file", "unreadable"),
                             (None, "expected a 1-D array of")]:
        path = tmp_path / "fake.npy"
        if content is None:
            np.save(path, np.arange(9), allow_pickle=False)
        else:
            path.write_bytes(content)
        documents_path.write_bytes(path.read_bytes())
        edit_record(lambda r: r["sha256"].update({"documents.npy": ds.file_sha256(path)}))
        with pytest.raises(ValueError, match=message):
            open_export(out)
        restore()

    rows = np.load(documents_path)
    rows["token_count"][0] += 1
    np.save(documents_path, rows, allow_pickle=False)
    edit_record(lambda r: r["sha256"].update({"documents.npy": ds.file_sha256(documents_path)}))
    with pytest.raises(ValueError, match="does not match the counts"):
        open_export(out)
    restore()

    record_path.write_text(record[:-20])
    with pytest.raises(ValueError, match="invalid JSON"):
        open_export(out)
    for change, message in [(lambda r: r.update(format="other"), "not an ncx-export record"),
                            (lambda r: r.update(version=2), "version 2 is not supported"),
                            (lambda r: r["files"].update(data=["../../etc/passwd"]), "mangled record"),
                            (lambda r: r.update(token_dtype="<u1"), "mangled record"),
                            (lambda r: r.pop("source"), "mangled record"),
                            (lambda r: r["counts"].update(tokens="many"), "mangled record"),
                            (lambda r: r["files"].update(window_vocab="window_vocab.safetensors"), "mangled record")]:
        edit_record(change)
        with pytest.raises(ValueError, match=message):
            open_export(out)
    restore()

    (out / "train.bin").write_bytes((out / "train.bin").read_bytes()[:-2])
    with pytest.raises(ValueError, match="train.bin: .* bytes, the export records"):
        open_export(out)
    (out / "train.bin").unlink()
    with pytest.raises(FileNotFoundError, match="train.bin: missing"):
        open_export(out)
    documents_path.unlink()
    with pytest.raises(FileNotFoundError, match="documents.npy: missing"):
        open_export(out)
    record_path.unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        open_export(out)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_export(tmp_path / "nowhere")


def test_the_copied_window_vocabulary_is_checked(tmp_path, datasets_by_method):
    out = tmp_path / "out"
    export_dataset(datasets_by_method("equal_info_ac-vocab"), out, "bin", progress=False)
    vocab = out / "window_vocab.safetensors"
    raw = bytearray(vocab.read_bytes())
    raw[-5] ^= 0xFF
    vocab.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="window_vocab.safetensors: does not match its sha256"):
        open_export(out)
    vocab.unlink()
    with pytest.raises(FileNotFoundError, match="window_vocab.safetensors: missing"):
        open_export(out)


def test_encoded_checks_the_tokens_and_carries_exceptions(tmp_path):
    docs = [[1, 2, 3], [4], [], [5, 6]]
    data = synthetic(tmp_path / "ds", 256, docs, exceptions=[(3, 1, 7), (0, 2, 9), (3, 0, 4)])
    out = tmp_path / "out"
    export_dataset(data, out, "hf", progress=False)
    exported = open_export(out)
    assert np.array_equal(np.sort(exported.exceptions, order=["doc_id", "window"]),
                          np.sort(data.exceptions, order=["doc_id", "window"]))
    assert exported.encoded(0, [1, 2, 3]).exceptions == [(2, 9)]
    assert exported.encoded(3, np.array([5, 6], np.uint16)).exceptions == [(0, 4), (1, 7)]
    encoded = exported.encoded(2, [])
    assert (encoded.tokens.dtype, encoded.byte_count, encoded.exceptions) == (np.uint8, 0, [])
    with pytest.raises(ValueError, match="document 0 has 3 tokens, got 2"):
        exported.encoded(0, [1, 2])
    with pytest.raises(ValueError, match=r"not ids in \[0, 256\)"):
        exported.encoded(1, [256])
    with pytest.raises(IndexError):
        exported.encoded(4, [])
    with pytest.raises(ValueError, match="does not apply"):
        exported.method(m1="m1.safetensors")


def test_an_empty_dataset_exports(tmp_path):
    data = ds.write_dataset(tmp_path / "ds", [], [], [], vocab_size=256, method={"name": "Bytes", "kind": "bytes"})
    for format in FORMATS:
        out = tmp_path / format
        record = export_dataset(data, out, format, progress=False)
        assert record["counts"]["documents"] == record["counts"]["tokens"] == 0
        exported = open_export(out)
        assert len(exported) == 0 and exported.method().decode_batch([]) == []
    # Megatron's memory map refuses an empty file (its own builder writes the same one); its
    # file reader reads the index.
    assert len(megatron_reader()(str(tmp_path / "megatron" / "tokens"), mmap=False)) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet").num_rows == 0
    assert (tmp_path / "bin" / "train.bin").stat().st_size == 0
