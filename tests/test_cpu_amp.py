"""The CUDA-only paths on the CPU, where torch allows it: the trainer's bf16 and fp16 autocast,
its GradScaler (torch.amp.GradScaler("cpu")) with a skipped overflow step and an exact resume,
torch.compile through inductor's CPU backend, and bitsandbytes' CPU AdamW8bit."""
import json
import logging
import math

import pytest
import torch

from gpt2 import train
from gpt2.train import Trainer
from lib import checkpoint, runtime
from lib import config as cfglib
from lib.run import RunDir

SHORT = ("MAX_ITERS=30", "EVAL_INTERVAL=30", "SAMPLE_AFTER_TRAINING=n", "DROPOUT=0")


def summary(config) -> dict:
    return json.loads(RunDir.for_config(cfglib.load(config)).summary.read_text())


def train_losses(config) -> list:
    run = RunDir.for_config(cfglib.load(config))
    return [r["train_loss"] for r in map(json.loads, run.metrics.read_text().splitlines())
            if r["kind"] == "train"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_on_the_cpu(tiny_config, precision):
    config = tiny_config(*SHORT, f"PRECISION={precision}")
    assert train.main([str(config)]) == 0
    losses = train_losses(config)
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.3
    assert summary(config)["status"] == "complete"
    state = checkpoint.load(RunDir.for_config(cfglib.load(config)).ckpt)
    if precision == "fp16":  # the scaler ran, and its state is in the checkpoint
        assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] >= 0
    else:  # bf16 needs no scaling: a disabled scaler saves nothing
        assert state["scaler"] == {}


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                             ("fp32", torch.float32)])
def test_the_trainers_forward_really_computes_in_its_precision_on_the_cpu(tiny_config, tmp_path,
                                                                         precision, dtype):
    cfg = cfglib.load(tiny_config("MAX_ITERS=5", f"PRECISION={precision}"))
    trainer = Trainer(cfg, RunDir(tmp_path / "run"), logging.getLogger("t"))
    x, y = next(iter(trainer.batches.step("train", 1, 0, 1)))
    with trainer.autocast:
        logits, loss = trainer.forward(x, y)
    assert logits.dtype == dtype and loss.dtype == torch.float32
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_forced_overflow_skips_the_step_and_halves_the_scale(tiny_config, tmp_path):
    cfg = cfglib.load(tiny_config("MAX_ITERS=5", "PRECISION=fp16", "GRAD_CLIP=1.0"))
    trainer = Trainer(cfg, RunDir(tmp_path / "run"), logging.getLogger("t"))
    assert trainer.scaler.is_enabled() and trainer.scaler._device == "cpu"
    trainer.train_step()  # a normal step: weights move, the scale holds
    scale = trainer.scaler.get_scale()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    first = next(trainer.model.parameters())
    hook = first.register_hook(lambda g: torch.full_like(g, math.inf))
    trainer.train_step()
    hook.remove()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} moved on an overflow step"
    assert trainer.scaler.get_scale() == scale / 2
    trainer.train_step()  # finite again: the step is taken
    assert not torch.equal(first.detach(), before[next(iter(before))])


def test_fp16_resume_restores_the_scaler_bit_for_bit(tiny_config, tmp_path):
    common = ("MAX_ITERS=20", "EVAL_INTERVAL=10", "CHECKPOINT_INTERVAL=100",
              "SAMPLE_AFTER_TRAINING=n", "PRECISION=fp16", "GRADIENT_ACCUMULATION=2")
    straight = tiny_config(*common, name="straight")
    resumed = tiny_config(*common, f"RESULTS_DIR={tmp_path / 'other'}", name="resumed")
    assert train.main([str(straight)]) == 0
    assert train.main([str(resumed), "--stop-after", "10"]) == 0
    mid = checkpoint.load(RunDir.for_config(cfglib.load(resumed)).ckpt)
    assert mid["progress"]["iter"] == 10 and mid["scaler"]["scale"] > 0
    assert train.main([str(resumed)]) == 0
    a, b = (checkpoint.load(RunDir.for_config(cfglib.load(c)).ckpt) for c in (straight, resumed))
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["scaler"] == b["scaler"]
    assert train_losses(straight) == train_losses(resumed)
    assert summary(straight)["val_loss"] == summary(resumed)["val_loss"]


def test_compile_with_inductor_on_the_cpu_matches_eager(tiny_config):
    reason = runtime.compile_unsupported_reason(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    eager = tiny_config(*SHORT, "MAX_ITERS=10", "EVAL_INTERVAL=10", name="eager")
    compiled = tiny_config(*SHORT, "MAX_ITERS=10", "EVAL_INTERVAL=10", "COMPILE=y",
                           name="compiled")
    assert train.main([str(eager)]) == 0
    assert counters["stats"]["unique_graphs"] == 0  # eager compiles nothing
    assert train.main([str(compiled)]) == 0
    assert counters["stats"]["unique_graphs"] > 0
    assert counters["stats"]["calls_captured"] > 0
    assert "ignored" not in RunDir.for_config(cfglib.load(compiled)).log.read_text()
    a, b = train_losses(eager), train_losses(compiled)
    assert len(a) == len(b) and all(abs(x - y) < 1e-2 for x, y in zip(a, b))
    assert summary(compiled)["compile_s"] > 0


def test_bitsandbytes_adamw8bit_steps_on_the_cpu():
    bnb = pytest.importorskip("bitsandbytes")
    model = torch.nn.Linear(256, 256)
    try:
        opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-2)
        before = model.weight.detach().clone()
        model(torch.randn(4, 256)).square().mean().backward()
        opt.step()
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"bitsandbytes {bnb.__version__} has no CPU AdamW8bit: {e}")
    assert not torch.equal(before, model.weight)
    state = opt.state[model.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
