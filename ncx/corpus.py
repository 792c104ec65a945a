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

import fnmatch
import functools
import gzip
import hashlib
import importlib
import inspect
import json
import os
import posixpath
import warnings
import zlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

__all__ = [
    "SPLITS",
    "JSONL_SUFFIXES",
    "SOURCE_KINDS",
    "Source",
    "Skipped",
    "Corpus",
    "read_corpus",
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
# Suffixes that change how a file is read; every other file is one document of its raw bytes.
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
GZIP_SUFFIX = ".gz"
# How a file becomes documents: "file" (the whole file, one document), "lines" (one
# document per non-empty line, --lines) or "jsonl" (one per record's text field).
SOURCE_KINDS = ("file", "lines", "jsonl")


@dataclass
class Source:
    """One input file and the documents it gave (the next `documents` of the corpus).

    name is where decompress puts the file back: its path relative to the directory given
    (or, for files given by name and for several inputs, under the input's own base name),
    POSIX separators."""

    path: str
    name: str
    kind: str
    gzip: bool
    documents: int = 0
    bytes: int = 0           # the file's size on disk

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "gzip": self.gzip, "documents": self.documents}


@dataclass
class Skipped:
    """A path under an input directory that was not read, and why."""

    path: str
    reason: str


@dataclass
class Corpus:
    """Documents read from files: documents[i] came from sources[k] for the k whose range
    holds i (sources are in document order)."""

    documents: list[bytes]
    labels: list[str]        # per document: file, and line for line / record inputs
    sources: list[Source]
    skipped: list[Skipped] = field(default_factory=list)

    def take(self, keep: Sequence[int]) -> "Corpus":
        """The corpus with only documents `keep` (increasing indices), each source's count
        shrunk to what it still gives."""
        owner = [k for k, s in enumerate(self.sources) for _ in range(s.documents)]
        counts = [0] * len(self.sources)
        for i in keep:
            counts[owner[i]] += 1
        sources = [replace(s, documents=c) for s, c in zip(self.sources, counts)]
        return Corpus([self.documents[i] for i in keep], [self.labels[i] for i in keep], sources, self.skipped)

    def summary(self) -> str:
        """One paragraph for a person: what was taken, what was skipped and why."""
        took = (f"read {len(self.sources):,} file(s), {sum(s.bytes for s in self.sources):,} bytes on disk, "
                f"as {len(self.documents):,} document(s) of {sum(map(len, self.documents)):,} bytes")
        if not self.skipped:
            return took + "; nothing skipped"
        by_reason: dict[str, list[str]] = {}
        for s in self.skipped:
            by_reason.setdefault(s.reason, []).append(s.path)
        parts = [f"{len(paths):,} {reason} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})"
                 for reason, paths in by_reason.items()]
        return took + "; skipped " + "; ".join(parts)


def _kind(path: str, lines: bool) -> str:
    if path.lower().endswith(JSONL_SUFFIXES):
        return "jsonl"
    return "lines" if lines else "file"


def _open(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(GZIP_SUFFIX) else open(path, "rb")


_BAD_GZIP = (gzip.BadGzipFile, EOFError, zlib.error)


def _bad_gzip(path: str, error: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable gzip file ({error}); a .gz file is read decompressed")


def _read_all(path: str) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except _BAD_GZIP as e:
        raise _bad_gzip(path, e) from None


def _lines(path: str):
    """The file's lines, read one at a time (a large JSONL file is never held whole)."""
    try:
        with _open(path) as f:
            yield from f
    except _BAD_GZIP as e:
        raise _bad_gzip(path, e) from None


def _read_jsonl(path: str, text_field: str) -> list[tuple[str, bytes]]:
    out = []
    for lineno, line in enumerate(_lines(path), 1):
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


def _read_file(path: str, kind: str, text_field: str) -> list[tuple[str, bytes]]:
    if kind == "jsonl":
        return _read_jsonl(path, text_field)
    data = _read_all(path)
    if kind == "file":
        return [(path, data)]
    out = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if line:
            out.append((f"{path}:{lineno}", line))
    return out


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(posixpath.basename(relative), p)
               for p in patterns)


def files_under(directory: str, include: Sequence[str] = (), exclude: Sequence[str] = ()
                ) -> tuple[list[str], list[Skipped]]:
    """The files read from a directory, in sorted path order, and what was passed over.

    Every regular file under it is taken, whatever its name, except hidden ones (a name
    starting with "."; a hidden folder is passed over whole), those not matching any
    `include` glob (when some are given) and those matching an `exclude` glob. A glob matches
    the path relative to the directory ("sub/*.py"; "*" crosses "/") or the file's name.
    Symbolic links to files are read (their target's bytes); links to folders are not
    followed; fifos, sockets and devices are never read."""
    found, skipped = [], []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        for d in sorted(dirs):
            full = os.path.join(root, d)
            if d.startswith("."):
                skipped.append(Skipped(full, "hidden folder(s)"))
            elif os.path.islink(full):
                skipped.append(Skipped(full, "link(s) to a folder, not followed"))
        dirs[:] = [d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d))]
        for f in files:
            full = os.path.join(root, f)
            relative = posixpath.normpath(posixpath.join(*rel_root.split(os.sep), f))
            if f.startswith("."):
                skipped.append(Skipped(full, "hidden file(s)"))
            elif not os.path.isfile(full):
                skipped.append(Skipped(full, "not regular file(s)"))
            elif include and not _matches(relative, include):
                skipped.append(Skipped(full, "not matched by --include"))
            elif exclude and _matches(relative, exclude):
                skipped.append(Skipped(full, "matched by --exclude"))
            else:
                found.append(full)
    return sorted(found), sorted(skipped, key=lambda s: s.path)


def _restore_names(inputs: Sequence[tuple[str, list[str]]]) -> list[list[str]]:
    """Each file's name for decompress, per input: relative to the one directory given; with
    files given by name or several inputs, under each input's base name (made unique by a
    suffix, so that no two inputs share a name)."""
    single_dir = len(inputs) == 1 and os.path.isdir(inputs[0][0])
    used: set[str] = set()
    names = []
    for p, files in inputs:
        base = os.path.basename(os.path.normpath(os.path.abspath(p))) or "input"
        if not single_dir:
            stem, k = base, 2
            while base in used:
                base, k = f"{stem}-{k}", k + 1
            used.add(base)
        relative = [posixpath.join(*os.path.relpath(f, p).split(os.sep)) if os.path.isdir(p) else "" for f in files]
        names.append([r if single_dir else posixpath.join(base, r) if r else base for r in relative])
    return names


def read_corpus(paths: str | os.PathLike | Sequence[str | os.PathLike], text_field: str = "text",
                lines: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Corpus:
    """Documents from files and directories, in input order, with where each came from.

    - Any file is one document: its raw bytes, whatever its extension (no decoding, so any
      bytes survive). With lines=True each non-empty line is a document instead (without
      its line ending).
    - .jsonl: one JSON object per non-blank line; its `text_field` string, encoded as UTF-8
      with surrogateescape (see _read_jsonl), is a document.
    - .gz: read decompressed (x.jsonl.gz is JSONL, x.txt.gz or x.gz text).
    - a directory: every regular file under it (files_under: hidden ones skipped, include
      and exclude globs), recursively, in sorted path order; the Corpus lists what was
      skipped and why.

    Raises FileNotFoundError for a missing path and ValueError for malformed JSONL or gzip
    (with file and line), a directory with no files to read, or no documents at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    inputs: list[tuple[str, list[str]]] = []
    skipped: list[Skipped] = []
    for p in paths:
        if os.path.isdir(p):
            files, passed = files_under(p, include, exclude)
            skipped += passed
            if not files:
                raise ValueError(f"{p}: directory holds no files to read"
                                 + (f" ({len(passed)} skipped: {passed[0].reason}, ...)" if passed else ""))
            inputs.append((p, files))
        elif os.path.isfile(p):
            inputs.append((p, [p]))
        elif os.path.exists(p):
            raise ValueError(f"{p}: not a regular file or directory")
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    docs, labels, sources = [], [], []
    for (_, files), names in zip(inputs, _restore_names(inputs)):
        for f, name in zip(files, names):
            kind = _kind(f, lines)
            read = _read_file(f, kind, text_field)
            sources.append(Source(f, name, kind, f.lower().endswith(GZIP_SUFFIX), len(read), os.path.getsize(f)))
            labels += [label for label, _ in read]
            docs += [doc for _, doc in read]
    if not docs:
        raise ValueError(f"no documents in {', '.join(paths) or 'the input'}")
    return Corpus(docs, labels, sources, skipped)


def read_documents(paths: str | os.PathLike | Sequence[str | os.PathLike], text_field: str = "text",
                   lines: bool = False) -> list[tuple[str, bytes]]:
    """read_corpus's documents as (label, bytes) pairs: label names the file, and the line
    for one-per-line inputs."""
    corpus = read_corpus(paths, text_field=text_field, lines=lines)
    return list(zip(corpus.labels, corpus.documents))
