"""Tests for lib.prune: schedules, mask storage, importances, the global threshold,
the step hooks in a real training loop, and checkpoint round trips."""
import io
import math
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from gpt2.model import GPT, GPTConfig
from lib import prune
from lib.optim.spam import AdamWSPAM

TOTAL = 40  # iterations of the training-loop tests


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prune_cfg(**overrides):
    """A stand-in for lib.config.Config with the Pruning menu's symbols."""
    values = dict(PRUNING="magnitude", TARGET_SPARSITY=0.5, PRUNING_SCHEDULE="cubic",
                  PRUNING_START=5, PRUNING_END=0.75, PRUNING_FREQUENCY=7,
                  PRUNE_WEIGHTS="blocks", MASK_STORAGE="bool", ADAMWPRUNE_VARIANT=None)
    values.update(overrides)
    if values["PRUNING"] == "state" and values["ADAMWPRUNE_VARIANT"] is None:
        values["ADAMWPRUNE_VARIANT"] = "bitter0"
    return types.SimpleNamespace(**values)


def tiny_gpt(seed=0, tie_weights=True):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32,
                         tie_weights=tie_weights))


class Toy(nn.Module):
    """Bias-free Linear layers at transformer.h.N, where prunable() looks for them."""

    def __init__(self, *shapes):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {"h": nn.ModuleList(nn.Linear(i, o, bias=False) for o, i in shapes)})

    def layer(self, n):
        return self.transformer.h[n]


def set_weight(layer, values):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(values, dtype=torch.float32))


def make_optimizer(kind, model, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if kind == "spam":
        return AdamWSPAM(groups, lr=lr, betas=(0.9, 0.95), reset_interval=5, clip_delay=0,
                         warmup_steps=2)
    raise ValueError(kind)


def batches(n=TOTAL, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (4, 17), generator=gen) for _ in range(n)]


def step(model, optimizer, pruner, batch, iteration, total=TOTAL, after_before_step=None):
    """One training step in the trainer's order; returns after_step's record."""
    _, loss = model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    pruner.before_step()
    if after_before_step is not None:
        after_before_step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return pruner.after_step(iteration, iteration / total)


def pruned_weights(pruner):
    """{name: (weight, bool of pruned positions)}."""
    masks = pruner.masks()
    return {name: (getattr(m, a), ~masks[name]) for name, m, a in pruner.entries}


def state_via_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# --------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------

@pytest.mark.parametrize("p, cubic, linear", [
    (0.0, 0.0, 0.0),
    (0.25, 0.8 * (1 - 0.75 ** 3), 0.2),
    (0.5, 0.8 * 0.875, 0.4),
    (0.9, 0.8 * (1 - 0.1 ** 3), 0.72),
    (1.0, 0.8, 0.8),
])
def test_sparsity_schedules(p, cubic, linear):
    assert prune.sparsity_at("cubic", 0.8, p) == pytest.approx(cubic, abs=1e-12)
    assert prune.sparsity_at("linear", 0.8, p) == pytest.approx(linear, abs=1e-12)


def test_sparsity_schedules_clamp_progress():
    for schedule in ("cubic", "linear"):
        assert prune.sparsity_at(schedule, 0.9, -0.5) == 0.0
        assert prune.sparsity_at(schedule, 0.9, 1.7) == pytest.approx(0.9)
    # cubic prunes faster early than linear
    assert prune.sparsity_at("cubic", 0.5, 0.3) > prune.sparsity_at("linear", 0.5, 0.3)
    with pytest.raises(ValueError, match="schedule"):
        prune.sparsity_at("exponential", 0.5, 0.5)


# --------------------------------------------------------------------------
# bit packing and masks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (4, 16), (2, 3, 7)])
def test_pack_bits_matches_numpy_and_round_trips(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=gen) > 0.5
    packed = prune.pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(mask.numel() / 8)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy().reshape(-1)))
    unpacked = prune.unpack_bits(packed, shape)
    assert unpacked.dtype == torch.bool and unpacked.shape == torch.Size(shape)
    assert torch.equal(unpacked, mask)


def test_unpack_bits_rejects_wrong_size():
    with pytest.raises(ValueError, match="packed mask"):
        prune.unpack_bits(torch.zeros(2, dtype=torch.uint8), (3, 7))


def test_prunable_default_is_block_linears_only():
    model = tiny_gpt()
    names = [name for name, _, _ in prune.prunable(model, "blocks")]
    expected = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert names == expected
    for name, module, attr in prune.prunable(model):
        assert isinstance(module, nn.Linear) and attr == "weight"
        assert getattr(module, attr) is model.get_parameter(name)


def test_prunable_with_embeddings_lists_tied_weight_once():
    model = tiny_gpt()
    entries = prune.prunable(model, "blocks-embeddings")
    names = [name for name, _, _ in entries]
    assert names[:2] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert "lm_head.weight" not in names  # tied: it is transformer.wte.weight
    assert len(names) == 2 + 8 and len(set(names)) == len(names)
    assert len({id(getattr(m, a)) for _, m, a in entries}) == len(entries)
    untied = [n for n, _, _ in prune.prunable(tiny_gpt(tie_weights=False), "blocks-embeddings")]
    assert "lm_head.weight" in untied and len(untied) == 11


def test_all_linear_is_every_linear_with_the_tied_head_once():
    model = tiny_gpt()
    names = [name for name, _, _ in prune.prunable(model, "all-linear")]
    blocks = [name for name, _, _ in prune.prunable(model, "blocks")]
    assert names == blocks + ["lm_head.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight
    cfg = prune_cfg(PRUNE_WEIGHTS="all-linear", TARGET_SPARSITY=0.5, PRUNING_START=1,
                    PRUNING_END=0.01)
    pruner = prune.build(cfg, model, torch.optim.AdamW(model.parameters()))
    pruner.after_step(1, 1.0)
    head = model.lm_head
    # the head's mask prunes the tied embedding too: one tensor, zero where pruned
    assert (~head.weight_mask).any()
    assert torch.all(model.transformer.wte.weight[~head.weight_mask] == 0)
    with pytest.raises(ValueError, match="all-linear"):
        prune.prunable(model, "everything")


@pytest.mark.parametrize("storage", ["bool", "packed"])
def test_attach_masks_buffers(storage):
    model = tiny_gpt()
    prune.attach_masks(model, prune_cfg(MASK_STORAGE=storage))
    state = model.state_dict()
    for name, module, attr in prune.prunable(model):
        key = name + "_mask"
        assert key in state
        buf = module.weight_mask
        assert buf is state[key] or torch.equal(buf, state[key])
        if storage == "bool":
            assert buf.dtype == torch.bool and buf.shape == module.weight.shape and bool(buf.all())
        else:
            assert buf.dtype == torch.uint8 and buf.numel() == math.ceil(module.weight.numel() / 8)
            assert bool(prune.unpack_bits(buf, module.weight.shape).all())
    assert "transformer.wte.weight_mask" not in state  # embeddings not prunable by default


def test_attach_masks_none_and_embeddings():
    model = tiny_gpt()
    prune.attach_masks(model, prune_cfg(PRUNING="none"))
    assert not any(k.endswith("_mask") for k in model.state_dict())
    prune.attach_masks(model, prune_cfg(PRUNE_WEIGHTS="blocks-embeddings"))
    keys = [k for k in model.state_dict() if k.endswith("_mask")]
    assert "transformer.wte.weight_mask" in keys and "transformer.wpe.weight_mask" in keys
    assert "lm_head.weight_mask" not in keys and len(keys) == 10


def test_attach_masks_twice_keeps_pruning_and_rejects_other_storage():
    model = tiny_gpt()
    cfg = prune_cfg()
    prune.attach_masks(model, cfg)
    layer = model.transformer.h[0].mlp.c_fc
    layer.weight_mask[0, :5] = False
    prune.attach_masks(model, cfg)
    assert int((~layer.weight_mask).sum()) == 5
    with pytest.raises(ValueError, match="attached already"):
        prune.attach_masks(model, prune_cfg(MASK_STORAGE="packed"))


# --------------------------------------------------------------------------
# importances
# --------------------------------------------------------------------------

def test_magnitude_importance():
    model = Toy((2, 3))
    set_weight(model.layer(0), [[1.0, -2.0, 0.5], [-0.25, 0.0, 3.0]])
    pruner = prune.build(prune_cfg(), model, torch.optim.SGD(model.parameters(), lr=0.1))
    imp = pruner.importance()["transformer.h.0.weight"]
    assert torch.equal(imp, torch.tensor([[1.0, 2.0, 0.5], [0.25, 0.0, 3.0]]))


def test_state_bitter0_importance_from_real_adamw_state():
    model = Toy((2, 2))
    layer = model.layer(0)
    set_weight(layer, [[1.0, -2.0], [0.5, 4.0]])
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, eps=0.5)
    layer.weight.grad = torch.ones(2, 2)
    opt.step()  # creates the state; lr 0 leaves W alone
    m = [[0.1, 0.2], [-0.3, 0.0]]
    v = [[0.04, 0.01], [0.09, 1.0]]
    opt.state[layer.weight]["exp_avg"].copy_(torch.tensor(m))
    opt.state[layer.weight]["exp_avg_sq"].copy_(torch.tensor(v))
    pruner = prune.build(prune_cfg(PRUNING="state", ADAMWPRUNE_VARIANT="bitter0"), model, opt)
    imp = pruner.importance()["transformer.h.0.weight"]
    w = [[1.0, -2.0], [0.5, 4.0]]
    expected = [[abs(w[i][j] * m[i][j]) * abs(w[i][j]) / (math.sqrt(v[i][j]) + 0.5)
                 for j in range(2)] for i in range(2)]
    # e.g. (0, 0): |1 * 0.1| * 1 / (0.2 + 0.5)
    assert expected[0][0] == pytest.approx(0.1 / 0.7)
    torch.testing.assert_close(imp, torch.tensor(expected), rtol=1e-6, atol=0)
    # bitter1 and bitter2 score by |W| whatever the state
    for variant in ("bitter1", "bitter2"):
        other = prune.build(prune_cfg(PRUNING="state", ADAMWPRUNE_VARIANT=variant), model, opt)
        assert torch.equal(other.importance()["transformer.h.0.weight"],
                           torch.tensor([[1.0, 2.0], [0.5, 4.0]]))


def test_state_bitter0_without_moments_falls_back_to_magnitude():
    model = Toy((2, 4))
    set_weight(model.layer(0), [[1.0, -2.0, 3.0, -4.0], [5.0, -6.0, 7.0, -8.0]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = prune.build(prune_cfg(PRUNING="state", TARGET_SPARSITY=0.5, PRUNING_START=0,
                                   PRUNING_END=0.01), model, opt)
    with pytest.warns(RuntimeWarning, match="no optimizer moments"):
        record = pruner.after_step(1, 0.5)
    assert record["sparsity"] == 0.5
    assert torch.equal(pruner.masks()["transformer.h.0.weight"],
                       torch.tensor([[False, False, False, False], [True, True, True, True]]))


def test_state_bitter0_with_all_zero_moments_falls_back_to_magnitude():
    model = Toy((2, 2))
    layer = model.layer(0)
    set_weight(layer, [[1.0, -2.0], [0.5, 4.0]])
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    layer.weight.grad = torch.ones(2, 2)
    opt.step()
    opt.state[layer.weight]["exp_avg"].zero_()  # as after a SPAM reset
    pruner = prune.build(prune_cfg(PRUNING="state", TARGET_SPARSITY=0.5, PRUNING_START=0,
                                   PRUNING_END=0.01), model, opt)
    with pytest.warns(RuntimeWarning, match="every exp_avg is zero"):
        pruner.after_step(1, 0.5)
    assert torch.equal(pruner.masks()["transformer.h.0.weight"],
                       torch.tensor([[False, True], [False, True]]))
    # the update zeroed the moments it pruned, and left the kept ones
    v = opt.state[layer.weight]["exp_avg_sq"]
    assert v[0, 0] == 0 and v[1, 0] == 0 and v[0, 1] > 0 and v[1, 1] > 0


def test_state_pruning_rejects_optimizer_without_moments():
    model = Toy((2, 2))
    with pytest.raises(ValueError, match="Adam-family"):
        prune.build(prune_cfg(PRUNING="state"), model, torch.optim.SGD(model.parameters(), lr=1))


def test_movement_accumulates_minus_w_times_grad_and_prunes_lowest():
    model = Toy((2, 2))
    layer = model.layer(0)
    pruner = prune.build(prune_cfg(PRUNING="movement", TARGET_SPARSITY=0.5, PRUNING_START=0,
                                   PRUNING_END=0.5), model,
                         torch.optim.SGD(model.parameters(), lr=0.1))
    w1, g1 = [[1.0, -2.0], [0.5, 3.0]], [[0.5, 1.0], [-2.0, 0.0]]
    w2, g2 = [[0.9, -1.5], [0.5, 3.0]], [[1.0, -1.0], [-2.0, 0.25]]
    set_weight(layer, w1)
    layer.weight.grad = torch.tensor(g1)
    pruner.before_step()
    set_weight(layer, w2)  # the score uses the weight at each step
    layer.weight.grad = torch.tensor(g2)
    pruner.before_step()
    score = pruner.state_dict()["scores"]["transformer.h.0.weight"]
    expected = torch.tensor([[-(w1[i][j] * g1[i][j] + w2[i][j] * g2[i][j]) for j in range(2)]
                             for i in range(2)])
    # e.g. (0, 0): -(1 * 0.5 + 0.9 * 1) = -1.4; (0, 1): -(-2 * 1 + -1.5 * -1) = 0.5
    assert torch.allclose(expected, torch.tensor([[-1.4, 0.5], [2.0, -0.75]]))
    torch.testing.assert_close(score, expected)
    assert torch.equal(pruner.importance()["transformer.h.0.weight"], score)
    # the importance is S itself (not |W|): the two lowest S go, whatever their magnitude
    pruner.after_step(1, 0.0)  # first update: progress 0, prunes nothing, resets S
    assert torch.equal(pruner.state_dict()["scores"]["transformer.h.0.weight"], torch.zeros(2, 2))
    set_weight(layer, w2)
    layer.weight.grad = torch.tensor(g2)
    pruner.before_step()  # S = -W2 * g2 = [[-0.9, -1.5], [1.0, -0.75]]
    record = pruner.after_step(2, 0.5)  # progress 1: half of the 4 weights
    assert record["sparsity"] == 0.5
    assert torch.equal(pruner.masks()["transformer.h.0.weight"],
                       torch.tensor([[False, False], [True, True]]))
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.0, 0.0], [0.5, 3.0]]))
    assert torch.equal(pruner.state_dict()["scores"]["transformer.h.0.weight"], torch.zeros(2, 2))


# --------------------------------------------------------------------------
# global threshold and schedule semantics
# --------------------------------------------------------------------------

def test_global_threshold_prunes_small_scale_layer_more():
    model = tiny_gpt()
    small = model.transformer.h[1].attn.c_attn
    with torch.no_grad():
        small.weight.mul_(1e-3)
    pruner = prune.build(prune_cfg(TARGET_SPARSITY=0.5, PRUNING_START=0, PRUNING_END=0.1),
                         model, torch.optim.AdamW(model.parameters()))
    magnitude = {n: getattr(m, a).detach().abs().clone() for n, m, a in pruner.entries}
    record = pruner.after_step(1, 0.5)
    total = sum(getattr(m, a).numel() for _, m, a in pruner.entries)
    assert record["sparsity"] == round(0.5 * total) / total
    assert abs(record["sparsity"] - 0.5) < 0.005
    per_layer = record["per_layer"]
    assert per_layer["transformer.h.1.attn.c_attn.weight"] == 1.0
    # the same layer of the other block (same init scale) keeps most of its weights
    assert per_layer["transformer.h.0.attn.c_attn.weight"] < 0.5
    assert pruner.stats()["sparsity"] == record["sparsity"]
    # the weights are zeroed, and every kept weight was at least as large as every pruned one
    pruned, kept = [], []
    for name, (w, gone) in pruned_weights(pruner).items():
        assert bool((w.detach()[gone] == 0).all()), name
        pruned.append(magnitude[name][gone])
        kept.append(magnitude[name][~gone])
    assert torch.cat(pruned).max() <= torch.cat(kept).min()


def test_exact_count_with_ties():
    model = Toy((4, 5), (3, 3))
    with torch.no_grad():
        model.layer(0).weight.fill_(1.0)
        model.layer(1).weight.fill_(1.0)
    pruner = prune.build(prune_cfg(TARGET_SPARSITY=0.35, PRUNING_START=0, PRUNING_END=0.1),
                         model, torch.optim.AdamW(model.parameters()))
    record = pruner.after_step(1, 1.0)
    assert record["sparsity"] == round(0.35 * 29) / 29  # 10 of 29, all scores equal
    masks = pruner.masks()
    assert sum(int((~m).sum()) for m in masks.values()) == 10
    zeros = sum(int((getattr(m, a) == 0).sum()) for _, m, a in pruner.entries)
    assert zeros == 10


def test_schedule_iterations_and_targets():
    model = Toy((8, 16), (4, 8))
    cfg = prune_cfg(TARGET_SPARSITY=0.6, PRUNING_START=3, PRUNING_FREQUENCY=4, PRUNING_END=0.5,
                    PRUNING_SCHEDULE="linear")
    pruner = prune.build(cfg, model, torch.optim.AdamW(model.parameters()))
    total = 20
    records = {}
    for it in range(1, total + 1):
        record = pruner.after_step(it, it / total)
        if record is not None:
            records[it] = record
    # first at START (fraction 0.15), every 4 after, plus at fraction 0.5 (it 10, off the grid)
    assert sorted(records) == [3, 7, 10]
    p7 = (7 / 20 - 0.15) / (0.5 - 0.15)
    assert records[3]["target_sparsity_now"] == 0.0 and records[3]["sparsity"] == 0.0
    assert records[7]["target_sparsity_now"] == pytest.approx(0.6 * p7)
    assert records[10]["target_sparsity_now"] == 0.6
    n = 8 * 16 + 4 * 8
    assert records[7]["sparsity"] == round(0.6 * p7 * n) / n
    assert records[10]["sparsity"] == round(0.6 * n) / n
    assert set(records[10]) == {"iter", "target_sparsity_now", "sparsity", "per_layer"}
    assert records[10]["iter"] == 10
    state = pruner.state_dict()
    assert state["done"] is True and state["last_update_iter"] == 10
    assert state["start_fraction"] == pytest.approx(0.15)


def test_schedule_start_after_end_reaches_target_at_once():
    model = Toy((8, 8))
    pruner = prune.build(prune_cfg(TARGET_SPARSITY=0.75, PRUNING_START=15, PRUNING_END=0.5,
                                   PRUNING_FREQUENCY=2), model,
                         torch.optim.AdamW(model.parameters()))
    iters = [it for it in range(1, 21) if pruner.after_step(it, it / 20) is not None]
    assert iters == [15]
    assert pruner.stats()["sparsity"] == 0.75


# --------------------------------------------------------------------------
# the hooks in a training loop
# --------------------------------------------------------------------------

METHODS = [("magnitude", None), ("movement", None), ("state", "bitter0"), ("state", "bitter1")]


# SPAM with clip_delay=0 clips every gradient of the step after a moment reset to zero,
# so bitter0 falls back to |W| at the update of iteration 26 (tested on its own below).
@pytest.mark.filterwarnings("ignore:state pruning .bitter0.. every exp_avg is zero")
@pytest.mark.parametrize("target", [0.5, 0.9])
@pytest.mark.parametrize("opt_kind", ["adamw", "spam"])
@pytest.mark.parametrize("method, variant", METHODS)
def test_training_loop_keeps_pruned_weights_zero(method, variant, opt_kind, target):
    model = tiny_gpt()
    cfg = prune_cfg(PRUNING=method, ADAMWPRUNE_VARIANT=variant, TARGET_SPARSITY=target)
    prune.attach_masks(model, cfg)
    opt = make_optimizer(opt_kind, model)
    pruner = prune.build(cfg, model, opt)
    prev = pruner.masks()
    records = []

    def grads_of_pruned_are_zero():
        for name, (w, gone) in pruned_weights(pruner).items():
            assert torch.equal(w.grad[gone], torch.zeros_like(w.grad[gone])), name

    for it, batch in enumerate(batches(), start=1):
        record = step(model, opt, pruner, batch, it, after_before_step=grads_of_pruned_are_zero)
        if record is not None:
            records.append(record)
        masks = pruner.masks()
        for name, (w, gone) in pruned_weights(pruner).items():
            assert not bool((masks[name] & ~prev[name]).any()), f"{name} un-pruned at {it}"
            assert bool((w.detach()[gone] == 0).all()), f"{name}: pruned weight nonzero at {it}"
            if method == "state":
                state = opt.state[w]
                for key in ("exp_avg", "exp_avg_sq"):
                    assert bool((state[key][gone] == 0).all()), f"{name} {key} at {it}"
        prev = masks
    # START 5, every 7, END 0.75 of 40 -> updates at 5, 12, 19, 26 and 30 (target reached)
    assert [r["iter"] for r in records] == [5, 12, 19, 26, 30]
    targets = [r["target_sparsity_now"] for r in records]
    assert targets == sorted(targets) and targets[-1] == target
    stats = pruner.stats()
    assert abs(stats["sparsity"] - target) < 0.005
    assert stats["sparsity"] == records[-1]["sparsity"]
    assert stats["prunable_params"] == 2 * (96 * 32 + 32 * 32 + 2 * 128 * 32)
    zeros = sum(int((w.detach() == 0).sum()) for w, _ in pruned_weights(pruner).values())
    assert zeros >= round(target * stats["prunable_params"])
    assert stats["nonzero_params"] == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert stats["nonzero_params"] <= sum(p.numel() for p in model.parameters()) - zeros


def test_masked_grads_and_state_hooks_do_not_touch_unpruned_model():
    """Before any mask prunes, the hooks leave training exactly as without a pruner."""
    runs = []
    for with_pruner in (False, True):
        model = tiny_gpt()
        opt = make_optimizer("adamw", model)
        pruner = prune.build(prune_cfg(PRUNING="state", PRUNING_START=100), model, opt)
        for it, batch in enumerate(batches(6), start=1):
            _, loss = model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            if with_pruner:
                pruner.before_step()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if with_pruner:
                assert pruner.after_step(it, it / 200) is None
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# --------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------

@pytest.mark.parametrize("method, variant, storage", [("movement", None, "bool"),
                                                      ("state", "bitter0", "packed"),
                                                      ("magnitude", None, "packed")])
def test_resume_continues_identically(method, variant, storage):
    cfg = prune_cfg(PRUNING=method, ADAMWPRUNE_VARIANT=variant, MASK_STORAGE=storage,
                    TARGET_SPARSITY=0.9)
    data = batches()

    def fresh():
        model = tiny_gpt()
        prune.attach_masks(model, cfg)
        opt = make_optimizer("adamw", model)
        return model, opt, prune.build(cfg, model, opt)

    model, opt, pruner = fresh()
    for it in range(1, 16):
        step(model, opt, pruner, data[it - 1], it)
    checkpoint = state_via_bytes({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "pruner": pruner.state_dict()})
    mask_keys = [k for k in checkpoint["model"] if k.endswith("_mask")]
    assert len(mask_keys) == 8
    for it in range(16, TOTAL + 1):
        step(model, opt, pruner, data[it - 1], it)

    model2, opt2, pruner2 = fresh()
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["optimizer"])
    pruner2.load_state_dict(checkpoint["pruner"])
    # the restored masks are the checkpoint's (partly pruned at iteration 12)
    restored = pruner2.masks()
    assert 0 < pruner2.stats()["sparsity"] < 0.9
    for name, mask in restored.items():
        buf = checkpoint["model"][name + "_mask"]
        expected = buf if buf.dtype == torch.bool else prune.unpack_bits(buf, mask.shape)
        assert torch.equal(mask, expected)
    if method == "movement":
        assert any(bool(s.any()) for s in checkpoint["pruner"]["scores"].values())
    for it in range(16, TOTAL + 1):
        step(model2, opt2, pruner2, data[it - 1], it)

    final, final2 = pruner.masks(), pruner2.masks()
    assert all(torch.equal(final[k], final2[k]) for k in final)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p1, p2), n1
    assert pruner.state_dict()["done"] and pruner2.state_dict()["done"]


def test_pruned_checkpoint_reloads_masks_into_fresh_model():
    cfg = prune_cfg(TARGET_SPARSITY=0.5, PRUNING_START=0, PRUNING_END=0.1)
    model = tiny_gpt()
    prune.attach_masks(model, cfg)
    pruner = prune.build(cfg, model, torch.optim.AdamW(model.parameters()))
    pruner.after_step(1, 1.0)
    saved = state_via_bytes(model.state_dict())
    fresh = tiny_gpt(seed=5)
    with pytest.raises(RuntimeError, match="weight_mask"):
        fresh.load_state_dict(saved)  # no masks attached: the checkpoint does not fit
    prune.attach_masks(fresh, cfg)
    fresh.load_state_dict(saved)
    for name, module, attr in prune.prunable(fresh):
        assert torch.equal(module.weight_mask, model.get_submodule(name[:-7]).weight_mask)
        assert bool((module.weight[~module.weight_mask] == 0).all())
    # apply_masks zeroes weights by their masks (a model whose weights were altered)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    prune.apply_masks(fresh)
    block = fresh.transformer.h[0].mlp.c_fc
    assert bool((block.weight[~block.weight_mask] == 0).all())
    assert bool((block.weight[block.weight_mask] != 0).all())


@pytest.mark.parametrize("storage", ["bool", "packed"])
def test_masks_loaded_after_build_are_applied(storage):
    """A pruner built before model.load_state_dict() brings in pruned masks applies them."""
    cfg = prune_cfg(MASK_STORAGE=storage, TARGET_SPARSITY=0.5, PRUNING_START=0, PRUNING_END=0.1)
    source = tiny_gpt()
    prune.attach_masks(source, cfg)
    prune.build(cfg, source, torch.optim.AdamW(source.parameters())).after_step(1, 1.0)
    model = tiny_gpt(seed=3)
    prune.attach_masks(model, cfg)
    pruner = prune.build(prune_cfg(MASK_STORAGE=storage, PRUNING_START=100), model,
                         torch.optim.AdamW(model.parameters()))
    pruner.after_step(1, 0.01)  # nothing pruned yet
    model.load_state_dict(source.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert pruner.after_step(2, 0.02) is None
    for name, (w, gone) in pruned_weights(pruner).items():
        assert 0 < int(gone.sum()) < gone.numel()
        assert bool((w.detach()[gone] == 0).all()) and bool((w.detach()[~gone] != 0).all())


def test_pruner_state_dict_checks_method():
    model = Toy((2, 2))
    opt = torch.optim.AdamW(model.parameters())
    movement = prune.build(prune_cfg(PRUNING="movement"), model, opt)
    state = state_via_bytes(movement.state_dict())
    assert set(state) >= {"method", "start_fraction", "last_update_iter", "done", "scores"}
    magnitude = prune.build(prune_cfg(PRUNING="magnitude"), model, opt)
    with pytest.raises(ValueError, match="movement"):
        magnitude.load_state_dict(state)


# --------------------------------------------------------------------------
# packed masks
# --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:state pruning .bitter0.. every exp_avg is zero")
@pytest.mark.parametrize("method, variant", [("magnitude", None), ("movement", None),
                                             ("state", "bitter0")])
def test_packed_masks_train_bit_exactly_like_bool(method, variant):
    results = {}
    for storage in ("bool", "packed"):
        cfg = prune_cfg(PRUNING=method, ADAMWPRUNE_VARIANT=variant, MASK_STORAGE=storage,
                        TARGET_SPARSITY=0.9, PRUNE_WEIGHTS="blocks-embeddings")
        model = tiny_gpt()
        prune.attach_masks(model, cfg)
        opt = make_optimizer("spam", model)
        pruner = prune.build(cfg, model, opt)
        for it, batch in enumerate(batches(), start=1):
            step(model, opt, pruner, batch, it)
        results[storage] = (model, pruner, pruner.stats())
    (m_bool, p_bool, s_bool), (m_packed, p_packed, s_packed) = results["bool"], results["packed"]
    for (name, a), (_, b) in zip(m_bool.named_parameters(), m_packed.named_parameters()):
        assert torch.equal(a, b), name
    masks_bool, masks_packed = p_bool.masks(), p_packed.masks()
    assert all(torch.equal(masks_bool[k], masks_packed[k]) for k in masks_bool)
    sizes = [getattr(m, a).numel() for _, m, a in p_bool.entries]
    assert s_bool["mask_bytes"] == sum(sizes)
    assert s_packed["mask_bytes"] == sum(math.ceil(n / 8) for n in sizes)
    assert s_packed["mask_bytes"] * 8 - s_bool["mask_bytes"] < 8 * len(sizes)
    assert s_bool["sparsity"] == s_packed["sparsity"] and abs(s_bool["sparsity"] - 0.9) < 0.005


# --------------------------------------------------------------------------
# the real config
# --------------------------------------------------------------------------

def test_build_from_real_config(tiny_config):
    from lib import config as cfglib

    cfg = cfglib.load(tiny_config("PRUNING=state", "ADAMWPRUNE_VARIANT=bitter1",
                                  "TARGET_SPARSITY=0.7", "PRUNING_START=3",
                                  "PRUNING_FREQUENCY=2", "PRUNING_END=0.5",
                                  "MASK_STORAGE=packed", "PRUNE_WEIGHTS=blocks-embeddings"))
    model = tiny_gpt()
    prune.attach_masks(model, cfg)
    pruner = prune.build(cfg, model, make_optimizer("adamw", model))
    assert isinstance(pruner, prune.PRUNERS["state"]) and pruner.variant == "bitter1"
    assert (pruner.target, pruner.start, pruner.frequency, pruner.end) == (0.7, 3, 2, 0.5)
    assert pruner.storage == "packed" and pruner.entries[0][0] == "transformer.wte.weight"
    dense = cfglib.load(tiny_config("PRUNING=none", name="dense"))
    assert isinstance(prune.build(dense, model, make_optimizer("adamw", model)), prune.NoPruner)


def test_no_pruner_is_a_dense_stand_in():
    model = tiny_gpt()
    dense = prune.NoPruner(model)
    nonzero_before = dense.stats()["nonzero_params"]
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[:3].zero_()
    before = [p.detach().clone() for p in model.parameters()]
    dense.before_step()
    assert dense.after_step(1, 1.0) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    stats = dense.stats()
    assert stats["sparsity"] == 0.0 and stats["mask_bytes"] == 0
    assert stats["prunable_params"] == 2 * (96 * 32 + 32 * 32 + 2 * 128 * 32)
    assert stats["nonzero_params"] == nonzero_before - 3 * 32
    assert nonzero_before == sum(int(torch.count_nonzero(p)) for p in model.parameters()) + 3 * 32
    dense.load_state_dict(state_via_bytes(dense.state_dict()))
    with pytest.raises(ValueError):
        dense.load_state_dict({"method": "magnitude"})


# --------------------------------------------------------------------------
# the schedule against a budget
# --------------------------------------------------------------------------

def test_slow_start_cubic_is_the_anchors_p_cubed():
    assert prune.sparsity_at("cubic-slow-start", 0.8, 0.5) == pytest.approx(0.8 * 0.125)
    assert prune.sparsity_at("cubic-slow-start", 0.8, 1.0) == pytest.approx(0.8)
    assert (prune.sparsity_at("cubic-slow-start", 0.5, 0.3)
            < prune.sparsity_at("linear", 0.5, 0.3) < prune.sparsity_at("cubic", 0.5, 0.3))


@pytest.mark.parametrize("start, end, frequency, total", [
    (3, 0.5, 4, 20), (5, 0.75, 7, 40), (15, 0.5, 2, 20), (1, 1.0, 3, 10), (0, 0.3, 1, 7),
    (7, 0.9, 50, 13), (21, 0.5, 2, 20), (10, 0.999, 1, 1000),
])
def test_plan_matches_what_the_pruner_does(start, end, frequency, total):
    model = Toy((8, 8))
    pruner = prune.build(prune_cfg(PRUNING_START=start, PRUNING_END=end,
                                   PRUNING_FREQUENCY=frequency), model,
                         torch.optim.AdamW(model.parameters()))
    updates = [it for it in range(1, total + 1) if pruner.after_step(it, it / total) is not None]
    plan = prune.plan(start, end, total)
    assert plan.first_update == (updates[0] if updates else None)
    assert plan.target_reached == (updates[-1] if pruner.done else None)


def budget_cfg(**overrides):
    return prune_cfg(PRUNING_MIN_FULL_SHARE=0.1, ADAMWPRUNE_VARIANT=None, **overrides)


def test_a_target_out_of_reach_is_a_configuration_error_naming_the_knobs():
    from lib.config import ConfigError

    with pytest.raises(ConfigError) as e:
        prune.check_schedule(budget_cfg(PRUNING_START=100), 10, "BUDGET=epochs, NUM_EPOCHS=2")
    for word in ("PRUNING_START=100", "PRUNING_END=0.75", "PRUNING_FREQUENCY=7",
                 "NUM_EPOCHS=2", "TARGET_SPARSITY=0.5"):
        assert word in str(e.value)
    # reached at iteration 96 of 100: 4% at full sparsity, less than the 10% asked for
    with pytest.raises(ConfigError, match=r"iteration 96 of 100.*PRUNING_MIN_FULL_SHARE=0.1"):
        prune.check_schedule(budget_cfg(PRUNING_END=0.96), 100, "BUDGET=iters, MAX_ITERS=100")
    plan = prune.check_schedule(budget_cfg(PRUNING_END=0.9), 100, "BUDGET=iters")
    assert (plan.first_update, plan.target_reached, plan.full_share) == (5, 90, 0.1)
    # a wall-clock budget: only the share after PRUNING_END is known in advance
    assert prune.check_schedule(budget_cfg(PRUNING_START=10**6), None, "BUDGET=minutes") is None
    with pytest.raises(ConfigError, match="PRUNING_END=0.95"):
        prune.check_schedule(budget_cfg(PRUNING_END=0.95), None, "BUDGET=minutes")


def test_bitter2_ramp_ends_where_the_base_budget_would_unless_stretched():
    cfg = dict(PRUNING="state", ADAMWPRUNE_VARIANT="bitter2", BITTER2_SPEND="iters",
               BITTER2_EXTRA_ITERS_PCT=21, PRUNING_END=0.75)
    assert prune.ramp_end(prune_cfg(**cfg, BITTER2_STRETCH_RAMP=False)) == pytest.approx(0.75 / 1.21)
    assert prune.ramp_end(prune_cfg(**cfg, BITTER2_STRETCH_RAMP=True)) == 0.75
    # 100 base iterations + 21%: the target at iteration 75 either way when fixed
    assert prune.plan(5, prune.ramp_end(prune_cfg(**cfg, BITTER2_STRETCH_RAMP=False)),
                      121).target_reached == 75
