"""M2 training: the data sampler, exact held-out scoring, exact resume, DDP equivalence, CLI."""
import json
import os
import subprocess
import sys
import zlib
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncx import metrics
from ncx.cli import main
from ncx.dataset import write_dataset
from ncx.m2 import M2, M2Config
from ncx.torch_dataset import TokenStream, window_offsets
from ncx.train_m2 import TrainOptions, evaluate, load_model, lr_at, train_m2

TINY = M2Config(vocab_size=256, n_layer=2, n_head=2, n_embd=32, mlp=64, context=32)
SMALL_RUN = dict(batch_size=8, seq_len=32, lr=3e-3, warmup=3, progress=False)


def text_corpus(rng, n_docs):
    """Byte documents with structure an M2 can learn quickly: random words from a small list."""
    words = [b"the ", b"cat ", b"sat ", b"on ", b"a ", b"mat ", b"and ", b"dog ", b"ran\n"]
    return [b"".join(words[i] for i in rng.integers(0, len(words), size=int(rng.integers(5, 60))))
            for _ in range(n_docs)]


def bytes_dataset(path, docs, shard_tokens, **kw):
    return write_dataset(path, [np.frombuffer(d, np.uint8) for d in docs], [len(d) for d in docs],
                         [zlib.crc32(d) for d in docs], vocab_size=256, method={"name": "bytes"},
                         shard_tokens=shard_tokens, **kw)



@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2data")
    rng = np.random.default_rng(0)
    train = bytes_dataset(root / "train", text_corpus(rng, 300), 2000, extra={"m1_flops_per_byte": 1000.0})
    valid = bytes_dataset(root / "valid", text_corpus(rng, 20), 300)
    return train, valid


def weights_of(run_dir):
    return load_model(run_dir).state_dict()


def test_schedule():
    kw = dict(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(99, **kw) == pytest.approx(0.1)
    decay = [lr_at(s, **kw) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(0, steps=5, lr=1.0, warmup=0, min_lr_ratio=0.0) == pytest.approx(1.0)


def test_stream_and_sampler(datasets):
    train, _ = datasets
    stream = TokenStream(train)
    whole = np.concatenate(list(train.iter_shards())).astype(np.int64)
    assert len(train.shards) > 2 and len(stream) == whole.size
    boundary = int(stream.ends[0])
    for start, length in ((0, 5), (boundary - 3, 7), (boundary - 1, 2000), (whole.size - 4, 4)):
        assert np.array_equal(stream.read(start, length), whole[start:start + length])
    with pytest.raises(IndexError):
        stream.read(whole.size - 3, 4)
    a, b = window_offsets(7, 3, 64, len(stream), 33), window_offsets(7, 3, 64, len(stream), 33)
    assert np.array_equal(a, b), "a step's windows depend on (seed, step) only"
    assert not np.array_equal(a, window_offsets(7, 4, 64, len(stream), 33))
    assert a.min() >= 0 and a.max() <= len(stream) - 33


def test_evaluate_scores_every_token_once(datasets):
    """Whatever the chunk length and batch, every valid token after the first is scored once,
    each from the tokens before it in its chunk."""
    _, valid = datasets
    stream = TokenStream(valid)
    n = len(stream)
    torch.manual_seed(0)
    model = M2(TINY)
    # Reference: one chunk at a time, nothing batched.
    tokens = torch.from_numpy(stream.read(0, n))
    torch.set_grad_enabled(False)
    chunks = [tokens[s:s + 32] for s in range(0, n - 1, 31)]  # 31 predictions each, the last fewer
    ref = sum(F.cross_entropy(model(c[:-1][None])[0], c[1:], reduction="sum").double() for c in chunks)
    for seq_len, batch in ((31, 1), (31, 5), (31, 64)):
        loss_sum, count = evaluate(model, stream, seq_len, batch, torch.device("cpu"), nullcontext())
        assert count == n - 1
        assert loss_sum == pytest.approx(float(ref), rel=1e-5)
    loss_sum, count = evaluate(model, stream, 7, 4, torch.device("cpu"), nullcontext())
    assert count == n - 1
    torch.set_grad_enabled(True)


def test_train_summary(datasets, tmp_path):
    train, valid = datasets
    s = train_m2(train, valid, TINY, 80, eval_every=40, out_dir=tmp_path / "run", **SMALL_RUN)
    assert s == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["completed"] and s["steps"] == 80 and [h["step"] for h in s["history"]] == [40, 80]
    assert s["bits_per_byte"] == pytest.approx(
        metrics.bits_per_byte(s["valid_loss_nats"], valid.total_tokens, valid.total_bytes))
    assert s["bytes_per_token"] == 1.0 and s["uniform_bits_per_byte"] == 8.0
    n = M2(TINY).non_embedding_params()
    assert s["non_embedding_params"] == n
    assert s["m1_flops_per_byte"] == 1000.0 and s["flops_per_byte"] == pytest.approx(2 * n + 1000.0)
    assert s["train_tokens"] == 80 * 8 * 32 and s["tokens_per_second"] > 0
    assert s["bits_per_byte"] < 3.2, "M2 learns the words (uniform: 8 bits/byte)"


def test_resume_is_exact(datasets, tmp_path):
    """Stopped at step 5 and resumed = never stopped: bit-identical weights. Dropout is on, so
    the RNG state must travel too; evaluations between steps must not disturb anything."""
    train, valid = datasets
    cfg = M2Config(**{**TINY.__dict__, "dropout": 0.1})
    kw = dict(eval_every=4, micro_batch_size=4, **SMALL_RUN)
    whole = train_m2(train, valid, cfg, 12, out_dir=tmp_path / "a", **kw)
    part = train_m2(train, valid, cfg, 12, out_dir=tmp_path / "b", stop_after=5, **kw)
    assert not part["completed"] and part["steps"] == 5
    resumed = train_m2(train, valid, cfg, 12, out_dir=tmp_path / "b", resume=True, **kw)
    assert resumed["completed"] and resumed["steps"] == 12

    a, b = weights_of(tmp_path / "a"), weights_of(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == whole["history"]

    with pytest.raises(ValueError, match="pass resume=True"):
        train_m2(train, valid, cfg, 12, out_dir=tmp_path / "a", **kw)
    with pytest.raises(ValueError, match=r"settings differ from the checkpoint's: lr 0\.003 -> 0\.1"):
        train_m2(train, valid, cfg, 12, out_dir=tmp_path / "a", resume=True, **{**kw, "lr": 0.1})


def test_options_object_and_keywords_are_one_run(datasets, tmp_path):
    """TrainOptions and keyword options describe the same run; keywords override the object's
    fields, and an unknown option is an error."""
    train, valid = datasets
    by_kw = train_m2(train, valid, TINY, 4, out_dir=tmp_path / "kw", **SMALL_RUN)
    by_obj = train_m2(train, valid, TINY, 4, TrainOptions(**{**SMALL_RUN, "lr": 0.5}), lr=3e-3,
                      out_dir=tmp_path / "obj")
    timings = ("train_time_s", "tokens_per_second")
    assert {k: v for k, v in by_kw.items() if k not in timings} == {k: v for k, v in by_obj.items() if k not in timings}
    a, b = weights_of(tmp_path / "kw"), weights_of(tmp_path / "obj")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TypeError, match="learning_rate"):
        train_m2(train, valid, TINY, 4, learning_rate=1e-3, **SMALL_RUN)


def test_time_limit_checkpoints_and_stops(datasets, tmp_path):
    train, valid = datasets
    s = train_m2(train, valid, TINY, 50, out_dir=tmp_path / "run", time_limit=0, **SMALL_RUN)
    assert not s["completed"] and s["steps"] == 1 and s["bits_per_byte"] is None
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_ddp_matches_one_process(datasets, tmp_path):
    """torchrun with 2 CPU processes (gloo), each taking half of the global batch of 8, follows
    the one-process run. Not bitwise: DDP averages two half-batch mean gradients where one
    process takes one mean over the whole batch, so float sums run in another order. Adam
    divides by the root of the second moment, which turns a rounding difference in a near-zero
    gradient into up to a fraction of lr (3e-3) per step; measured after 6 steps: 6e-8 on an
    AMD EPYC (AVX2), 5.9e-6 on an Intel Xeon with AVX-512 (other BLAS kernels)."""
    train, valid = datasets
    args = ["train-m2", "--train", str(train.path), "--valid", str(valid.path), "--preset", "nano",
            "--steps", "6", "--batch-size", "8", "--seq-len", "32", "--warmup", "2", "--lr", "3e-3",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ncx.cli", *args, "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0

    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    a, b = weights_of(tmp_path / "ddp"), weights_of(tmp_path / "one")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # a step moves weights by up to lr = 3e-3
    assert ddp["valid_loss_nats"] == pytest.approx(one["valid_loss_nats"], rel=1e-5)


def test_cli_errors(tmp_path, capsys, datasets):
    train, _ = datasets
    code = main(["train-m2", "--train", str(train.path), "--valid", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "missing: dataset directory not found" in capsys.readouterr().err


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_checkpoint_is_refused_without_running_it(tmp_path):
    """A checkpoint is loaded with weights_only: an object that would run code when unpickled
    is refused with a clear error and never runs; a truncated file is a clear error too."""
    from ncx.train_m2 import load_model

    marker = tmp_path / "ran"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": ("ncx-m2-checkpoint", 1), "payload": _RunsCodeWhenUnpickled(str(marker))}, evil)
    with pytest.raises(ValueError, match="refused: it holds objects other than tensors"):
        load_model(evil)
    assert not marker.exists()
    evil.write_bytes(evil.read_bytes()[:40])
    with pytest.raises(ValueError, match="unreadable M2 checkpoint"):
        load_model(evil)
