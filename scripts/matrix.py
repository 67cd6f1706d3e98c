"""The test matrix: python -m scripts.matrix [CONFIG] [--dry-run] [--retry-failed] [--set NAME=VALUE ...]

Expands the "Test matrix" settings of a .config (MATRIX=y) into cells, one
optimizer x pruning method (x AdamWPrune variant x sparsity) (x learning-rate
multiplier) x seed each, every optimizer at its own <OPTIMIZER>_LR,
writes every cell's own .config through kconfiglib, runs the ordinary trainer
on each in its own process (MATRIX_JOBS at once), and writes the comparison
report (scripts.report) at the end. Run it again to resume: finished cells are
skipped, interrupted ones resume from their checkpoints, failed ones are
retried only with --retry-failed.

Layout, under results/<RECIPE>-matrix-<hash>/ (the hash ignores the symbols whose help
says "Not part of the run hash.", e.g. RESULTS_DIR, MATRIX_JOBS, MATRIX_BASELINE):
  matrix.config        the matrix configuration (with --set applied)
  <cell id>/           each cell's ordinary run directory (see docs/run-directory.md); its
                       `config` is written here before the trainer starts and is
                       byte for byte what the trainer would write itself
  <cell id>/stdout.log the trainer's stdout and stderr, every attempt appended
  state/<cell id>.json the runner's record of the cell (pending, running, done,
                       interrupted, failed)
  summary.csv, report.md, plots/   the report

Exit status: 0 every cell done, 1 a cell failed (or was left pending by
MATRIX_ON_FAILURE=stop), 2 bad configuration or matrix mode off, 130 interrupted.
"""
import argparse
import sys
from pathlib import Path

from lib import config as cfglib
from lib import trackers
from lib.config import ConfigError
from gpt2.budget import check_knobs
from gpt2.data import DataError
# The grid, the cells, their state, the local runner and the dry run live in modules of
# their own; re-exported here, where scripts.slurm and the tests find them.
from scripts.fail_cells import FAIL_CELLS_ENV  # noqa: F401
from scripts.matrix_cells import (Cell, Matrix, cell_kconf, load_matrix,  # noqa: F401
                                  make_cells, write_cell_config)
from scripts.matrix_dry_run import cell_estimate, dry_run  # noqa: F401
from scripts.matrix_grid import (OWN_DIMENSIONS, CellSpec, enumerate_cells,  # noqa: F401
                                 extra_dimension, selected, state_optimizers)
from scripts.matrix_runner import (POLL_S, Runner, child_env, command,  # noqa: F401
                                   cpu_cores, pick_gpu, visible_gpus)
from scripts.matrix_state import (EXIT_MEANINGS, LOG_TAIL_LINES,  # noqa: F401
                                  close_dead_attempt, log_tail, new_state, outcome, read_state,
                                  read_summary, should_run)


def check_cells(matrix: Matrix) -> None:
    """Every cell's pruning schedule fits its budget, or one ConfigError naming each cell
    that does not (before any cell runs, and in the dry run)."""
    trackers.check(matrix.cfg)  # a missing tracker package, once, before any cell starts
    problems = []
    for cell in matrix.cells:
        try:
            check_knobs(cfglib.from_kconf(cell.kconf, cell.config))
        except (ConfigError, DataError) as e:
            problems.append(f"cell {cell.name}: {e}")
    if problems:
        raise ConfigError("\n".join(problems))
    if matrix.cfg.MATRIX_TUNING_TRIALS:
        from scripts.tuning_runner import check
        check(matrix)  # the rungs align with the evaluations; the executor can tune



def _slurm_runner(matrix, retry_failed):
    from scripts.slurm import SlurmRunner  # submitit only where Slurm is selected
    return SlurmRunner(matrix, retry_failed, sys.modules[__name__])


def _local_runner(matrix, retry_failed):
    if matrix.cfg.MATRIX_TUNING_TRIALS:  # trials, selection, confirmations (scripts.tuning_runner)
        from scripts.tuning_runner import TuningRunner
        return TuningRunner(matrix, retry_failed)
    return Runner(matrix, retry_failed)


# MATRIX_EXECUTOR -> the runner of the cells.
EXECUTORS = {"local": _local_runner, "slurm": _slurm_runner}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="config file (default: .config or $KCONFIG_CONFIG)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells, the skipped combinations and an estimate; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a symbol of the matrix config, validated like .config")
    args = parser.parse_args(argv)
    try:
        matrix = load_matrix(args.config or cfglib.default_config_path(), args.set)
        if not matrix.cells:
            raise ConfigError("the matrix has no cells: "
                              + "; ".join(f"{w}: {r}" for w, r in matrix.skipped))
        check_cells(matrix)
        if args.dry_run:
            return dry_run(matrix, args.retry_failed)
        return EXECUTORS[matrix.cfg.MATRIX_EXECUTOR](matrix, args.retry_failed).run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = Path(e.filename).parent if e.filename else "the matrix directory"
        print(f"error: cannot write in {where}: {e.strerror or e} (check that RESULTS_DIR is "
              f"writable and has free space, or set RESULTS_DIR to another directory)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

