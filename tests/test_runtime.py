"""lib.runtime: the attention kernel choice and the forward context."""
import pytest
import torch

from gpt2.model import GPT, GPTConfig
from lib import runtime
from lib.config import ConfigError

CPU = torch.device("cpu")


def available_kernels():
    kernels = {}
    for choice in runtime.ATTENTION_BACKENDS:
        try:
            kernels[choice] = runtime.attention_kernel(CPU, choice, 8, "fp32")
        except ConfigError:
            pass
    return kernels


@pytest.mark.parametrize("choice", list(runtime.ATTENTION_BACKENDS))
def test_every_available_attention_kernel_is_causal(choice):
    kernels = available_kernels()
    if choice not in kernels:
        pytest.skip(f"{choice} attention is not available on the CPU")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    with runtime.ForwardContext(runtime.autocast(CPU, "fp32"), kernels[choice]):
        before, _ = model(idx, idx)
        after, _ = model(changed, changed)
    assert torch.allclose(before[:, :10], after[:, :10], atol=1e-6)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_the_chosen_kernel_is_the_one_used(monkeypatch):
    """Under "math" the flash kernel is not allowed: only the math path may run."""
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention
    kernel = runtime.attention_kernel(CPU, "math", 8, "fp32")

    def spy(*args, **kwargs):
        from torch.backends.cuda import flash_sdp_enabled, math_sdp_enabled
        seen.append((flash_sdp_enabled(), math_sdp_enabled()))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    context = runtime.ForwardContext(runtime.autocast(CPU, "fp32"), kernel)
    model = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16))
    for _ in range(2):  # the context is reusable
        with context:
            model(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [(False, True), (False, True)]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the context


def test_an_unavailable_kernel_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("the memory-efficient kernel exists on CUDA")
    with pytest.raises(ConfigError, match="ATTENTION_BACKEND_MEMORY_EFFICIENT=y.*not available "
                                          "on cpu.*ATTENTION_BACKEND_AUTO"):
        runtime.attention_kernel(CPU, "memory-efficient", 8, "fp32")
