"""The on-disk token dataset: M2 tokens in shards, a document index, a manifest.

A dataset is a directory::

    manifest.json                  written last: a dataset without it is unfinished
    shard-00000.tokens             flat little-endian tokens (uint8 / uint16 / uint32), np.memmap-able
    shard-00000.index.npy          one row per document (DOC_INDEX_DTYPE)
    shard-00000.exceptions.npy     sparse side table for the decoder (EXCEPTION_DTYPE), often empty
    shard-00000.json               the shard's commit record: counts and sha256 of the three files
    shard-00001.tokens ...

Writing is crash-safe. Every file of a shard goes to a hidden temporary name
(`.shard-00000.tokens.tmp-<pid>-<random>`) and is renamed into place when complete; the
commit record is renamed last, so a shard counts as written only when all its files are. A
killed job leaves temporary files (ignored, and cleared when that shard is written again) and
never a half shard that looks whole. A resumed job asks `existing_shards` which shards are
complete and intact, writes the rest, and calls `finalize_manifest`, which writes
manifest.json (atomically, last).

Typical use::

    for i, docs in enumerate(shards_of_documents):
        if i in done: continue                      # done = existing_shards(out_dir)
        write_shard(out_dir, i, tokens, byte_counts, crc32s, doc_ids, vocab_size=65536)
    finalize_manifest(out_dir, method={"name": "equal_info_ac", "window_bits": 16}, vocab_size=65536)
    ds = open_dataset(out_dir)
    ds.tokens_of(17), ds.bytes_per_token
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DOC_INDEX_DTYPE",
    "EXCEPTION_DTYPE",
    "token_dtype_for",
    "write_shard",
    "existing_shards",
    "finalize_manifest",
    "write_dataset",
    "open_dataset",
    "TokenDataset",
    "ShardInfo",
    "MANIFEST",
    "atomic_write_json",
    "remove_stale_temporaries",
    "load_shard_record",
    "load_table",
    "file_sha256",
    "input_entry",
]

FORMAT_NAME = "ncx-token-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Per document, in the order the shard stores its tokens. doc_id is the document's position
# in the compression job's input (global over all shards); token_offset counts tokens from the
# start of the shard's token file; byte_count and crc32 describe the original text so that a
# decoder can check what it restores.
DOC_INDEX_DTYPE = np.dtype(
    [("doc_id", "<i8"), ("token_offset", "<i8"), ("token_count", "<i8"),
     ("byte_count", "<i8"), ("crc32", "<u4")]
)
# Side information a decoder needs for a few windows (Equal-Info windows that are not
# self-delimiting, docs/design.md, "Equal-Info windows that always decode"): in document doc_id,
# window number `window` holds `symbols` symbols.
EXCEPTION_DTYPE = np.dtype([("doc_id", "<i8"), ("window", "<i8"), ("symbols", "<i8")])

_HASH_CHUNK = 1 << 22


def token_dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned dtype holding tokens in [0, vocab_size)."""
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    if vocab_size <= 1 << 8:
        return np.dtype("<u1")
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise ValueError(f"vocab_size must be at most 2**32, got {vocab_size}")


def _shard_files(shard: int) -> dict[str, str]:
    stem = f"shard-{shard:05d}"
    return {"tokens": f"{stem}.tokens", "index": f"{stem}.index.npy",
            "exceptions": f"{stem}.exceptions.npy"}


def _record_name(shard: int) -> str:
    return f"shard-{shard:05d}.json"


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file, read in chunks (shards can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Run write(file) on a hidden temporary name in path's directory, fsync, rename to path."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """Write obj as indented JSON to path atomically: a reader sees the old file or the
    whole new one, never a part (the dataset's records and manifest, a job's own files)."""
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def remove_stale_temporaries(directory: Path, names: Sequence[str]) -> None:
    """Drop the temporary files that a killed atomic write (atomic_write_json) left in
    directory for these file names. Only those names: ranks writing other shards in the
    same directory are never disturbed."""
    for name in names:
        for tmp in directory.glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- writing
def write_shard(
    directory: str | os.PathLike,
    shard_index: int,
    documents_tokens: Sequence[np.ndarray],
    byte_counts: Sequence[int],
    crc32s: Sequence[int],
    doc_ids: Sequence[int],
    exceptions=None,
    *,
    vocab_size: int,
    windows: int = 0,
) -> "ShardInfo":
    """Write one shard atomically (replacing any earlier version of it).

    documents_tokens: one 1-D integer array (numpy or torch, any int dtype) per document,
        values in [0, vocab_size); they are stored back to back in this order.
    byte_counts, crc32s, doc_ids: one int per document: original length in bytes,
        zlib.crc32 of the original bytes, position of the document in the job's input.
    exceptions: optional rows (doc_id, window, symbols), as a sequence of 3-tuples or an
        array of EXCEPTION_DTYPE; every doc_id must be one of this shard's documents.
    windows: number of coder windows in the shard, summed into the manifest (0 when the
        method has none).
    Returns the shard's ShardInfo (its commit record).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not isinstance(shard_index, (int, np.integer)) or shard_index < 0:
        raise ValueError(f"shard_index must be an int >= 0, got {shard_index!r}")
    dtype = token_dtype_for(vocab_size)
    n = len(documents_tokens)
    for name, seq in (("byte_counts", byte_counts), ("crc32s", crc32s), ("doc_ids", doc_ids)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected one per document ({n})")

    arrays = [np.asarray(t).reshape(-1) for t in documents_tokens]
    counts = np.array([a.size for a in arrays], dtype=np.int64)
    index = np.zeros(n, dtype=DOC_INDEX_DTYPE)
    index["doc_id"] = np.asarray(doc_ids, dtype=np.int64)
    index["token_count"] = counts
    index["token_offset"] = np.cumsum(counts) - counts
    index["byte_count"] = np.asarray(byte_counts, dtype=np.int64)
    crc = np.asarray(crc32s, dtype=np.int64).reshape(n)
    if ((crc < 0) | (crc >= 1 << 32)).any():
        raise ValueError("crc32s must be unsigned 32-bit values")
    index["crc32"] = crc
    if len(np.unique(index["doc_id"])) != n:
        raise ValueError(f"doc_ids of shard {shard_index} are not unique")
    if (index["byte_count"] < 0).any() or (index["doc_id"] < 0).any():
        raise ValueError("byte_counts and doc_ids must be >= 0")

    tokens = np.concatenate(arrays) if n else np.zeros(0, dtype=dtype)
    if tokens.size:
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"tokens must be in [0, {vocab_size}), shard {shard_index} has {lo}..{hi}")
    tokens = tokens.astype(dtype, copy=False)

    exc = _as_exceptions(exceptions)
    if exc.size and not np.isin(exc["doc_id"], index["doc_id"]).all():
        raise ValueError(f"exceptions of shard {shard_index} name documents not in the shard")

    files = _shard_files(shard_index)
    record_path = directory / _record_name(shard_index)
    remove_stale_temporaries(directory, [*files.values(), record_path.name])
    # Drop the old commit record first: from here until the new one lands the shard is
    # "not written", so a kill in between makes a resumed job write it again.
    record_path.unlink(missing_ok=True)
    _atomic_write(directory / files["tokens"], lambda f: f.write(tokens.tobytes()))
    _atomic_write(directory / files["index"], lambda f: np.save(f, index, allow_pickle=False))
    _atomic_write(directory / files["exceptions"], lambda f: np.save(f, exc, allow_pickle=False))

    info = ShardInfo(
        shard=int(shard_index),
        files=files,
        sha256={k: file_sha256(directory / v) for k, v in files.items()},
        documents=n,
        tokens=int(tokens.size),
        bytes=int(index["byte_count"].sum()),
        windows=int(windows),
        exceptions=int(exc.size),
        token_dtype=dtype.str,
        vocab_size=int(vocab_size),
    )
    atomic_write_json(record_path, info.to_json())
    return info


def _as_exceptions(exceptions) -> np.ndarray:
    if exceptions is None:
        return np.zeros(0, dtype=EXCEPTION_DTYPE)
    if isinstance(exceptions, np.ndarray) and exceptions.dtype.names:
        return exceptions.astype(EXCEPTION_DTYPE)
    rows = [tuple(int(x) for x in r) for r in exceptions]
    if any(len(r) != 3 for r in rows):
        raise ValueError("each exception must be a (doc_id, window, symbols) triple")
    return np.array(rows, dtype=EXCEPTION_DTYPE)


@dataclass
class ShardInfo:
    """A shard's commit record (shard-NNNNN.json) and its manifest entry."""

    shard: int
    files: dict[str, str]    # role (tokens, index, exceptions) -> file name in the dataset dir
    sha256: dict[str, str]   # role -> hex digest of that file
    documents: int
    tokens: int
    bytes: int
    windows: int
    exceptions: int
    token_dtype: str         # numpy dtype string, e.g. "<u2"
    vocab_size: int

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: dict, where: str) -> "ShardInfo":
        try:
            info = cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: not a valid shard record ({e!r})") from None
        # File names come from a file someone may have edited: only the names ncx writes, plain
        # names inside the dataset folder, are ever opened.
        if not isinstance(info.shard, int) or info.shard < 0 or info.files != _shard_files(info.shard):
            raise ValueError(f"{where}: shard {info.shard!r} names files {info.files!r}; a shard's files are "
                             f"{_shard_files(info.shard) if isinstance(info.shard, int) and info.shard >= 0 else '?'}")
        return info


def load_shard_record(directory: Path, shard: int) -> ShardInfo | None:
    """The record (shard-NNNNN.json) of a shard in directory, checked; None if the shard
    has none yet. ValueError if the record is not valid JSON or not a valid record."""
    path = directory / _record_name(shard)
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    return ShardInfo.from_json(obj, str(path))


def _check_shard_files(directory: Path, info: ShardInfo, hash_files: bool) -> Exception | None:
    """What is wrong with a shard's files, as the exception to raise (None when nothing is):
    a missing file (FileNotFoundError), a token file whose size does not match the record,
    or, with hash_files, a sha256 mismatch (ValueError)."""
    for role, name in info.files.items():
        if not (directory / name).exists():
            return FileNotFoundError(f"{directory / name}: missing ({role} file of shard {info.shard})")
    tokens_path = directory / info.files["tokens"]
    itemsize = np.dtype(info.token_dtype).itemsize
    if (size := tokens_path.stat().st_size) != info.tokens * itemsize:
        return ValueError(f"{tokens_path}: {size} bytes, but the index says {info.tokens} tokens "
                          f"of {itemsize} bytes ({info.tokens * itemsize} bytes)")
    if hash_files:
        for role, name in info.files.items():
            if file_sha256(directory / name) != info.sha256[role]:
                return ValueError(f"{directory / name}: sha256 checksum mismatch "
                                  f"(shard {info.shard} is corrupt)")
    return None


def existing_shards(directory: str | os.PathLike, verify: bool = True) -> list[int]:
    """Indices of the shards that are completely written (and, with verify, whose files match
    their sha256 checksums), sorted. A resumed job skips these and rewrites the others; a
    corrupt shard is left out with a warning naming the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for record in sorted(directory.glob("shard-*.json")):
        try:
            shard = int(record.name[len("shard-"):-len(".json")])
        except ValueError:
            continue
        try:
            problem = _check_shard_files(directory, load_shard_record(directory, shard), hash_files=verify)
        except ValueError as e:
            problem = e
        if problem:
            warnings.warn(f"shard {shard} will be rewritten: {problem}", stacklevel=2)
        else:
            done.append(shard)
    return done


def load_table(path: Path, dtype: np.dtype) -> np.ndarray:
    """A 1-D .npy table of `dtype` (the document index, the exceptions), read without pickle;
    ValueError naming the file when it is unreadable or of another shape or dtype."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable ({e})") from None
    if arr.dtype != dtype or arr.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D array of {dtype}, got {arr.ndim}-D {arr.dtype}")
    return arr


def input_entry(item) -> dict:
    """A manifest "inputs" entry (name, sha256, bytes): a path is hashed here; a dict with
    those keys is taken as is, for inputs that are not files (an embedded corpus, a generated
    one)."""
    if isinstance(item, dict):
        missing = {"name", "sha256", "bytes"} - item.keys()
        if missing:
            raise ValueError(f"input entry {item!r} lacks {sorted(missing)}")
        return dict(item)
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    return {"name": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size}


def finalize_manifest(
    directory: str | os.PathLike,
    *,
    method: dict,
    vocab_size: int,
    num_shards: int | None = None,
    inputs: Sequence[str | os.PathLike | dict] = (),
    m1_hash: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Check that shards 0..num_shards-1 are all written and consistent, then write
    manifest.json atomically. Returns the manifest.

    method: the compression method, {"name": ..., **parameters}; must be JSON-serializable.
    num_shards: how many shards the job wrote; None takes the shards found, which must then
        be numbered 0..n-1 without gaps.
    inputs: the job's input files (hashed with sha256 here) or ready entries
        {"name", "sha256", "bytes"}.
    m1_hash: hash of M1's weights for methods that use M1 (decoding checks it).
    extra: free-form JSON-serializable facts (e.g. "m1_flops_per_byte", timings).
    Shards are checked for presence and size, not rehashed (existing_shards and
    TokenDataset.verify do that).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: dataset directory not found")
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        raise ValueError(f"method must be a dict with a 'name' string, got {method!r}")
    dtype = token_dtype_for(vocab_size)
    found = sorted(int(p.name[6:11]) for p in directory.glob("shard-[0-9][0-9][0-9][0-9][0-9].json"))
    if num_shards is None:
        num_shards = len(found)
    shards = []
    for i in range(num_shards):
        info = load_shard_record(directory, i)
        if info is None:
            raise ValueError(f"{directory / _record_name(i)}: shard {i} of {num_shards} is not written")
        if problem := _check_shard_files(directory, info, hash_files=False):
            raise problem
        if info.vocab_size != vocab_size or np.dtype(info.token_dtype) != dtype:
            raise ValueError(f"{directory / _record_name(i)}: vocab {info.vocab_size} "
                             f"({info.token_dtype}), expected {vocab_size} ({dtype.str})")
        shards.append(info)
    if extra_shards := [i for i in found if i >= num_shards]:
        raise ValueError(f"{directory}: shards {extra_shards} beyond num_shards={num_shards}")

    ids = np.concatenate([np.load(directory / s.files["index"])["doc_id"] for s in shards]
                         or [np.zeros(0, np.int64)])
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{directory}: a doc_id appears in more than one shard")

    total = {k: sum(getattr(s, k) for s in shards)
             for k in ("documents", "bytes", "tokens", "windows", "exceptions")}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ncx_version": __version__,
        "method": dict(method),
        "vocab_size": int(vocab_size),
        "token_dtype": dtype.str,
        "m1_hash": m1_hash,
        "inputs": [input_entry(x) for x in inputs],
        "counts": {**total, "shards": len(shards)},
        "bytes_per_token": total["bytes"] / total["tokens"] if total["tokens"] else None,
        "shards": [s.to_json() for s in shards],
        "extra": dict(extra or {}),
    }
    try:
        json.dumps(manifest)
    except TypeError as e:
        raise ValueError(f"method and extra must be JSON-serializable: {e}") from None
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def write_dataset(
    directory: str | os.PathLike,
    documents_tokens: Sequence[np.ndarray],
    byte_counts: Sequence[int],
    crc32s: Sequence[int],
    *,
    vocab_size: int,
    method: dict,
    shard_tokens: int = 1 << 26,
    exceptions=None,
    windows: Sequence[int] | None = None,
    **manifest_kwargs,
) -> "TokenDataset":
    """Write a whole dataset in one call (documents in input order, doc_id = position) and
    open it. Shards are cut at document boundaries once they hold >= shard_tokens tokens.

    exceptions: rows (doc_id, window, symbols) over the whole dataset; windows: optional
    number of windows per document. manifest_kwargs go to finalize_manifest.
    """
    n = len(documents_tokens)
    if len(byte_counts) != n or len(crc32s) != n or (windows is not None and len(windows) != n):
        raise ValueError("byte_counts, crc32s (and windows) need one entry per document")
    exc = _as_exceptions(exceptions)
    bounds, filled = [0], 0
    for i, doc in enumerate(documents_tokens[:-1]):
        filled += np.asarray(doc).size
        if filled >= shard_tokens:
            bounds.append(i + 1)
            filled = 0
    bounds.append(n)
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        write_shard(
            directory, shard, documents_tokens[start:stop], byte_counts[start:stop],
            crc32s[start:stop], range(start, stop),
            exc[(exc["doc_id"] >= start) & (exc["doc_id"] < stop)],
            vocab_size=vocab_size,
            windows=int(np.sum(windows[start:stop])) if windows is not None else 0,
        )
    finalize_manifest(directory, method=method, vocab_size=vocab_size, num_shards=len(bounds) - 1,
                      **manifest_kwargs)
    return open_dataset(directory)


# ------------------------------------------------------------------------------- reading
class TokenDataset:
    """A finished token dataset, opened read-only. Token arrays are np.memmap views.

    Attributes:
        path: the dataset directory.
        manifest: manifest.json as a dict.
        vocab_size: int; token_dtype: np.dtype (little-endian unsigned).
        method: the compression method dict ({"name": ..., parameters}).
        shards: list[ShardInfo] in shard order.
        documents: structured array over all documents, in shard order, with the fields of
            DOC_INDEX_DTYPE plus "shard" (token_offset is within that shard's file).
        exceptions: EXCEPTION_DTYPE array over all shards.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: dataset directory not found")
        if not self.path.is_dir():
            raise NotADirectoryError(f"{self.path}: not a dataset directory")
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{mpath}: manifest not found (is the dataset finished? "
                                    f"finalize_manifest writes it last)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{mpath}: invalid JSON ({e})") from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
            raise ValueError(f"{mpath}: not an {FORMAT_NAME} manifest (format = "
                             f"{m.get('format') if isinstance(m, dict) else m!r})")
        if m.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{mpath}: format_version {m.get('format_version')!r} is not "
                             f"supported (this ncx reads {FORMAT_VERSION})")
        try:
            self.vocab_size = int(m["vocab_size"])
            self.token_dtype = np.dtype(m["token_dtype"])
            self.method = m["method"]
            self.shards = [ShardInfo.from_json(s, f"{mpath} shard entry") for s in m["shards"]]
            counts = m["counts"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{mpath}: manifest lacks or mangles {e}") from None
        if self.token_dtype != token_dtype_for(self.vocab_size):
            raise ValueError(f"{mpath}: token_dtype {self.token_dtype.str} does not match vocab_size "
                             f"{self.vocab_size} (expected {token_dtype_for(self.vocab_size).str})")

        indices, excs = [], []
        for s in self.shards:
            if s.vocab_size != self.vocab_size or np.dtype(s.token_dtype) != self.token_dtype:
                raise ValueError(f"{mpath}: shard {s.shard} has vocab {s.vocab_size} "
                                 f"({s.token_dtype}), the dataset {self.vocab_size} ({self.token_dtype.str})")
            if problem := _check_shard_files(self.path, s, hash_files=False):
                raise problem
            index = self._load_npy(s.files["index"], DOC_INDEX_DTYPE)
            if len(index) != s.documents or int(index["token_count"].sum()) != s.tokens or (
                    len(index) and (np.cumsum(index["token_count"]) - index["token_count"]
                                    != index["token_offset"]).any()):
                raise ValueError(f"{self.path / s.files['index']}: index does not match the token "
                                 f"file ({s.tokens} tokens, {s.documents} documents)")
            full = np.zeros(len(index), dtype=DOC_INDEX_DTYPE.descr + [("shard", "<i8")])
            for name in DOC_INDEX_DTYPE.names:
                full[name] = index[name]
            full["shard"] = s.shard
            indices.append(full)
            excs.append(self._load_npy(s.files["exceptions"], EXCEPTION_DTYPE))
        self.documents = np.concatenate(indices) if indices else np.zeros(
            0, DOC_INDEX_DTYPE.descr + [("shard", "<i8")])
        self.exceptions = np.concatenate(excs) if excs else np.zeros(0, EXCEPTION_DTYPE)
        if (len(self.documents), self.total_tokens, self.total_bytes) != (
                counts.get("documents"), counts.get("tokens"), counts.get("bytes")):
            raise ValueError(f"{mpath}: counts do not match the shards")
        self._order = np.argsort(self.documents["doc_id"], kind="stable")
        self._exceptions_sorted = np.sort(self.exceptions, order=["doc_id", "window"])
        self._memmaps: dict[int, np.ndarray] = {}

    def _load_npy(self, name: str, dtype: np.dtype) -> np.ndarray:
        return load_table(self.path / name, dtype)

    # --- sizes
    def __len__(self) -> int:
        return len(self.documents)

    @property
    def total_tokens(self) -> int:
        return int(self.documents["token_count"].sum())

    @property
    def total_bytes(self) -> int:
        """Raw (uncompressed) bytes of all documents."""
        return int(self.documents["byte_count"].sum())

    @property
    def bytes_per_token(self) -> float:
        """Raw bytes over tokens: the compression rate the paper tabulates (e.g. 5.31)."""
        if not self.total_tokens:
            raise ValueError(f"{self.path}: dataset has no tokens")
        return self.total_bytes / self.total_tokens

    # --- tokens
    def shard_tokens(self, shard: int) -> np.ndarray:
        """All tokens of one shard: read-only np.memmap [tokens] of token_dtype."""
        if shard not in self._memmaps:
            s = self.shards[shard]
            if s.tokens == 0:  # numpy cannot memory-map an empty file
                self._memmaps[shard] = np.zeros(0, dtype=self.token_dtype)
            else:
                self._memmaps[shard] = np.memmap(self.path / s.files["tokens"], dtype=self.token_dtype,
                                                 mode="r", shape=(s.tokens,))
        return self._memmaps[shard]

    def iter_shards(self) -> Iterator[np.ndarray]:
        """Each shard's tokens as a read-only np.memmap, in shard order (the concatenation is
        the dataset's token stream, documents in shard order)."""
        for i in range(len(self.shards)):
            yield self.shard_tokens(i)

    def _row(self, doc_id: int) -> np.void:
        ids = self.documents["doc_id"]
        k = np.searchsorted(ids, doc_id, sorter=self._order)
        if k >= len(ids) or ids[self._order[k]] != doc_id:
            raise KeyError(f"{self.path}: no document with doc_id {doc_id}")
        return self.documents[self._order[k]]

    def tokens_of(self, doc_id: int) -> np.ndarray:
        """The tokens of one document: read-only view [token_count] of token_dtype."""
        row = self._row(doc_id)
        start = int(row["token_offset"])
        return self.shard_tokens(int(row["shard"]))[start:start + int(row["token_count"])]

    def exceptions_of(self, doc_id: int) -> np.ndarray:
        """The exception rows (EXCEPTION_DTYPE) of one document, sorted by window. A lookup in
        the table sorted once, not a scan: decompress asks for every document."""
        self._row(doc_id)
        ids = self._exceptions_sorted["doc_id"]
        return self._exceptions_sorted[np.searchsorted(ids, doc_id):np.searchsorted(ids, doc_id, side="right")]

    def verify(self) -> None:
        """Check every shard file against its sha256 in the manifest; ValueError naming the
        first corrupt or missing file."""
        for s in self.shards:
            if problem := _check_shard_files(self.path, s, hash_files=True):
                raise problem

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.path)!r}, method={self.method.get('name')!r}, "
                f"vocab_size={self.vocab_size}, documents={len(self)}, tokens={self.total_tokens}, "
                f"bytes={self.total_bytes})")


def open_dataset(path: str | os.PathLike) -> TokenDataset:
    """Open a finished dataset directory (FileNotFoundError / ValueError naming the file and
    the problem when it is missing, unfinished, inconsistent or of an unknown format)."""
    return TokenDataset(path)
