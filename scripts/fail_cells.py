"""Test seam of the matrix: a stand-in for the trainer of chosen cells.

KMATRIX_TEST_FAIL_CELLS holds comma-separated fnmatch patterns of cell ids whose trainer
is replaced by a stand-in that prints a log, writes a failed summary.json and exits 3.
The matrix tests set it (also through a real Slurm, where nothing can be monkeypatched);
never set it outside tests. The local runner and scripts.slurm both ask stand_in().
"""
import fnmatch
import os
import sys

FAIL_CELLS_ENV = "KMATRIX_TEST_FAIL_CELLS"

_FAKE_FAILURE = """\
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
for i in range(30):
    print(f"stand-in trainer line {i}")
print("stand-in trainer: injected failure", file=sys.stderr)
(run / "summary.json").write_text(json.dumps(
    {"status": "failed", "error": "injected failure (KMATRIX_TEST_FAIL_CELLS)"}))
sys.exit(3)
"""



def stand_in(cell_id: str, run_dir) -> list:
    """The stand-in's command for a cell the test named, or None."""
    patterns = [p for p in os.environ.get(FAIL_CELLS_ENV, "").split(",") if p]
    if any(fnmatch.fnmatchcase(cell_id, p) for p in patterns):
        return [sys.executable, "-c", _FAKE_FAILURE, str(run_dir)]
    return None
