"""SPAM under fp16 + GradScaler: a step the scaler skips (inf gradients) leaves SPAM as
it was, and the steps after it equal those of a run that never had it (CPU: torch runs
fp16 autocast and GradScaler("cpu") there)."""
import copy

import pytest
import torch

from lib import optim
from lib.optim.spam import AdamWSPAM

STEPS, OVERFLOW_AT = 14, 9  # the skipped step comes once the spike window is full enough


def model_and_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    batches = [(torch.randn(5, 8), torch.randn(5, 4)) for _ in range(STEPS)]
    return model, batches


def step(model, opt, scaler, x, y, overflow=False):
    """One step as gpt2/train.py drives it: scale, backward, unscale, SPAM's
    prepare_grads, the global clip, the scaler's step and update."""
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
    if overflow:
        loss = loss * torch.finfo(torch.float16).max * 1e6  # inf once scaled: a skipped step
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    optim.prepare_grads(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def snapshot(opt) -> dict:
    return copy.deepcopy({"spam": opt.state_dict()["spam"],
                          "state": opt.state_dict()["state"]})


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("implementation", ["foreach", "for-loop"])
def test_a_skipped_step_leaves_spam_unchanged(implementation):
    kw = dict(lr=1e-2, theta=5.0, clip_delay=2, reset_interval=6, warmup_steps=2,
              spike_window=6, spike_threshold=1.5, implementation=implementation)
    model_a, batches = model_and_batches()
    model_b = copy.deepcopy(model_a)
    opt_a, opt_b = AdamWSPAM(model_a.parameters(), **kw), AdamWSPAM(model_b.parameters(), **kw)
    scaler_a = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    scaler_b = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    for i, (x, y) in enumerate(batches):
        if i == OVERFLOW_AT:
            before, scale = snapshot(opt_a), scaler_a.get_scale()
            step(model_a, opt_a, scaler_a, x, y, overflow=True)
            assert scaler_a.get_scale() == scale / 2  # the scaler did skip it
            assert_same(snapshot(opt_a), before)  # moments, counters, window, step count
            scaler_b.load_state_dict(scaler_a.state_dict())  # the same scale from here on
        step(model_a, opt_a, scaler_a, x, y)
        step(model_b, opt_b, scaler_b, x, y)
    assert opt_a.spam_state["step"] == STEPS
    assert torch.isfinite(opt_a.spam_state["norm_window"]).all()
    assert_same(snapshot(opt_a), snapshot(opt_b))
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    assert opt_a.stats() == opt_b.stats()
