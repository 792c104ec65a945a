"""M1: shapes, the KV-cache coding path against the full forward, the
bit-exact batch invariance the coder relies on, checkpoints, training and the
train-m1 command."""
from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from ncx.cli import main as cli_main
from ncx.checkpoint import weights_hash
from ncx.corpus import corpus_hash, default_corpus
from ncx.m1 import BOS, EOS, PRESETS, VOCAB_SIZE, M1, M1Coder, M1Config, load_m1, preset, save_m1
from ncx.train_m1 import heldout_bits_per_byte, train_m1


def tiny_model(seed: int = 0) -> M1:
    """A tiny M1 with its weights shaken: norms away from 1 and larger
    activations, so that every part of the coding path matters."""
    torch.manual_seed(seed)
    model = M1(preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# ------------------------------------------------------------ model basics
def test_shapes_and_dtypes():
    model = tiny_model()
    tokens = torch.randint(0, VOCAB_SIZE, (3, 17))
    tokens[:, 0] = BOS
    with torch.no_grad():
        logits = model(tokens)
    assert logits.shape == (3, 17, VOCAB_SIZE) and logits.dtype == torch.float32
    coder = model.coder()
    assert isinstance(coder, M1Coder) and coder.weights_hash == model.weights_hash
    out = coder(torch.tensor([BOS, BOS]), torch.tensor([0, 0]))
    assert out.shape == (2, VOCAB_SIZE) and out.dtype == torch.float32
    assert (coder.vocab_size, coder.bos, coder.logits, coder.max_symbols) == (257, 256, True, 63)
    assert BOS == EOS == 256


def test_paper_preset_and_flops_per_byte():
    c = PRESETS["paper"]
    assert (c.n_layer, c.n_embd, c.n_head, c.head_dim, c.mlp, c.context) == (3, 256, 4, 64, 1024, 1024)
    for name, config in PRESETS.items():
        model = M1(config)
        counted = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("wte."))
        assert config.non_embedding_params == counted, name
        assert config.flops_per_byte == 2 * counted
    assert 2_000_000 < PRESETS["paper"].non_embedding_params < 3_500_000  # "about 3M"


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="even"):
        M1Config(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="context"):
        M1Config(context=1)
    with pytest.raises(ValueError, match="exact fixed-point"):
        M1Config(mlp=16384)
    with pytest.raises(ValueError, match="unknown M1 preset 'huge'"):
        preset("huge")
    c = preset("small", context=128)
    assert M1Config.from_json(c.to_json()) == c and c.n_embd == PRESETS["small"].n_embd
    with pytest.raises(ValueError, match="unknown fields"):
        M1Config.from_json(json.dumps({"width": 3}))
    with pytest.raises(ValueError, match="context"):
        M1(preset("tiny"))(torch.zeros(1, 65, dtype=torch.int64))


# ------------------------------------------------------------ KV-cache coding path
def test_step_matches_full_forward_with_context_resets():
    """Feeding tokens one at a time through the cache gives (up to float
    rounding) the full-window logits, across a context reset, for streams at
    different offsets; positions run to the end of the context."""
    model = tiny_model(1)
    T = model.config.context
    gen = torch.Generator().manual_seed(0)
    n = 2 * T
    seqs = torch.randint(0, VOCAB_SIZE, (3, n), generator=gen)
    # Each stream's contexts: full ones from its first reset on, at other offsets.
    bounds = [[0] + list(range(first, n, T)) + [n] for first in (T, T // 2, 7)]
    positions = torch.zeros(3, n, dtype=torch.int64)
    for b, cuts in enumerate(bounds):
        for lo, hi in zip(cuts, cuts[1:]):
            seqs[b, lo] = BOS
            positions[b, lo:hi] = torch.arange(hi - lo)
    coder = model.coder()
    got = torch.stack([coder(seqs[:, t], positions[:, t]) for t in range(n)], dim=1)  # (3, n, 257)
    with torch.no_grad():
        for b, cuts in enumerate(bounds):
            for lo, hi in zip(cuts, cuts[1:]):
                want = model(seqs[b:b + 1, lo:hi])[0]
                torch.testing.assert_close(got[b, lo:hi], want, rtol=1e-4, atol=1e-4)


def run_stream(model: M1, batch: int, row: int, seed: int, steps: int = 16, warmup: int = 36,
               stream_seed: int = 99) -> torch.Tensor:
    """The logits one target stream gets (steps, 257) when it sits in `row`
    of a batch of `batch` streams. The companions are random: their tokens,
    and their positions, which advance, stay or restart at random and reach
    far (so the attention window and the caches' sizes vary from batch to
    batch). The target's own (token, position) sequence is fixed by
    stream_seed: a fresh context after the warm-up, with two restarts."""
    g_target = torch.Generator().manual_seed(stream_seed)
    target_tokens = torch.randint(0, VOCAB_SIZE, (steps,), generator=g_target)
    target_positions = torch.tensor([t % 11 for t in range(steps)])
    gen = torch.Generator().manual_seed(seed)
    coder = model.coder()
    last = model.config.context - 1
    pos = torch.zeros(batch, dtype=torch.int64)
    out = []
    for t in range(warmup + steps):
        tokens = torch.randint(0, VOCAB_SIZE, (batch,), generator=gen)
        if t >= warmup:
            pos[row], tokens[row] = target_positions[t - warmup], target_tokens[t - warmup]
        logits = coder(tokens, pos)
        if t >= warmup:
            out.append(logits[row])
        move = torch.randint(0, 10, (batch,), generator=gen)  # 0: restart, 1: stay, else advance
        pos = torch.where(move == 0, 0, torch.where(move == 1, pos, (pos + 1).clamp(max=last)))
    return torch.stack(out)


def test_step_is_bit_identical_across_batches_orders_and_companions():
    model = tiny_model(2)
    alone = run_stream(model, batch=1, row=0, seed=0)
    for batch, row, seed in [(3, 2, 1), (64, 17, 2), (64, 17, 3), (1000, 999, 4), (1000, 0, 5)]:
        got = run_stream(model, batch, row, seed)
        assert torch.equal(got, alone), (batch, row, seed, (got - alone).abs().max())
    # Companions really do differ between runs, so the equality above is not vacuous.
    assert not torch.equal(run_stream(model, 3, 0, seed=1, stream_seed=5), alone)


def test_step_is_bit_identical_across_thread_counts():
    model = tiny_model(3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_stream(model, 100, 23, seed=7, warmup=24)
        torch.set_num_threads(2)
        two = run_stream(model, 100, 5, seed=8, warmup=24)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_step_checks_its_inputs():
    coder = tiny_model().coder()
    with pytest.raises(ValueError, match="same length"):
        coder(torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="positions must be in"):
        coder(torch.tensor([1]), torch.tensor([64]))
    coder(torch.tensor([BOS, BOS]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="tokens must be in"):
        coder(torch.tensor([3, 257]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="stream 1 skipped ahead to position 2"):
        coder(torch.tensor([BOS, BOS]), torch.tensor([0, 2]))
    # Position 0 always holds BOS: the token passed there does not matter.
    a = tiny_model().coder()(torch.tensor([5]), torch.tensor([0]))
    b = tiny_model().coder()(torch.tensor([BOS]), torch.tensor([0]))
    assert torch.equal(a, b)


def test_coder_drives_equal_info_windows_round_trip():
    """End to end with the window coder: documents encoded in one batch
    size decode exactly in another, through M1's coding path."""
    from ncx.model_coding import decode_windows, encode_windows

    model = tiny_model(4)
    docs = [b"", b"The quick brown fox jumps over the lazy dog.", bytes(range(0, 256, 5)), b"\xff" * 40]
    encoded = encode_windows(docs, model.coder(), budget_bits=16, precision=14, eos=EOS, batch=4)
    decoded = decode_windows(encoded, model.coder(), budget_bits=16, precision=14, eos=EOS, batch=3)
    assert [bytes(d.to(torch.uint8).tolist()) for d in decoded] == docs


# ------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(5)
    path = str(tmp_path / "m1.safetensors")
    digest = save_m1(model, path, summary={"steps": 3})
    loaded, info = load_m1(path)
    assert digest == weights_hash(model) == loaded.weights_hash == info["weights_hash"]
    assert info["config"] == model.config and info["summary"] == {"steps": 3}
    tokens = torch.randint(0, VOCAB_SIZE, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.coder().weights_hash == digest
    assert not os.path.exists(path + f".tmp{os.getpid()}")


def test_weights_hash_sees_every_weight():
    model = tiny_model(6)
    before = weights_hash(model)
    with torch.no_grad():
        model.blocks[0].norm2.weight[3] += 1e-3
    assert weights_hash(model) != before


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "m1.safetensors")
    save_m1(tiny_model(), path)
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0x01  # a bit of the last tensor's data
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="does not match the recorded.*corrupt"):
        load_m1(path)


def test_wrong_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="no such M1 checkpoint"):
        load_m1(str(tmp_path / "absent.safetensors"))
    text = tmp_path / "notes.safetensors"
    text.write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_m1(str(text))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_m1(str(truncated))
    other = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, other, metadata={"purpose": "something else"})
    with pytest.raises(ValueError, match="not an M1 checkpoint"):
        load_m1(other)


# ------------------------------------------------------------ training
def test_training_lowers_heldout_bits_per_byte():
    config = preset("tiny")
    train = default_corpus("train", max_bytes=60_000)
    heldout = default_corpus("heldout", max_bytes=8_000)
    torch.manual_seed(0)
    before = heldout_bits_per_byte(M1(config), heldout)
    model, summary = train_m1(config, train, heldout, steps=40, batch_size=16, eval_every=20,
                              progress=False, log=None)
    assert before > 7.5  # an untrained model is about uniform over 257 symbols
    assert summary["heldout_bits_per_byte"] < before - 1.5
    assert summary["steps"] == 40 and [s for s, _ in summary["heldout_history"]] == [20, 40]
    assert summary["train_corpus_sha256"] == corpus_hash(train)
    assert summary["heldout_bits_per_byte"] == pytest.approx(heldout_bits_per_byte(model, heldout), abs=1e-4)
    # Seeded and step-bounded: the same run again gives the same weights.
    again, _ = train_m1(config, train, heldout, steps=40, batch_size=16, eval_every=0, progress=False, log=None)
    assert again.weights_hash == model.weights_hash


def test_training_rejects_too_little_data():
    with pytest.raises(ValueError, match="fewer than one window"):
        train_m1(preset("tiny"), [b"short"], steps=1, progress=False, log=None)


def test_train_m1_command(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(6):
        (data / f"{i}").mkdir(parents=True)
        (data / f"{i}" / "doc.txt").write_bytes(f"Document {i} says hello. ".encode() * 20)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"text": "Held-out text says hello too."}) + "\n")
    out = str(tmp_path / "ckpt" / "m1.safetensors")
    rc = cli_main(["train-m1", "--preset", "tiny", "--data", str(data), "--heldout", str(heldout),
                   "--steps", "3", "--batch-size", "2", "--context", "32", "--threads", "1", "--out", out])
    assert rc == 0 and f"saved {out}" in capsys.readouterr().out
    model, info = load_m1(out)
    assert model.config.context == 32
    s = info["summary"]
    assert s["steps"] == 3 and s["preset"] == "tiny" and s["heldout_bits_per_byte"] > 0
    # User mistakes are one-line errors, exit status 2.
    assert cli_main(["train-m1", "--data", str(tmp_path / "nope.txt"), "--out", out]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
    assert cli_main(["train-m1", "--data", str(heldout), "--out", out]) == 2
    assert "cannot be split" in capsys.readouterr().err
