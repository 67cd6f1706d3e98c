"""GELU: the choice selects the function the MLP really runs, exact (nanoGPT) or the tanh
approximation (GPT-2, Hugging Face), and the two give different models."""
import pytest
import torch
import torch.nn.functional as F

from gpt2.build import build_model
from lib import config as cfglib
from tests.conftest import tiny_overrides

APPROXIMATE = {"tanh": "tanh", "exact": "none"}
OTHER = {"tanh": "none", "exact": "tanh"}


def _model(*extra):
    torch.manual_seed(0)
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default", tiny_overrides(*extra))
    return build_model(cfg, vocab_size=65).eval()


def test_the_default_is_gpt2s_tanh_form():
    assert cfglib.load(cfglib.ROOT / "defconfigs" / "default").GELU == "tanh"


@pytest.mark.parametrize("mlp", ["gelu", "geglu"])
@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_the_mlp_runs_the_selected_gelu(mlp, gelu):
    block_mlp = _model(f"MLP={mlp}", f"GELU={gelu}").transformer.h[0].mlp
    # pre-activations spread over [-4, 4], where the two forms differ by up to 4.7e-4
    x = torch.linspace(-4, 4, 5 * 32, dtype=torch.float64).view(5, 32)
    block_mlp = block_mlp.double()
    with torch.no_grad():
        got = block_mlp.hidden(x)
        pre = block_mlp.c_fc(x)
        if mlp == "geglu":
            gate, up = pre.chunk(2, dim=-1)
            want = F.gelu(gate, approximate=APPROXIMATE[gelu]) * up
            other = F.gelu(gate, approximate=OTHER[gelu]) * up
        else:
            want = F.gelu(pre, approximate=APPROXIMATE[gelu])
            other = F.gelu(pre, approximate=OTHER[gelu])
    assert torch.equal(got, want)
    assert (got - other).abs().max() > 1e-6


def test_the_two_choices_give_different_outputs():
    idx = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(1))
    tanh, exact = _model("GELU=tanh"), _model("GELU=exact")
    # the same initial weights: only the activation differs
    for (name, a), (_, b) in zip(tanh.state_dict().items(), exact.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():  # in float64, so the difference is not lost to rounding
        logits_tanh, _ = tanh.double()(idx, idx)
        logits_exact, _ = exact.double()(idx, idx)
    assert (logits_tanh - logits_exact).abs().max() > 1e-9


def test_pretrained_weights_refuse_the_exact_form(tmp_path):
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default",
                      tiny_overrides("GELU=exact", f"INIT_FROM_DIR={tmp_path}"))
    with pytest.raises(cfglib.ConfigError, match="GELU=exact"):
        build_model(cfg, vocab_size=65)
