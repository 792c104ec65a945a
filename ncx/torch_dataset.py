"""ncx token datasets as PyTorch datasets, sharded across DDP ranks and DataLoader workers.

PackedWindows is the training sampler of `ncx train-m2`, offered to any training loop: the
dataset's shards form one token stream, and step k draws `batch_size` windows of seq_len + 1
tokens at offsets that are a pure function of (seed, k) (window_offsets). Rank r of W takes
rows [r * batch_size / W, (r + 1) * batch_size / W) of every step, so W processes together see
exactly the one-process batches, and the whole sampler state is the next step.

Documents hands out each document once per epoch (in shard order, or shuffled by (seed,
epoch)); rank r of W takes every W-th document of the epoch's order. DocumentDataset is the
map-style view: item i is the i-th document in shard order.

Both split their share among DataLoader workers the way a DataLoader takes turns between them
(worker w's batches are the loader's batches w, w + W, ...), so a loader yields the same items
in the same order with any num_workers. Neither holds memmaps when pickled: a copy sent to a
worker process reopens the dataset from its path there, on first use.

    windows = PackedWindows("data", seq_len=512, batch_size=32, seed=0, steps=1000)
    loader = DataLoader(windows, batch_size=windows.local_batch_size, num_workers=2)
    for step, batch in enumerate(loader):   # int64 [local_batch_size, 513]: step's rows of this rank
        inputs, targets = batch[:, :-1], batch[:, 1:]
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .dataset import TokenDataset, open_dataset

__all__ = ["PackedWindows", "Documents", "DocumentDataset", "TokenStream", "window_offsets", "rank_and_world"]


class TokenStream:
    """A dataset's shards as one read-only token stream (no copy: the shards stay memmaps)."""

    def __init__(self, ds: TokenDataset):
        self.parts = list(ds.iter_shards())
        sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.ends = np.cumsum(sizes)  # stream position just past each shard
        self.starts = self.ends - sizes

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64 [length], gathered across shards."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside the stream of {len(self)}")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        part = int(np.searchsorted(self.ends, start, side="right"))
        while filled < length:
            lo = start + filled - int(self.starts[part])
            piece = self.parts[part][lo:lo + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            part += 1
        return out


def window_offsets(seed: int, step: int, count: int, stream_len: int, window: int) -> np.ndarray:
    """The `count` window starts of one step: int64 [count], uniform in [0, stream_len - window].
    Counter-based (seeded by (seed, step)), so no sampler state needs saving."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, stream_len - window + 1, size=count, dtype=np.int64)


def rank_and_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """(rank, world size): the ones given, else torch.distributed's when it is initialized,
    else 0 and 1."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world = dist.get_world_size() if world is None else world
    rank, world = (0 if rank is None else rank), (1 if world is None else world)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of the {world} ranks")
    return rank, world


def _worker_share() -> tuple[int, int, bool]:
    """(this DataLoader worker's number, how many workers, whether this is the main process);
    (0, 1, True) outside workers."""
    info = get_worker_info()
    return (0, 1, True) if info is None else (info.id, info.num_workers, False)


class _OpenedPerProcess:
    """A token dataset held by its path and opened on first use in each process: pickled (for
    DataLoader workers under spawn or forkserver) it carries the path, never the memmaps."""

    def __init__(self, dataset: TokenDataset | str | os.PathLike):
        self._dataset = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset)
        self.path = Path(self._dataset.path).absolute()
        self._stream = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path, self._dataset, self._stream = state["path"], None, None

    @property
    def dataset(self) -> TokenDataset:
        if self._dataset is None:
            self._dataset = open_dataset(self.path)
        return self._dataset

    @property
    def stream(self) -> TokenStream:
        if self._stream is None:
            self._stream = TokenStream(self.dataset)
        return self._stream


class PackedWindows(IterableDataset):
    """`ncx train-m2`'s training windows: each step `batch_size` windows of seq_len + 1 tokens
    at uniform offsets of the dataset's token stream (they cross document and shard
    boundaries), drawn from (seed, step) alone; this rank's rows of each step, one int64
    tensor [seq_len + 1] per sample (inputs [:-1], targets [1:]), step after step.

    dataset: a TokenDataset or its directory. batch_size: the global batch, divisible by the
    world size; each rank takes local_batch_size = batch_size / world rows of every step.
    steps: where to stop (None: never); start_step: the first step. rank, world: default
    torch.distributed's when it is initialized, else 0 and 1.

    With DataLoader(ds, batch_size=ds.local_batch_size, num_workers=W), worker w builds steps
    start + w, start + w + W, ...: the loader's batch i is step start + i whatever W is.

    Resuming: every iteration starts at start_step, which load_state_dict sets. state_dict()
    is {"step": the next step}: iterated in this process (num_workers=0, which reads nothing
    ahead) the dataset advances it as it hands out each step's last row; through workers only
    their copies advance, so the loop saves {"step": start_step + batches consumed} itself.
    """

    def __init__(self, dataset: TokenDataset | str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0,
                 steps: int | None = None, start_step: int = 0, rank: int | None = None,
                 world: int | None = None):
        self._source = _OpenedPerProcess(dataset)
        self.rank, self.world = rank_and_world(rank, world)
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"need seq_len >= 1 and batch_size >= 1, got {seq_len} and {batch_size}")
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the world size {self.world}")
        self.seq_len, self.batch_size, self.seed, self.steps = seq_len, batch_size, seed, steps
        self.local_batch_size = batch_size // self.world
        self.window = seq_len + 1
        self.stream_len = self._source.dataset.total_tokens
        if self.stream_len < self.window:
            raise ValueError(f"{self._source.path}: {self.stream_len} tokens, a training window needs "
                             f"{self.window}")
        self.load_state_dict({"step": start_step})

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        step = int(state["step"])
        if step < 0 or (self.steps is not None and step > self.steps):
            raise ValueError(f"step {step} is outside 0..{self.steps}")
        self.start_step = self.step = step

    def local_offsets(self, step: int) -> np.ndarray:
        """This rank's window starts of `step`: int64 [local_batch_size]."""
        offsets = window_offsets(self.seed, step, self.batch_size, self.stream_len, self.window)
        return offsets[self.rank * self.local_batch_size:(self.rank + 1) * self.local_batch_size]

    def local_batch(self, step: int) -> np.ndarray:
        """This rank's windows of `step`: int64 [local_batch_size, seq_len + 1]."""
        stream = self._source.stream
        return np.stack([stream.read(int(s), self.window) for s in self.local_offsets(step)])

    def __len__(self) -> int:
        """Samples one iteration yields; an endless sampler has no length."""
        if self.steps is None:
            raise TypeError("PackedWindows with steps=None is endless and has no length")
        return (self.steps - self.start_step) * self.local_batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, workers, counts_here = _worker_share()
        if counts_here:
            self.step = self.start_step
        step = self.start_step + worker
        while self.steps is None or step < self.steps:
            offsets = self.local_offsets(step)
            for i, start in enumerate(offsets):
                if counts_here and i == len(offsets) - 1:
                    self.step = step + 1  # the consumer has the whole step once it takes this row
                yield torch.from_numpy(self._source.stream.read(int(start), self.window))
            step += workers


class DocumentDataset(Dataset):
    """The documents of a token dataset, map-style: item i is the i-th document in shard order,
    {"doc_id": int, "input_ids": int64 tensor [its tokens]} (empty documents included)."""

    def __init__(self, dataset: TokenDataset | str | os.PathLike):
        self._source = _OpenedPerProcess(dataset)
        self._count = len(self._source.dataset.documents)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} of {len(self)}")
        row = self._source.dataset.documents[index]
        start = int(row["token_offset"])
        tokens = self._source.dataset.shard_tokens(int(row["shard"]))[start:start + int(row["token_count"])]
        return {"doc_id": int(row["doc_id"]), "input_ids": torch.from_numpy(tokens.astype(np.int64))}


class Documents(IterableDataset):
    """Each document of a token dataset once per epoch, as DocumentDataset's items.

    The epoch's order is shard order, or with shuffle a permutation drawn from (seed, epoch)
    (call set_epoch(e) before each epoch, as with DistributedSampler). Rank r of W takes the
    documents at positions r, r + W, ... of that order: every document goes to exactly one
    rank, and ranks differ by at most one document (DDP loops must allow for that).

    dataset: a TokenDataset or its directory. rank, world: default torch.distributed's when it
    is initialized, else 0 and 1. loader_batch_size: the DataLoader's batch_size (None for
    batch_size=None): with W workers, worker w takes this rank's batches w, w + W, ..., which is
    how a DataLoader takes turns between workers, so it yields the documents in the same order
    as with num_workers=0.

    Resuming: state_dict() is {"epoch", "position"}, position counting the documents of this
    rank's share of the epoch that the consumer took. load_state_dict makes every iteration of
    that epoch start after them (start_position); set_epoch(e) keeps that when e is already the
    epoch (so a loop that calls it after load_state_dict resumes) and starts e from 0 otherwise.
    Iterated in this process (num_workers=0, which reads nothing ahead) the dataset counts the
    documents itself as it hands them out. Through workers only their copies count, so the
    loop records what it consumed and saves {"epoch": e, "position": start_position + consumed}.
    With persistent_workers, set_epoch and load_state_dict do not reach the workers.
    """

    def __init__(self, dataset: TokenDataset | str | os.PathLike, shuffle: bool = False, seed: int = 0,
                 rank: int | None = None, world: int | None = None, loader_batch_size: int | None = None):
        self.documents = DocumentDataset(dataset)
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world = rank_and_world(rank, world)
        if loader_batch_size is not None and loader_batch_size < 1:
            raise ValueError(f"loader_batch_size must be >= 1 or None, got {loader_batch_size}")
        self.loader_batch_size = loader_batch_size or 1
        self.epoch = self.position = self.start_position = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self.start_position = epoch, 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= self.share_size:
            raise ValueError(f"position {position} is outside this rank's {self.share_size} documents")
        self.epoch, self.position, self.start_position = epoch, position, position

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every document's index (its place in shard order) in the order of `epoch`."""
        n = len(self.documents)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    @property
    def share_size(self) -> int:
        """Documents this rank takes per epoch."""
        return len(range(self.rank, len(self.documents), self.world))

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's share of the epoch's order."""
        return self.epoch_order(epoch)[self.rank::self.world]

    def __len__(self) -> int:
        """Documents one iteration yields: this rank's share of the epoch from start_position."""
        return self.share_size - self.start_position

    def __iter__(self) -> Iterator[dict]:
        worker, workers, counts_here = _worker_share()
        if counts_here:
            self.position = self.start_position
        rest = self.rank_order(self.epoch)[self.start_position:]
        turn = (np.arange(len(rest)) // self.loader_batch_size) % workers
        for index in rest[turn == worker]:
            if counts_here:
                self.position += 1
            yield self.documents[int(index)]
