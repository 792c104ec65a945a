"""The token dataset: exact round trips, crash-safe shard writes, resumable jobs, clear errors."""
import json
import zlib

import numpy as np
import pytest

from ncx.dataset import (
    DOC_INDEX_DTYPE,
    EXCEPTION_DTYPE,
    atomic_write_json,
    existing_shards,
    finalize_manifest,
    input_entry,
    load_shard_record,
    open_dataset,
    remove_stale_temporaries,
    token_dtype_for,
    write_dataset,
    write_shard,
)

METHOD = {"name": "equal_info_ac", "window_bits": 16, "precision": 14}


def random_corpus(seed: int, n_docs: int, vocab: int):
    """Documents of random tokens (some empty) with made-up original bytes."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=int(rng.integers(0, 60))) for _ in range(n_docs)]
    originals = [rng.bytes(int(rng.integers(0, 200))) for _ in range(n_docs)]
    return docs, [len(b) for b in originals], [zlib.crc32(b) for b in originals]


@pytest.mark.parametrize("vocab", [256, 65536])
def test_round_trip_over_several_shards(tmp_path, vocab):
    docs, nbytes, crcs = random_corpus(vocab, 40, vocab)
    exceptions = [(3, 1, 5), (17, 0, 2), (17, 4, 9)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"some input text\n")
    ds = write_dataset(tmp_path / "ds", docs, nbytes, crcs, vocab_size=vocab, method=METHOD,
                       shard_tokens=150, exceptions=exceptions, windows=[2] * len(docs),
                       inputs=[corpus], m1_hash="abc123", extra={"m1_flops_per_byte": 6e6})

    assert len(ds.shards) > 2
    assert ds.vocab_size == vocab and ds.token_dtype == token_dtype_for(vocab)
    assert ds.token_dtype == (np.dtype("<u1") if vocab == 256 else np.dtype("<u2"))
    assert ds.method == METHOD
    for i, doc in enumerate(docs):
        got = ds.tokens_of(i)
        assert got.dtype == ds.token_dtype and np.array_equal(got, doc)
    assert np.array_equal(ds.documents["doc_id"], np.arange(len(docs)))
    assert np.array_equal(ds.documents["byte_count"], nbytes)
    assert np.array_equal(ds.documents["crc32"], np.array(crcs, dtype=np.uint32))
    assert ds.exceptions_of(17).tolist() == [(17, 0, 2), (17, 4, 9)]
    assert ds.exceptions_of(5).size == 0
    assert ds.total_tokens == sum(d.size for d in docs) and ds.total_bytes == sum(nbytes)
    assert ds.bytes_per_token == pytest.approx(sum(nbytes) / sum(d.size for d in docs))

    # The concatenated shards are the documents back to back: plain little-endian arrays.
    stream = np.concatenate(list(ds.iter_shards()))
    assert np.array_equal(stream, np.concatenate(docs))
    raw = np.fromfile(tmp_path / "ds" / ds.shards[0].files["tokens"], dtype=ds.token_dtype)
    assert np.array_equal(raw, ds.shard_tokens(0))
    index = np.load(tmp_path / "ds" / ds.shards[0].files["index"])  # numpy alone reads the side files
    assert index.dtype == DOC_INDEX_DTYPE and index["token_count"].sum() == raw.size
    last = np.load(tmp_path / "ds" / ds.shards[-1].files["exceptions"])
    assert last.dtype == EXCEPTION_DTYPE

    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["format"] == "ncx-token-dataset" and m["format_version"] == 1
    assert m["counts"] == {"documents": 40, "bytes": sum(nbytes), "tokens": int(stream.size),
                           "windows": 80, "exceptions": 3, "shards": len(ds.shards)}
    assert m["inputs"][0]["bytes"] == 16 and len(m["inputs"][0]["sha256"]) == 64
    assert m["m1_hash"] == "abc123" and m["extra"] == {"m1_flops_per_byte": 6e6}
    assert all(set(s["sha256"]) == {"tokens", "index", "exceptions"} for s in m["shards"])
    ds.verify()


def test_documents_of_other_ranks_and_empty_shard(tmp_path):
    """A rank writes documents with non-consecutive ids; a shard may hold no documents."""
    d = tmp_path / "ds"
    write_shard(d, 0, [np.array([5, 6]), np.array([7])], [4, 2], [1, 2], [3, 1], vocab_size=256)
    write_shard(d, 1, [], [], [], [], vocab_size=256)
    write_shard(d, 2, [np.array([9, 9, 9])], [3], [0], [8], vocab_size=256)
    finalize_manifest(d, method=METHOD, vocab_size=256)
    ds = open_dataset(d)
    assert ds.tokens_of(1).tolist() == [7] and ds.tokens_of(3).tolist() == [5, 6]
    assert ds.tokens_of(8).tolist() == [9, 9, 9] and ds.shard_tokens(1).size == 0
    with pytest.raises(KeyError, match="doc_id 2"):
        ds.tokens_of(2)


def test_resumed_job_skips_written_shards_and_ignores_leftovers(tmp_path):
    d = tmp_path / "ds"
    docs, nbytes, crcs = random_corpus(1, 6, 256)
    write_shard(d, 0, docs[:3], nbytes[:3], crcs[:3], range(3), vocab_size=256)
    # A job killed while writing shard 1 leaves a temporary file and, at worst, renamed data
    # files without the commit record: neither counts as a written shard.
    (d / ".shard-00001.tokens.tmp-999-deadbeef").write_bytes(b"\x01\x02")
    (d / "shard-00001.tokens").write_bytes(b"\x01\x02")
    assert existing_shards(d) == [0]
    with pytest.raises(ValueError, match="shard 1 of 2 is not written"):
        finalize_manifest(d, method=METHOD, vocab_size=256, num_shards=2)

    write_shard(d, 1, docs[3:], nbytes[3:], crcs[3:], range(3, 6), vocab_size=256)
    assert not list(d.glob(".*tmp*")), "rewriting a shard clears its leftovers"
    assert existing_shards(d) == [0, 1]
    finalize_manifest(d, method=METHOD, vocab_size=256, num_shards=2)
    ds = open_dataset(d)
    assert all(np.array_equal(ds.tokens_of(i), docs[i]) for i in range(6))


def test_corrupt_shard_is_detected_and_rewritten(tmp_path):
    d = tmp_path / "ds"
    docs, nbytes, crcs = random_corpus(2, 10, 65536)
    write_dataset(d, docs, nbytes, crcs, vocab_size=65536, method=METHOD, shard_tokens=100)
    tokens = d / "shard-00000.tokens"
    data = bytearray(tokens.read_bytes())
    data[3] ^= 0x40  # same size, one bit flipped
    tokens.write_bytes(bytes(data))

    ds = open_dataset(d)  # opening checks sizes only; verify() hashes
    with pytest.raises(ValueError, match=r"shard-00000\.tokens: sha256 checksum mismatch"):
        ds.verify()
    with pytest.warns(UserWarning, match="shard 0 will be rewritten"):
        assert 0 not in existing_shards(d)

    ids = ds.documents["doc_id"][ds.documents["shard"] == 0]
    write_shard(d, 0, [docs[i] for i in ids], [nbytes[i] for i in ids], [crcs[i] for i in ids], ids,
                vocab_size=65536)
    assert 0 in existing_shards(d)
    open_dataset(d).verify()  # the same content again: the manifest's checksums hold


def test_token_file_size_mismatch(tmp_path):
    d = tmp_path / "ds"
    docs, nbytes, crcs = random_corpus(3, 5, 256)
    write_dataset(d, docs, nbytes, crcs, vocab_size=256, method=METHOD)
    with open(d / "shard-00000.tokens", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match=r"shard-00000\.tokens: \d+ bytes, but the index says"):
        open_dataset(d)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset directory not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json: manifest not found"):
        open_dataset(tmp_path / "empty")

    d = tmp_path / "ds"
    docs, nbytes, crcs = random_corpus(4, 5, 256)
    write_dataset(d, docs, nbytes, crcs, vocab_size=256, method=METHOD)
    manifest = json.loads((d / "manifest.json").read_text())

    def with_manifest(**changes):
        (d / "manifest.json").write_text(json.dumps({**manifest, **changes}))

    with_manifest(token_dtype="<u2")
    with pytest.raises(ValueError, match="token_dtype <u2 does not match vocab_size 256"):
        open_dataset(d)
    with_manifest(format="something-else")
    with pytest.raises(ValueError, match="not an ncx-token-dataset manifest"):
        open_dataset(d)
    with_manifest(format_version=99)
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        open_dataset(d)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: invalid JSON"):
        open_dataset(d)
    with_manifest()
    (d / "shard-00000.index.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-00000\.index\.npy: missing"):
        open_dataset(d)


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 256\)"):
        write_shard(tmp_path, 0, [np.array([1, 256])], [2], [0], [0], vocab_size=256)
    with pytest.raises(ValueError, match="byte_counts has 2 entries"):
        write_shard(tmp_path, 0, [np.array([1])], [2, 3], [0], [0], vocab_size=256)
    with pytest.raises(ValueError, match="crc32s must be unsigned 32-bit"):
        write_shard(tmp_path, 0, [np.array([1])], [2], [1 << 32], [0], vocab_size=256)
    with pytest.raises(ValueError, match="not unique"):
        write_shard(tmp_path, 0, [np.array([1]), np.array([2])], [1, 1], [0, 0], [4, 4], vocab_size=256)
    with pytest.raises(ValueError, match="exceptions of shard 0 name documents not in the shard"):
        write_shard(tmp_path, 0, [np.array([1])], [1], [0], [0], [(5, 0, 1)], vocab_size=256)
    assert existing_shards(tmp_path) == [], "a rejected shard writes nothing"
    with pytest.raises(ValueError, match="method must be a dict with a 'name'"):
        finalize_manifest(tmp_path, method={}, vocab_size=256)



def test_manifest_cannot_point_outside_the_dataset(tmp_path):
    """A shard entry edited to name another file (../../etc/passwd) is refused before anything
    is opened, by open_dataset and by the commit records a resumed job reads."""
    from ncx.dataset import open_dataset, write_dataset

    write_dataset(tmp_path / "d", [np.arange(5, dtype=np.uint8)], [5], [0], vocab_size=256,
                  method={"name": "bytes"})
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["shards"][0]["files"]["tokens"] = "../../../../etc/passwd"
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="names files"):
        open_dataset(tmp_path / "d")


def test_public_file_helpers(tmp_path):
    """The helpers a compress job shares with the dataset writer: atomic JSON, clearing what a
    killed write left, shard records, manifest input entries."""
    atomic_write_json(tmp_path / "job.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "job.json").read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]  # no temporary left behind
    (tmp_path / ".job.json.tmp-1-ab").write_text("half")
    (tmp_path / ".other.json.tmp-1-ab").write_text("half")
    remove_stale_temporaries(tmp_path, ["job.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp-1-ab", "job.json"]

    assert load_shard_record(tmp_path, 0) is None
    docs, byte_counts, crcs = random_corpus(3, 5, 256)
    info = write_shard(tmp_path, 0, docs, byte_counts, crcs, list(range(5)), vocab_size=256)
    assert load_shard_record(tmp_path, 0) == info
    (tmp_path / "shard-00000.json").write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_shard_record(tmp_path, 0)

    given = {"name": "corpus", "sha256": "0" * 64, "bytes": 3}
    assert input_entry(given) == given and input_entry(given) is not given
    entry = input_entry(tmp_path / "job.json")
    assert entry["name"] == str(tmp_path / "job.json") and entry["bytes"] == (tmp_path / "job.json").stat().st_size
    with pytest.raises(ValueError, match="lacks"):
        input_entry({"name": "x"})
    with pytest.raises(FileNotFoundError):
        input_entry(tmp_path / "missing.txt")
