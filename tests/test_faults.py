"""Fault injection: a run interrupted anywhere, by any signal, and then resumed ends
bit for bit where the uninterrupted run ends (CPU, tiny model).

The fault lands at a named point (lib/faults.py): SIGINT, SIGTERM and SIGUSR1 are
delivered in-process (the trainer only notes them, so where they land is exact),
kill -9 needs a child process. The iterations are drawn at random from a fixed
seed, so a failure names a reproducible point.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import EVENT_LIMIT_S, write_tiny_config

from gpt2 import train
from lib import checkpoint, faults
from lib import config as cfglib
from lib.run import RunDir

ITERS, EVAL_EVERY, CKPT_EVERY = 20, 10, 4
COMMON = (f"MAX_ITERS={ITERS}", f"EVAL_INTERVAL={EVAL_EVERY}", f"CHECKPOINT_INTERVAL={CKPT_EVERY}",
          "DROPOUT=0.1", "GRADIENT_ACCUMULATION=2", "SAMPLE_COUNT=1")
_draw = random.Random(10)
STEP = {name: _draw.randrange(1, ITERS) for name in ("INT", "TERM", "USR1", "KILL")}
STEP["HUP"] = _draw.randrange(1, ITERS)  # a closed terminal or ssh session

# (id, fault spec, expected exit status of the interrupted attempt)
SIGNAL_FAULTS = [
    *[(f"SIG{name}-step@{STEP[name]}", f"step@{STEP[name]}={name}", 130)
      for name in ("INT", "TERM", "USR1", "HUP")],
    ("SIGTERM-start", "start=TERM", 130),
    ("SIGTERM-eval@10", f"eval@{EVAL_EVERY}=TERM", 130),
    ("SIGTERM-last-eval@20", f"eval@{ITERS}=TERM", 130),
    ("SIGUSR1-ckpt-write@8", "ckpt@8=USR1", 130),
    ("SIGTERM-twice-step+ckpt@6", "step@6=TERM,ckpt@6=TERM", 130),
    # the samples are the last piece of work: they are finished, not thrown away
    ("SIGINT-samples", f"sample@{ITERS}=INT", 0),
]
KILL_FAULTS = [
    (f"SIGKILL-step@{STEP['KILL']}", f"step@{STEP['KILL']}=KILL"),
    ("SIGKILL-eval@10", f"eval@{EVAL_EVERY}=KILL"),
    ("SIGKILL-ckpt-write@12", "ckpt@12=KILL"),
    ("SIGKILL-last-eval@20", f"eval@{ITERS}=KILL"),
]


def run_dir(config) -> RunDir:
    return RunDir.for_config(cfglib.load(config))


def outcome(config) -> dict:
    """What a finished run produced, for an exact comparison."""
    run = run_dir(config)
    summary = json.loads(run.summary.read_text())
    metrics = [(r["kind"], r["iter"], r.get("train_loss"), r.get("val_loss"))
               for r in map(json.loads, run.metrics.read_text().splitlines())]
    state = checkpoint.load(run.ckpt)
    return {"summary": {k: summary[k] for k in ("status", "iters", "eval_iter", "train_loss",
                                                "val_loss", "val_acc", "best_val_ppl")},
            "metrics": metrics, "samples": run.samples.read_text(), "model": state["model"],
            "optimizer": state["optimizer"]["state"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["summary"] == b["summary"]
    assert a["metrics"] == b["metrics"]
    assert a["samples"] == b["samples"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, slots in a["optimizer"].items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"][index][slot]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    config = write_tiny_config(tmp_path_factory.mktemp("reference") / "config", *COMMON)
    assert train.main([str(config)]) == 0
    return outcome(config)


@pytest.mark.parametrize("spec,code", [f[1:] for f in SIGNAL_FAULTS],
                         ids=[f[0] for f in SIGNAL_FAULTS])
def test_signal_then_resume_matches_the_uninterrupted_run(tiny_config, reference, spec, code):
    config = tiny_config(*COMMON)
    faults.arm(spec)
    try:
        assert train.main([str(config)]) == code
    finally:
        faults.arm("")
    run = run_dir(config)
    if spec.startswith("start="):
        assert not run.path.exists()  # stopped before anything was written
    elif code == 130:
        summary = json.loads(run.summary.read_text())
        assert summary["status"] == "interrupted"
        assert checkpoint.load(run.ckpt)["progress"]["iter"] == summary["iters"]
        assert not list(run.path.glob(".*.tmp"))
    assert train.main([str(config)]) == 0
    assert_identical(outcome(config), reference)


@pytest.mark.parametrize("spec", [f[1] for f in KILL_FAULTS], ids=[f[0] for f in KILL_FAULTS])
def test_kill_9_then_resume_matches_the_uninterrupted_run(tiny_config, reference, spec):
    config = tiny_config(*COMMON)
    env = {**os.environ, faults.FAULT_ENV: spec}
    killed = subprocess.run([sys.executable, "-m", "gpt2.train", str(config)], env=env,
                            cwd=cfglib.ROOT, capture_output=True, text=True,
                            timeout=EVENT_LIMIT_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = run_dir(config)
    assert json.loads(run.summary.read_text())["status"] == "running"
    if spec.startswith("ckpt"):
        assert list(run.path.glob(".ckpt.pt.*.tmp"))  # the half-written checkpoint
    assert train.main([str(config)]) == 0
    assert not list(run.path.glob(".*.tmp"))
    assert_identical(outcome(config), reference)


def test_kill_9_before_the_first_checkpoint_records_nothing_twice(tiny_config):
    """Killed after its first log record but before its first checkpoint, the run starts
    over, and its metrics are those of a run that never was killed."""
    extra = (*COMMON, "LOG_INTERVAL=2")
    straight = tiny_config(*extra, name="straight")
    assert train.main([str(straight)]) == 0
    config = tiny_config(*extra, f"RESULTS_DIR={straight.parent / 'killed'}")
    env = {**os.environ, faults.FAULT_ENV: "step@3=KILL"}
    killed = subprocess.run([sys.executable, "-m", "gpt2.train", str(config)], env=env,
                            cwd=cfglib.ROOT, capture_output=True, text=True,
                            timeout=EVENT_LIMIT_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = run_dir(config)
    assert run.metrics.read_text() and not run.ckpt.exists()  # a record, no checkpoint
    assert train.main([str(config)]) == 0
    assert outcome(config)["metrics"] == outcome(straight)["metrics"]


def test_sigint_from_outside_at_a_random_moment(tiny_config, reference):
    """A real Ctrl-C to a child trainer, wherever it lands once training is under way."""
    config = tiny_config(*COMMON)
    run = run_dir(config)
    proc = subprocess.Popen([sys.executable, "-m", "gpt2.train", str(config)], cwd=cfglib.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (run.metrics.exists() and run.metrics.read_text()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # a second one while it stops costs nothing
        _, err = proc.communicate(timeout=EVENT_LIMIT_S)
    finally:
        proc.kill()
    assert proc.returncode in (0, 130), err  # 0: it had finished already
    assert train.main([str(config)]) == 0
    assert_identical(outcome(config), reference)


# ------------------------------------------------------------------ the matrix

MATRIX_RUN = ("MATRIX=y", "MATRIX_SEEDS=2", "MATRIX_JOBS=2", *COMMON)
RESULT_COLUMNS = ["cell", "status", "train_loss", "val_loss", "val_ppl", "best_val_ppl", "iters",
                  "tokens_seen", "achieved_sparsity"]


def run_matrix(config, env=None):
    return subprocess.run([sys.executable, "-m", "scripts.matrix", str(config)], cwd=cfglib.ROOT,
                          env=env, capture_output=True, text=True, timeout=EVENT_LIMIT_S)


def matrix_results(config):
    import pandas as pd

    from scripts import matrix

    m = matrix.load_matrix(config)
    frame = pd.read_csv(m.path / "summary.csv")[RESULT_COLUMNS]
    return m, frame.sort_values("cell").reset_index(drop=True)


@pytest.fixture(scope="module")
def matrix_reference(tmp_path_factory):
    config = write_tiny_config(tmp_path_factory.mktemp("matrix-reference") / "config",
                               *MATRIX_RUN)
    result = run_matrix(config)
    assert result.returncode == 0, result.stdout + result.stderr
    return matrix_results(config)[1]


@pytest.mark.parametrize("sig,whom", [("SIGINT", "group"), ("SIGTERM", "runner"),
                                      ("SIGUSR1", "runner"), ("SIGKILL", "group")],
                         ids=["SIGINT-to-all", "SIGTERM-to-runner", "SIGUSR1-to-runner",
                              "SIGKILL-to-all"])
def test_signal_while_cells_start_then_rerun_matches(tiny_config, matrix_reference, sig, whom):
    """The signal lands as soon as a cell's trainer process exists (it is importing
    torch or preparing); the plain rerun runs every cell to the end exactly once."""
    from scripts import matrix

    config = tiny_config(*MATRIX_RUN)
    m = matrix.load_matrix(config)
    runner = subprocess.Popen([sys.executable, "-m", "scripts.matrix", str(config)],
                              cwd=cfglib.ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + EVENT_LIMIT_S
        while not any(matrix.read_state(m.state_path(c)).get("status") == "running"
                      for c in m.cells):
            assert runner.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        number = getattr(signal, sig)
        (os.killpg if whom == "group" else os.kill)(runner.pid, number)
        code = runner.wait(timeout=EVENT_LIMIT_S)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert code == (-signal.SIGKILL if sig == "SIGKILL" else 130)
    statuses = {matrix.read_state(m.state_path(c)).get("status") for c in m.cells}
    assert "failed" not in statuses and "done" not in statuses
    rerun = run_matrix(config)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    _, frame = matrix_results(config)
    assert frame.drop(columns="cell").equals(matrix_reference.drop(columns="cell"))
    for cell in m.cells:
        records = [(r["kind"], r["iter"]) for r in
                   map(json.loads, (cell.dir / "metrics.jsonl").read_text().splitlines())]
        assert len(records) == len(set(records))  # nothing done twice
        assert (cell.dir / "summary.json").exists()
