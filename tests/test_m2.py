"""M2: shapes, causality, the parameter counts of the paper's sizes, sampling."""
import pytest
import torch

from ncx.m2 import M2, PRESETS, M2Config, preset



def tiny(**kw) -> M2Config:
    return M2Config(**{"vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32, "mlp": 64,
                       "context": 16, **kw})


def expected_non_embedding(cfg: M2Config) -> int:
    """Per layer: q, k, v, out (4 d^2), MLP in and out (2 d mlp), two LayerNorms (4 d);
    plus the final LayerNorm (2 d). Rotary positions and the tied embedding add nothing."""
    d = cfg.n_embd
    return cfg.n_layer * (4 * d * d + 2 * d * cfg.mlp + 4 * d) + 2 * d


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts(name):
    cfg = preset(name, vocab_size=65536)
    with torch.device("meta"):  # sizes without allocating (2b would take 10 GB)
        model = M2(cfg)
    n = model.non_embedding_params()
    assert n == expected_non_embedding(cfg)
    # The usual estimate 12 L d^2 (MLP = 4 d) is within 0.5% for the paper's sizes.
    assert n == pytest.approx(12 * cfg.n_layer * cfg.n_embd ** 2, rel=0.005 if cfg.n_embd >= 512 else 0.02)
    if cfg.n_embd >= 512:
        assert cfg.head_dim == 64


def test_preset_sizes():
    def n(name):
        with torch.device("meta"):
            return M2(preset(name, 256)).non_embedding_params()
    assert n("25m") == 18_887_680  # the paper's smallest M2: about 19M outside the embedding
    assert 0.15e6 < n("nano") < 0.25e6 and 1e6 < n("micro") < 2e6
    with pytest.raises(ValueError, match="unknown M2 preset 'huge'"):
        preset("huge", 256)


def test_forward_shapes_and_tied_embeddings():
    torch.manual_seed(0)
    model = M2(tiny())
    idx = torch.randint(0, 50, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 50) and logits.dtype == torch.float32
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="exceeds the model's context 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="heads of even width"):
        tiny(n_head=3)


def test_causal_and_position_aware():
    torch.manual_seed(0)
    model = M2(tiny()).eval()
    idx = torch.randint(0, 50, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7]), "a later token must not affect earlier predictions"
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    # Rotary positions: the same token pair in another order gives another prediction.
    x = torch.tensor([[3, 9, 3]])
    y = torch.tensor([[9, 3, 3]])
    assert not torch.allclose(model(x)[0, -1], model(y)[0, -1])


def test_generate():
    torch.manual_seed(0)
    model = M2(tiny())
    prompt = torch.randint(0, 50, (2, 5))
    out = model.generate(prompt, 20, temperature=0)  # runs past the context of 16
    assert out.shape == (2, 25) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, model.generate(prompt, 20, top_k=1)), "top_k=1 is greedy"
    g = torch.Generator().manual_seed(1)
    sample = model.generate(prompt[0], 8, temperature=1.0, top_k=5, generator=g)
    assert sample.shape == (13,) and int(sample.max()) < 50
    assert model.training, "generate restores the training mode"
