"""What a reviewer needs from a run: the held-out test split evaluated once at the end,
pairing hashes shared by the cells of one seed, compile time apart from training speed."""
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2 import data, train
from gpt2.data import loaders
from gpt2.build import build_model
from lib import checkpoint, faults
from lib import config as cfglib
from lib.run import RunDir
from lib.steptime import WARMUP_STEPS, StepClock

SHORT = ("MAX_ITERS=8", "EVAL_INTERVAL=8", "SAMPLE_AFTER_TRAINING=n")


def run_of(config) -> RunDir:
    return RunDir.for_config(cfglib.load(config))


def summary_of(config) -> dict:
    return json.loads(run_of(config).summary.read_text())


def records(config) -> list:
    return [json.loads(line) for line in run_of(config).metrics.read_text().splitlines()]


def test_the_test_split_is_evaluated_once_at_the_end_over_every_window(tiny_config):
    config = tiny_config(*SHORT)
    assert train.main([str(config)]) == 0
    cfg, run = cfglib.load(config), run_of(config)
    kinds = [(r["kind"], r["iter"]) for r in records(config) if r["kind"] != "train"]
    assert kinds == [("eval", 8), ("test", 8)]  # after the final validation, once
    test = records(config)[-1]
    summary = summary_of(config)
    for key in ("test_loss", "test_ppl", "test_acc", "test_tokens"):
        assert summary[key] == test[key]
    # the oracle: torch's cross-entropy over every non-overlapping window of test.bin
    prepared = data.prepare_config(cfg)
    tokens = torch.from_numpy(np.fromfile(prepared / "test.bin", dtype=np.uint16).astype(np.int64))
    count = (tokens.numel() - 1) // cfg.BLOCK_SIZE
    x = tokens[:count * cfg.BLOCK_SIZE].view(count, cfg.BLOCK_SIZE)
    y = tokens[1:count * cfg.BLOCK_SIZE + 1].view(count, cfg.BLOCK_SIZE)
    model = build_model(cfg, data.vocab_size(prepared))
    model.load_state_dict(checkpoint.load(run.ckpt)["model"])
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 64], y[i:i + 64])[0] for i in range(0, count, 64)])
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    assert summary["test_tokens"] == y.numel()
    assert summary["test_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert summary["test_ppl"] == pytest.approx(np.exp(loss.item()), rel=1e-5)
    assert summary["test_acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_a_run_stopped_before_its_test_evaluation_finishes_it_on_the_next_start(tiny_config):
    config = tiny_config(*SHORT)
    run = run_of(config)
    faults.arm("eval@8=TERM")  # as the final validation starts: it finishes, then stops
    try:
        assert train.main([str(config)]) == 130
    finally:
        faults.arm("")
    stopped = summary_of(config)
    assert stopped["status"] == "interrupted" and stopped["eval_iter"] == 8
    assert stopped["test_loss"] is None and not run.is_complete()
    assert "test" not in [r["kind"] for r in records(config)]
    assert train.main([str(config)]) == 0
    done = summary_of(config)
    assert run.is_complete() and done["test_loss"] is not None
    assert done["val_loss"] == stopped["val_loss"]
    # killed after the test record was written, before its checkpoint: done once, kept once
    state = checkpoint.load(run.ckpt)
    state["progress"]["test"] = None
    checkpoint.save(run.ckpt, state)
    stale = {k: v for k, v in summary_of(config).items() if not k.startswith("test_")}
    run.write_summary(stale)
    assert not run.is_complete()
    before = summary_of(config)
    assert train.main([str(config)]) == 0
    after = summary_of(config)
    assert run.is_complete() and after["test_loss"] is not None
    assert after["val_loss"] == before["val_loss"] and after["iters"] == 8
    assert [r["kind"] for r in records(config)].count("test") == 1


def test_a_test_split_smaller_than_a_window_is_one_line_before_training(tiny_config, capsys):
    config = tiny_config(*SHORT, "TEST_FRACTION=0.00001")
    assert train.main([str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the test split")
    assert "TEST_FRACTION" in err and "BLOCK_SIZE + 1 = 33" in err
    assert not run_of(config).path.exists()


def _hash(*arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def test_cells_of_one_seed_share_init_and_data_whatever_the_optimizer_or_pruning(
        tiny_config, monkeypatch):
    drawn = []
    real_step = loaders.Batches.step

    def recording(self, split, count, rank=0, processes=1):
        batches = real_step(self, split, count, rank, processes)
        drawn.append([(x.clone(), y.clone()) for x, y in batches])
        return batches

    monkeypatch.setattr(loaders.Batches, "step", recording)
    pruned = ("PRUNING=magnitude", "TARGET_SPARSITY=0.5", "PRUNING_START=1", "PRUNING_END=0.5",
              "PRUNING_FREQUENCY=1")
    cells = {"adamw": (), "lion": ("OPTIMIZER=lion",), "spam": ("OPTIMIZER=adamwspam",),
             "magnitude": pruned, "seed2": ("SEED=2",)}
    summaries, first_batches = {}, {}
    for name, extra in cells.items():
        drawn.clear()
        config = tiny_config("MAX_ITERS=4", "EVAL_INTERVAL=4", "SAMPLE_AFTER_TRAINING=n",
                             "GRADIENT_ACCUMULATION=2", *extra, name=name)
        assert train.main([str(config)]) == 0
        summaries[name] = summary_of(config)
        # what training actually read in its first 4 steps (inputs and the last target)
        first_batches[name] = _hash(*[t for step in drawn[:4] for x, y in step
                                      for t in (x, y[:, -1:])])
        # the weights the seed gives before any step
        cfg = cfglib.load(config)
        torch.manual_seed(cfg.SEED)
        model = build_model(cfg, data.vocab_size(data.prepare_config(cfg)))
        init = hashlib.sha256()
        for pname, p in sorted(model.named_parameters()):
            init.update(f"{pname}:{tuple(p.shape)}:{p.dtype};".encode())
            init.update(p.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
        assert summaries[name]["init_hash"] == init.hexdigest()[:16], name
        assert summaries[name]["data_hash"] == first_batches[name], name
    same_seed = [summaries[n] for n in ("adamw", "lion", "spam", "magnitude")]
    assert len({(s["init_hash"], s["data_hash"]) for s in same_seed}) == 1
    assert summaries["seed2"]["init_hash"] != summaries["adamw"]["init_hash"]
    assert summaries["seed2"]["data_hash"] != summaries["adamw"]["data_hash"]


def test_a_resumed_run_reports_the_hashes_of_its_start(tiny_config, tmp_path):
    straight = tiny_config(*SHORT, name="straight")
    resumed = tiny_config(*SHORT, f"RESULTS_DIR={tmp_path / 'other'}", name="resumed")
    assert train.main([str(straight)]) == 0
    assert train.main([str(resumed), "--stop-after", "3"]) == 0
    assert train.main([str(resumed)]) == 0
    a, b = summary_of(straight), summary_of(resumed)
    assert (a["init_hash"], a["data_hash"]) == (b["init_hash"], b["data_hash"])
    assert a["test_loss"] == b["test_loss"]  # resume is bit-exact on the CPU
    assert b["compile_s"] >= 0 and b["steady_train_time_s"] == pytest.approx(
        b["train_time_s"] - b["compile_s"])
    assert b["tokens_per_s"] == pytest.approx(b["tokens_seen"] / b["steady_train_time_s"])


def test_compile_time_is_the_warm_up_beyond_steady_steps():
    clock = StepClock("cpu")
    warm = [5.0, 3.0, 2.0]
    assert WARMUP_STEPS == len(warm)
    for s in warm + [1.0, 1.2]:
        clock.step(s)
    clock.window_end(0.0)                 # window of the steps after the warm-up: 1.1 s/step
    for s in [0.9, 0.9, 0.9]:
        clock.step(s)
    clock.window_end(0.3)                 # 1.0 s/step, the sync counted
    for s in [2.0]:
        clock.step(s)
    clock.window_end(0.0)                 # 2.0 s/step
    assert clock.steady_step_s() == pytest.approx(1.1)  # the median window
    assert clock.compile_s() == pytest.approx(sum(warm) - 3 * 1.1)
    # a resumed session adds its own warm-up to the earlier sessions'
    later = StepClock("cpu", clock.compile_s(), clock.steady_step_s())
    for s in [4.0, 1.0, 1.0, 1.0, 1.0]:
        later.step(s)
    later.window_end(0.0)
    assert later.compile_s() == pytest.approx(clock.compile_s() + (6.0 - 3 * 1.0))
    # a session too short to measure its steady speed uses the earlier median
    short = StepClock("cpu", 7.0, 1.5)
    short.step(3.0)
    assert short.compile_s() == pytest.approx(7.0 + 3.0 - 1.5)
