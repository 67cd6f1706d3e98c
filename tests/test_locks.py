"""Two `make` on one run directory, two `make test-matrix` on one matrix, at once: the
second refuses with one line naming the holder's pid and host, and the first goes on
undisturbed (real processes, tiny cells)."""
import json
import socket
import subprocess
import sys
import time

from conftest import EVENT_LIMIT_S
from test_faults import COMMON, run_dir

from gpt2 import train
from lib import config as cfglib
from lib.fsutil import lock_holder


_HOLD_RUN = """
import sys
from lib import config as cfglib
from lib.run import RunDir
cfg = cfglib.load(sys.argv[1])
RunDir.for_config(cfg).claim(cfg)
print("holding", flush=True)
sys.stdin.read()
"""


def wait_until(predicate, what):
    deadline = time.monotonic() + EVENT_LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def holder_line(pid) -> str:
    return f"pid {pid} on host {socket.gethostname()}"


def test_a_second_trainer_names_the_holder(tiny_config, capsys):
    config = tiny_config(*COMMON)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_RUN, str(config)], cwd=cfglib.ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert train.main([str(config)]) == 2
    finally:
        holder.stdin.close()
        holder.wait(timeout=EVENT_LIMIT_S)
    err = capsys.readouterr().err.strip().splitlines()
    run = run_dir(config)
    assert err[-1] == (f"error: {run.path} is being trained by another process "
                       f"({holder_line(holder.pid)}); wait for it or stop it, then run again")
    assert not run.summary.exists() and not run.metrics.exists()  # the second wrote nothing
    assert train.main([str(config)]) == 0  # once the holder is gone


def test_two_matrix_runners_at_once(tiny_config):
    from scripts import matrix

    config = tiny_config("MATRIX=y", "MATRIX_SEEDS=2", "MATRIX_JOBS=1", *COMMON)
    m = matrix.load_matrix(config)
    first = subprocess.Popen([sys.executable, "-m", "scripts.matrix", str(config)],
                             cwd=cfglib.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        wait_until(lambda: (m.path / ".lock").exists()
                   and lock_holder(m.path / ".lock").startswith("pid "), "the first runner's lock")
        second = subprocess.run([sys.executable, "-m", "scripts.matrix", str(config)],
                                cwd=cfglib.ROOT, capture_output=True, text=True,
                                timeout=EVENT_LIMIT_S)
        out, _ = first.communicate(timeout=EVENT_LIMIT_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {m.path} is in use by another "
                                                   f"matrix runner")
    assert f"({holder_line(first.pid)};" in lines[0]
    assert first.returncode == 0, out
    for cell in m.cells:
        state = json.loads(m.state_path(cell).read_text())
        assert state["status"] == "done" and len(state["attempts"]) == 1  # ran once
        records = [(r["kind"], r["iter"]) for r in
                   map(json.loads, (cell.dir / "metrics.jsonl").read_text().splitlines())]
        assert len(records) == len(set(records))
