"""kill -9 anywhere in a matrix: of a cell (at a step, while it writes a checkpoint), of
the runner with its cells, of the runner while it writes the report.
The next run finishes every cell exactly once, and summary.csv and report.md are those of
an uninterrupted matrix but for the timing columns. Tiny cells, fixed seeds; every wait
is on an event (a file, a state, a process exit) under one generous limit."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import EVENT_LIMIT_S, write_tiny_config

from lib import config as cfglib
from lib import faults

MATRIX = ("MATRIX=y", "MATRIX_SEEDS=2", "MATRIX_JOBS=2", "MAX_ITERS=8", "EVAL_INTERVAL=4",
          "CHECKPOINT_INTERVAL=2", "LOG_INTERVAL=2", "SAMPLE_COUNT=1")
# What differs from run to run: summary.csv's columns of times, speeds and memory, and
# report.md's table columns of the same (by header)
TIMING_COLUMN = re.compile(r"time|_s$|tokens_per_s|mem|wall|compile|steady|overhead|startup")
TIMING_HEADER = re.compile(r"(^| )s$|time|tokens/s|seconds|speed|\bratio\b|MiB|wall|"
                           r"overhead|steady|compile")


def wait_until(predicate, what):
    deadline = time.monotonic() + EVENT_LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def run(config, *args, env=None):
    return subprocess.run([sys.executable, "-m", "scripts.matrix", str(config), *args],
                          cwd=cfglib.ROOT, env=env, capture_output=True, text=True,
                          timeout=EVENT_LIMIT_S)


def start(config, env=None):
    return subprocess.Popen([sys.executable, "-m", "scripts.matrix", str(config)],
                            cwd=cfglib.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def report_of(m) -> tuple:
    """summary.csv and report.md without what differs from run to run (times, speeds,
    memory; and the tables' padding, which follows the widest value)."""
    csv = pd.read_csv(m.path / "summary.csv")
    csv = csv.drop(columns=[c for c in csv.columns if TIMING_COLUMN.search(c)])
    lines, keep = [], None
    for line in (m.path / "report.md").read_text().splitlines():
        if not line.startswith("|"):
            lines.append(line)
            keep = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if keep is None:  # a table's header
            keep = [i for i, c in enumerate(cells) if not TIMING_HEADER.search(c)]
        lines.append("|".join(re.sub(r"^:?-+:?$", "---", cells[i]) for i in keep
                              if i < len(cells)))
    return csv.sort_values("cell").reset_index(drop=True), lines


def states(m) -> dict:
    from scripts import matrix
    return {c.id: matrix.read_state(m.state_path(c)) for c in m.cells}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from scripts import matrix
    config = write_tiny_config(tmp_path_factory.mktemp("reference") / "config", *MATRIX)
    result = run(config)
    assert result.returncode == 0, result.stdout + result.stderr
    return report_of(matrix.load_matrix(config))


def kill_a_cell(config, m, tmp_path, spec):
    env = {**os.environ, faults.FAULT_ENV: spec, faults.MARK_ENV: str(tmp_path / "fired")}
    first = run(config, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    killed = [s for s in states(m).values() if s["status"] == "failed"]
    assert len(killed) == 1 and killed[0]["reason"] == "killed by signal 9"
    return ("--retry-failed",)  # a cell killed -9 (the OOM killer) is a failure to rerun


def kill_the_runner(config, m, tmp_path):
    """The runner and its cells at once (the runner alone, its cells left to finish, is
    tests/test_matrix.py's test_kill_9_mid_matrix_loses_and_duplicates_nothing)."""
    runner = start(config)
    try:
        wait_until(lambda: any((c.dir / "ckpt.pt").exists() for c in m.cells),
                   "a cell's first checkpoint")
        os.killpg(runner.pid, signal.SIGKILL)
        assert runner.wait(timeout=EVENT_LIMIT_S) == -signal.SIGKILL
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    return ()


def kill_the_report_writer(config, m, tmp_path, when):
    runner = start(config)
    try:
        wait_until(when(m), "the report to be under way")
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=EVENT_LIMIT_S)  # it may have finished first: the point is a race
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert all(s["status"] == "done" for s in states(m).values())
    return ()


SCENARIOS = {
    "cell-at-step-5": lambda c, m, t: kill_a_cell(c, m, t, "step@5=KILL"),
    "cell-writing-checkpoint-4": lambda c, m, t: kill_a_cell(c, m, t, "ckpt@4=KILL"),
    "runner-and-cells": kill_the_runner,
    "report-as-cells-end": lambda c, m, t: kill_the_report_writer(c, m, t, lambda m: lambda: all(
        s.get("status") == "done" for s in states(m).values())),
    "report-after-plots": lambda c, m, t: kill_the_report_writer(c, m, t, lambda m: lambda: any(
        (m.path / "plots").glob("*.png"))),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_9_then_rerun_gives_the_uninterrupted_report(tiny_config, reference, tmp_path,
                                                          scenario):
    from scripts import matrix
    config = tiny_config(*MATRIX)
    m = matrix.load_matrix(config)
    rerun_args = SCENARIOS[scenario](config, m, tmp_path)
    rerun = run(config, *rerun_args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    csv, report = report_of(m)
    pd.testing.assert_frame_equal(csv, reference[0])
    assert report == reference[1]
    for cell in m.cells:
        assert states(m)[cell.id]["status"] == "done"
        finished = [a for a in states(m)[cell.id]["attempts"] if a["exit_code"] == 0]
        assert len(finished) == 1  # done exactly once
        records = [(r["kind"], r["iter"]) for r in
                   map(json.loads, (cell.dir / "metrics.jsonl").read_text().splitlines())]
        assert len(records) == len(set(records))  # nothing recorded twice
    again = run(config)  # and nothing runs again
    assert again.returncode == 0 and "0 to run" in again.stdout
