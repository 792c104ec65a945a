"""ncx datasets from PyTorch: train-m2's windows, documents once per epoch, split across ranks
and DataLoader workers without changing the order, resumable, and a real two-process DDP read."""
import itertools
import json
import os
import pickle
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ncx
from ncx.dataset import write_dataset
from ncx.torch_dataset import DocumentDataset, Documents, PackedWindows, TokenStream, window_offsets

REPO = Path(ncx.__file__).resolve().parent.parent


def token_dataset(path, vocab_size, lengths, shard_tokens, seed):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab_size, size=n) for n in lengths]
    return write_dataset(path, docs, [2 * n for n in lengths], [zlib.crc32(d.tobytes()) for d in docs],
                         vocab_size=vocab_size, method={"name": "test"}, shard_tokens=shard_tokens)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A byte vocabulary (uint8) and a uint16 one; several shards, documents of 0 to 150 tokens,
    empty ones among them, and a last shard of empty documents only (a shard with no tokens)."""
    root = tmp_path_factory.mktemp("torch_ds")
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(0, 150, size=40)]
    lengths[3] = lengths[17] = lengths[18] = 0
    small = token_dataset(root / "u8", 256, [0, *lengths], 300, 1)
    wide = token_dataset(root / "u16", 3000, [*lengths[:25], 400, 0, 0], 250, 2)
    assert small.token_dtype == np.uint8 and wide.token_dtype == np.uint16
    assert len(small.shards) > 3 and len(wide.shards) > 3 and wide.shards[-1].tokens == 0
    return small, wide


def expected_rows(ds, seed, step, batch_size, seq_len, rank, world):
    """train-m2's sampling as it was written: window_offsets, this rank's slice, TokenStream reads."""
    stream = TokenStream(ds)
    offsets = window_offsets(seed, step, batch_size, len(stream), seq_len + 1)
    local = batch_size // world
    return np.stack([stream.read(int(s), seq_len + 1) for s in offsets[rank * local:(rank + 1) * local]])


def test_packed_windows_are_train_m2s_windows(datasets):
    for ds in datasets:
        for world in (1, 2, 4):
            for rank in range(world):
                windows = PackedWindows(ds, seq_len=16, batch_size=8, seed=5, steps=4, rank=rank, world=world)
                samples = list(windows)
                assert len(samples) == 4 * 8 // world and all(s.dtype == torch.int64 for s in samples)
                for step in range(4):
                    expected = expected_rows(ds, 5, step, 8, 16, rank, world)
                    assert np.array_equal(windows.local_batch(step), expected)
                    got = torch.stack(samples[step * windows.local_batch_size:(step + 1) * windows.local_batch_size])
                    assert np.array_equal(got.numpy(), expected)
    small, _ = datasets
    seeds = [PackedWindows(small, 16, 8, seed=seed).local_batch(0) for seed in (5, 6)]
    assert not np.array_equal(*seeds)


def test_packed_windows_refuse_what_cannot_be_sampled(datasets):
    small, _ = datasets
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        PackedWindows(small, 16, 8, world=3, rank=0)
    with pytest.raises(ValueError, match="a training window needs"):
        PackedWindows(small, small.total_tokens, 8)
    with pytest.raises(ValueError, match="rank 2 is not one of the 2 ranks"):
        PackedWindows(small, 16, 8, rank=2, world=2)
    with pytest.raises(TypeError, match="endless"):
        len(PackedWindows(small, 16, 8))


def test_workers_yield_the_batches_of_no_workers(datasets):
    small, wide = datasets
    windows = PackedWindows(wide, seq_len=12, batch_size=6, seed=1, steps=7, rank=1, world=2)
    batches = [DataLoader(windows, batch_size=windows.local_batch_size, num_workers=n) for n in (0, 2)]
    one, two = ([b.numpy() for b in loader] for loader in batches)
    assert len(one) == 7 and all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))
    assert all(np.array_equal(b, windows.local_batch(step)) for step, b in enumerate(one))

    documents = Documents(small, shuffle=True, seed=3, rank=1, world=2)
    plain = [d["doc_id"] for d in documents]
    by_workers = [d["doc_id"] for d in DataLoader(documents, batch_size=None, num_workers=2)]
    assert by_workers == plain
    in_threes = Documents(small, shuffle=True, seed=3, rank=1, world=2, loader_batch_size=3)
    batched = [[d["doc_id"] for d in b] for b in DataLoader(in_threes, batch_size=3, num_workers=2, collate_fn=list)]
    assert batched == [plain[i:i + 3] for i in range(0, len(plain), 3)]


def test_packed_windows_resume(datasets):
    small, _ = datasets
    whole = [b.numpy() for b in DataLoader(PackedWindows(small, 8, 4, seed=2, steps=6), batch_size=4)]
    windows = PackedWindows(small, 8, 4, seed=2, steps=6)
    for _ in itertools.islice(DataLoader(windows, batch_size=4), 2):
        pass
    assert windows.state_dict() == {"step": 2}
    resumed = PackedWindows(small, 8, 4, seed=2, steps=6)
    resumed.load_state_dict(windows.state_dict())
    assert len(resumed) == 4 * 4
    for workers in (0, 2, 0):  # every iteration starts from the loaded step
        rest = [b.numpy() for b in DataLoader(resumed, batch_size=4, num_workers=workers)]
        assert len(rest) == 4 and all(np.array_equal(a, b) for a, b in zip(rest, whole[2:]))
        assert resumed.state_dict() == {"step": 6}
    started = PackedWindows(small, 8, 4, seed=2, steps=None, start_step=5)
    assert np.array_equal(torch.stack(list(itertools.islice(started, 4))).numpy(), whole[5])
    with pytest.raises(ValueError, match="outside 0..6"):
        windows.load_state_dict({"step": 7})


def test_documents_once_per_epoch_across_ranks(datasets):
    for ds in datasets:
        ids = ds.documents["doc_id"]
        for shuffle in (False, True):
            for world in (1, 2, 3):
                shares = [[d["doc_id"] for d in Documents(ds, shuffle=shuffle, seed=4, rank=r, world=world)]
                          for r in range(world)]
                assert sorted(itertools.chain(*shares)) == sorted(ids.tolist())
                assert max(map(len, shares)) - min(map(len, shares)) <= 1
                order = Documents(ds, shuffle=shuffle, seed=4).epoch_order(0)
                assert shares == [ids[order[r::world]].tolist() for r in range(world)]
        assert [d["doc_id"] for d in Documents(ds)] == ids.tolist(), "shard order without shuffle"
        for item in Documents(ds, shuffle=True, seed=9):
            assert item["input_ids"].dtype == torch.int64
            assert np.array_equal(item["input_ids"].numpy(), ds.tokens_of(item["doc_id"]))
        assert sum(len(d["input_ids"]) == 0 for d in Documents(ds)) >= 3


def test_document_dataset_is_shard_order(datasets):
    small, _ = datasets
    docs = DocumentDataset(small)
    assert len(docs) == len(small) and docs[-1]["doc_id"] == int(small.documents["doc_id"][-1])
    assert [d["doc_id"] for d in docs] == small.documents["doc_id"].tolist()
    with pytest.raises(IndexError):
        docs[len(docs)]


def test_shuffle_is_per_seed_and_epoch(datasets):
    small, _ = datasets
    documents = Documents(small, shuffle=True, seed=1)
    first = [d["doc_id"] for d in documents]
    documents.set_epoch(1)
    second = [d["doc_id"] for d in documents]
    again = Documents(small, shuffle=True, seed=1)
    again.set_epoch(1)
    assert second == [d["doc_id"] for d in again]
    assert first != second and sorted(first) == sorted(second)
    assert first != [d["doc_id"] for d in Documents(small, shuffle=True, seed=2)]


def test_documents_resume_mid_epoch(datasets):
    small, _ = datasets
    documents = Documents(small, shuffle=True, seed=5, rank=0, world=2)
    documents.set_epoch(3)
    reference = Documents(small, shuffle=True, seed=5, rank=0, world=2)
    reference.set_epoch(3)
    whole = [d["doc_id"] for d in reference]
    taken = [d["doc_id"] for d in itertools.islice(DataLoader(documents, batch_size=None), 7)]
    assert taken == whole[:7] and documents.state_dict() == {"epoch": 3, "position": 7}

    resumed = Documents(small, shuffle=True, seed=5, rank=0, world=2)
    resumed.load_state_dict(documents.state_dict())
    resumed.set_epoch(3)  # the epoch it resumes: keeps the position
    assert len(resumed) == len(whole) - 7
    assert [d["doc_id"] for d in DataLoader(resumed, batch_size=None, num_workers=2)] == whole[7:]
    assert [d["doc_id"] for d in resumed] == whole[7:]
    assert resumed.state_dict() == {"epoch": 3, "position": len(whole)}
    resumed.set_epoch(4)
    assert resumed.state_dict() == {"epoch": 4, "position": 0}
    with pytest.raises(ValueError, match="outside this rank's"):
        resumed.load_state_dict({"epoch": 0, "position": len(whole) + 1})


def test_pickled_datasets_carry_the_path_not_the_tokens(datasets):
    """What a DataLoader sends to spawned workers: the path and the position, reopened there."""
    _, wide = datasets
    windows = PackedWindows(wide, 16, 4, seed=3, steps=3)
    documents = Documents(wide.path, shuffle=True, seed=3)
    windows.local_batch(0), documents.documents[0]  # memmaps open in this process
    for dataset, tokens in ((windows, lambda ds: [t.numpy() for t in ds]),
                            (documents, lambda ds: [d["input_ids"].numpy() for d in ds])):
        blob = pickle.dumps(dataset)
        assert len(blob) < 2000
        copied = tokens(pickle.loads(blob))
        assert len(copied) > 10 and all(np.array_equal(a, b) for a, b in zip(copied, tokens(dataset), strict=True))


DDP_READER = """
import json, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from ncx.torch_dataset import Documents, PackedWindows

dist.init_process_group("gloo")
documents = Documents(sys.argv[1], shuffle=True, seed=11)
windows = PackedWindows(sys.argv[1], seq_len=8, batch_size=6, seed=11, steps=1)
seen = {"rank": dist.get_rank(), "world": dist.get_world_size(),
        "doc_ids": [d["doc_id"] for d in DataLoader(documents, batch_size=None, num_workers=2)],
        "windows": windows.local_batch(0).tolist()}
with open(sys.argv[2], "w") as f:
    json.dump(seen, f)
dist.barrier()
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_ddp_ranks_read_every_document_once(datasets, tmp_path):
    """Two processes in a gloo group, rank and world taken from torch.distributed: together they
    read every document once, and train-m2's step 0 split between them."""
    small, _ = datasets
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    outputs = [tmp_path / f"rank{r}.json" for r in range(2)]
    ranks = [subprocess.Popen([sys.executable, "-c", DDP_READER, str(small.path), str(outputs[r])],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=180)
        assert rank.returncode == 0, err[-3000:]
    seen = [json.loads(p.read_text()) for p in outputs]
    assert [(s["rank"], s["world"]) for s in seen] == [(0, 2), (1, 2)]
    a, b = seen[0]["doc_ids"], seen[1]["doc_ids"]
    assert not set(a) & set(b) and sorted(a + b) == sorted(small.documents["doc_id"].tolist())
    assert len(a) + len(b) == len(small)
    one_process = PackedWindows(small, seq_len=8, batch_size=6, seed=11, steps=1, rank=0, world=1)
    assert seen[0]["windows"] + seen[1]["windows"] == one_process.local_batch(0).tolist()
