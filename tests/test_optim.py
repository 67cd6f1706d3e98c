"""The optimizer registry: each entry against an independent reference, shared parameter
groups, the missing-package error, 8-bit state size, and SPAM through the trainer."""
import copy
import json
import sys

import pytest
import torch

from gpt2 import train
from gpt2.model import GPT, GPTConfig
from lib import checkpoint, optim
from lib import config as cfglib
from lib.run import RunDir


def tiny_model(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16, bias=bias))


def settings(*overrides):
    """The default recipe with `overrides`; the selected optimizer's LR at 1e-2 unless set."""
    cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default", overrides)
    symbol = optim.OPTIMIZERS[cfg.OPTIMIZER].lr
    if not any(o.startswith(f"{symbol}=") for o in overrides):
        cfg = cfglib.load(cfglib.ROOT / "defconfigs" / "default", [*overrides, f"{symbol}=1e-2"])
    return cfg


def run_steps(model, optimizer, steps=5):
    """Deterministic gradients, the same for any optimizer given the same model."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def torch_reference(model, cls, **kwargs):
    groups = optim.param_groups(model, 0.1, decay_embeddings=True)
    return cls(groups, lr=1e-2, **kwargs)


@pytest.mark.parametrize("overrides, cls, kwargs", [
    (["OPTIMIZER=sgd"], torch.optim.SGD, dict(momentum=0.9, nesterov=False)),
    (["OPTIMIZER=sgd", "SGD_NESTEROV=y", "SGD_MOMENTUM=0.8"], torch.optim.SGD,
     dict(momentum=0.8, nesterov=True)),
    (["OPTIMIZER=adam", "BETA2=0.9"], torch.optim.Adam, dict(betas=(0.9, 0.9), eps=1e-8)),
    (["OPTIMIZER=adam", "AMSGRAD=y"], torch.optim.Adam, dict(betas=(0.9, 0.99), amsgrad=True)),
    (["OPTIMIZER=adamw"], torch.optim.AdamW, dict(betas=(0.9, 0.99), eps=1e-8)),
    (["OPTIMIZER=adamw", "AMSGRAD=y", "EPS=1e-6"], torch.optim.AdamW,
     dict(betas=(0.9, 0.99), eps=1e-6, amsgrad=True)),
    (["OPTIMIZER=adamw", "OPTIMIZER_IMPL=fused"], torch.optim.AdamW, dict(betas=(0.9, 0.99))),
    (["OPTIMIZER=adafactor", "ADAFACTOR_BETA2_DECAY=-0.5"], torch.optim.Adafactor,
     dict(beta2_decay=-0.5, eps=(None, 1e-3), d=1.0)),
])
def test_torch_optimizers_match_torch(overrides, cls, kwargs):
    ours_model, ref_model = tiny_model(), tiny_model()
    ours = run_steps(ours_model, optim.build(settings(*overrides), ours_model))
    ref = run_steps(ref_model, torch_reference(ref_model, cls, **kwargs))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer, knob", [("adam", "AMSGRAD=y"), ("adamw", "AMSGRAD=y"),
                                             ("sgd", "SGD_NESTEROV=y")])
def test_bool_knobs_really_change_the_update(optimizer, knob):
    a_model, b_model = tiny_model(), tiny_model()
    a = run_steps(a_model, optim.build(settings(f"OPTIMIZER={optimizer}"), a_model), steps=8)
    b = run_steps(b_model, optim.build(settings(f"OPTIMIZER={optimizer}", knob), b_model), steps=8)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))


def test_lion_follows_the_published_update_rule():
    model = tiny_model()
    cfg = settings("OPTIMIZER=lion", "LION_LR=1e-3", "LION_WEIGHT_DECAY=0.1")
    assert (cfg.LION_BETA1, cfg.LION_BETA2) == (0.9, 0.99)  # the authors' defaults
    start = copy.deepcopy(model)
    ours = run_steps(model, optim.build(cfg, model))
    # Chen et al. 2023: c = b1 m + (1 - b1) g; p -= lr (sign(c) + wd p); m = b2 m + (1 - b2) g
    params = [p.detach().clone().double() for p in start.parameters()]
    decays = {id(p) for p in optim.param_groups(start, 0.1, True)[0]["params"]}
    wds = [0.1 if id(p) in decays else 0.0 for p in start.parameters()]
    moments = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen).double()
            c = 0.9 * moments[i] + 0.1 * g
            p.mul_(1 - 1e-3 * wds[i]).add_(torch.sign(c), alpha=-1e-3)
            moments[i] = 0.99 * moments[i] + 0.01 * g
    for a, b in zip(ours, params):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-6)


def test_each_optimizer_has_its_own_learning_rate_symbol():
    """Every registry entry names an LR symbol of its own with a prompt, help and a float
    range, visible when the optimizer is selected or in the matrix; Lion's default follows
    its authors (3-10x below AdamW's) and its weight decay is its own."""
    tree = cfglib.load_tree()
    symbols = {entry.lr for entry in optim.OPTIMIZERS.values()}
    assert len(symbols) == len(optim.OPTIMIZERS)
    for name, entry in optim.OPTIMIZERS.items():
        sym = tree.syms[entry.lr]
        assert sym.nodes[0].prompt and cfglib.float_spec(sym) is not None, entry.lr
        member = f"OPTIMIZER_{name.upper().replace('-', '_')}"
        assert member in kconfiglib_expr(sym) and f"MATRIX_{member}" in kconfiglib_expr(sym)
    defaults = {n: float(tree.syms[e.lr].str_value or "nan") for n, e in optim.OPTIMIZERS.items()}
    tree.syms["OPTIMIZER_LION"].set_value("y")
    lion_lr = float(tree.syms["LION_LR"].str_value)
    assert 3 <= defaults["adamw"] / lion_lr <= 10
    assert tree.syms["WEIGHT_DECAY"].str_value == ""  # Lion has its own
    model = tiny_model()
    opt = optim.build(settings("OPTIMIZER=lion", "LION_LR=2e-4", "LION_WEIGHT_DECAY=0.7"), model)
    assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["weight_decay"] == 0.7


def kconfiglib_expr(sym) -> str:
    import kconfiglib
    return kconfiglib.expr_str(sym.direct_dep)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion", "adafactor", "adamwspam"])
def test_the_optimizer_gets_its_own_rate_and_the_schedule_follows(tiny_config, name):
    symbol = optim.OPTIMIZERS[name].lr
    cfg = cfglib.load(tiny_config(f"OPTIMIZER={name}", f"{symbol}=0.0123", "WARMUP_ITERS=0",
                                  "MAX_ITERS=10", "MIN_LR_FRACTION=0.5"))
    assert optim.peak_lr(cfg) == 0.0123
    trainer = train.Trainer(cfg, RunDir.for_config(cfg), train.logging.getLogger("test"))
    assert trainer.set_lr() == 0.0123
    assert all(g["lr"] == 0.0123 for g in trainer.optimizer.param_groups)
    trainer.progress.iter = 10
    assert trainer.set_lr() == pytest.approx(0.0123 * 0.5)


def test_adamwspam_gets_every_spam_knob():
    model = tiny_model()
    opt = optim.build(settings("OPTIMIZER=adamwspam", "SPAM_THETA=7", "SPAM_ENABLE_CLIP=n",
                               "SPAM_CLIP_DELAY=3", "SPAM_SPIKE_THRESHOLD=4.5",
                               "SPAM_SPIKE_WINDOW=9", "SPAM_INTERVAL=200",
                               "SPAM_WARMUP_STEPS=11"), model)
    assert opt.param_groups[0]["theta"] == 7.0
    assert (opt.enable_clip, opt.clip_delay, opt.spike_threshold, opt.spike_window) == (
        False, 3, 4.5, 9)
    assert (opt.periodic_reset, opt.reset_interval, opt.warmup, opt.warmup_steps) == (
        True, 200, True, 11)
    off = optim.build(settings("OPTIMIZER=adamwspam", "SPAM_PERIODIC_RESET=n"), tiny_model())
    assert (off.periodic_reset, off.warmup) == (False, False)


OPTIMIZER_NAMES = sorted(optim.OPTIMIZERS)


def test_registry_covers_every_choice_of_the_menu():
    members = cfglib.load_tree().named_choices["OPTIMIZER"].syms
    assert {m.name.removeprefix("OPTIMIZER_").lower().replace("_", "-") for m in members} == set(
        OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_parameter_groups_are_the_same_for_every_optimizer(name, decay_embeddings):
    model = tiny_model(bias=True)
    cfg = settings(f"OPTIMIZER={name}", f"DECAY_EMBEDDINGS={'y' if decay_embeddings else 'n'}")
    opt = optim.build(cfg, model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n for n, p in model.named_parameters()
                if p.dim() >= 2 and (decay_embeddings or "wte" not in n and "wpe" not in n)}
    assert {names[i] for i in decayed} == expected
    assert all(".bias" not in names[i] and "ln_" not in names[i] for i in decayed)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


@pytest.mark.parametrize("module, name, package", [("lion_pytorch", "lion", "lion-pytorch"),
                                                    ("bitsandbytes", "adamw-8bit", "bitsandbytes")])
def test_missing_package_is_one_clear_error(monkeypatch, module, name, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(cfglib.ConfigError) as info:
        optim.build(settings(f"OPTIMIZER={name}"), tiny_model())
    message = str(info.value)
    assert f"CONFIG_OPTIMIZER_{name.upper().replace('-', '_')}=y" in message
    assert f"pip install {package}" in message


def test_paged_8bit_needs_cuda():
    with pytest.raises(cfglib.ConfigError, match="ADAMW_8BIT_PAGED=y: paged optimizer state"):
        optim.build(settings("OPTIMIZER=adamw-8bit", "ADAMW_8BIT_PAGED=y"), tiny_model())


def test_adamw_8bit_state_is_under_a_third_of_adamw():
    def state_of(name):
        layer = torch.nn.Linear(256, 256, bias=False)
        opt = optim.build(settings(f"OPTIMIZER={name}"), layer)
        layer.weight.grad = torch.randn_like(layer.weight)
        opt.step()
        return optim.state_bytes(opt)

    assert state_of("adamw-8bit") < 0.3 * state_of("adamw")


@pytest.mark.parametrize("name", ["adamw-8bit", "lion", "adafactor", "sgd", "adamwspam"])
def test_every_optimizer_trains_the_tiny_model(tiny_config, name):
    lr = {"sgd": "SGD_LR=0.3", "lion": "LION_LR=1e-3", "adafactor": "ADAFACTOR_LR=0.05"}.get(
        name, f"{optim.OPTIMIZERS[name].lr}=3e-3")
    config = tiny_config(f"OPTIMIZER={name}", lr, "MAX_ITERS=40", "EVAL_INTERVAL=40",
                         "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config)]) == 0
    run = RunDir.for_config(cfglib.load(config))
    losses = [r["train_loss"] for r in map(json.loads, run.metrics.read_text().splitlines())
              if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.3
    summary = json.loads(run.summary.read_text())
    assert summary["optimizer_state_bytes"] > 0


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_adamwspam_resumes_exactly_across_a_reset(tiny_config, tmp_path, impl):
    common = ("OPTIMIZER=adamwspam", f"OPTIMIZER_IMPL={impl}", "SPAM_INTERVAL=100", "SPAM_WARMUP_STEPS=10",
              "SPAM_CLIP_DELAY=2", "SPAM_THETA=5", "MAX_ITERS=120", "EVAL_INTERVAL=60",
              "CHECKPOINT_INTERVAL=1000", "SAMPLE_AFTER_TRAINING=n", "WARMUP_ITERS=0")
    straight = tiny_config(*common, name="straight")
    resumed = tiny_config(*common, f"RESULTS_DIR={tmp_path / 'other'}", name="resumed")
    assert train.main([str(straight)]) == 0
    assert train.main([str(resumed), "--stop-after", "95"]) == 0
    assert train.main([str(resumed)]) == 0
    a = checkpoint.load(RunDir.for_config(cfglib.load(straight)).ckpt)
    b = checkpoint.load(RunDir.for_config(cfglib.load(resumed)).ckpt)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["optimizer"]["spam"]["reset_count"] == b["optimizer"]["spam"]["reset_count"] == 1
    summary = json.loads(RunDir.for_config(cfglib.load(resumed)).summary.read_text())
    assert summary["reset_count"] == 1 and summary["clip_count"] > 0
    assert {"spike_count", "clip_count", "reset_count"} <= summary.keys()


def test_state_bytes_counts_each_storage_once():
    """bitsandbytes shares its quantisation maps between parameters; SPAM keeps state of
    its own beside the moments. Each storage counts once."""
    layers = torch.nn.Sequential(torch.nn.Linear(128, 128, bias=False),
                                 torch.nn.Linear(128, 128, bias=False))
    opt = optim.build(settings("OPTIMIZER=adamw-8bit"), layers)
    for p in layers.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    tensors = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    naive = sum(t.numel() * t.element_size() for t in tensors)
    shared = {t.untyped_storage().data_ptr() for t in tensors}
    assert len(shared) < len(tensors)  # the maps really are shared
    assert optim.state_bytes(opt) == sum(
        {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    assert optim.state_bytes(opt) < naive

    spam = optim.build(settings("OPTIMIZER=adamwspam", "SPAM_SPIKE_WINDOW=100"), layers)
    for p in layers.parameters():
        p.grad = torch.randn_like(p)
    spam.step()
    moments = 2 * 2 * 128 * 128 * 4
    assert optim.state_bytes(spam) == moments + 100 * 4 + 2 * 8  # + norm window, 2 counters


def test_spam_sees_a_spike_that_the_global_clip_would_hide(tiny_config):
    """Under GRAD_CLIP=1.0 a 1000x loss spike still reaches SPAM raw: it is counted as a
    spike and clipped element-wise; the summary lists both clips in the order applied."""
    config = tiny_config("OPTIMIZER=adamwspam", "GRAD_CLIP=1.0", "SPAM_CLIP_DELAY=5",
                         "SPAM_THETA=50", "MAX_ITERS=40", "EVAL_INTERVAL=40",
                         "SAMPLE_AFTER_TRAINING=n", "SPAM_SPIKE_WINDOW=20")
    cfg = cfglib.load(config)
    trainer = train.Trainer(cfg, RunDir.for_config(cfg), train.logging.getLogger("test"))
    model = trainer.model
    for _ in range(30):
        trainer.set_lr()
        trainer.train_step()
    before = optim.stats(trainer.optimizer)

    def spiking(x, y, loss_fn):
        logits, loss = model(x, y, loss_fn)
        return logits, loss * 1000
    trainer.forward = spiking
    trainer.train_step()
    after = optim.stats(trainer.optimizer)
    assert after["spike_count"] == before["spike_count"] + 1
    assert after["clip_count"] > before["clip_count"]
    assert trainer.summary("complete")["grad_clips"] == [
        "spam-element (theta 50, raw gradients)", "global-norm (max 1)"]


def test_fused_spam_that_cannot_build_fails_the_run_with_the_fix(tiny_config, monkeypatch):
    """A machine where torch.compile cannot build (no C++ compiler): the run fails with
    status 3, its summary says failed and names OPTIMIZER_IMPL=foreach; nothing ran eagerly
    in the fused kernels' place."""
    def broken(fn, **kw):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    config = tiny_config("OPTIMIZER=adamwspam", "OPTIMIZER_IMPL=fused", "MAX_ITERS=5",
                         "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config)]) == 3
    summary = json.loads(RunDir.for_config(cfglib.load(config)).summary.read_text())
    assert summary["status"] == "failed" and "OPTIMIZER_IMPL=foreach" in summary["error"]
    assert summary["iters"] == 0
