"""Text corpora as lists of documents (bytes): the embedded default corpus and
readers for users' files.

The default corpus needs no download: it is the English documentation that
ships inside Python itself, namely the pydoc topics (`pydoc_data.topics`, the
language reference pages `help()` shows) and the docstrings of a fixed list of
standard-library modules (each module's docstring followed by the docstrings
of its public classes, functions and methods): on Python 3.11, 1.36 MB of
English prose with some code, in 225 documents.

It is deterministic for a given Python version and platform: the same
documents, in the same order, with the same train / held-out split, on every
machine. Another Python version ships other documentation (3.11 and 3.12 do
differ), so artifacts record `corpus_hash(...)` of the documents they were
built from, and a mismatch is visible rather than silent.

Documents are bytes and may be any bytes (invalid UTF-8 included); the coder
works on bytes, not text.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import inspect
import json
import os
import warnings
from typing import Iterable, Sequence

__all__ = [
    "SPLITS",
    "SUPPORTED_SUFFIXES",
    "default_corpus",
    "default_documents",
    "split_of",
    "corpus_hash",
    "read_documents",
    "files_under",
]

SPLITS = ("train", "heldout")

# Pure-Python (or documented C) standard-library modules that import without
# side effects on any platform and exist in Python 3.10-3.13. A module that
# fails to import (e.g. sqlite3 built without its C library) is skipped; the
# corpus hash then tells the difference.
_MODULES = """
abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks asyncio.queues
asyncio.streams asyncio.tasks base64 bdb bisect builtins calendar cmd code codecs codeop collections
collections.abc colorsys compileall concurrent.futures._base configparser contextlib copy copyreg csv
dataclasses datetime decimal difflib dis doctest email email.message email.parser email.policy
email.utils enum filecmp fileinput fnmatch fractions ftplib functools getopt gettext glob graphlib
gzip heapq hmac html html.parser http http.client http.cookiejar http.cookies http.server imaplib
importlib importlib.abc importlib.metadata inspect ipaddress itertools json json.decoder
json.encoder keyword linecache locale logging logging.config logging.handlers mailbox math mimetypes
modulefinder netrc numbers operator optparse pathlib pdb pickle pickletools pkgutil plistlib poplib
pprint profile pstats py_compile pyclbr queue quopri random re reprlib rlcompleter runpy sched
secrets selectors shelve shlex shutil smtplib socketserver sqlite3 statistics string stringprep
tabnanny tarfile tempfile textwrap threading timeit token tokenize tomllib trace traceback types
typing unittest unittest.case unittest.mock urllib.parse urllib.request urllib.robotparser uuid
warnings wave weakref xml.dom.minidom xml.etree.ElementTree xml.sax xmlrpc.client zipapp zipfile
zoneinfo
""".split()

# One document in ten is held out, chosen by a hash of its title so that the
# split does not move when documents are added or removed.
_HELDOUT_EVERY = 10


def _title_key(title: str) -> int:
    return int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")


def split_of(title: str) -> str:
    """The split ("train" or "heldout") of the default-corpus document `title`."""
    return "heldout" if _title_key(title) % _HELDOUT_EVERY == 0 else "train"


def _module_text(name: str) -> str | None:
    """A module's docstring, then its public classes' and functions' (and
    their methods') docstrings, each under its name, in sorted name order."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    parts = [inspect.cleandoc(module.__doc__)] if module.__doc__ else []
    members = vars(module)
    for attr in sorted(members):
        obj = members[attr]
        # Only objects defined in this module, so re-exports are not repeated.
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != name:
            continue
        if isinstance(obj.__doc__, str):
            parts.append(f"{attr}\n{inspect.cleandoc(obj.__doc__)}")
        if inspect.isclass(obj):
            for method_name in sorted(vars(obj)):
                method = vars(obj)[method_name]
                if not method_name.startswith("_") and inspect.isroutine(method) and isinstance(method.__doc__, str):
                    parts.append(f"{attr}.{method_name}\n{inspect.cleandoc(method.__doc__)}")
    return "\n\n".join(parts) if parts else None


@functools.lru_cache(maxsize=1)
def default_documents() -> tuple[tuple[str, bytes], ...]:
    """Every default-corpus document as (title, UTF-8 bytes), both splits, in
    the corpus order: sorted by a hash of the title, so that any prefix is a
    fair sample rather than the alphabetically first topics."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions package it separately
        raise ValueError("the default corpus needs the standard module pydoc_data.topics, which this "
                         "Python lacks; pass your own data instead") from e
    docs = {f"topic:{name}": text for name, text in topics.items()}
    # Some modules warn about their own deprecated members when those are read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _MODULES:
            text = _module_text(name)
            if text:
                docs[f"module:{name}"] = text
    order = sorted(docs, key=lambda t: (_title_key(t), t))
    return tuple((t, docs[t].encode("utf-8")) for t in order)


def default_corpus(split: str = "train", max_bytes: int | None = None) -> list[bytes]:
    """The default corpus's documents of one split, in corpus order: "train"
    (about nine documents in ten) or "heldout" (the rest, see split_of).

    max_bytes caps the total size for quick runs: documents are taken in order,
    skipping any that would overshoot the cap, so the result is a deterministic
    sample of at most max_bytes bytes.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    out, total = [], 0
    for title, doc in default_documents():
        if split_of(title) != split:
            continue
        if max_bytes is not None and total + len(doc) > max_bytes:
            continue
        out.append(doc)
        total += len(doc)
    return out


def corpus_hash(docs: Iterable[bytes]) -> str:
    """sha256 (hex) over the documents in order; each is length-prefixed, so
    moving a byte across a document boundary changes the hash."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(len(doc).to_bytes(8, "little"))
        h.update(doc)
    return h.hexdigest()


# ---------------------------------------------------------------- user data
SUPPORTED_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")


def _suffix(path: str) -> str | None:
    lower = path.lower()
    # Longest first, so "a.txt.gz" is gzip-compressed text, not plain ".gz".
    for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(s):
            return s
    return None


def _open(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


def _read_jsonl(path: str, text_field: str) -> list[tuple[str, bytes]]:
    out = []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise ValueError(f"{where}: no field {text_field!r} (use --text-field to pick another)")
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
            try:
                # Lone surrogates U+DC80..U+DCFF stand for raw bytes 0x80..0xFF
                # (Python's surrogateescape convention), so JSONL can carry any
                # bytes losslessly.
                out.append((where, text.encode("utf-8", "surrogateescape")))
            except UnicodeEncodeError as e:
                raise ValueError(f"{where}: field {text_field!r} holds a lone surrogate that is not an "
                                 f"escaped byte ({e.reason})") from None
    return out


def _read_txt(path: str, lines: bool) -> list[tuple[str, bytes]]:
    with _open(path) as f:
        data = f.read()
    if not lines:
        return [(path, data)]
    out = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if line:
            out.append((f"{path}:{lineno}", line))
    return out


def files_under(directory: str) -> list[str]:
    """The files read_documents reads from a directory: those with a supported suffix under
    it, recursively, in sorted path order, hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and _suffix(f)]
    return sorted(found)


def read_documents(paths: str | Sequence[str], text_field: str = "text",
                   lines: bool = False) -> list[tuple[str, bytes]]:
    """Documents from files and directories, as (source, bytes) in input order.

    - .txt: the whole file is ONE document, its raw bytes (no decoding, so any
      bytes survive). With lines=True each non-empty line is a document
      (without its line ending).
    - .jsonl: one JSON object per non-blank line; its `text_field` string,
      encoded as UTF-8 with surrogateescape (see _read_jsonl), is a document.
    - .txt.gz / .jsonl.gz: the same, gzip-compressed.
    - a directory: every file with one of those suffixes under it,
      recursively, in sorted path order (hidden files and folders skipped).

    source names the file (and line, for one-per-line inputs). Raises
    FileNotFoundError for a missing path and ValueError for an unsupported
    suffix, malformed JSONL (with file and line) or no documents at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = files_under(p)
            if not found:
                raise ValueError(f"{p}: directory holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
            files += found
        elif os.path.exists(p):
            if _suffix(p) is None:
                raise ValueError(f"{p}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)} "
                                 f"or a directory)")
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    docs = []
    for f in files:
        docs += _read_jsonl(f, text_field) if _suffix(f).startswith(".jsonl") else _read_txt(f, lines)
    if not docs:
        raise ValueError(f"no documents in {', '.join(map(os.fspath, paths)) or 'the input'}")
    return docs
