"""Pruning through the trainer: target reached, zeros kept, records, resume, bitter2, sampling."""
import json

import pytest
import torch

from gpt2 import sample, train
from lib import checkpoint, prune
from lib import config as cfglib
from lib.run import RunDir

PRUNED = ("MAX_ITERS=40", "EVAL_INTERVAL=40", "CHECKPOINT_INTERVAL=1000", "PRUNING_START=5",
          "PRUNING_END=0.5", "PRUNING_FREQUENCY=5", "SAMPLE_AFTER_TRAINING=n")


def finished(config):
    run = RunDir.for_config(cfglib.load(config))
    return run, json.loads(run.summary.read_text()), checkpoint.load(run.ckpt)


def masks_of(state) -> dict:
    return {k: v for k, v in state["model"].items() if k.endswith("_mask")}


@pytest.mark.parametrize("method", ["magnitude", "movement", "state"])
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_target_reached_and_pruned_weights_stay_zero(tiny_config, method, target):
    config = tiny_config(*PRUNED, f"PRUNING={method}", f"TARGET_SPARSITY={target}",
                         "WEIGHT_DECAY=0.1", "GRADIENT_ACCUMULATION=2")
    assert train.main([str(config)]) == 0
    run, summary, state = finished(config)
    assert summary["sparsity"] == pytest.approx(target, abs=0.005)
    assert summary["pruning_incomplete"] is False
    assert summary["target_sparsity"] == target
    masks = masks_of(state)
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    for name, mask in masks.items():
        weight = state["model"][name.removesuffix("_mask")]
        assert torch.all(weight[~mask] == 0), name
    pruned = sum(int((~m).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert pruned / total == pytest.approx(target, abs=0.005)
    assert summary["mask_bytes"] == total
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    updates = [r for r in records if r["kind"] == "prune"]
    assert [r["iter"] for r in updates] == [5, 10, 15, 20]
    assert updates[-1]["sparsity"] == pytest.approx(target, abs=0.005)
    assert set(updates[-1]["per_layer"]) == {n.removesuffix("_mask") for n in masks}


# Prune updates at 5, 10, ..., 30 (PRUNING_END=0.75 of 40 iterations) around one SPAM reset at
# 25: the weights pruned at 30 had live moments when they were pruned, and no reset follows to
# zero them (a reset after the last prune zeroes every moment, so it would hide whether state
# pruning zeroes any). Their gradients are zeroed from then on, so their moments only decay.
SPAM_BEFORE_LAST_PRUNE = (*PRUNED, "OPTIMIZER=adamwspam", "TARGET_SPARSITY=0.7",
                          "PRUNING_END=0.75", "SPAM_INTERVAL=25", "WEIGHT_DECAY=0.1")


def pruned_moments(pruner) -> dict:
    """{weight name: [its optimizer moments at the pruned positions]} of the live pruner."""
    found = {}
    for name, module, attr in pruner.entries:
        keep = pruner.masks()[name]
        state = pruner.optimizer.state[getattr(module, attr)]
        found[name] = [state[k][~keep] for k in ("exp_avg", "exp_avg_sq")]
    return found


@pytest.mark.parametrize("method, zeroes_moments", [("state", True), ("magnitude", False)])
def test_state_pruning_zeroes_moments_around_spam_resets(tiny_config, monkeypatch, method,
                                                         zeroes_moments):
    """State pruning leaves no moment at a pruned position; magnitude pruning, the control,
    leaves some, so the check would catch a state pruning that zeroes nothing."""
    built = {}
    real = train.prune.build

    def spy(cfg, model, optimizer):
        built["pruner"] = real(cfg, model, optimizer)
        return built["pruner"]

    monkeypatch.setattr(train.prune, "build", spy)
    config = tiny_config(*SPAM_BEFORE_LAST_PRUNE, f"PRUNING={method}")
    assert train.main([str(config)]) == 0
    run, summary, _ = finished(config)
    assert summary["reset_count"] == 1 and summary["sparsity"] == pytest.approx(0.7, abs=0.005)
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "prune"][-1] == 30
    moments = pruned_moments(built["pruner"])
    assert moments and all(m.numel() for ms in moments.values() for m in ms)
    all_zero = all(torch.all(m == 0) for ms in moments.values() for m in ms)
    assert all_zero is zeroes_moments, {n: [int(m.count_nonzero()) for m in ms]
                                        for n, ms in moments.items()}


def test_pruned_run_resumes_exactly(tiny_config, tmp_path):
    common = (*PRUNED, "PRUNING=movement", "TARGET_SPARSITY=0.6", "MASK_STORAGE=packed",
              "DROPOUT=0.1")
    straight = tiny_config(*common, name="straight")
    resumed = tiny_config(*common, f"RESULTS_DIR={tmp_path / 'other'}", name="resumed")
    assert train.main([str(straight)]) == 0
    assert train.main([str(resumed), "--stop-after", "12"]) == 0
    assert train.main([str(resumed)]) == 0
    (_, a_summary, a), (_, b_summary, b) = finished(straight), finished(resumed)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert masks_of(a) and all(m.dtype == torch.uint8 for m in masks_of(a).values())
    assert a_summary["val_loss"] == b_summary["val_loss"]


@pytest.mark.parametrize("spend, expected_iters, expected_batch, label", [
    ("iters", 49, 8, "+21% iterations at full sparsity"),  # ceil(40 * 1.21)
    ("batch", 40, 9, "+14% batch"),  # round(8 * 1.14)
])
def test_bitter2_spends_the_savings_and_says_so(tiny_config, spend, expected_iters,
                                                expected_batch, label):
    config = tiny_config(*PRUNED, "PRUNING=state", "ADAMWPRUNE_VARIANT=bitter2",
                         f"BITTER2_SPEND={spend}")
    assert train.main([str(config)]) == 0
    _, summary, _ = finished(config)
    assert summary["iters"] == expected_iters and summary["batch_size"] == expected_batch
    assert summary["tokens_seen"] == expected_iters * expected_batch * 32
    assert summary["extra_budget"] == label


def test_sampling_uses_the_pruned_model(tiny_config, capsys, monkeypatch):
    config = tiny_config(*PRUNED, "PRUNING=magnitude", "TARGET_SPARSITY=0.8", "SAMPLE_COUNT=2")
    assert train.main([str(config)]) == 0
    loaded = {}
    real = prune.attach_masks

    def spy(model, cfg):
        real(model, cfg)
        loaded["model"] = model

    monkeypatch.setattr(train.prune, "attach_masks", spy)
    capsys.readouterr()
    assert sample.main([str(config)]) == 0
    assert capsys.readouterr().out.count("---") == 2
    linear = loaded["model"].transformer.h[0].mlp.c_fc
    assert torch.equal(linear.weight == 0, ~linear.weight_mask)


def test_a_schedule_the_budget_cannot_reach_stops_before_training(tiny_config, capsys):
    config = tiny_config(*PRUNED, "PRUNING=magnitude", "PRUNING_START=100")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "PRUNING_START=100" in err and "MAX_ITERS=40" in err and "PRUNING_FREQUENCY" in err
    assert not RunDir.for_config(cfglib.load(config)).path.exists()


def test_a_time_budget_that_ends_short_of_the_target_says_so(tiny_config):
    config = tiny_config(*[o for o in PRUNED if not o.startswith("MAX_ITERS")],
                         "PRUNING=magnitude", "BUDGET=minutes", "MAX_MINUTES=0.003",
                         "PRUNING_START=1000000", "EVAL_INTERVAL=1000000")
    assert train.main([str(config)]) == 0
    _, summary, _ = finished(config)
    assert summary["status"] == "complete" and summary["pruning_incomplete"] is True
    assert summary["sparsity"] == 0.0
