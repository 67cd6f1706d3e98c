"""The matrix dry run: the cells, what each would do, an estimate; runs nothing."""
from lib import config as cfglib
from lib.config import ConfigError
from gpt2.data import DataError
from scripts.matrix_state import read_state, should_run


def cell_estimate(cell) -> str:
    """`make estimate` of a cell in one line (scripts.estimate)."""
    from scripts import estimate
    try:
        return "estimate: " + estimate.one_line(
            estimate.estimate(cfglib.from_kconf(cell.kconf, cell.config)))
    except (ConfigError, DataError) as e:
        return f"estimate: n/a ({(str(e).splitlines() or [''])[0][:160]})"


def dry_run(matrix, retry_failed: bool) -> int:
    m = matrix
    print(f"matrix {m.path}")
    print(f"{len(m.cells)} cells ({m.cfg.MATRIX_JOBS} at once):")
    walls, to_run = [], 0
    for cell in m.cells:
        state = read_state(m.state_path(cell))
        run_it, why = should_run(state, retry_failed) if state else (True, "pending")
        to_run += run_it
        if state.get("status") == "done" and state.get("wall_s"):
            walls.append(state["wall_s"])
        print(f"  {cell.id:<60} lr {cell.learning_rate:<8g} {why}")
        print(f"  {'':<60} {cell_estimate(cell)}")
    if m.skipped:
        print(f"skipped ({len(m.skipped)}):")
        for what, reason in m.skipped:
            print(f"  {what}: {reason}")
    if m.cfg.MATRIX_TUNING_TRIALS:
        from scripts.tuning_runner import dry_run_lines
        print("\n".join(dry_run_lines(m)))
    print(f"{to_run} of {len(m.cells)} cells would run")
    if m.cfg.MATRIX_EXECUTOR == "slurm" and to_run:
        from scripts import slurm
        print("\n".join(slurm.describe(m.cfg, m.path / "slurm", to_run)))
    if walls and to_run:
        estimate = sum(walls) / len(walls) * to_run / max(1, min(m.cfg.MATRIX_JOBS, to_run))
        print(f"estimated wall time: {estimate / 60:.1f} min (mean {sum(walls) / len(walls):.0f} s "
              f"over {len(walls)} finished cells x {to_run} cells / {m.cfg.MATRIX_JOBS} jobs)")
    elif to_run:
        print("estimated wall time: unknown (no finished cell in this matrix yet)")
    return 0
