"""Where a dataset's documents came from, so that decompress puts them back as they were.

`ncx compress --data` records, beside the shards, one entry per input file (sources.json,
named with its sha256 in the manifest): the file's path relative to the input directory,
how it was read (whole file, one document per line, JSONL records) and how many of the
dataset's documents it gave, in doc_id order. `ncx decompress` then writes:

- a file read whole: the file again, byte for byte (a .gz file gzip-compressed again: the
  same content, though the compressed bytes may differ from the original's);
- a JSONL file: one line {text_field: text} per record, in order (the records' other
  fields are not part of a token dataset, and blank lines are not kept);
- a file read one document per line (--lines): its non-empty lines, each ended by "\\n".

So a directory compressed and decompressed is the same tree (`diff -r` clean) when its
files are read whole. Names come from a file someone may have edited: each must be a plain
relative path (no "..", not absolute), and nothing is ever written outside the output
folder or over an existing file.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

from .corpus import SOURCE_KINDS, Corpus
from .dataset import atomic_write_json, file_sha256

__all__ = ["SOURCES_FILE", "INCOMPLETE_MARKER", "SourceFile", "save_sources", "load_sources", "LayoutWriter"]

SOURCES_FILE = "sources.json"
_FORMAT = ("ncx-sources", 1)
# Present in a decompress output folder from the start until the last file is complete.
INCOMPLETE_MARKER = ".ncx-decompress-incomplete"


@dataclass(frozen=True)
class SourceFile:
    """One input file as recorded: its documents are doc_ids [first, first + documents)."""

    name: str
    kind: str
    gzip: bool
    first: int
    documents: int


def save_sources(directory: Path, corpus: Corpus, text_field: str) -> dict:
    """Write sources.json for a corpus whose documents are the dataset's doc_ids in order;
    returns the manifest entry that names it."""
    record = {"format": _FORMAT[0], "format_version": _FORMAT[1], "text_field": text_field,
              "files": [s.to_json() for s in corpus.sources]}
    path = Path(directory) / SOURCES_FILE
    atomic_write_json(path, record)
    return {"file": SOURCES_FILE, "sha256": file_sha256(path)}


def _check_name(name, where: str) -> str:
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or name.startswith("/") or "\0" in name
            or any(p in ("", ".", "..") for p in parts) or posixpath.normpath(name) != name):
        raise ValueError(f"{where}: file name {name!r} is not a plain relative path inside the output folder")
    return name


def load_sources(dataset) -> tuple[list[SourceFile], str] | None:
    """The recorded input files of a dataset (ncx.dataset.TokenDataset) and the JSONL text
    field, checked against the manifest's sha256 and the dataset's documents; None when the
    dataset records none (the embedded corpus, a dataset written by the dataset API)."""
    entry = dataset.manifest.get("extra", {}).get("sources")
    if not entry:
        return None
    where = str(dataset.path / SOURCES_FILE)
    if not isinstance(entry, dict) or entry.get("file") != SOURCES_FILE or not isinstance(entry.get("sha256"), str):
        raise ValueError(f"{dataset.path}: the manifest's sources entry is mangled (expected file "
                         f"{SOURCES_FILE!r} and its sha256)")
    path = dataset.path / SOURCES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{where}: missing (the manifest names it)")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise ValueError(f"{where}: sha256 checksum mismatch (edited or corrupt)")
    try:
        record = json.loads(raw)
        if (record["format"], record["format_version"]) != _FORMAT:
            raise ValueError(f"format {record['format']!r} version {record['format_version']!r}")
        text_field = record["text_field"]
        files, first = [], 0
        for f in record["files"]:
            if f["kind"] not in SOURCE_KINDS or not isinstance(f["gzip"], bool) or \
                    not isinstance(f["documents"], int) or f["documents"] < 0:
                raise ValueError(f"entry {f!r}")
            files.append(SourceFile(f["name"], f["kind"], f["gzip"], first, f["documents"]))
            first += f["documents"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a valid sources record ({e})") from None
    for f in files:
        _check_name(f.name, where)
    names = {f.name for f in files}
    if len(names) != len(files):
        raise ValueError(f"{where}: a file name appears twice")
    if clash := next((f.name for f in files for k in range(1, f.name.count("/") + 1)
                      if f.name.rsplit("/", k)[0] in names), None):
        raise ValueError(f"{where}: {clash!r} lies inside another recorded file's name")
    if INCOMPLETE_MARKER in names:
        raise ValueError(f"{where}: a file is named {INCOMPLETE_MARKER}, which decompress reserves")
    ids = dataset.documents["doc_id"]
    if first != len(ids) or (len(ids) and (ids.min() != 0 or ids.max() != len(ids) - 1)):
        raise ValueError(f"{where}: records {first} documents, the dataset holds {len(ids)} (doc_ids "
                         f"{int(ids.min()) if len(ids) else '-'}..{int(ids.max()) if len(ids) else '-'})")
    return files, text_field


def _jsonl_line(doc: bytes, text_field: str) -> bytes:
    """A record that corpus.read_corpus reads back as exactly `doc`: text that is not UTF-8
    travels as surrogate-escaped bytes, which JSON writes as \\udcXX escapes."""
    try:
        line = json.dumps({text_field: doc.decode("utf-8")}, ensure_ascii=False)
    except UnicodeDecodeError:
        line = json.dumps({text_field: doc.decode("utf-8", "surrogateescape")})
    return line.encode("utf-8") + b"\n"


class LayoutWriter:
    """Writes documents, given in doc_id order, into the files they came from, under `out`
    (which must be empty). Files are created exclusively: nothing is overwritten. The marker
    INCOMPLETE_MARKER stays until close() finishes the last file."""

    def __init__(self, out: Path, files: list[SourceFile], text_field: str):
        self.out, self.text_field = Path(out), text_field
        self.files = [f for f in files if f.documents or f.kind != "file"]
        self.marker = self.out / INCOMPLETE_MARKER
        self.marker.write_text("ncx decompress is writing this folder; it is incomplete while this file exists\n")
        self.next_doc, self.current, self.handle = 0, -1, None
        self.written: list[str] = []

    def _open(self, f: SourceFile):
        path = self.out.joinpath(*f.name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = open(path, "xb")
        self.written.append(f.name)
        # mtime 0 and no file name in the header: the same bytes on every run.
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if f.gzip else raw, raw

    def _advance_to(self, doc_id: int | None) -> None:
        """Finish the current file, and create every file before the one holding doc_id
        (None: all the rest), so that files without documents exist too."""
        while True:
            f = self.files[self.current] if 0 <= self.current < len(self.files) else None
            if f is not None and doc_id is not None and f.first <= doc_id < f.first + f.documents:
                return
            if self.handle is not None:
                for h in dict.fromkeys(self.handle):
                    h.close()
                self.handle = None
            self.current += 1
            if self.current >= len(self.files):
                if doc_id is not None:
                    raise ValueError(f"document {doc_id} belongs to no recorded file")
                return
            self.handle = self._open(self.files[self.current])

    def write(self, doc_id: int, doc: bytes) -> str:
        """Append document doc_id (the next in order) to its file; returns the file's name."""
        if doc_id != self.next_doc:
            raise ValueError(f"documents must come in doc_id order: got {doc_id}, expected {self.next_doc}")
        self.next_doc += 1
        self._advance_to(doc_id)
        f = self.files[self.current]
        data = doc if f.kind == "file" else doc + b"\n" if f.kind == "lines" else _jsonl_line(doc, self.text_field)
        self.handle[0].write(data)
        return f.name

    def close(self) -> list[str]:
        """Finish every file and drop the marker; returns the names of the files written."""
        self._advance_to(None)
        self.marker.unlink()
        return self.written
