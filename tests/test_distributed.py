"""lib/distributed.py and DDP through the trainer: the torchrun command, the checks, the
sharded batches, and 2 gloo processes against 1 process with the same global batch."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import EVENT_LIMIT_S

from gpt2 import data, train
from lib import config as cfglib
from lib import distributed
from lib.config import ConfigError
from lib.run import RunDir

ROOT = cfglib.ROOT
# Four micro-batches per step: one process takes all four, each of two takes two. The
# interruption after step 3 falls inside a log window of 2 steps.
DDP_RUN = ("MAX_ITERS=6", "GRADIENT_ACCUMULATION=4", "BATCH_SIZE=4", "LOG_INTERVAL=2",
           "EVAL_INTERVAL=3", "SAMPLE_AFTER_TRAINING=n", "DDP_BACKEND=gloo")


def cfg_of(tiny_config, *extra, name="config"):
    return cfglib.load(tiny_config(*extra, name=name))


def test_torchrun_command_is_an_argv_list_from_the_config(tiny_config):
    single = distributed.torchrun_argv(cfg_of(tiny_config, "DDP_NPROC_PER_NODE=2", "GRADIENT_ACCUMULATION=2"),
                                       "gpt2.train", ["my config", "--set", "A=1"])
    assert single[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in single and "--nnodes=1" in single
    assert "--standalone" in single
    assert single[-5:] == ["-m", "gpt2.train", "my config", "--set", "A=1"]
    cfg = cfg_of(tiny_config, "DDP_NPROC_PER_NODE=4", "DDP_NNODES=2",
                 "DDP_RDZV_ENDPOINT=node001:29500", "GRADIENT_ACCUMULATION=8")
    multi = distributed.torchrun_argv(cfg, "gpt2.train", [])
    assert "--standalone" not in multi
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node001:29500",
            f"--rdzv-id=kmatrix-{cfg.hash}"} <= set(multi)


@pytest.mark.parametrize("settings, named", [
    (("DDP_NPROC_PER_NODE=3", "GRADIENT_ACCUMULATION=4"), "GRADIENT_ACCUMULATION=4"),
    (("DDP_NNODES=2", "GRADIENT_ACCUMULATION=2"), "DDP_RDZV_ENDPOINT"),
    (("DDP_NNODES=2", "GRADIENT_ACCUMULATION=2", "DDP_RDZV_ENDPOINT=a b:1; rm"),
     "not host:port"),
])
def test_bad_distributed_settings_are_errors_naming_the_knob(tiny_config, settings, named):
    with pytest.raises(ConfigError, match=named):
        distributed.check(cfg_of(tiny_config, *settings))


def test_distributed_knobs_stay_out_of_the_run_hash(tiny_config):
    one = cfg_of(tiny_config, name="one")
    eight = cfg_of(tiny_config, "DDP_NPROC_PER_NODE=8", "GRADIENT_ACCUMULATION=8",
                   "DDP_BACKEND=nccl", name="eight")
    assert cfg_of(tiny_config, "GRADIENT_ACCUMULATION=8", name="g8").hash == eight.hash
    assert one.hash != eight.hash  # GRADIENT_ACCUMULATION does count


def test_ranks_share_exactly_the_micro_batches_of_one_process(tiny_config):
    cfg = cfg_of(tiny_config)
    prepared = data.prepare(cfg.DATASET, cfg.DATA_DIR, RunDir.for_config(cfg).path.parent
                            / "_data", cfg.TRAIN_SPLIT)
    single = data.Batches(prepared, 8, 3, seed=7)
    expected = [single.get("train") for _ in range(2 * 4)]
    shares = {}
    for rank in (0, 1):
        ranked = data.Batches(prepared, 8, 3, seed=7)
        shares[rank] = [b for _ in range(2) for b in ranked.step("train", 4, rank, 2)]
        assert all(torch.equal(a, b) for a, b in zip(ranked.state_dict()["train"],
                                                     single.state_dict()["train"]))
    together = shares[0][:2] + shares[1][:2] + shares[0][2:] + shares[1][2:]
    assert all(torch.equal(x, ex) and torch.equal(y, ey)
               for (x, y), (ex, ey) in zip(together, expected))
    assert not torch.equal(shares[0][0][0], shares[1][0][0])


def test_launcher_reports_the_trainers_status_not_torchruns(tiny_config, monkeypatch):
    cfg = cfg_of(tiny_config, "DDP_NPROC_PER_NODE=2", "GRADIENT_ACCUMULATION=2")
    monkeypatch.setattr(distributed, "torchrun_argv",
                        lambda cfg, module, args: [sys.executable, "-c", "raise SystemExit(1)"])
    assert distributed.launch(cfg, "gpt2.train", [], lambda: "interrupted") == 130
    assert distributed.launch(cfg, "gpt2.train", [], lambda: "failed") == 3
    assert distributed.launch(cfg, "gpt2.train", [], lambda: None) == 1


def records(config) -> list:
    run = RunDir.for_config(cfglib.load(config))
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


def test_two_gloo_processes_follow_one_process_and_resume(tmp_path, tiny_config):
    """`python -m gpt2.train` with DDP_NPROC_PER_NODE=2 starts torchrun; interrupted after 3
    steps and resumed, it logs the same losses as one process with the same global batch."""
    one = tiny_config(*DDP_RUN, name="one")
    two = tiny_config(*DDP_RUN, "DDP_NPROC_PER_NODE=2",
                      f"RESULTS_DIR={tmp_path / 'two-results'}", name="two")
    assert train.main([str(one)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = []
    for extra in (["--stop-after", "3"], []):
        done = subprocess.run([sys.executable, "-m", "gpt2.train", str(two), *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=EVENT_LIMIT_S)
        assert done.returncode == 0, done.stderr[-3000:]
        logs.append(done.stderr)
    assert "x 2 processes" in logs[0] and "resuming" in logs[1] and "at iteration 3" in logs[1]
    reference, ddp = records(one), records(two)
    assert [(r["kind"], r["iter"]) for r in ddp] == [(r["kind"], r["iter"]) for r in reference]
    for ours, theirs in zip(ddp, reference):
        for key in ("train_loss", "val_loss", "val_acc", "grad_norm"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (key, ours)
    summary = RunDir.for_config(cfglib.load(two)).read_summary()
    assert summary["status"] == "complete" and summary["processes"] == 2
    assert summary["tokens_seen"] == 6 * 4 * 4 * 32


def test_every_rank_holds_identical_parameters_masks_and_states(tiny_config):
    config = tiny_config("MAX_ITERS=12", "GRADIENT_ACCUMULATION=2", "BATCH_SIZE=4",
                         "PRUNING=movement", "TARGET_SPARSITY=0.5", "PRUNING_START=2",
                         "PRUNING_END=0.5", "PRUNING_FREQUENCY=2", "EVAL_INTERVAL=100",
                         "SAMPLE_AFTER_TRAINING=n", "DDP_BACKEND=gloo", "DDP_NPROC_PER_NODE=2")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(ROOT / "tests" / "ddp_worker.py"),
                           str(config), "8"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=EVENT_LIMIT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "differ: []" in done.stdout and "iteration 8" in done.stdout
    assert "sparsity 0.000" not in done.stdout


def test_launcher_passes_a_schedulers_sigusr1_to_torchrun_as_sigterm(tiny_config, tmp_path,
                                                                     monkeypatch):
    """torchrun dies of SIGUSR1 and leaves its workers running; SIGTERM it passes on."""
    cfg = cfg_of(tiny_config, "DDP_NPROC_PER_NODE=2", "GRADIENT_ACCUMULATION=2")
    seen, ready = tmp_path / "seen", tmp_path / "ready"
    child = ("import pathlib, signal, sys, time\n"
             f"def note(s, f): pathlib.Path({str(seen)!r}).write_text(signal.Signals(s).name); "
             "sys.exit(1)\n"
             "signal.signal(signal.SIGTERM, note); signal.signal(signal.SIGUSR1, note)\n"
             f"pathlib.Path({str(ready)!r}).touch()\n"
             f"time.sleep({EVENT_LIMIT_S})\n")
    monkeypatch.setattr(distributed, "torchrun_argv",
                        lambda cfg, module, args: [sys.executable, "-c", child])

    def signal_when_ready():
        while not ready.exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_when_ready, daemon=True).start()
    assert distributed.launch(cfg, "gpt2.train", [], lambda: "interrupted") == 130
    assert seen.read_text() == "SIGTERM"


def test_a_local_matrix_runs_distributed_cells_one_at_a_time(tiny_config, capsys):
    from scripts import matrix
    config = tiny_config("MATRIX=y", "MATRIX_JOBS=2", "DDP_NPROC_PER_NODE=2",
                         "GRADIENT_ACCUMULATION=2")
    assert matrix.main([str(config)]) == 2
    assert "MATRIX_JOBS=2 with 2 processes per cell" in capsys.readouterr().err
