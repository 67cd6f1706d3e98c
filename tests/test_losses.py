"""gpt2/losses.py against F.cross_entropy on the model's own logits: smoothing, chunking
and the bio penalty change the training loss only; the default (evaluation) stays plain."""
import pytest
import torch
import torch.nn.functional as F

from gpt2 import losses
from gpt2.model import GPT, GPTConfig


def model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(block_size=8, vocab_size=50, n_layer=2, n_head=2, n_embd=16,
                                   dropout=0.0), **overrides}))


def batch(seed=1, size=3, vocab=50, block=8):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (size, block), generator=gen)
    targets = torch.randint(0, vocab, (size, block), generator=gen)
    targets[0, :3] = -1
    return idx, targets


def plain_ce(logits, targets, **kw):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=-1, **kw)


def test_default_loss_is_plain_cross_entropy_of_the_unpadded_logits():
    m = model()
    idx, targets = batch()
    logits, loss = m(idx, targets)
    assert logits.shape == (3, 8, 50)  # padding (to 64) cut off
    assert loss.item() == pytest.approx(plain_ce(logits, targets).item(), rel=1e-6)


def test_label_smoothing_matches_f_cross_entropy():
    m = model()
    idx, targets = batch()
    logits, loss = m(idx, targets, losses.Loss(label_smoothing=0.1))
    assert loss.item() == pytest.approx(plain_ce(logits, targets, label_smoothing=0.1).item(),
                                        rel=1e-6)
    assert loss.item() != pytest.approx(plain_ce(logits, targets).item(), rel=1e-5)
    assert m(idx, targets)[1].item() == pytest.approx(plain_ce(logits, targets).item(), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_equals_the_plain_one(smoothing):
    results = []
    for chunk in (0, 7):  # 7 does not divide 3 x 8 positions: a short last chunk
        m = model()
        logits, loss = m(*batch(), losses.Loss(label_smoothing=smoothing, chunk_tokens=chunk))
        assert (logits is None) == bool(chunk)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-6), name


def test_chunked_loss_recomputes_each_chunk(monkeypatch):
    """ceil(24 / 7) = 4 chunks, each one checkpointed call of the head."""
    calls = []
    real = losses.checkpoint
    monkeypatch.setattr(losses, "checkpoint", lambda fn, h, t, **kw: calls.append(len(t))
                        or real(fn, h, t, **kw))
    model()(*batch(), losses.Loss(chunk_tokens=7))
    assert calls == [7, 7, 7, 3]


def test_bio_penalty_adds_the_weighted_mean_abs_activation_and_is_logged():
    m = model(mlp="bio", bio_sparsity_penalty=0.5)
    with torch.no_grad():  # channels of varied frequency and phase
        for block in m.transformer.h:
            block.mlp.bio_w.uniform_(0.5, 2)
            block.mlp.bio_phi.uniform_(-1, 1)
    idx, targets = batch()
    activations = []
    for block in m.transformer.h:  # the bio activation, recomputed from its definition
        block.mlp.c_fc.register_forward_hook(lambda mod, i, h, mlp=block.mlp: activations.append(
            (torch.sin(mlp.bio_w * h + mlp.bio_phi) * torch.tanh(h)).detach()))
    logits, loss = m(idx, targets, losses.Loss(activation_penalty=0.5))
    expected = torch.stack([a.abs().mean() for a in activations]).mean()
    assert loss.item() == pytest.approx(plain_ce(logits, targets).item() + 0.5 * expected.item(),
                                        rel=1e-5)
    share = torch.cat([(a.abs() < 1e-2).float().flatten() for a in activations]).mean()
    assert m.stats()["activation_sparsity"] == pytest.approx(share.item(), rel=1e-5)
    assert m(idx, targets)[1].item() == pytest.approx(plain_ce(logits, targets).item(), rel=1e-5)
    assert model(mlp="bio").stats() == {}


def test_training_loss_reads_the_config(tiny_config):
    from lib import config as cfglib
    cfg = cfglib.load(tiny_config("LABEL_SMOOTHING=0.2", "LOSS_CHUNK_TOKENS=5", "MLP_BIO=y",
                                  "BIO_SPARSITY_PENALTY=0.25"))
    assert losses.training_loss(cfg) == losses.Loss(0.2, 5, 0.25)
    assert losses.training_loss(cfglib.load(tiny_config(name="plain"))) == losses.PLAIN
