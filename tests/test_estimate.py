"""make estimate: the trainer's model and the registry's optimizers, and the activation
formula against a measured CPU run."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import EVENT_LIMIT_S
from gpt2.build import build_model
from lib import config as cfglib
from lib import optim
from lib.run import RunDir
from scripts import estimate

# Measured peak memory (CPU peak RSS) against the estimate: the share they may differ by.
TOLERANCE = 0.30


def test_estimate_counts_what_the_trainer_builds(tiny_config, capsys):
    # foreach: the fused SPAM would compile its kernels, slowly on the CPU
    config = tiny_config("MLP=swiglu", "PRUNING=magnitude", "MAX_ITERS=40",
                         "GRADIENT_ACCUMULATION=2", "OPTIMIZER_IMPL=foreach")
    cfg = cfglib.load(config)
    e = estimate.estimate(cfg, estimate.registry_configs(config, []))
    model = build_model(cfg, 65)
    assert e["params"] == sum(p.numel() for p in model.parameters())
    assert e["param_bytes"] == e["grad_bytes"] == 4 * e["params"]
    masks = sum(b.numel() for n, b in model.named_buffers() if n.endswith("_mask"))
    assert e["mask_bytes"] == masks > 0
    # the selected optimizer's state is what the real optimizer keeps after a step
    optimizer = optim.build(cfg, model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert e["optimizer_state_bytes"]["adamw"] == optim.state_bytes(optimizer)
    assert set(e["optimizer_state_bytes"]) == set(optim.OPTIMIZERS)
    assert e["optimizer_state_bytes"]["lion"] * 2 == pytest.approx(
        e["optimizer_state_bytes"]["adamw"], rel=0.05)
    assert e["tokens_per_iter"] == 8 * 2 * 32 and e["total_tokens"] == 40 * 8 * 2 * 32
    n = model.num_params()
    assert e["flops_per_token"] == 6 * n + 12 * 2 * 2 * 16 * 32
    # no figure of the CPU is known: a few real passes are timed here
    assert "timed on this cpu" in e["time_source"] and e["tokens_per_s"] > 0
    assert e["seconds"] == pytest.approx(e["total_tokens"] / e["tokens_per_s"])
    assert estimate.main([str(config)]) == 0
    out = capsys.readouterr().out
    assert "adamw-8bit" in out and "<- OPTIMIZER" in out and "GFLOP per token" in out


def test_spam_state_under_the_fused_default_is_what_a_fused_optimizer_holds(tiny_config):
    """estimate measures the state one shape at a time with the eager implementation (the
    fused one compiled a kernel per shape and hit dynamo's recompile limit: GPT-2 124M has
    9); the figure must be what the real fused optimizer over all those parameters holds
    after a step, its optimizer-wide state (counters, norm window) counted once."""
    cfg = cfglib.load(tiny_config("OPTIMIZER=adamwspam", "OPTIMIZER_IMPL=fused"))
    shapes = tuple(((n, 3), 1) for n in range(1, 13)) + (((5,), 3),)
    state = estimate.optimizer_state_bytes({"adamwspam": cfg}, shapes)["adamwspam"]
    assert isinstance(state, int), state
    params = [torch.nn.Parameter(torch.zeros(s)) for s, count in shapes for _ in range(count)]
    for p in params:
        p.grad = torch.zeros_like(p)
    entry = optim.OPTIMIZERS["adamwspam"]
    fused = entry.build([{"params": params, "weight_decay": 0.0}], cfg, cfg[entry.lr])
    assert fused.implementation == "fused"
    optim.prepare_grads(fused)
    fused.step()
    assert state == optim.state_bytes(fused)


def test_estimate_for_a_named_card_uses_its_peak_and_memory(tiny_config):
    cfg = cfglib.load(tiny_config("ESTIMATE_DEVICE=H100 SXM", "PRECISION=bf16",
                                  "ESTIMATE_MFU=0.5", "MAX_ITERS=100"))
    e = estimate.estimate(cfg)
    assert e["device"] == "H100 SXM" and e["device_memory_bytes"] == 80 * 2**30
    assert e["seconds"] == pytest.approx(e["total_flops"] / (0.5 * 989.5e12))
    with pytest.raises(cfglib.ConfigError, match="ESTIMATE_DEVICE=\"B9000\" is not in the "
                                                 "device table"):
        estimate.estimate(cfglib.load(tiny_config("ESTIMATE_DEVICE=B9000")))


# Run in a fresh interpreter: the trainer is built, then the kernel's peak-RSS mark is reset
# (/proc/self/clear_refs) and three training steps run; what they add to the resident set
# is the training memory, whatever the set-up before them held for a moment.
_TRAINING_RSS = """
import json, sys, tempfile
from gpt2.train import Trainer
from lib import config as cfglib
from lib.run import RunDir

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

with tempfile.TemporaryDirectory() as tmp:
    trainer = Trainer(cfglib.load(sys.argv[1]), RunDir(tmp))
    trainer.forward = trainer.model
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(3):
        trainer.train_step()
    print(json.dumps({"before": before, "peak": status("VmHWM:")}))
"""


@pytest.mark.parametrize("checkpointing", ["n", "y"])
def test_estimated_memory_is_within_tolerance_of_a_measured_cpu_run(tiny_config, checkpointing):
    """The memory three training steps add on the CPU (activations, gradients, optimizer
    state, the loss) against the estimate's peak less what exists before the first step
    (parameters, masks, data)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    config = tiny_config("N_LAYER=3", "N_EMBD=256", "N_HEAD=4", "BLOCK_SIZE=256",
                         "BATCH_SIZE=24", f"ACTIVATION_CHECKPOINTING={checkpointing}")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["OMP_NUM_THREADS"] = "2"
    result = subprocess.run([sys.executable, "-c", _TRAINING_RSS, str(config)], cwd=cfglib.ROOT,
                            env=env, capture_output=True, text=True, timeout=EVENT_LIMIT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    measured = rss["peak"] - rss["before"]
    e = estimate.estimate(cfglib.load(config))
    estimated = (e["peak_bytes"] - e["param_bytes"] - e["mask_bytes"] - e["data_bytes"]
                 - e["process_bytes"])
    print(f"training memory: measured {measured / 2**20:.0f} MiB, estimated "
          f"{estimated / 2**20:.0f} MiB")
    assert estimated > 300 * 2**20  # well above the noise of the resident set (tens of MiB)
    assert abs(measured - estimated) <= TOLERANCE * estimated, (measured / 2**20, estimated / 2**20)


def test_estimated_cpu_peak_is_within_tolerance_of_a_training_run(tiny_config):
    """`make estimate` in its own process against the peak resident set a training run
    records (summary.json's peak_mem_bytes, cpu_peak_rss): the whole process, interpreter
    and libraries included, as the README promises within 30%."""
    config = tiny_config("N_LAYER=3", "N_EMBD=256", "N_HEAD=4", "BLOCK_SIZE=256",
                         "BATCH_SIZE=24", "MAX_ITERS=3", "EVAL_ITERS=1",
                         "SAMPLE_AFTER_TRAINING=n")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR",
                                                         "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "2"
    run = functools.partial(subprocess.run, cwd=cfglib.ROOT, env=env, capture_output=True,
                            text=True, timeout=EVENT_LIMIT_S)
    trained = run([sys.executable, "-m", "gpt2.train", str(config)])
    assert trained.returncode == 0, trained.stderr[-2000:]
    cfg = cfglib.load(config)
    summary = json.loads(RunDir.for_config(cfg).summary.read_text())
    assert summary["peak_mem_kind"] == "cpu_peak_rss"
    estimated = run([sys.executable, "-m", "scripts.estimate", str(config), "--json"])
    assert estimated.returncode == 0, estimated.stderr[-2000:]
    e = json.loads(estimated.stdout.strip().splitlines()[-1])
    measured = summary["peak_mem_bytes"]
    print(f"peak RSS: measured {measured / 2**20:.0f} MiB, estimated "
          f"{e['peak_bytes'] / 2**20:.0f} MiB (process {e['process_bytes'] / 2**20:.0f})")
    assert e["process_bytes"] > 100 * 2**20  # torch alone is more than that
    assert abs(measured - e["peak_bytes"]) <= TOLERANCE * measured
    assert e["seconds"] and "timed on this cpu" in e["time_source"]


CARD_RECIPES = sorted(p.name for p in (cfglib.ROOT / "defconfigs").glob("gpt2-124m-*"))


def test_card_recipes_share_the_global_batch_and_fit_their_card(monkeypatch):
    """Every GPT-2 124M card recipe: the same tokens per step, and an estimated peak of at
    most 60% of its card (headroom for the estimate's tolerance)."""
    assert len(CARD_RECIPES) == 5
    monkeypatch.setattr(estimate, "facts_of", lambda cfg: {
        "vocab_size": 50257, "train_tokens": 301966, "val_tokens": 36059})
    memories = set()
    for name in CARD_RECIPES:
        cfg = cfglib.load(cfglib.ROOT / "defconfigs" / name)
        e = estimate.estimate(cfg)
        assert e["params"] == 124_475_904, name  # vocabulary padded to 50,304
        assert e["tokens_per_iter"] == 65_536, name
        assert e["peak_bytes"] <= 0.6 * e["device_memory_bytes"], name
        memories.add(e["device_memory_bytes"] / 2**30)
    assert memories == {8, 16, 24, 40, 80}
