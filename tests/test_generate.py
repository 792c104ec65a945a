"""ncx generate: any token sequence M2 can produce decodes, for every method (lenient
decode_tokens never fails), and `ncx generate` samples and prints text end to end."""
import zlib

import numpy as np
import pytest
import torch

from ncx.cli import main
from ncx.experiment import parse_method, run_experiment
from ncx.generate import dataset_prompts, method_of_dataset, prompt_length, sample_texts
from ncx.m1 import M1, preset as m1_preset, save_m1
from ncx.m2 import M2, M2Config
from ncx.methods import (ACMethod, BytesMethod, EqualInfoACMethod, GZipMethod, SentencePieceMethod,
                         StaticACMethod)
from ncx.dataset import open_dataset



def corpus(rng, n):
    words = [b"the ", b"cat ", b"sat ", b"on ", b"a ", b"mat", b".\n", b"\xc3\xa9t\xc3\xa9 ", b"Zebra, ", b"42 "]
    return [b"".join(words[i] for i in rng.integers(0, len(words), size=int(rng.integers(3, 40))))
            for _ in range(n)]


@pytest.fixture(scope="module")
def docs():
    return corpus(np.random.default_rng(0), 40)


@pytest.fixture(scope="module")
def tiny_m1():
    torch.manual_seed(0)
    return M1(m1_preset("tiny")).eval()  # random weights: near-uniform M1, long windows of garbage


@pytest.fixture(scope="module")
def methods(docs, tiny_m1):
    coder = tiny_m1.coder()
    return {m.name: m for m in [
        BytesMethod(), SentencePieceMethod.train(docs, 300), GZipMethod(256), GZipMethod(65536),
        StaticACMethod.fit(docs, v=256), StaticACMethod.fit(docs, v=65536), ACMethod(coder, v=256),
        ACMethod(coder, v=65536), EqualInfoACMethod(coder, b=16, v=256), EqualInfoACMethod(coder, b=16, v=65536),
        EqualInfoACMethod(coder, b=24, v=65536)]}


NAMES = ["Bytes", "SentencePiece[v=300]", "GZip[v=256]", "GZip[v=65k]", "StaticAC[v=256]", "StaticAC[v=65k]",
         "AC[v=256]", "AC[v=65k]", "EqualInfoAC[b=16, v=256]", "EqualInfoAC[b=16, v=65k]",
         "EqualInfoAC[b=24, v=65k]"]


def adversarial_sequences(method, rng, docs):
    v = method.vocab_size
    seqs = [rng.integers(0, v, size=n) for n in (0, 1, 2, 3, 5, 16, 61)]
    seqs += [np.zeros(9, np.int64), np.full(3, v - 1), np.tile([0, v - 1], 6), np.full(3, v - 2)]
    real = method.encode_batch(docs[:3])
    seqs += [real[0].tokens[:-1], np.concatenate([real[1].tokens, rng.integers(0, v, 7)]),
             np.concatenate([real[0].tokens, real[2].tokens]), real[1].tokens[1:]]
    return seqs


@pytest.mark.parametrize("name", NAMES)
def test_random_token_sequences_always_decode(name, methods, docs):
    """Uniform random tokens (what an untrained M2 emits), extremes, and real encodings cut,
    glued or followed by garbage: decode_tokens returns bytes for each, never raises."""
    method = methods[name]
    rng = np.random.default_rng(len(name))
    seqs = adversarial_sequences(method, rng, docs)
    out = method.decode_tokens(seqs)
    assert len(out) == len(seqs) and all(isinstance(b, bytes) for b in out)
    # Batched or one at a time: the same bytes (Equal-Info windows decode independently).
    assert [method.decode_tokens([s])[0] for s in seqs[:6]] == out[:6]


@pytest.mark.parametrize("name", NAMES)
def test_a_code_of_all_ones_decodes(name, methods):
    """Tokens whose bits are all ones (the top of every interval), long enough to fill the
    coder's whole code register, with and without more tokens after them."""
    method = methods[name]
    top = method.vocab_size - 1
    seqs = [np.full(n, top) for n in (8, 9, 40)] + [np.concatenate([np.full(8, top), np.arange(5)])]
    out = method.decode_tokens(seqs)
    assert len(out) == len(seqs) and all(isinstance(b, bytes) for b in out)


@pytest.mark.parametrize("name", NAMES)
def test_real_tokens_decode_leniently_to_their_text(name, methods, docs):
    """Without side information, tokens of real text still decode to that text (every method
    here needs none: the documents have no Equal-Info exceptions)."""
    method = methods[name]
    encoded = method.encode_batch(docs[:6])
    assert not any(e.exceptions for e in encoded)
    assert method.decode_tokens([e.tokens for e in encoded]) == docs[:6]


def test_gzip_garbage_decodes_to_nothing(methods):
    good = zlib.compress(b"hello world, hello world")
    method = methods["GZip[v=256]"]
    out = method.decode_tokens([np.frombuffer(b"\x00garbage", np.uint8), np.frombuffer(good[:-3], np.uint8),
                                np.frombuffer(good + b"junk", np.uint8)])
    assert out[0] == b"" and isinstance(out[1], bytes) and out[2] == b"hello world, hello world"


@pytest.mark.parametrize("name", NAMES)
def test_sampling_from_an_m2_decodes(name, methods):
    """sample_texts: a random M2 of the method's vocabulary samples a batch and every sample
    decodes (prompt and whole sequence), at temperature 1, with top-k, and greedily."""
    method = methods[name]
    torch.manual_seed(1)
    model = M2(M2Config(vocab_size=method.vocab_size, n_layer=1, n_head=2, n_embd=16, mlp=32, context=64)).eval()
    prompts = torch.randint(0, method.vocab_size, (3, prompt_length(method)))
    for kw in ({"temperature": 1.0}, {"temperature": 0.7, "top_k": 5}, {"temperature": 0.0}):
        samples = sample_texts(model, method, prompts, 20, seed=3, **kw)
        assert len(samples) == 3
        for s, p in zip(samples, prompts):
            assert len(s["tokens"]) == prompts.shape[1] + 20 and np.array_equal(s["prompt_tokens"], p.numpy())
            assert isinstance(s["text"], bytes) and isinstance(s["prompt_text"], bytes)
    again = sample_texts(model, method, prompts, 20, seed=3)
    assert [s["text"] for s in again] == [s["text"] for s in sample_texts(model, method, prompts, 20, seed=3)]


def test_prompt_length():
    coder = M1(m1_preset("tiny")).coder()
    assert prompt_length(EqualInfoACMethod(coder, b=16, v=256)) == 2
    assert prompt_length(EqualInfoACMethod(coder, b=16, v=65536)) == 1
    assert prompt_length(EqualInfoACMethod(coder, b=24, v=65536)) == 2
    assert prompt_length(GZipMethod(65536)) == prompt_length(BytesMethod()) == 1


# ------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def trained(tmp_path_factory, docs, tiny_m1):
    """An EqualInfoAC[b=16, v=256] dataset and a (barely) trained M2 over it, via ncx experiment."""
    out = tmp_path_factory.mktemp("gen")
    m1_path = out / "m1.safetensors"
    save_m1(tiny_m1, str(m1_path))
    run_experiment(["equal_info_ac[b=16,v=256]"], ["nano"], docs[:30], docs[30:], tiny_m1, out, 2, batch_size=2,
                   seq_len=16, warmup=1, log=None)
    slug = parse_method("equal_info_ac[b=16,v=256]").slug
    return out / "m2" / slug / "nano", out / "data" / slug / "heldout", m1_path


def test_cli_generate(trained, capsys):
    run_dir, data_dir, m1_path = trained
    args = ["generate", "--m2", str(run_dir), "--data", str(data_dir), "--m1", str(m1_path), "--n-samples", "3",
            "--tokens", "12", "--seed", "5"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("EqualInfoAC[b=16, v=256]: 3 samples of 12 tokens")
    assert first.count("--- sample ") == 3 and "2 prompt + 12 generated tokens" in first
    assert main(args) == 0 and capsys.readouterr().out == first  # a seed fixes the samples
    assert main(args + ["--repr", "--temperature", "0"]) == 0
    assert "(prompt b'" in capsys.readouterr().out


def test_cli_generate_errors(trained, capsys, tmp_path):
    run_dir, data_dir, m1_path = trained
    assert main(["generate", "--m2", str(run_dir), "--data", str(data_dir)]) == 2
    assert "--m1" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    torch.manual_seed(9)
    save_m1(M1(m1_preset("tiny")), str(other))
    assert main(["generate", "--m2", str(run_dir), "--data", str(data_dir), "--m1", str(other)]) == 2
    assert "wrong M1" in capsys.readouterr().err
    ds = open_dataset(data_dir)
    assert dataset_prompts(ds, 5, 2).shape == (5, 2)
    with pytest.raises(ValueError):
        dataset_prompts(ds, 1, 10 ** 6)
    assert method_of_dataset(ds, m1_path).name == "EqualInfoAC[b=16, v=256]"
