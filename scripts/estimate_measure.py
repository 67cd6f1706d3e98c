"""What `make estimate` measures on this machine when no figure of the device is known:
the memory the process holds before training (interpreter, torch and the libraries the
trainer loads, as this process holds them once the configured model and optimizer exist)
and the time of a few real training passes of the configured model.

The passes run the trainer's model (gpt2.build) and optimizer (lib.optim) on random
tokens, under the trainer's autocast, without torch.compile (whose kernels would take
minutes to build here; a compiled run is usually faster). A micro-batch is timed at most
TIMED_TOKENS tokens wide and scaled to BATCH_SIZE x GRADIENT_ACCUMULATION, so that a
GPT-2 recipe on a laptop CPU is timed in seconds, not hours; the per-token time of a
narrower micro-batch is an upper bound more than a lower one.
"""
import resource
import sys
import time

import torch

from gpt2 import losses
from gpt2.build import build_model
from lib import config as cfglib
from lib import optim, runtime

# Tokens of the micro-batch that is timed (whole sequences, at least one).
TIMED_TOKENS = 1024
WARMUP_PASSES = 1
TIMED_PASSES = 2


def resident_bytes() -> int:
    """This process's resident set now (Linux), else its peak so far."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss * (1 if sys.platform == "darwin" else 1024)


def _timing_config(cfg):
    """cfg with an implementation that needs no compilation (SPAM's fused kernels compile
    for seconds per shape; the for-loop path computes the same update)."""
    if cfg.OPTIMIZER == "adamwspam" and cfg.OPTIMIZER_IMPL == "fused":
        return cfglib.Config({**cfg, "OPTIMIZER_IMPL": "for-loop"}, cfg.text, cfg.hash, cfg.path)
    return cfg


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg, vocab_size: int, tokens_per_iter: int) -> dict:
    """{"process_bytes": what this process holds beyond the model's parameters and masks
    once the model and optimizer are built, "step_seconds": one optimizer step of the
    configuration on this device, "timed": how it was timed}."""
    device = runtime.pick_device(cfg.DEVICE)
    cfg = _timing_config(cfg)
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg, vocab_size).to(device)
    optimizer = optim.build(cfg, model)
    tensors = list(model.parameters()) + [b for n, b in model.named_buffers()
                                          if n.endswith("_mask")]
    held = sum(t.numel() * t.element_size() for t in tensors)
    process_bytes = max(resident_bytes() - held, 0) if device.type == "cpu" else None
    sequences = max(1, min(cfg.BATCH_SIZE, TIMED_TOKENS // cfg.BLOCK_SIZE))
    x = torch.randint(vocab_size, (sequences, cfg.BLOCK_SIZE), device=device)
    autocast = runtime.autocast(device, cfg.PRECISION)
    loss_fn = losses.training_loss(cfg)
    timings = []
    for _ in range(WARMUP_PASSES + TIMED_PASSES):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            _, loss = model(x, x, loss_fn)
        loss.backward()
        _sync(device)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    optim.prepare_grads(optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _sync(device)
    step_s = time.perf_counter() - start
    per_token = min(timings[WARMUP_PASSES:]) / (sequences * cfg.BLOCK_SIZE)
    return {"process_bytes": process_bytes, "step_seconds": per_token * tokens_per_iter + step_s,
            "timed": f"{TIMED_PASSES} forward/backward passes of {sequences} x "
                     f"{cfg.BLOCK_SIZE} tokens and one optimizer step timed on this "
                     f"{runtime.device_name(device)}, without compilation"}
