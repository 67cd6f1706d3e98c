"""DDP (2 gloo processes on the CPU) under signals: SIGTERM to one rank, SIGTERM and
SIGHUP to torchrun, kill -9 of one rank. The run stops, and the plain rerun resumes it to exactly
the result of an uninterrupted DDP run (metrics, summary and final weights)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import EVENT_LIMIT_S, write_tiny_config

from lib import checkpoint, faults
from lib import config as cfglib
from lib.run import RunDir

DDP = ("MAX_ITERS=6", "GRADIENT_ACCUMULATION=4", "BATCH_SIZE=4", "LOG_INTERVAL=2",
       "EVAL_INTERVAL=3", "CHECKPOINT_INTERVAL=2", "SAMPLE_AFTER_TRAINING=n",
       "DDP_BACKEND=gloo", "DDP_NPROC_PER_NODE=2")

# (fault at step 3: once, in whichever rank gets there first; exit status of the launcher)
FAULTS = {
    "SIGTERM-one-rank": ("step@3=TERM", 130),
    "SIGTERM-torchrun": ("step@3=TERM>parent", 130),  # a worker's parent is torchrun
    "SIGHUP-torchrun": ("step@3=HUP>parent", 130),  # the terminal closed: passed on as SIGHUP
    "SIGKILL-one-rank": ("step@3=KILL", None),  # torchrun's own failure status
}


def train(config, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "gpt2.train", str(config)], cwd=cfglib.ROOT,
                          env=env, capture_output=True, text=True, timeout=EVENT_LIMIT_S)


def result(config) -> dict:
    run = RunDir.for_config(cfglib.load(config))
    summary = run.read_summary()
    return {"summary": {k: summary[k] for k in ("status", "iters", "eval_iter", "train_loss",
                                                "val_loss", "val_acc", "processes")},
            "metrics": [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s",
                                                                  "peak_mem_bytes")}
                        for r in map(json.loads, run.metrics.read_text().splitlines())],
            "model": checkpoint.load(run.ckpt)["model"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    config = write_tiny_config(tmp_path_factory.mktemp("ddp-reference") / "config", *DDP)
    done = train(config)
    assert done.returncode == 0, done.stderr[-3000:]
    return result(config)


@pytest.mark.parametrize("name", FAULTS)
def test_a_signal_then_resume_equals_the_uninterrupted_ddp_run(tiny_config, tmp_path,
                                                                reference, name):
    spec, code = FAULTS[name]
    config = tiny_config(*DDP)
    stopped = train(config, {faults.FAULT_ENV: spec, faults.MARK_ENV: str(tmp_path / "fired")})
    assert (tmp_path / "fired").exists()
    if code is None:
        assert stopped.returncode not in (0, 130), stopped.stderr[-3000:]
    else:
        assert stopped.returncode == code, stopped.stderr[-3000:]
        run = RunDir.for_config(cfglib.load(config))
        assert run.read_summary()["status"] == "interrupted"
    resumed = train(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    got = result(config)
    assert got["summary"] == reference["summary"]
    assert got["metrics"] == reference["metrics"]
    for key, tensor in reference["model"].items():
        assert torch.equal(got["model"][key], tensor), key
