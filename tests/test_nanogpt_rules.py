"""nanoGPT's rules (model.py's _init_weights and configure_optimizers), each computed here
from the model's own named parameters and held against ours.

Where ours differs on purpose the test names the difference (and the knob's help says so):
- DECAY_EMBEDDINGS=n takes the embeddings (and so a tied head) out of weight decay; nanoGPT
  always decays them (our default, y, is nanoGPT's rule);
- the vocabulary is padded to a multiple of 64 and the padding rows start at zero (they are
  never looked up and their logits are cut off); nanoGPT draws its padding rows like the
  others;
- WEIGHT_TYING=n unties the head; nanoGPT always ties it (our default, y)."""
import math

import pytest
import scipy.stats
import torch
from torch import nn

from gpt2.build import build_model
from lib import config as cfglib
from lib import optim
from tests.conftest import tiny_overrides

VOCAB = 65  # character-level Shakespeare
N_LAYER = 4
# Large enough that each tensor's standard deviation is known to within a few per cent.
WIDE = ["N_LAYER=4", "N_HEAD=4", "N_EMBD=256", "BLOCK_SIZE=64"]


def _model(*extra):
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default", tiny_overrides(*extra))
    torch.manual_seed(0)
    return cfg, build_model(cfg, VOCAB)


def _nanogpt_groups(model) -> tuple:
    """nanoGPT's configure_optimizers: every parameter with dim >= 2 decays (embeddings
    included), none with dim < 2 (biases, norm weights)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decay = {id(p) for p in params.values() if p.dim() >= 2}
    return decay, {id(p) for p in params.values() if p.dim() < 2}


@pytest.mark.parametrize("extra", [[], ["BIAS=y"], ["BIAS=y", "WEIGHT_TYING=n"],
                                   ["NORM=rmsnorm", "POSITIONS=rope", "MLP=swiglu"]])
def test_weight_decay_groups_are_nanogpts(extra):
    cfg, model = _model(*extra)
    assert cfg.DECAY_EMBEDDINGS  # the default is nanoGPT's rule
    decay, no_decay = _nanogpt_groups(model)
    groups = optim.build(cfg, model).param_groups
    assert [{id(p) for p in g["params"]} for g in groups] == [decay, no_decay]
    assert [g["weight_decay"] for g in groups] == [cfg.WEIGHT_DECAY, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_decay_embeddings_off_is_the_named_difference():
    """DECAY_EMBEDDINGS=n: nanoGPT's rule less exactly the embedding tables."""
    cfg, model = _model("DECAY_EMBEDDINGS=n")
    decay, no_decay = _nanogpt_groups(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    assert {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)} == embeddings
    groups = optim.build(cfg, model).param_groups
    assert [{id(p) for p in g["params"]} for g in groups] == [decay - embeddings,
                                                              no_decay | embeddings]


def _std_interval(values: torch.Tensor, level: float = 1e-6) -> tuple:
    """The (1 - level) chi-square interval of the standard deviation of normal values
    around mean 0."""
    x = values.double().flatten()
    n = x.numel()
    ss = float((x ** 2).sum())
    return (math.sqrt(ss / scipy.stats.chi2.ppf(1 - level / 2, n)),
            math.sqrt(ss / scipy.stats.chi2.ppf(level / 2, n)))


def _expected_std(name: str) -> float:
    """nanoGPT: N(0, 0.02) for Linear and Embedding weights, N(0, 0.02 / sqrt(2 n_layer))
    for the projections that write into the residual stream (c_proj)."""
    return 0.02 / math.sqrt(2 * N_LAYER) if name.endswith("c_proj.weight") else 0.02


@pytest.mark.parametrize("extra", [["BIAS=y"], ["BIAS=y", "FUSED_QKV=n", "WEIGHT_TYING=n"]])
def test_init_is_nanogpts(extra):
    _, model = _model(*WIDE, *extra)
    linear_or_embedding = {f"{m}.weight" for m, mod in model.named_modules()
                           if isinstance(mod, (nn.Linear, nn.Embedding))}
    checked = set()
    for name, p in model.named_parameters():
        if name not in linear_or_embedding:
            continue
        w = p.detach()
        if name in ("transformer.wte.weight", "lm_head.weight"):
            # the named difference: padding rows start at zero; the real rows as nanoGPT
            assert w.shape[0] == 128 and not w[VOCAB:].any()
            w = w[:VOCAB]
        lo, hi = _std_interval(w)
        assert hi / lo < 1.1, f"{name}: too few values for a tight estimate"
        assert lo < _expected_std(name) < hi, (name, lo, hi)
        assert abs(float(w.double().mean())) < 5 * _expected_std(name) / math.sqrt(w.numel())
        # and normal: a Kolmogorov-Smirnov test against N(0, expected std)
        pvalue = scipy.stats.kstest(w.double().flatten().numpy(), "norm",
                                    args=(0, _expected_std(name))).pvalue
        assert pvalue > 1e-4, (name, pvalue)
        checked.add(name.rsplit(".", 2)[-2])
    assert {"wte", "wpe", "c_fc", "c_proj"} <= checked
    assert ({"c_attn"} if "FUSED_QKV=n" not in extra else {"c_q", "c_k", "c_v"}) <= checked


def test_biases_start_at_zero_and_norms_at_one():
    _, model = _model("BIAS=y")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(linears) == 4 * len(model.transformer.h)  # c_attn, c_proj, c_fc, c_proj
    assert len(norms) == 2 * len(model.transformer.h) + 1
    assert all(m.bias is not None and not m.bias.any() for m in linears + norms)
    assert all(bool((m.weight == 1).all()) for m in norms)
    assert model.lm_head.bias is None  # nanoGPT's head has no bias either


def test_head_is_tied_to_the_token_embedding():
    _, model = _model()
    assert model.lm_head.weight is model.transformer.wte.weight
    # and it is one parameter to the optimizer, as in nanoGPT
    assert sum(p is model.lm_head.weight for p in model.parameters()) == 1
    _, untied = _model("WEIGHT_TYING=n")  # the named difference: untied on request
    assert untied.lm_head.weight is not untied.transformer.wte.weight
