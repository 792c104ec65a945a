"""`ncx compress`, `ncx decompress`, `ncx inspect`: corpora to token datasets and back.

compress reads documents (files, or the embedded corpus), builds a method (fitting
SentencePiece / StaticAC on the fit documents, loading M1 for AC / EqualInfoAC), and writes
a token dataset (ncx.dataset) shard by shard. Shard i holds a fixed range of documents,
cut from the input alone (every --shard-docs documents, or after the document that brings
the shard to --shard-bytes raw bytes), so the output depends only on the input and the
method: not on --batch, the number of ranks, or how often the job was killed and restarted.

The output directory holds, besides the dataset's own files, job.json: written (atomically)
before any shard, it records what the shards are made of (method and parameters, M1 hash,
hashes of the data and of the fit documents, the shard rule) and the fitted method itself.
A restarted job checks that it is the same job (another one is an error rather than a
dataset of mixed shards), reuses the recorded method instead of fitting again, skips the
shards that are written and intact (dataset.existing_shards) and writes the rest. A job
killed at any moment and started again ends with the same files, byte for byte, as one
that ran through.

Under torchrun (WORLD_SIZE > 1) the ranks join a gloo process group; rank 0 prepares the
job (fit, job.json, which shards are done) and tells the others; shard i goes to rank
i % WORLD_SIZE; rank 0 waits for all ranks and writes manifest.json.

decompress restores the documents of a dataset into a new or empty directory (it never
overwrites). A dataset made from files (--data) comes back as those files, by their relative
paths (ncx.layout; a directory gives the same tree). Otherwise, or with --flat, each document
is doc-000000.bin, doc-000001.bin, ... (the raw bytes of the document with that doc_id; the
number is at least six digits wide) and, written last, documents.json: the dataset, its
method and M1 hash, and per document its doc_id, file, byte count and CRC-32. Every document
is checked against its recorded length and CRC-32; shard files against their sha256 first
(unless --no-verify).

EqualInfoAC b=16 compresses through M1's window vocabulary by default (ncx.window_vocab,
--engine vocab): built once, kept in the dataset as window_vocab.safetensors and named with its
sha256 in the manifest, so decompress needs no M1 for it; --engine m1 runs M1 in the loop.

inspect prints a dataset's method, vocabulary, M1 hash, counts and shards, and checks the
shard files' sha256 (unless --no-verify).

Python use::

    compress("out/gzip", "gzip", data=["corpus.jsonl"], shard_docs=1000)
    decompress("out/gzip", "restored/")
    print(inspect_dataset("out/gzip"))
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import dataset as ds
from . import ops
from .coder import WINDOW_RULE
from .errors import NcxError
from .corpus import SPLITS, Corpus, corpus_hash, default_corpus, read_corpus
from .layout import LayoutWriter, load_sources, save_sources
from .m1_loader import load_m1_coder
from .methods import (FITTED_METHODS, M1_METHODS, METHOD_NAMES, METHODS, Encoded, EqualInfoACMethod, Method,
                      method_from_name, method_from_spec)
from .window_vocab import VOCAB_FILE, WindowVocab, build_window_vocab, dataset_vocab, load_window_vocab

__all__ = ["compress", "decompress", "inspect_dataset", "shard_ranges", "write_documents", "encoded_documents",
           "decoding_method",
           "add_arguments", "run",
           "JOB_FILE", "DOCUMENTS_FILE", "ENGINES"]

JOB_FILE = "job.json"
DOCUMENTS_FILE = "documents.json"
_JOB_FORMAT = "ncx-compress-job"
_JOB_FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 1 << 22  # 4 MiB of input text per shard

_PARAM_DEFAULTS = {"b": 16, "v": 256, "vocab_size": 8000}
# EqualInfoAC's engines: "vocab" encodes by longest match over the window vocabulary built
# from M1 (the default for b = 16), "m1" runs M1 in the loop (the reference; any b).
ENGINES = ("vocab", "m1")
# The manifest lists this many of the paths compress passed over (and counts them all).
_SKIPPED_LISTED = 1000
_FLAG = {"b": "--b", "v": "--v", "vocab_size": "--vocab-size"}

# Rank 0 waits at a barrier while the slowest rank finishes its shards, which with M1 on a
# CPU can take many hours: gloo's default timeout (30 min) would abort a healthy job.
_DIST_TIMEOUT = datetime.timedelta(days=7)


# ------------------------------------------------------------------------- helpers
def shard_ranges(byte_counts: Sequence[int], shard_docs: int | None = None,
                 shard_bytes: int | None = None) -> list[tuple[int, int]]:
    """Document ranges [start, stop) of the shards, in order, from the documents' lengths
    alone: every shard_docs documents, or (the default, DEFAULT_SHARD_BYTES) a cut after the
    document that brings the shard to at least shard_bytes bytes."""
    if shard_docs is not None and shard_bytes is not None:
        raise ValueError("give --shard-docs or --shard-bytes, not both")
    n = len(byte_counts)
    if shard_docs is not None:
        if shard_docs < 1:
            raise ValueError(f"--shard-docs must be >= 1, got {shard_docs}")
        return [(i, min(i + shard_docs, n)) for i in range(0, n, shard_docs)]
    shard_bytes = DEFAULT_SHARD_BYTES if shard_bytes is None else shard_bytes
    if shard_bytes < 1:
        raise ValueError(f"--shard-bytes must be >= 1, got {shard_bytes}")
    ranges, start, filled = [], 0, 0
    for i, count in enumerate(byte_counts):
        filled += count
        if filled >= shard_bytes:
            ranges.append((start, i + 1))
            start, filled = i + 1, 0
    if start < n:
        ranges.append((start, n))
    return ranges


def _capped(count: int, lengths, max_bytes: int | None) -> list[int]:
    """Indices of the documents kept under a cap of max_bytes bytes: taken in order,
    skipping any that would overshoot (the rule of corpus.default_corpus)."""
    if max_bytes is None:
        return list(range(count))
    if max_bytes <= 0:
        raise ValueError(f"--max-bytes must be positive, got {max_bytes}")
    keep, total = [], 0
    for i, n in enumerate(lengths):
        if total + n <= max_bytes:
            keep.append(i)
            total += n
    return keep


def _load_documents(data: Sequence[str] | None, split: str | None, text_field: str, lines: bool,
                    max_bytes: int | None, what: str, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> tuple[list[bytes], list, Corpus | None]:
    """(documents, manifest input entries, the corpus with its files): from files, or the
    embedded corpus's split (no files: None)."""
    corpus = None
    if data:
        corpus = read_corpus(data, text_field=text_field, lines=lines, include=include, exclude=exclude)
        corpus = corpus.take(_capped(len(corpus.documents), map(len, corpus.documents), max_bytes))
        docs = corpus.documents
        inputs = [s.path for s in corpus.sources]
    else:
        split = split or "train"
        if split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        docs = default_corpus(split, max_bytes=max_bytes)
        # The embedded corpus is no file: its entry carries corpus_hash (sha256 over the
        # length-prefixed documents) in place of a file's sha256.
        name = f"ncx:default-corpus/{split}" + (f"?max_bytes={max_bytes}" if max_bytes else "")
        inputs = [{"name": name, "sha256": corpus_hash(docs), "bytes": sum(map(len, docs))}]
    if not docs:
        raise ValueError(f"{what}: no documents (input {' '.join(map(str, data)) if data else split!r}"
                         + (f" with --max-bytes {max_bytes}" if max_bytes else "") + ")")
    if not any(docs):
        raise ValueError(f"{what}: the {len(docs)} document(s) hold no bytes")
    return docs, inputs, corpus


def _input_summary(corpus: Corpus) -> dict:
    """What compress read and passed over, for the manifest and the summary it prints."""
    return {"files": len(corpus.sources), "file_bytes": sum(s.bytes for s in corpus.sources),
            "skipped_count": len(corpus.skipped),
            "skipped": [{"path": k.path, "reason": k.reason} for k in corpus.skipped[:_SKIPPED_LISTED]],
            "summary": corpus.summary()}


def _method_params(method: str, given: dict) -> dict:
    """The method's parameters: given ones (None = not given) checked against what the
    method takes, the rest from the defaults."""
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    takes = METHODS[method].params
    for name, value in given.items():
        if value is not None and name not in takes:
            raise ValueError(f"{_FLAG[name]} does not apply to method {method} (it takes "
                             f"{', '.join(_FLAG[p] for p in takes) or 'no parameters'})")
    return {p: given.get(p) if given.get(p) is not None else _PARAM_DEFAULTS[p] for p in takes}


def _default_device() -> str:
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


def _load_m1_coder(path: str, device: str | None):
    """(coder, M1Config) of a checkpoint: an integer M1 codes with integers."""
    coder, info = load_m1_coder(path, device=device or _default_device())
    return coder, info["config"]


def _method_dict(method: Method) -> dict:
    """A method as the manifest records it: its display name and its spec()."""
    return {"name": method.name, **method.spec()}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, dynamic_ncols=True, smoothing=0.1)


# ------------------------------------------------------------------ distributed
def _dist_setup() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group). Under torchrun
    (WORLD_SIZE > 1) joins a gloo group unless the caller already has one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # gloo even when M1 runs on GPUs: the ranks only exchange a few small objects.
        dist.init_process_group("gloo", timeout=_DIST_TIMEOUT)
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _broadcast_from_rank0(obj, world: int):
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sendable(error: Exception) -> Exception:
    """The error itself for the other ranks to raise, or, when it does not pickle, an NcxError
    with its type and text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return NcxError(f"{type(error).__name__}: {error}")


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------- compress
def _read_job(out: Path) -> dict | None:
    path = out / JOB_FILE
    if not path.exists():
        return None
    try:
        job = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(job, dict) or job.get("format") != _JOB_FORMAT or "key" not in job or "method" not in job:
        raise ValueError(f"{path}: not an ncx compress job file")
    if job.get("format_version") != _JOB_FORMAT_VERSION:
        raise ValueError(f"{path}: job format_version {job.get('format_version')!r}, this ncx reads "
                         f"{_JOB_FORMAT_VERSION}")
    return job


def _prepare_job(out: Path, key: dict, fit_docs: list[bytes] | None, method_name: str, params: dict,
                 m1_coder) -> tuple[dict, list[int]]:
    """Rank 0's part: the job record (read and checked against `key` when the directory
    holds one, else built, fitted on fit_docs, and written) and the shards already done."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out exists and is not a directory")
    job = _read_job(out)
    if job is None:
        leftovers = sorted(p.name for p in out.glob("shard-*.json")) if out.is_dir() else []
        if (out / ds.MANIFEST).exists():
            leftovers.insert(0, ds.MANIFEST)
        if leftovers:
            raise ValueError(f"{out}: holds dataset files ({leftovers[0]}, ...) but no {JOB_FILE}: not a "
                             f"resumable compress job; choose another --out or empty it")
        method = method_from_name(method_name, train_docs=fit_docs, m1_coder=m1_coder, **params)
        job = {"format": _JOB_FORMAT, "format_version": _JOB_FORMAT_VERSION, "key": key,
               "method": _method_dict(method)}
        out.mkdir(parents=True, exist_ok=True)
        ds.remove_stale_temporaries(out, [JOB_FILE])
        ds.atomic_write_json(out / JOB_FILE, job)
    elif job["key"] != key:
        old = job["key"]
        differ = [k for k in sorted(set(old) | set(key)) if old.get(k) != key.get(k)]
        detail = ""
        if "m1_hash" in differ and old.get("m1_hash") and key.get("m1_hash"):
            detail = f" (its shards were coded with M1 {old['m1_hash'][:16]}..., --m1 is {key['m1_hash'][:16]}...)"
        raise ValueError(f"{out}: holds another compress job, which differs in {', '.join(differ)}{detail}; "
                         f"use another --out or empty it")
    # A kill during the manifest's write leaves its temporary behind; the rewrite clears it.
    ds.remove_stale_temporaries(out, [ds.MANIFEST])
    return job, ds.existing_shards(out, verify=True)


def compress(
    out: str | os.PathLike,
    method: str,
    *,
    b: int | None = None,
    v: int | None = None,
    vocab_size: int | None = None,
    m1: str | None = None,
    data: Sequence[str] | None = None,
    split: str | None = None,
    text_field: str = "text",
    lines: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    fit_data: Sequence[str] | None = None,
    fit_split: str | None = None,
    shard_docs: int | None = None,
    shard_bytes: int | None = None,
    batch: int = 256,
    max_bytes: int | None = None,
    device: str | None = None,
    engine: str | None = None,
    progress: bool = True,
) -> dict | None:
    """Compress documents into the token dataset `out` (see the module docstring); resume
    when `out` holds an unfinished (or finished) run of the same job.

    method: one of METHOD_NAMES; b (equal_info_ac), v (gzip, static_ac, ac, equal_info_ac)
        and vocab_size (sentencepiece) default to 16, 256 and 8000; giving one the method
        does not take is an error.
    m1: M1 checkpoint, required by ac / equal_info_ac (and only accepted by them).
    engine: equal_info_ac only: "vocab" (the default for b = 16) builds M1's window vocabulary
        once (kept in `out` as window_vocab.safetensors, its sha256 in the manifest, so the
        dataset decodes without M1) and encodes by longest match; "m1" codes with M1 in the
        loop. Both give the same tokens.
    data: files or directories (corpus.read_corpus: any file is a document, .jsonl records,
        .gz read decompressed; text_field and lines; include / exclude globs pick files under
        the directories); None: the embedded corpus's `split` (default train). The files'
        names and kinds are kept (sources.json, ncx.layout) so that decompress restores them.
    fit_data / fit_split: what sentencepiece / static_ac are fitted on (default: the embedded
        corpus's train split).
    shard_docs / shard_bytes: the shard rule (shard_ranges). batch: documents per
        encode_batch call (does not change the output). max_bytes: cap on the input (its
        documents in order, skipping any that would overshoot).
    Returns the manifest on rank 0, None on other ranks.
    """
    out = Path(out)
    params = _method_params(method, {"b": b, "v": v, "vocab_size": vocab_size})
    if method in M1_METHODS and not m1:
        raise ValueError(f"method {method} codes with M1: give its checkpoint with --m1")
    if method not in M1_METHODS and m1:
        raise ValueError(f"--m1 does not apply to method {method} (only to {', '.join(M1_METHODS)})")
    if method not in FITTED_METHODS and (fit_data or fit_split):
        raise ValueError(f"--fit-data / --fit-split do not apply to method {method} (only to "
                         f"{', '.join(FITTED_METHODS)})")
    if fit_data and fit_split:
        raise ValueError("give --fit-data or --fit-split, not both")
    if data and split:
        raise ValueError("--split picks a part of the embedded corpus: it does not apply with --data")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    engine = _engine(method, params, engine)

    rank, world, own_group = _dist_setup()
    try:
        if (include or exclude) and not data:
            raise ValueError("--include / --exclude pick files under --data directories: give --data")
        docs, inputs, corpus = _load_documents(data, split, text_field, lines, max_bytes, "input", include, exclude)
        lengths = [len(d) for d in docs]
        ranges = shard_ranges(lengths, shard_docs, shard_bytes)
        m1_coder = m1_config = None
        if m1:
            m1_coder, m1_config = _load_m1_coder(m1, device)
        key = {
            "method": method,
            "params": params,
            "m1_hash": m1_coder.weights_hash if m1_coder else None,
            "data": {"documents": len(docs), "bytes": sum(lengths), "corpus_hash": corpus_hash(docs)},
            "fit": None,
            "shards": {"rule": "docs" if shard_docs else "bytes",
                       "size": shard_docs or shard_bytes or DEFAULT_SHARD_BYTES, "count": len(ranges)},
        }
        fit_inputs = []
        if rank == 0:
            try:
                fit_docs = None
                if method in FITTED_METHODS:
                    fit_docs, fit_inputs, _ = _load_documents(fit_data, fit_split, text_field, lines, None,
                                                              "fit data")
                    key["fit"] = {"documents": len(fit_docs), "bytes": sum(map(len, fit_docs)),
                                  "corpus_hash": corpus_hash(fit_docs)}
                job, done = _prepare_job(out, key, fit_docs, method, params, m1_coder)
            except Exception as e:
                # Tell the other ranks, so they stop with the same error instead of waiting.
                _broadcast_from_rank0(("error", _sendable(e)), world)
                raise
            _broadcast_from_rank0(("ok", job, done), world)
        else:
            msg = _broadcast_from_rank0(None, world)
            if msg[0] == "error":
                raise msg[1]
            _, job, done = msg
            if job["key"]["data"] != key["data"]:
                raise ValueError(f"rank {rank} read other documents than rank 0")
        codec = method_from_spec(job["method"], m1_coder)
        vocab = None
        if engine == "vocab":
            vocab = _job_vocab(out, m1_coder, codec, rank, world, progress)
            codec = method_from_spec(job["method"], m1_coder, vocab=vocab)

        done = set(done)
        todo = [i for i in range(len(ranges)) if i % world == rank and i not in done]
        total = sum(lengths[j] for i in todo for j in range(*ranges[i]))
        desc = f"compress {job['method']['name']}" + (f" [rank {rank}/{world}]" if world > 1 else "")
        with _progress(total, desc, progress) as bar:
            for i in todo:
                _encode_shard(out, i, ranges[i], docs, codec, batch, bar)
        _barrier(world)
        if rank != 0:
            return None
        extra = {
            "shard_rule": key["shards"],
            "fit_inputs": [ds.input_entry(x) for x in fit_inputs],
            "engine": engine,
            "window_vocab": {"file": VOCAB_FILE, "sha256": vocab.sha256} if vocab is not None else None,
            # Where each document came from, so that decompress restores the files (ncx.layout).
            "sources": save_sources(out, corpus, text_field) if corpus is not None else None,
            "input_files": _input_summary(corpus) if corpus is not None else None,
        }
        return _finish(out, codec, job["method"], len(ranges), inputs,
                       m1_config.flops_per_byte if m1_config else 0, extra)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _engine(method: str, params: dict, engine: str | None) -> str | None:
    """The engine of an equal_info_ac job (None for other methods), checked."""
    if method != "equal_info_ac":
        if engine is not None:
            raise ValueError(f"--engine applies to method equal_info_ac only, not {method}")
        return None
    engine = engine or ("vocab" if params["b"] == 16 else "m1")
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "vocab" and params["b"] not in (16, 24):
        raise ValueError(f"--engine vocab tabulates 2^b windows: b must be 16 or 24, got {params['b']}")
    return engine


def _job_vocab(out: Path, m1_coder, codec: EqualInfoACMethod, rank: int, world: int, progress: bool) -> WindowVocab:
    """M1's window vocabulary for the job: the one in `out` when it fits (a restarted job),
    else built (rank 0) and saved there; the other ranks read it."""
    path = out / VOCAB_FILE
    if rank == 0:
        vocab = None
        if path.exists():
            try:
                vocab = load_window_vocab(path)
            except ValueError:
                vocab = None  # a half-written or damaged cache: build it again
            if vocab is not None and (vocab.m1_hash, vocab.b, vocab.precision, vocab.window_rule) != (
                    m1_coder.weights_hash, codec.b, codec.precision, WINDOW_RULE):
                vocab = None
        if vocab is None:
            vocab = build_window_vocab(m1_coder, codec.b, codec.precision, progress=progress)
            vocab.save(path)
    _barrier(world)
    return vocab if rank == 0 else load_window_vocab(path)


def _encode_shard(out: Path, shard: int, doc_range: tuple[int, int], docs: Sequence[bytes], method: Method,
                  batch: int, bar, encoded: Sequence[Encoded] | None = None) -> None:
    """Code documents doc_range (or take their given `encoded` form) and write them as one shard."""
    start, stop = doc_range
    tokens, byte_counts, crcs, exceptions, windows = [], [], [], [], 0
    for j in range(start, stop, batch):
        chunk = docs[j:min(j + batch, stop)]
        coded = encoded[j:j + len(chunk)] if encoded is not None else method.encode_batch(chunk)
        for k, e in enumerate(coded):
            tokens.append(e.tokens)
            byte_counts.append(e.byte_count)
            crcs.append(e.crc32)
            exceptions += [(j + k, w, s) for w, s in e.exceptions]
            windows += method.window_count(e.tokens)
        bar.update(sum(map(len, chunk)))
    ds.write_shard(out, shard, tokens, byte_counts, crcs, range(start, stop), exceptions,
                   vocab_size=method.vocab_size, windows=windows)


def _finish(out: Path, method: Method, method_dict: dict, num_shards: int, inputs, m1_flops_per_byte: float,
            extra: dict) -> dict:
    """Write the manifest of a dataset whose shards 0..num_shards-1 are written, with what
    every dataset records about its method and M1 besides `extra`."""
    records = [ds.load_shard_record(out, i) for i in range(num_shards)]
    coder = getattr(method, "coder", None)
    extra = {
        "m1_flops_per_byte": m1_flops_per_byte if coder is not None else 0,
        # M1's float coding path is bit-exact per kind of device (docs/design.md, "Determinism
        # of M1", level 1): decompress checks it decodes on the same kind. The integer path
        # decodes anywhere.
        "m1_device_type": torch.device(coder.device).type if coder is not None else None,
        "m1_arithmetic": coder.arithmetic if coder is not None else None,
        # Over all shards (other ranks wrote theirs): from the records.
        "windows": sum(r.windows for r in records if r),
        "exceptions": sum(r.exceptions for r in records if r),
        **extra,
    }
    return ds.finalize_manifest(out, method=method_dict, vocab_size=method.vocab_size, num_shards=num_shards,
                                inputs=inputs, m1_hash=method.m1_hash, extra=extra)


def write_documents(out: str | os.PathLike, method: Method, docs: Sequence[bytes], *,
                    encoded: Sequence[Encoded] | None = None, shard_docs: int | None = None,
                    shard_bytes: int | None = None, inputs: Sequence = (), m1_flops_per_byte: float = 0.0,
                    extra: dict | None = None, batch: int = 256, progress: bool = False) -> ds.TokenDataset:
    """Code documents held in memory with a ready method (or take their `encoded` form, one
    per document) into the new dataset `out`, shard by shard, in this process; open it.

    compress's dataset without its job: no fitting, no job record, no resume, no ranks (for
    callers that hold the method and the documents, as `ncx experiment` does). `out` must be
    new or empty; the shard rule is compress's (shard_ranges); extra adds manifest facts."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: must be a new or empty directory")
    if encoded is not None and len(encoded) != len(docs):
        raise ValueError(f"{len(encoded)} encoded documents for {len(docs)} documents")
    ranges = shard_ranges([len(d) for d in docs], shard_docs, shard_bytes)
    out.mkdir(parents=True, exist_ok=True)
    with _progress(sum(map(len, docs)), f"compress {method.name}", progress) as bar:
        for i, doc_range in enumerate(ranges):
            _encode_shard(out, i, doc_range, docs, method, batch, bar, encoded)
    _finish(out, method, _method_dict(method), len(ranges), inputs, m1_flops_per_byte, dict(extra or {}))
    return ds.open_dataset(out)


# ------------------------------------------------------------------- decompress
def _decode_checked(method: Method, encoded: list[Encoded], rows: np.ndarray, where: str) -> list[bytes]:
    """decode_batch, with a failure pinned to the document's doc_id (decode_batch names
    its position in the batch): the batch is decoded again one document at a time."""
    try:
        return method.decode_batch(encoded)
    except ValueError as batch_error:
        for e, row in zip(encoded, rows):
            try:
                method.decode_batch([e])
            except ValueError as err:
                reason = err.reason if isinstance(err, NcxError) else str(err)
                raise ValueError(f"{where}: document {int(row['doc_id'])} (shard {int(row['shard'])}) does not "
                                 f"decode: {reason}") from None
        raise ValueError(f"{where}: documents {int(rows['doc_id'][0])}..{int(rows['doc_id'][-1])} do not "
                         f"decode together: {batch_error}") from None


def decoding_method(data, m1: str | os.PathLike | None = None, device: str | None = None) -> Method:
    """The method that decodes the tokens of `data` (a TokenDataset, or anything with its
    path, manifest and vocab_size, such as an export): rebuilt from the manifest's spec, with
    the window vocabulary it carries, else with the M1 checkpoint `m1` for methods that code
    with M1. Refuses --m1 for methods without M1, M1's float path on another kind of device
    than it coded on, and a method whose vocabulary is not the data's."""
    spec = data.manifest.get("method", {})
    if m1 and spec.get("kind") not in M1_METHODS:
        raise ValueError(f"--m1 does not apply: {data.path} was coded with {spec.get('name')}, "
                         f"which does not use M1")
    coder = _load_m1_coder(m1, device)[0] if m1 else None
    vocab = dataset_vocab(data)
    coded_on = data.manifest.get("extra", {}).get("m1_device_type")
    if vocab is None and coder is not None and coder.arithmetic == "float" and coded_on and \
            torch.device(coder.device).type != coded_on:
        raise ValueError(f"{data.path} was coded with M1 on {coded_on}; M1's float coding path is bit-exact only "
                         f"on the same kind of device: decode with --device {coded_on}")
    method = method_from_spec(spec, coder, vocab=vocab)
    if method.vocab_size != data.vocab_size:
        raise ValueError(f"{data.path}: method {method.name} has vocabulary {method.vocab_size}, the data "
                         f"{data.vocab_size}")
    return method


def encoded_documents(data: ds.TokenDataset, rows: np.ndarray | None = None) -> list[Encoded]:
    """Documents of a dataset as stored (tokens, length, CRC-32, exceptions): what a method's
    decode_batch takes. rows: rows of data.documents (default: all, in doc_id order)."""
    if rows is None:
        rows = data.documents[np.argsort(data.documents["doc_id"], kind="stable")]
    out = []
    for row in rows:
        doc_id, offset = int(row["doc_id"]), int(row["token_offset"])
        tokens = data.shard_tokens(int(row["shard"]))[offset:offset + int(row["token_count"])]
        exc = data.exceptions_of(doc_id) if data.exceptions.size else ()
        out.append(Encoded(np.asarray(tokens), int(row["byte_count"]), int(row["crc32"]),
                           [(int(e["window"]), int(e["symbols"])) for e in exc]))
    return out


def decompress(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    m1: str | None = None,
    device: str | None = None,
    batch: int = 64,
    verify: bool = True,
    flat: bool = False,
    progress: bool = True,
) -> dict:
    """Restore the documents of the dataset at `path` into the new (or empty) directory `out`.

    A dataset compressed from files (--data) is restored as those files, by their relative
    paths (ncx.layout: files read whole come back byte for byte, JSONL records as
    {text_field: text} lines); ncx.layout.INCOMPLETE_MARKER marks the folder until the last file is
    done. Otherwise, or with flat, each document becomes doc-NNNNNN.bin, and documents.json,
    written last, lists them (see the module docstring).
    Every document is checked against its recorded length and CRC-32, and with verify the
    shard files against their sha256 first. Datasets coded with M1 need the same M1
    checkpoint (`m1`), unless they carry M1's window vocabulary (EqualInfoAC b=16, engine
    vocab), which decodes them alone; another M1 is an error naming both hashes. Returns the
    index: per document its doc_id, the file it went to, byte count and CRC-32."""
    data = ds.open_dataset(path)
    method = decoding_method(data, m1, device)
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: --out must be a new or empty directory (decompress never overwrites files)")
    sources = None if flat else load_sources(data)
    if verify:
        data.verify()
    out.mkdir(parents=True, exist_ok=True)

    layout = LayoutWriter(out, *sources) if sources else None
    ids = data.documents["doc_id"]
    width = max(6, len(str(int(ids.max())))) if len(ids) else 6
    entries = []
    with _progress(data.total_bytes, f"decompress {method.name}", progress) as bar:
        in_order = data.documents[np.argsort(ids, kind="stable")]
        for j in range(0, len(in_order), batch):
            rows = in_order[j:j + batch]
            for row, doc in zip(rows, _decode_checked(method, encoded_documents(data, rows), rows, str(data.path))):
                doc_id = int(row["doc_id"])
                if layout is not None:
                    name = layout.write(doc_id, doc)
                else:
                    name = f"doc-{doc_id:0{width}d}.bin"
                    (out / name).write_bytes(doc)
                entries.append({"doc_id": doc_id, "file": name, "bytes": len(doc), "crc32": zlib.crc32(doc)})
            bar.update(int(rows["byte_count"].sum()))
    index = {"format": "ncx-decompressed", "dataset": str(data.path), "method": data.method.get("name"),
             "m1_hash": data.manifest.get("m1_hash"), "layout": "files" if layout else "flat",
             "documents": entries}
    if layout is not None:
        index["files"] = layout.close()
    else:
        # Written last: a directory without it is an interrupted decompression.
        ds.atomic_write_json(out / DOCUMENTS_FILE, index)
    return index


# ---------------------------------------------------------------------- inspect
def _brief_spec(method: dict) -> str:
    """The method's parameters, with the fitted state (a SentencePiece model, StaticAC's
    counts) shown by size."""
    parts = []
    for k, v in method.items():
        if k == "name":
            continue
        if k == "model":
            v = f"<{len(v) * 3 // 4} bytes>"
        elif k == "counts":
            v = f"<{len(v)} counts>"
        elif k == "m1":
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def describe(data: ds.TokenDataset) -> str:
    """A dataset's summary: method, vocabulary, M1, counts, inputs and shards."""
    m = data.manifest
    counts = m.get("counts", {})
    extra = m.get("extra", {})
    lines = [
        f"dataset      {data.path}",
        f"method       {data.method.get('name')} ({_brief_spec(data.method)})",
        f"vocab        {data.vocab_size} (tokens {data.token_dtype.name})",
        f"M1           {m.get('m1_hash') or '-'}"
        + (f" ({extra['m1_flops_per_byte']:,} FLOPs/byte)" if m.get("m1_hash") and "m1_flops_per_byte" in extra
           else ""),
        *([f"M1 coded on  {extra.get('m1_device_type')}, {extra['m1_arithmetic']} arithmetic"
           + (" (the window vocabulary decodes on any device)" if extra.get("window_vocab") else
              " (decodes on any device)" if extra["m1_arithmetic"] == "integer" else " (decode on the same kind)")]
          if m.get("m1_hash") and extra.get("m1_arithmetic") else []),
        *([f"vocabulary   {extra['window_vocab']['file']} (sha256 {extra['window_vocab']['sha256'][:16]}...; "
           f"decodes without M1)"] if isinstance(extra.get("window_vocab"), dict) else []),
        *([f"files        {extra['input_files']['files']:,} input files, restored by decompress "
           f"({extra['input_files'].get('skipped_count', 0):,} skipped when compressing)"]
          if isinstance(extra.get("input_files"), dict) and extra.get("sources") else []),
        f"ncx version  {m.get('ncx_version')}",
        f"documents    {len(data):,}",
        f"bytes        {data.total_bytes:,}",
        f"tokens       {data.total_tokens:,}",
        f"bytes/token  {data.bytes_per_token:.4f}" if data.total_tokens else "bytes/token  -",
        f"windows      {counts.get('windows', 0):,}",
        f"exceptions   {counts.get('exceptions', 0):,}",
    ]
    for entry in m.get("inputs", []):
        lines.append(f"input        {entry['name']} ({entry['bytes']:,} bytes, sha256 {entry['sha256'][:16]}...)")
    lines.append(f"shards       {len(data.shards)}")
    lines.append(f"  {'shard':>5} {'docs':>9} {'bytes':>13} {'tokens':>13} {'windows':>11} {'exceptions':>10}")
    for s in data.shards:
        lines.append(f"  {s.shard:>5} {s.documents:>9,} {s.bytes:>13,} {s.tokens:>13,} {s.windows:>11,} "
                     f"{s.exceptions:>10,}")
    return "\n".join(lines)


def inspect_dataset(path: str | os.PathLike, verify: bool = True) -> str:
    """describe() of the dataset at path, after checking (with verify) every shard file's
    sha256; ValueError naming the first corrupt file."""
    data = ds.open_dataset(path)
    if verify:
        data.verify()
    return describe(data)


# -------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "compress":
        parser.add_argument("--method", required=True, choices=METHOD_NAMES, help="compression method")
        parser.add_argument("--b", type=int, help="equal_info_ac: window size in bits (default 16)")
        parser.add_argument("--v", type=int, choices=(256, 65536),
                            help="token vocabulary of gzip, static_ac, ac, equal_info_ac (default 256)")
        parser.add_argument("--vocab-size", type=int, help="sentencepiece: vocabulary size (default 8000)")
        parser.add_argument("--m1", metavar="CKPT", help="M1 checkpoint (ac, equal_info_ac)")
        parser.add_argument("--engine", choices=ENGINES,
                            help="equal_info_ac: vocab (longest match over M1's window vocabulary, built once; "
                                 "default for b=16) or m1 (M1 in the loop; default for larger b); same tokens")
        parser.add_argument("--data", nargs="+", metavar="PATH",
                            help="files or directories: every file is a document (its bytes), .jsonl holds one "
                                 "per record, .gz is read decompressed; default: the embedded corpus")
        parser.add_argument("--include", action="append", default=[], metavar="GLOB",
                            help="under --data directories, read only files matching GLOB (path relative to the "
                                 "directory, or file name; repeatable)")
        parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                            help="under --data directories, skip files matching GLOB (repeatable)")
        parser.add_argument("--split", choices=SPLITS, help="part of the embedded corpus to compress (default train)")
        parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
        parser.add_argument("--lines", action="store_true",
                            help="each non-empty line of a (non-JSONL) file is a document")
        fit = parser.add_mutually_exclusive_group()
        fit.add_argument("--fit-data", nargs="+", metavar="PATH",
                         help="sentencepiece/static_ac: documents to fit on "
                              "(default: the embedded corpus's train split)")
        fit.add_argument("--fit-split", choices=SPLITS, help="sentencepiece/static_ac: embedded-corpus split to fit on")
        parser.add_argument("--out", required=True, metavar="DIR",
                            help="dataset directory (resumed when it holds this job)")
        shard = parser.add_mutually_exclusive_group()
        shard.add_argument("--shard-docs", type=int, metavar="N", help="documents per shard")
        shard.add_argument("--shard-bytes", type=int, metavar="N",
                           help=f"input bytes per shard, cut at document ends (default {DEFAULT_SHARD_BYTES})")
        parser.add_argument("--batch", type=int, default=256, help="documents per encode call (default 256)")
        parser.add_argument("--max-bytes", type=int, help="cap the input at this many bytes (quick runs)")
    else:
        parser.add_argument("dataset", metavar="DIR", help="token dataset directory")
        parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the shard files")
    if command == "decompress":
        parser.add_argument("--out", required=True, metavar="OUTDIR",
                            help="new or empty directory: the input's files by their paths (or doc-NNNNNN.bin)")
        parser.add_argument("--flat", action="store_true",
                            help="one doc-NNNNNN.bin file per document and documents.json, not the input's files")
        parser.add_argument("--m1", metavar="CKPT", help="the M1 checkpoint the dataset was coded with")
        parser.add_argument("--batch", type=int, default=64, help="documents per decode call (default 64)")
    if command in ("compress", "decompress"):
        parser.add_argument("--device", help="M1's device (default: cuda, the LOCAL_RANK one, when available)")
        parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.command == "compress":
        manifest = compress(
            args.out, args.method, b=args.b, v=args.v, vocab_size=args.vocab_size, m1=args.m1, data=args.data,
            split=args.split, text_field=args.text_field, lines=args.lines, include=args.include,
            exclude=args.exclude, fit_data=args.fit_data,
            fit_split=args.fit_split, shard_docs=args.shard_docs, shard_bytes=args.shard_bytes, batch=args.batch,
            max_bytes=args.max_bytes, device=args.device, engine=args.engine, progress=not args.no_progress)
        if manifest is not None:
            if manifest["extra"].get("input_files"):
                print(f"{args.out}: {manifest['extra']['input_files']['summary']}")
            c = manifest["counts"]
            bpt = manifest["bytes_per_token"]
            print(f"{args.out}: {manifest['method']['name']}, {c['documents']:,} documents, {c['bytes']:,} bytes "
                  f"-> {c['tokens']:,} tokens ({bpt:.4f} bytes/token)" if bpt else
                  f"{args.out}: {manifest['method']['name']}, {c['documents']:,} documents, no tokens")
    elif args.command == "decompress":
        index = decompress(args.dataset, args.out, m1=args.m1, device=args.device, batch=args.batch,
                           verify=not args.no_verify, flat=args.flat, progress=not args.no_progress)
        total = sum(e["bytes"] for e in index["documents"])
        into = (f"into {len(index['files']):,} files by their paths" if index["layout"] == "files"
                else "as doc-N.bin files (documents.json lists them)")
        print(f"{args.out}: {len(index['documents']):,} documents, {total:,} bytes restored and checked (CRC-32), "
              f"{into}")
    elif args.command == "inspect":
        data = ds.open_dataset(args.dataset)
        print(describe(data), flush=True)
        if args.no_verify:
            print("checksums    not verified (--no-verify)")
        else:
            data.verify()
            files = sum(len(s.files) for s in data.shards)
            print(f"checksums    ok ({files} shard files, sha256)")
        print("decoding here: " + ops.build_info().replace("\n", "; "))
    else:
        raise ValueError(f"ncx.jobs has no command {args.command!r}")
    return 0
