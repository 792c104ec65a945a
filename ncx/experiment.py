"""`ncx experiment`: the paper's comparison on one corpus, end to end.

For every compression method: compress the train and held-out documents into token datasets,
decode the held-out dataset back (as stored) and check it matches the input byte for byte; then,
for every M2 size, train M2 on the train tokens and score it on the held-out tokens. The result
is the paper's table (method, v, bytes/token, M2 size, non-embedding parameters, held-out
bits/byte, uniform bits/byte, inference FLOPs/byte, training tokens/s) and its main figure
(bits/byte against inference FLOPs/byte, one line per method across M2 sizes)::

    OUT/results.md     the table, in markdown
    OUT/results.json   every number, plus the compression and decode checks per method
    OUT/results.png    the figure
    OUT/data/<method>/{train,heldout}/   token datasets (ncx.dataset), reused when they match
    OUT/m2/<method>/<size>/              M2 runs (checkpoint.pt, summary.json), resumed when they match

Methods are named as on the command line: bytes, sentencepiece[v=2048], gzip[v=256],
static_ac[v=256], ac[v=256], equal_info_ac[b=16,v=65k] (v=65k is 65,536). Methods that differ
only in v cut the same bit stream into 8- or 16-bit tokens, so the v=65,536 tokens are derived
from the v=256 ones instead of coding the text twice (the held-out check still decodes them
with the v=65,536 method).

Measures are the paper's (ncx.metrics): bits/byte over the held-out tokens, uniform bits/byte
= log2(v) / bytes-per-token (the compressor's own rate: an M2 that learned nothing stays
there), FLOPs/byte = 2 x M2 non-embedding parameters / bytes-per-token + M1's FLOPs/byte for the
methods that code with M1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import metrics
from .corpus import corpus_hash, default_corpus, read_documents, split_of
from .dataset import TokenDataset, open_dataset
from .jobs import encoded_documents, write_documents
from .m1 import M1
from .m1_loader import load_m1_coder
from .m2 import PRESETS, preset
from .methods import (BIT_STREAM_METHODS, M1_METHODS, METHOD_NAMES, METHODS, DecodeError, Encoded,
                      EqualInfoACMethod, Method, bytes_to_tokens, method_from_name, method_from_spec,
                      tokens_to_bytes)
from .train_m2 import train_m2
from .window_vocab import build_window_vocab, load_window_vocab

__all__ = ["MethodRequest", "parse_method", "parse_methods", "chunk_documents", "default_threads",
           "run_experiment", "results_table", "plot_results", "add_arguments", "run"]

DATASET_KEY = "experiment"   # manifest extra entry identifying what a dataset was made from
_SHARD_BYTES = 1 << 26       # input bytes per shard: one shard for corpora of the demo's size
RUN_KEY_FILE = "experiment.json"


# ------------------------------------------------------------------------- method names
@dataclass(frozen=True)
class MethodRequest:
    """A method as asked for: kind (one of methods.METHOD_NAMES) and its parameters."""

    kind: str
    params: tuple[tuple[str, int], ...] = ()   # sorted (name, value) pairs

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    @property
    def label(self) -> str:
        """Canonical text, e.g. equal_info_ac[b=16,v=65536]."""
        inner = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.kind}[{inner}]" if inner else self.kind

    @property
    def slug(self) -> str:
        """A directory name, e.g. equal_info_ac-b16-v65536."""
        return "-".join([self.kind] + [f"{k.replace('_', '')}{v}" for k, v in self.params])

    def with_v(self, v: int) -> "MethodRequest":
        return MethodRequest(self.kind, tuple(sorted({**self.kwargs, "v": v}.items())))


def _parse_value(text: str, where: str) -> int:
    text = text.strip().lower()
    if text in ("65k", "64k"):
        return 65536
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: value {text!r} is not an integer (or 65k)") from None


def parse_method(text: str) -> MethodRequest:
    """'equal_info_ac[b=16,v=65k]' -> MethodRequest('equal_info_ac', (('b', 16), ('v', 65536))).
    sentencepiece[v=N] means a vocabulary of N pieces (vocab_size)."""
    m = re.fullmatch(r"\s*([a-z_0-9]+)\s*(?:\[(.*)\])?\s*", text)
    if not m:
        raise ValueError(f"method {text!r}: expected NAME or NAME[key=value,...], e.g. equal_info_ac[b=16,v=256]")
    kind, inner = m.group(1), m.group(2)
    if kind not in METHOD_NAMES:
        raise ValueError(f"method {text!r}: unknown name {kind!r}; choose from {', '.join(METHOD_NAMES)}")
    params: dict[str, int] = {}
    for item in (inner or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"method {text!r}: parameter {item.strip()!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        key = METHODS[kind].aliases.get(key, key)
        params[key] = _parse_value(value, f"method {text!r}")
    return MethodRequest(kind, tuple(sorted(params.items())))


def parse_methods(text: str) -> list[MethodRequest]:
    """A comma-separated list (commas inside [...] belong to a method)."""
    parts = [p for p in re.split(r",(?![^\[]*\])", text) if p.strip()]
    if not parts:
        raise ValueError("no methods given")
    return [parse_method(p) for p in parts]


# ------------------------------------------------------------------------- data helpers
def chunk_documents(docs: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Cut documents into pieces of at most max_bytes, each ending after the last newline of
    its second half when there is one (else at max_bytes). The coders run one stream per
    document, so many short pieces code in parallel where a few long documents would not;
    the paper, too, coded fixed-length stretches of text. Empty documents are dropped."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    out = []
    for doc in docs:
        start = 0
        while start < len(doc):
            stop = min(start + max_bytes, len(doc))
            if stop < len(doc):
                cut = doc.rfind(b"\n", start + max_bytes // 2, stop)
                stop = cut + 1 if cut >= 0 else stop
            out.append(doc[start:stop])
            start = stop
    return out


def default_threads() -> int:
    """Torch intra-op threads for CPU work: half the cores, at most 8. On a small shared
    machine one thread is much faster than two that fight other processes for the cores
    (each parallel region waits for its slowest, descheduled thread)."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


def _log_default(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------- datasets
def _write_split(directory: Path, method: Method, docs: Sequence[bytes], encoded: Sequence[Encoded],
                 key: dict, m1_flops_per_byte: float) -> TokenDataset:
    if directory.exists():
        shutil.rmtree(directory)  # a stale or unfinished dataset: its shard count may differ
    return write_documents(
        directory, method, docs, encoded=encoded, shard_bytes=_SHARD_BYTES, m1_flops_per_byte=m1_flops_per_byte,
        inputs=[{"name": f"{key['split']} documents", "sha256": key["docs_sha256"],
                 "bytes": sum(len(d) for d in docs)}],
        extra={DATASET_KEY: key})


def _matching_dataset(directory: Path, key: dict) -> TokenDataset | None:
    """The dataset at directory if it is finished and was made from exactly `key`."""
    try:
        ds = open_dataset(directory)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return ds if ds.manifest.get("extra", {}).get(DATASET_KEY) == key else None


def _retokenize(encoded: Sequence[Encoded], v_from: int, v_to: int) -> list[Encoded]:
    """The same bit streams cut into v_to tokens (exact: both come from one code)."""
    return [Encoded(bytes_to_tokens(tokens_to_bytes(e.tokens, v_from), v_to), e.byte_count, e.crc32,
                    list(e.exceptions)) for e in encoded]


@dataclass
class _Prepared:
    request: MethodRequest
    method: Method
    train: TokenDataset
    heldout: TokenDataset
    fresh: bool                     # datasets written in this run (not reused)
    info: dict = field(default_factory=dict)


def _check_heldout(method: Method, heldout_ds: TokenDataset, heldout_docs: Sequence[bytes]) -> str | None:
    """Decode the held-out dataset as stored; None when it gives back exactly the documents,
    else what is wrong."""
    try:
        decoded = method.decode_batch(encoded_documents(heldout_ds))
    except DecodeError as e:
        return str(e)
    bad = [i for i, (a, b) in enumerate(zip(decoded, heldout_docs)) if a != b]
    bad += list(range(len(decoded), len(heldout_docs)))
    return f"{len(bad)} of {len(heldout_docs)} documents differ (first: {bad[0]})" if bad else None


def _reusable(found: dict, heldout_docs, m1_coder, log, vocab=None) -> tuple[Method, str | None, float] | None:
    """The method of matching datasets found on disk, their held-out check and its seconds, if
    the files are intact and the held-out data decodes with this ncx; else None (recompress)."""
    if not all(found.values()):
        return None
    try:
        method = method_from_spec(found["train"].method, m1_coder, vocab=vocab)
    except ValueError as e:  # e.g. Equal-Info windows of an older window rule
        log(f"[compress] {found['train'].method.get('kind')}: stored dataset was made by another ncx ({e}): "
            f"compressing again")
        return None
    try:
        for ds in found.values():
            ds.verify()
    except (ValueError, FileNotFoundError) as e:
        log(f"[compress] {method.name}: stored dataset is damaged ({e}): compressing again")
        return None
    t0 = time.perf_counter()
    problem = _check_heldout(method, found["heldout"], heldout_docs)
    if problem is not None:
        # Made by another version of the coder or of M1's coding path: not this method's tokens.
        log(f"[compress] {method.name}: stored dataset does not decode with this ncx ({problem}): "
            f"compressing again")
        return None
    return method, problem, time.perf_counter() - t0


# Held-out bytes that EqualInfoAC also codes with M1 in the loop, to show the window vocabulary
# gives M1's tokens on this run's M1 (the tests prove it in general).
_VOCAB_CHECK_BYTES = 16_000


def _window_vocab(req: MethodRequest, m1_coder, data_dir: Path, log):
    """EqualInfoAC b=16's window vocabulary for this M1 (built once, kept in data_dir), or None
    for other methods."""
    if req.kind != "equal_info_ac" or dict(req.kwargs).get("b", 16) != 16 or m1_coder is None:
        return None
    path = data_dir / f"window-vocab-b16-{m1_coder.weights_hash[:16]}.safetensors"
    try:
        return load_window_vocab(path)
    except (FileNotFoundError, ValueError):
        pass
    t0 = time.perf_counter()
    vocab = build_window_vocab(m1_coder, b=16)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(path)
    log(f"[compress] window vocabulary b=16 built from M1 in {time.perf_counter() - t0:.1f} s ({path.name})")
    return vocab


def _check_vocab_against_m1(method: Method, docs: Sequence[bytes], log) -> None:
    """The first held-out documents (about _VOCAB_CHECK_BYTES) coded again with M1 in the loop:
    the tokens must be the window vocabulary's."""
    sample, size = [], 0
    for d in docs:
        if size >= _VOCAB_CHECK_BYTES:
            break
        sample.append(d[:_VOCAB_CHECK_BYTES - size])
        size += len(sample[-1])
    by_m1 = EqualInfoACMethod(method.coder, method.b, method.vocab_size, method.precision).encode_batch(sample)
    by_table = method.encode_batch(sample)
    if any(not np.array_equal(a.tokens, b.tokens) for a, b in zip(by_m1, by_table)):
        raise RuntimeError(f"{method.name}: the window vocabulary's tokens differ from M1's on held-out text")
    log(f"[compress] {method.name}: window vocabulary == M1 in the loop on {size:,} held-out bytes "
        f"({sum(len(e.tokens) for e in by_table):,} tokens)")


def _prepare_method(req: MethodRequest, train_docs, heldout_docs, m1_coder, m1_flops: float, data_dir: Path,
                    shared: dict, log) -> _Prepared:
    """Compress both splits with one method (or reuse matching, intact datasets that decode
    with this ncx) and check that the stored held-out dataset decodes back to the documents
    exactly."""
    uses_m1 = req.kind in M1_METHODS
    m1_hash = m1_coder.weights_hash if uses_m1 and m1_coder is not None else None
    flops = m1_flops if uses_m1 else 0.0
    keys = {split: {"method": req.label, "m1": m1_hash, "split": split, "docs_sha256": corpus_hash(docs)}
            for split, docs in (("train", train_docs), ("heldout", heldout_docs))}
    dirs = {split: data_dir / req.slug / split for split in keys}
    found = {split: _matching_dataset(dirs[split], keys[split]) for split in keys}
    info: dict = {"method_request": req.label}

    vocab = _window_vocab(req, m1_coder, data_dir, log)
    if reuse := _reusable(found, heldout_docs, m1_coder, log, vocab):
        method, problem, check_seconds = reuse
        train_ds, heldout_ds, fresh = found["train"], found["heldout"], False
        log(f"[compress] {method.name}: reusing {dirs['train'].parent}")
        info["reused"] = True
        if req.kind in BIT_STREAM_METHODS and method.vocab_size == 256:
            shared[req] = {"method": method, "train": encoded_documents(train_ds),
                           "heldout": encoded_documents(heldout_ds)}
    else:
        # A bit stream cut into 8- or 16-bit tokens: the v=256 coding serves v=65536 too.
        base = req.with_v(256) if req.kind in BIT_STREAM_METHODS else None
        source = shared.get(base) if base is not None and req.kwargs.get("v") == 65536 else None
        t0 = time.perf_counter()
        if source is not None:
            # The v=256 method's bit streams, cut into 16-bit tokens.
            method = method_from_spec({**source["method"].spec(), "v": 65536}, m1_coder, vocab=vocab)
            encoded = {split: _retokenize(source[split], 256, 65536) for split in ("train", "heldout")}
            how = f"from the {source['method'].name} bit streams"
        else:
            try:
                method = method_from_name(req.kind, train_docs, m1_coder, **req.kwargs,
                                          **({"vocab": vocab} if vocab is not None else {}))
            except TypeError as e:
                raise ValueError(f"method {req.label}: bad parameters ({e})") from None
            encoded = {"train": method.encode_batch(train_docs), "heldout": method.encode_batch(heldout_docs)}
            how = "coded through the window vocabulary" if vocab is not None else "coded"
        seconds = time.perf_counter() - t0
        if vocab is not None and source is None:
            _check_vocab_against_m1(method, heldout_docs, log)
        if req.kind in BIT_STREAM_METHODS and method.vocab_size == 256:
            shared[req] = {"method": method, **encoded}
        train_ds = _write_split(dirs["train"], method, train_docs, encoded["train"], keys["train"], flops)
        heldout_ds = _write_split(dirs["heldout"], method, heldout_docs, encoded["heldout"], keys["heldout"],
                                  flops)
        fresh = True
        n_bytes = train_ds.total_bytes + heldout_ds.total_bytes
        n_tokens = train_ds.total_tokens + heldout_ds.total_tokens
        info.update(reused=False, compress_seconds=seconds, compress_kb_per_s=n_bytes / max(seconds, 1e-9) / 1e3)
        log(f"[compress] {method.name}: {n_bytes:,} bytes -> {n_tokens:,} tokens "
            f"({n_bytes / max(n_tokens, 1):.3f} bytes/token) {how} in {seconds:.1f} s "
            f"({info['compress_kb_per_s']:.1f} KB/s)")
        # The held-out check decodes what is on disk, so it covers the dataset files too.
        t0 = time.perf_counter()
        problem = _check_heldout(method, heldout_ds, heldout_docs)
        check_seconds = time.perf_counter() - t0

    info.update(
        name=method.name, vocab_size=method.vocab_size, spec_kind=method.spec()["kind"],
        m1_hash=method.m1_hash, m1_flops_per_byte=flops,
        train_tokens=train_ds.total_tokens, train_bytes=train_ds.total_bytes,
        heldout_tokens=heldout_ds.total_tokens, heldout_bytes=heldout_ds.total_bytes,
        heldout_documents=len(heldout_ds), bytes_per_token=heldout_ds.bytes_per_token,
        uniform_bits_per_byte=metrics.uniform_bits_per_byte(method.vocab_size, heldout_ds.bytes_per_token),
        exceptions=int(train_ds.manifest["counts"]["exceptions"] + heldout_ds.manifest["counts"]["exceptions"]),
        decode_ok=problem is None, decode_problem=problem, decode_seconds=check_seconds,
        decode_kb_per_s=heldout_ds.total_bytes / max(check_seconds, 1e-9) / 1e3,
        train_dir=str(train_ds.path), heldout_dir=str(heldout_ds.path))
    status = "ok" if problem is None else f"FAILED: {problem}"
    log(f"[decode] {method.name}: held-out {len(heldout_docs)} documents, {heldout_ds.total_bytes:,} bytes "
        f"decode {status} ({check_seconds:.1f} s)")
    return _Prepared(req, method, train_ds, heldout_ds, fresh, info)


# ------------------------------------------------------------------------- M2 runs
def _train_one(prep: _Prepared, size: str, run_dir: Path, steps: int, hparams: dict, device, progress: bool,
               log) -> dict:
    """Train (or resume, or reuse) one M2 run; its summary."""
    key = {"train": prep.train.manifest["extra"][DATASET_KEY], "size": size, "steps": steps, **hparams}
    key_path = run_dir / RUN_KEY_FILE
    same = not prep.fresh and key_path.exists() and json.loads(key_path.read_text()) == key
    if run_dir.exists() and not same:
        shutil.rmtree(run_dir)  # made from other data or settings: start over
    run_dir.mkdir(parents=True, exist_ok=True)
    key_path.write_text(json.dumps(key, indent=2) + "\n")
    config = preset(size, prep.method.vocab_size, context=hparams["seq_len"])
    log(f"[M2] {prep.method.name} / {size}: {steps} steps of {hparams['batch_size']} x {hparams['seq_len']} tokens"
        + (" (resuming)" if same else ""))
    t0 = time.perf_counter()
    summary = train_m2(prep.train, prep.heldout, config, steps, out_dir=run_dir, resume=True, device=device,
                       progress=progress, **hparams)
    log(f"[M2] {prep.method.name} / {size}: held-out {summary['bits_per_byte']:.4f} bits/byte "
        f"(uniform {summary['uniform_bits_per_byte']:.4f}), {summary['tokens_per_second'] or 0:,.0f} tokens/s, "
        f"{time.perf_counter() - t0:.0f} s")
    return summary


def _row(prep: _Prepared, size: str | None, summary: dict | None, run_dir: Path | None) -> dict:
    row = {"method": prep.method.name, "method_request": prep.request.label, "v": prep.method.vocab_size,
           "bytes_per_token": prep.info["bytes_per_token"],
           "uniform_bits_per_byte": prep.info["uniform_bits_per_byte"],
           "m1_flops_per_byte": prep.info["m1_flops_per_byte"], "size": size,
           "non_embedding_params": None, "bits_per_byte": None, "flops_per_byte": None,
           "tokens_per_second": None}
    if summary is not None:
        row.update({k: summary[k] for k in (
            "non_embedding_params", "bits_per_byte", "flops_per_byte", "tokens_per_second", "valid_loss_nats",
            "valid_tokens", "valid_bytes", "steps", "train_tokens", "train_time_s", "completed")})
        row["run_dir"] = str(run_dir)
    return row


def run_experiment(
    methods: Sequence[str | MethodRequest],
    sizes: Sequence[str],
    train_docs: Sequence[bytes],
    heldout_docs: Sequence[bytes],
    m1: M1 | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    steps: int,
    *,
    compress_only: Sequence[str | MethodRequest] = (),
    batch_size: int = 16,
    seq_len: int = 256,
    lr: float = 3e-3,
    warmup: int = 30,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = _log_default,
) -> dict:
    """Compress, check, train and evaluate every method x M2 size; write the table, JSON and plot.

    methods: names ("equal_info_ac[b=16,v=256]") or MethodRequests, in table order.
    sizes: M2 presets (ncx.m2.PRESETS), e.g. ["nano", "micro"].
    train_docs, heldout_docs: the documents (bytes); SentencePiece and StaticAC are fitted on
        train_docs.
    m1: an M1, or the path of its checkpoint; needed by ac and equal_info_ac.
    steps: M2 optimizer steps, the same for every method and size (batch_size sequences of
        seq_len tokens each; lr, warmup, seed as in train_m2).
    compress_only: methods (among `methods`) that are compressed and checked but get no M2
        (e.g. v=65,536 methods on a CPU, whose 65,536-way output layer dominates M2's cost).
    Returns the results dict written to OUT/results.json: "methods" (compression and decode
    check per method), "runs" (one row per method and size; compress-only methods get one row
    with size None), "all_decoded" and the file paths.
    """
    log = log or (lambda message: None)
    requests = [m if isinstance(m, MethodRequest) else parse_method(m) for m in methods]
    skip = {(m if isinstance(m, MethodRequest) else parse_method(m)) for m in compress_only}
    if unknown := skip - set(requests):
        raise ValueError(f"compress_only names methods not in methods: {sorted(r.label for r in unknown)}")
    for size in sizes:
        if size not in PRESETS:
            raise ValueError(f"unknown M2 size {size!r}; choose from {', '.join(PRESETS)}")
    if not train_docs or not heldout_docs:
        raise ValueError("need train and held-out documents")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    m1_coder, m1_flops, m1_info = None, 0.0, None
    if m1 is not None:
        m1_coder = m1.coder() if isinstance(m1, M1) else load_m1_coder(str(m1))[0]
        m1_config = m1_coder.config
        m1_flops = float(m1_config.flops_per_byte)
        m1_info = {"weights_hash": m1_coder.weights_hash, "flops_per_byte": m1_flops,
                   "non_embedding_params": m1_config.non_embedding_params, "arithmetic": m1_coder.arithmetic}
    elif any(r.kind in M1_METHODS for r in requests):
        raise ValueError("methods ac and equal_info_ac code with M1: give an M1 (checkpoint)")

    hparams = {"batch_size": batch_size, "seq_len": seq_len, "lr": lr, "warmup": warmup, "seed": seed}
    shared: dict = {}
    prepared, rows = [], []
    started = time.perf_counter()
    # v=256 first, so that v=65,536 methods can reuse its bit streams.
    order = sorted(range(len(requests)), key=lambda i: requests[i].kwargs.get("v") == 65536)
    by_index = {}
    for i in order:
        by_index[i] = _prepare_method(requests[i], train_docs, heldout_docs, m1_coder, m1_flops,
                                      out_dir / "data", shared, log)
    prepared = [by_index[i] for i in range(len(requests))]
    shared.clear()
    for prep in prepared:
        if prep.request in skip:
            rows.append(_row(prep, None, None, None))
            continue
        for size in sizes:
            run_dir = out_dir / "m2" / prep.request.slug / size
            summary = _train_one(prep, size, run_dir, steps, hparams, device, progress, log)
            rows.append(_row(prep, size, summary, run_dir))

    results = {
        "sizes": list(sizes), "steps": steps, **hparams,
        "train_documents": len(train_docs), "train_bytes": sum(len(d) for d in train_docs),
        "heldout_documents": len(heldout_docs), "heldout_bytes": sum(len(d) for d in heldout_docs),
        "m1": m1_info, "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
        "all_decoded": all(p.info["decode_ok"] for p in prepared),
        "methods": [p.info for p in prepared], "runs": rows,
        "files": {"table": str(out_dir / "results.md"), "json": str(out_dir / "results.json"),
                  "plot": str(out_dir / "results.png")},
    }
    (out_dir / "results.md").write_text(results_table(results) + "\n")
    plot_results(results, out_dir / "results.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


# ------------------------------------------------------------------------- reporting
def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _v_text(v: int) -> str:
    return "65k" if v == 65536 else str(v)


def results_table(results: dict) -> str:
    """The paper's table (one row per method and M2 size) and the decode check per method."""
    lines = ["| method | v | bytes/token | M2 | non-embedding params | held-out bits/byte | uniform bits/byte "
             "| FLOPs/byte | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(
            f"| {r['method']} | {_v_text(r['v'])} | {r['bytes_per_token']:.3f} | {r['size'] or '-'} | "
            f"{_fmt(r['non_embedding_params'], ',')} | {_fmt(r['bits_per_byte'], '.4f')} | "
            f"{r['uniform_bits_per_byte']:.4f} | {_fmt(r['flops_per_byte'], '.3g')} | "
            f"{_fmt(r['tokens_per_second'], ',.0f')} |")
    lines += ["", "| method | held-out documents | held-out bytes | decoded exactly | decode KB/s | exceptions |",
              "|---|---|---|---|---|---|"]
    for m in results["methods"]:
        lines.append(f"| {m['name']} | {m['heldout_documents']} | {m['heldout_bytes']:,} | "
                     f"{'ok' if m['decode_ok'] else 'FAILED: ' + str(m['decode_problem'])} | "
                     f"{m['decode_kb_per_s']:.1f} | {m['exceptions']} |")
    return "\n".join(lines)


def plot_results(results: dict, path: str | os.PathLike) -> None:
    """The paper's main figure: held-out bits/byte against inference FLOPs/byte, one line per
    method across M2 sizes (methods without M2 runs are left out)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    methods = dict.fromkeys(r["method"] for r in results["runs"] if r["bits_per_byte"] is not None)
    for name in methods:
        pts = sorted((r["flops_per_byte"], r["bits_per_byte"], r["size"]) for r in results["runs"]
                     if r["method"] == name and r["bits_per_byte"] is not None)
        xs, ys, _ = zip(*pts)
        line, = ax.plot(xs, ys, marker="o", label=name)
        for x, y, s in pts:
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        # The uniform rate, where an M2 that learned nothing stays.
        uniform = next(r["uniform_bits_per_byte"] for r in results["runs"] if r["method"] == name)
        ax.plot(xs, [uniform] * len(xs), linestyle="none", marker="x", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs/byte (M2 + M1)")
    ax.set_ylabel("held-out bits/byte")
    ax.set_title("M2 over compressed text (x: uniform rate, M2 learned nothing)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if methods:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--methods", required=True,
                        help="comma-separated methods, e.g. bytes,sentencepiece[v=2048],gzip,static_ac,ac,"
                             "equal_info_ac[b=16,v=256],equal_info_ac[b=16,v=65k]")
    parser.add_argument("--sizes", default="nano", help="comma-separated M2 presets (default nano)")
    parser.add_argument("--m1", metavar="CKPT", help="M1 checkpoint (for ac and equal_info_ac)")
    parser.add_argument("--out", required=True, metavar="DIR", help="datasets, M2 runs and results go here")
    parser.add_argument("--steps", type=int, default=300, help="M2 steps per run (default 300)")
    parser.add_argument("--compress-only", default="", metavar="METHODS",
                        help="methods to compress and check without training M2")
    parser.add_argument("--data", nargs="+", metavar="PATH",
                        help="files or directories (any file is a document, .jsonl one per record; "
                             "default: the embedded corpus)")
    parser.add_argument("--heldout", nargs="+", metavar="PATH",
                        help="held-out documents (default: split --data by source name)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--lines", action="store_true", help="each line of a .txt file is a document")
    parser.add_argument("--train-bytes", type=int, default=400_000,
                        help="cap on the embedded corpus's train bytes (default 400000)")
    parser.add_argument("--heldout-bytes", type=int, default=40_000,
                        help="cap on the embedded corpus's held-out bytes (default 40000)")
    parser.add_argument("--chunk-bytes", type=int, default=2048,
                        help="cut documents into pieces of at most this many bytes (0: keep whole)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="M2 device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: half the cores)")
    parser.add_argument("--progress", action="store_true", help="progress bars for M2 training")


def load_documents(data, heldout, text_field: str, lines: bool, train_bytes: int | None,
                   heldout_bytes: int | None, chunk_bytes: int) -> tuple[list[bytes], list[bytes]]:
    """Train and held-out documents: the embedded corpus (capped) or the given files (split by
    source name unless held-out files are given), cut into chunk_bytes pieces."""
    if not data:
        train, held = default_corpus("train", max_bytes=train_bytes), default_corpus("heldout", max_bytes=heldout_bytes)
    else:
        docs = read_documents(data, text_field=text_field, lines=lines)
        if heldout:
            train = [d for _, d in docs]
            held = [d for _, d in read_documents(heldout, text_field=text_field, lines=lines)]
        else:
            train = [d for src, d in docs if split_of(src) == "train"]
            held = [d for src, d in docs if split_of(src) == "heldout"]
    if chunk_bytes:
        train, held = chunk_documents(train, chunk_bytes), chunk_documents(held, chunk_bytes)
    if not train or not held:
        raise ValueError(f"need train and held-out documents, got {len(train)} and {len(held)}; "
                         f"pass --heldout (or --lines for one document per line)")
    return train, held


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or default_threads())
    train, held = load_documents(args.data, args.heldout, args.text_field, args.lines, args.train_bytes,
                                 args.heldout_bytes, args.chunk_bytes)
    print(f"data: {len(train)} train documents ({sum(map(len, train)):,} bytes), {len(held)} held-out "
          f"({sum(map(len, held)):,} bytes); torch threads {torch.get_num_threads()}", flush=True)
    results = run_experiment(
        parse_methods(args.methods), [s.strip() for s in args.sizes.split(",") if s.strip()], train, held,
        args.m1, args.out, args.steps,
        compress_only=parse_methods(args.compress_only) if args.compress_only.strip() else (),
        batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=args.warmup, seed=args.seed,
        device=args.device, progress=args.progress)
    print()
    print(results_table(results))
    print(f"\nwrote {results['files']['table']}, {results['files']['json']}, {results['files']['plot']}")
    return 0 if results["all_decoded"] else 1
