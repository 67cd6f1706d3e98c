"""Test hook for the fault-injection tests: send a signal to this process at a named
point of training. The one seam between the tests and the product's code: the
environment variable is read once, at import, and unset (always, outside tests) every
point() is a no-op. (The matrix runner's stand-in failing trainer, FAIL_CELLS_ENV in
scripts/matrix.py, is the other hook; scripts/slurm.py and the tuning tests use it.)

  KMATRIX_TEST_FAULT="step@7=TERM,ckpt@7=TERM"  SIGTERM after step 7, again while
                                                its checkpoint is being written
  KMATRIX_TEST_FAULT="step@3=TERM>parent"       SIGTERM to the parent process (a DDP
                                                worker's parent is torchrun)
  KMATRIX_TEST_FAULT_MARK=<file>                fire only while <file> does not exist
                                                (created first), so a fault hits one
                                                process of a matrix (or one rank), once

Points: start (before data preparation), step (after the step, before its
evaluation), eval (as an evaluation starts), ckpt (checkpoint written to its
temporary file, not yet verified or renamed), sample (before the final samples),
test (as the test evaluation starts), shard (data preparation: shard N and its
progress record written).
"""
import os
import signal
from pathlib import Path

FAULT_ENV = "KMATRIX_TEST_FAULT"
MARK_ENV = "KMATRIX_TEST_FAULT_MARK"


def _parse(spec: str) -> dict:
    faults = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, _, action = item.partition("=")
        point, _, iteration = where.partition("@")
        name, _, target = action.partition(">")
        faults.setdefault((point, int(iteration or 0)), []).append(
            (getattr(signal, f"SIG{name}"), target == "parent"))
    return faults


_FAULTS = _parse(os.environ.get(FAULT_ENV, ""))


def point(name: str, iteration: int = 0) -> None:
    """Deliver the signals set for (name, iteration), if any."""
    if not _FAULTS:
        return
    signals = _FAULTS.pop((name, iteration), [])
    mark = os.environ.get(MARK_ENV)
    if signals and mark:
        try:
            Path(mark).touch(exist_ok=False)
        except FileExistsError:
            return
    for sig, to_parent in signals:
        os.kill(os.getppid() if to_parent else os.getpid(), sig)


def arm(spec: str) -> None:
    """Set the faults of this process (tests that train in-process)."""
    global _FAULTS
    _FAULTS = _parse(spec)
