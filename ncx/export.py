"""`ncx export`: a token dataset as the files other training stacks read as they are.

Formats (one document per sequence / row, in the dataset's shard order; no EOD token is put
between documents, since the methods use every token id: the boundaries are in the index):

    megatron   tokens.bin + tokens.idx: Megatron-Core's indexed dataset (MMIDIDX index, one
               sequence per document); --data-path OUT/tokens. Tokens are uint8 / uint16 as in
               the dataset, int32 for larger vocabularies (Megatron has no uint32).
    hf         data/train-00000-of-0000N.parquet, one file per ncx shard, columns input_ids
               (list of the dataset's token dtype), doc_id, byte_count, crc32; read with
               datasets.load_dataset(OUT, split="train"), or ("parquet", data_dir=OUT/data).
    bin        train.bin: all tokens back to back, uint16 (nanoGPT's np.memmap reader) or
               uint32 for vocabularies over 65,536.

Every export also holds a sidecar that makes it decodable back to bytes without the source
dataset: ncx_export.json (the source manifest whole: method spec, vocabulary, M1 hash;
the files and counts), documents.npy (per document, in export order: doc_id, token_offset in
the exported token stream, token_count, byte_count, crc32), exceptions.npy (EqualInfoAC's
exception windows) and, when the dataset carries one, window_vocab.safetensors (decoding then
needs no M1).

Tokens are copied in chunks of CHUNK_TOKENS (Parquet in row groups of about ROW_GROUP_TOKENS),
so memory stays constant apart from the per-document index. ncx_export.json is written last:
a directory without it is an interrupted export (open_export refuses it); export never writes
into a directory that holds files.

    export_dataset("data_gzip", "out/megatron", "megatron")
    exp = open_export("out/megatron")
    method = exp.method()                              # m1="m1.safetensors" for M1 methods
    doc = method.decode(exp.encoded(0, tokens_read_by_any_reader))
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np

from . import __version__
from . import dataset as ds
from .jobs import decoding_method
from .methods import Encoded, Method
from .window_vocab import VOCAB_FILE, dataset_vocab

__all__ = ["export_dataset", "open_export", "ExportedDataset", "export_token_dtype", "FORMATS", "RECORD_FILE",
           "DOCUMENTS_FILE", "EXCEPTIONS_FILE", "add_arguments", "run"]

EXPORT_FORMAT = "ncx-export"
EXPORT_VERSION = 1
FORMATS = ("megatron", "hf", "bin")
RECORD_FILE = "ncx_export.json"
DOCUMENTS_FILE = "documents.npy"
EXCEPTIONS_FILE = "exceptions.npy"
CHUNK_TOKENS = 1 << 24
ROW_GROUP_TOKENS = 1 << 22
ROW_GROUP_ROWS = 1 << 16

# Megatron-Core's MMIDIDX index: magic, version, dtype code, then the tables.
_MMIDIDX_MAGIC = b"MMIDIDX\x00\x00"
_MMIDIDX_HEADER = struct.Struct("<9sQBQQ")
_MEGATRON_DTYPE_CODES = {np.dtype("<u1"): 1, np.dtype("<i4"): 4, np.dtype("<u2"): 8}
_INT32_MAX = (1 << 31) - 1


def export_token_dtype(format: str, vocab_size: int) -> np.dtype:
    """The dtype `format` stores tokens of a vocab_size vocabulary in (ValueError when it has
    none that holds them)."""
    own = ds.token_dtype_for(vocab_size)
    if format == "hf":
        return own
    if format == "bin":
        return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")
    if format == "megatron":
        if own in _MEGATRON_DTYPE_CODES:
            return own
        if vocab_size - 1 > _INT32_MAX:
            raise ValueError(f"vocabulary {vocab_size:,} does not fit Megatron's token types (at most int32: "
                             f"2^31 ids)")
        return np.dtype("<i4")
    raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")


def _data_files(format: str, count: int) -> list[str]:
    """The data file names of an export (relative to it); hf has `count` Parquet files."""
    if format == "megatron":
        return ["tokens.bin", "tokens.idx"]
    if format == "bin":
        return ["train.bin"]
    return [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True)


# ------------------------------------------------------------------------ writing
def _write_token_stream(data: ds.TokenDataset, path: Path, dtype: np.dtype, bar) -> None:
    """All tokens of the dataset, shard after shard, into one flat file of dtype. Read with
    plain reads, not the dataset's memory maps, so that a large export does not keep the
    shards mapped (and counted in its resident memory) until it ends."""
    itemsize = data.token_dtype.itemsize
    with open(path, "wb") as f:
        for shard in data.shards:
            with open(data.path / shard.files["tokens"], "rb") as src:
                while chunk := src.read(CHUNK_TOKENS * itemsize):
                    tokens = np.frombuffer(chunk, dtype=data.token_dtype)
                    f.write(chunk if dtype == data.token_dtype else tokens.astype(dtype).tobytes())
                    bar.update(len(tokens))


def _write_megatron_index(path: Path, token_counts: np.ndarray, dtype: np.dtype) -> None:
    """tokens.idx: one sequence per document, each its own document, so the document indices
    are 0..n."""
    n = len(token_counts)
    pointers = (np.cumsum(token_counts, dtype=np.int64) - token_counts) * dtype.itemsize
    with open(path, "wb") as f:
        f.write(_MMIDIDX_HEADER.pack(_MMIDIDX_MAGIC, 1, _MEGATRON_DTYPE_CODES[dtype], n, n + 1))
        f.write(token_counts.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.arange(n + 1, dtype="<i8").tobytes())


def _megatron_index_size(documents: int) -> int:
    return _MMIDIDX_HEADER.size + documents * (4 + 8) + (documents + 1) * 8


def _row_groups(token_counts: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive document ranges [lo, hi) for Parquet row groups: at most ROW_GROUP_ROWS
    documents and ROW_GROUP_TOKENS tokens, unless one document alone holds more."""
    ranges, lo, filled = [], 0, 0
    for i, count in enumerate(token_counts.tolist()):
        if i > lo and (filled + count > ROW_GROUP_TOKENS or i - lo >= ROW_GROUP_ROWS):
            ranges.append((lo, i))
            lo, filled = i, 0
        filled += count
    if lo < len(token_counts):
        ranges.append((lo, len(token_counts)))
    return ranges


def _write_parquet(data: ds.TokenDataset, out: Path, names: list[str], bar) -> None:
    """One Parquet file per shard (one empty file for a dataset without shards), written a
    bounded row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    token_type = pa.from_numpy_dtype(data.token_dtype)
    schema = pa.schema([("input_ids", pa.list_(token_type)), ("doc_id", pa.int64()),
                        ("byte_count", pa.int64()), ("crc32", pa.uint32())])
    (out / "data").mkdir()
    first_rows = np.cumsum([0] + [s.documents for s in data.shards])  # documents are in shard order
    for shard, name in enumerate(names):
        rows = data.documents[first_rows[shard]:first_rows[shard + 1]] if shard < len(data.shards) else \
            data.documents[:0]
        tokens = data.shard_tokens(shard) if shard < len(data.shards) else np.zeros(0, data.token_dtype)
        # Parquet keeps 16-bit ids in 32-bit columns; zstd takes the zero high halves back out,
        # and a dictionary does not pay on coder output (nearly every id occurs).
        with pq.ParquetWriter(out / name, schema, compression="zstd", use_dictionary=False) as writer:
            for lo, hi in _row_groups(rows["token_count"]):
                part = rows[lo:hi]
                start = int(part["token_offset"][0])
                ends = part["token_offset"] + part["token_count"] - start
                offsets = np.concatenate([[0], ends]).astype(np.int32)
                values = np.ascontiguousarray(tokens[start:start + int(ends[-1])])
                input_ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, token_type))
                writer.write_table(pa.Table.from_arrays(
                    [input_ids, pa.array(part["doc_id"]), pa.array(part["byte_count"]),
                     pa.array(part["crc32"], pa.uint32())], schema=schema))
                bar.update(len(values))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out exists and is not a directory")
    if out.is_dir() and (held := next(out.iterdir(), None)) is not None:
        raise ValueError(f"{out}: --out must be a new or empty directory (it holds {held.name}); "
                         f"export never overwrites")


def export_dataset(dataset: ds.TokenDataset | str | os.PathLike, out: str | os.PathLike, format: str, *,
                   progress: bool = True, verify: bool = True) -> dict:
    """Write the token dataset (a TokenDataset or its path) into the new or empty directory
    `out` in `format` (FORMATS; see the module docstring), with the sidecar that decodes it
    back. With verify the shard files are checked against their sha256 first. Returns the
    export's record (ncx_export.json), written last."""
    data = dataset if isinstance(dataset, ds.TokenDataset) else ds.open_dataset(dataset)
    out = Path(out)
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    dtype = export_token_dtype(format, data.vocab_size)
    counts = data.documents["token_count"]
    if format in ("megatron", "hf") and len(counts) and int(counts.max()) > _INT32_MAX:
        longest = int(data.documents["doc_id"][np.argmax(counts)])
        raise ValueError(f"{data.path}: document {longest} holds {int(counts.max()):,} tokens; {format} stores a "
                         f"document's length as int32 (at most {_INT32_MAX:,})")
    _check_out(out)
    vocab = dataset_vocab(data)  # checked against the manifest before it is copied
    if verify:
        data.verify()
    out.mkdir(parents=True, exist_ok=True)

    data_files = _data_files(format, max(1, len(data.shards)))
    with _progress(data.total_tokens, f"export {format}", progress) as bar:
        if format == "hf":
            _write_parquet(data, out, data_files, bar)
        else:
            _write_token_stream(data, out / data_files[0], dtype, bar)
            if format == "megatron":
                _write_megatron_index(out / data_files[1], counts, dtype)

    documents = np.zeros(len(data.documents), ds.DOC_INDEX_DTYPE)
    for name in ds.DOC_INDEX_DTYPE.names:
        documents[name] = data.documents[name]
    documents["token_offset"] = np.cumsum(counts) - counts
    np.save(out / DOCUMENTS_FILE, documents, allow_pickle=False)
    np.save(out / EXCEPTIONS_FILE, data.exceptions, allow_pickle=False)
    sidecar = [DOCUMENTS_FILE, EXCEPTIONS_FILE]
    if vocab is not None:
        shutil.copyfile(data.path / VOCAB_FILE, out / VOCAB_FILE)
        sidecar.append(VOCAB_FILE)

    record = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "ncx_version": __version__,
        "export_format": format,
        "token_dtype": dtype.str,
        "files": {"data": data_files, "documents": DOCUMENTS_FILE, "exceptions": EXCEPTIONS_FILE,
                  "window_vocab": VOCAB_FILE if vocab is not None else None},
        "sha256": {name: ds.file_sha256(out / name) for name in sidecar},
        "counts": {"documents": len(documents), "tokens": data.total_tokens, "bytes": data.total_bytes,
                   "exceptions": len(data.exceptions), "files": len(data_files) + len(sidecar) + 1},
        "source": {"path": str(data.path), "manifest": data.manifest},
    }
    ds.atomic_write_json(out / RECORD_FILE, record)
    return record


# ------------------------------------------------------------------------ reading
class ExportedDataset:
    """A finished export, opened and checked (open_export): enough to decode the tokens any
    framework reads from it back to the original documents.

    Attributes:
        path: the export directory; record: ncx_export.json as a dict.
        manifest: the source dataset's manifest (method spec, vocab_size, m1_hash, ...).
        format: "megatron", "hf" or "bin"; token_dtype: the dtype the data files hold.
        vocab_size: int; data_files: the data files' paths.
        documents: DOC_INDEX_DTYPE rows in export order (token_offset within the exported
            stream); exceptions: EXCEPTION_DTYPE rows.
    """

    def __init__(self, path: Path, record: dict, documents: np.ndarray, exceptions: np.ndarray):
        self.path, self.record = path, record
        self.manifest = record["source"]["manifest"]
        self.format = record["export_format"]
        self.token_dtype = np.dtype(record["token_dtype"])
        self.vocab_size = int(self.manifest["vocab_size"])
        self.data_files = [path / name for name in record["files"]["data"]]
        self.documents, self.exceptions = documents, exceptions
        self._source_dtype = ds.token_dtype_for(self.vocab_size)
        self._exceptions_by_doc = np.sort(exceptions, order=["doc_id", "window"])

    def __len__(self) -> int:
        return len(self.documents)

    def method(self, m1: str | os.PathLike | None = None, device: str | None = None) -> Method:
        """The method that decodes these tokens, rebuilt from the recorded spec: with the
        export's window vocabulary when it has one, else with the M1 checkpoint `m1` (loaded on
        `device`, default cpu) for methods that code with M1; another M1 is a clear error."""
        return decoding_method(self, m1, device or "cpu")

    def encoded(self, i: int, tokens) -> Encoded:
        """The i-th document of the export (row i of documents, not its doc_id) as the decoder
        takes it: `tokens` as any reader returns them (array or list), with the document's byte
        count, CRC-32 and exception windows. ValueError when the tokens are not that document's."""
        if not 0 <= i < len(self.documents):
            raise IndexError(f"{self.path}: document {i} of an export of {len(self.documents)}")
        row = self.documents[i]
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) != int(row["token_count"]):
            raise ValueError(f"{self.path}: document {i} has {int(row['token_count'])} tokens, got {len(tokens)}")
        if tokens.size and (not np.issubdtype(tokens.dtype, np.integer) or int(tokens.min()) < 0
                            or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"{self.path}: document {i}'s tokens are not ids in [0, {self.vocab_size})")
        doc_id = int(row["doc_id"])
        ids = self._exceptions_by_doc["doc_id"]
        rows = self._exceptions_by_doc[np.searchsorted(ids, doc_id):np.searchsorted(ids, doc_id, side="right")]
        return Encoded(tokens.astype(self._source_dtype), int(row["byte_count"]), int(row["crc32"]),
                       [(int(w), int(s)) for w, s in zip(rows["window"], rows["symbols"])])

    def __repr__(self) -> str:
        return (f"ExportedDataset({str(self.path)!r}, format={self.format!r}, method="
                f"{self.manifest.get('method', {}).get('name')!r}, documents={len(self)})")


def _load_table(path: Path, sha256: str, dtype: np.dtype) -> np.ndarray:
    """A sidecar .npy file, checked against its recorded sha256 before numpy reads it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (part of the export's sidecar)")
    if ds.file_sha256(path) != sha256:
        raise ValueError(f"{path}: does not match its sha256 in {RECORD_FILE} (corrupt or edited)")
    return ds.load_table(path, dtype)


def _read_record(path: Path) -> dict:
    where = path / RECORD_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: export directory not found")
    if not where.is_file():
        raise FileNotFoundError(f"{where}: not found: not an ncx export, or an interrupted one "
                                f"({RECORD_FILE} is written last)")
    try:
        record = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{where}: not an {EXPORT_FORMAT} record")
    if record.get("version") != EXPORT_VERSION:
        raise ValueError(f"{where}: version {record.get('version')!r} is not supported (this ncx reads "
                         f"{EXPORT_VERSION})")
    try:
        format, files, manifest = record["export_format"], record["files"], record["source"]["manifest"]
        expected_dtype = export_token_dtype(format, int(manifest["vocab_size"]))
        fine = (np.dtype(record["token_dtype"]) == expected_dtype
                and len(files["data"]) > 0 and files["data"] == _data_files(format, len(files["data"]))
                and (files["documents"], files["exceptions"]) == (DOCUMENTS_FILE, EXCEPTIONS_FILE)
                and files["window_vocab"] == (VOCAB_FILE if (manifest.get("extra") or {}).get("window_vocab")
                                              else None)
                and all(isinstance(record["counts"][k], int) for k in ("documents", "tokens", "exceptions"))
                and isinstance(manifest.get("method"), dict))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{where}: mangled record ({type(e).__name__}: {e})") from None
    if not fine:
        raise ValueError(f"{where}: mangled record (files, token dtype or counts are not what ncx export writes)")
    return record


def open_export(out: str | os.PathLike) -> ExportedDataset:
    """Open the export at `out` and check its sidecar: FileNotFoundError for a missing
    or unfinished export or a missing file, ValueError for one that is corrupt or edited."""
    path = Path(out)
    record = _read_record(path)
    where, counts, sha = path / RECORD_FILE, record["counts"], record.get("sha256", {})
    if not isinstance(sha, dict):
        raise ValueError(f"{where}: mangled record (sha256)")
    documents = _load_table(path / DOCUMENTS_FILE, sha.get(DOCUMENTS_FILE), ds.DOC_INDEX_DTYPE)
    exceptions = _load_table(path / EXCEPTIONS_FILE, sha.get(EXCEPTIONS_FILE), ds.EXCEPTION_DTYPE)
    token_counts = documents["token_count"]
    if len(documents) != counts["documents"] or int(token_counts.sum()) != counts["tokens"] or \
            len(exceptions) != counts["exceptions"] or \
            (np.cumsum(token_counts) - token_counts != documents["token_offset"]).any():
        raise ValueError(f"{path / DOCUMENTS_FILE}: does not match the counts in {RECORD_FILE}")
    export = ExportedDataset(path, record, documents, exceptions)
    if vocab_file := record["files"]["window_vocab"]:
        if not (path / vocab_file).is_file():
            raise FileNotFoundError(f"{path / vocab_file}: missing (the export's window vocabulary)")
        if ds.file_sha256(path / vocab_file) != sha.get(vocab_file):
            raise ValueError(f"{path / vocab_file}: does not match its sha256 in {RECORD_FILE} (corrupt or edited)")
    for file in export.data_files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing (a data file of the export)")
    sizes = {"bin": [counts["tokens"] * export.token_dtype.itemsize],
             "megatron": [counts["tokens"] * export.token_dtype.itemsize, _megatron_index_size(len(documents))]}
    for file, size in zip(export.data_files, sizes.get(export.format, [])):
        if file.stat().st_size != size:
            raise ValueError(f"{file}: {file.stat().st_size} bytes, the export records {size}")
    return export


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("dataset", metavar="DATASET", help="token dataset directory")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="megatron (tokens.bin/.idx), hf (Parquet for datasets), bin (nanoGPT train.bin)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the export")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the shard files")


def run(args: argparse.Namespace) -> int:
    record = export_dataset(args.dataset, args.out, args.format, progress=not args.no_progress,
                            verify=not args.no_verify)
    c, data = record["counts"], record["files"]["data"]
    shown = f"{len(data)} Parquet files under data/" if args.format == "hf" else ", ".join(data)
    print(f"{args.out}: {args.format} export of {c['documents']:,} documents, {c['tokens']:,} tokens; "
          f"{c['files']} files written ({shown}, the {RECORD_FILE} sidecar)")
    return 0
