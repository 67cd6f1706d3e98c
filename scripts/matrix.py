"""The test matrix: python -m scripts.matrix [CONFIG] [--dry-run] [--retry-failed] [--set NAME=VALUE ...]

Expands the "Test matrix" settings of a .config (MATRIX=y) into cells, one
optimizer x pruning method (x AdamWPrune variant x sparsity) (x learning-rate
multiplier) x seed each, every optimizer at its own <OPTIMIZER>_LR,
writes every cell's own .config through kconfiglib, runs the ordinary trainer
on each in its own process (MATRIX_JOBS at once), and writes the comparison
report (scripts.report) at the end. Run it again to resume: finished cells are
skipped, interrupted ones resume from their checkpoints, failed ones are
retried only with --retry-failed.

Layout, under results/<RECIPE>-matrix-<hash>/ (the hash ignores RESULTS_DIR, RUN_NAME,
MATRIX_JOBS, MATRIX_BASELINE and MATRIX_ON_FAILURE):
  matrix.config        the matrix configuration (with --set applied)
  <cell id>/           each cell's ordinary run directory (see README.md); its
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
import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lib import config as cfglib
from lib import distributed, optim, trackers
from lib.config import ConfigError
from lib.fsutil import LockHeld, atomic_write_json, atomic_write_text, lock_directory
from gpt2.budget import check_knobs
from gpt2.data import DataError
from lib.run import RunDir, matrix_dir, results_setting
# The grid, the cells' state and the dry run live in modules of their own; re-exported here,
# where the runner, scripts.slurm and the tests find them.
from scripts.matrix_dry_run import cell_estimate, dry_run  # noqa: F401
from scripts.matrix_grid import (OWN_DIMENSIONS, CellSpec, enumerate_cells,  # noqa: F401
                                 extra_dimension, selected, state_optimizers)
from scripts.matrix_state import (EXIT_MEANINGS, LOG_TAIL_LINES, STOP_SIGNALS,  # noqa: F401
                                  close_dead_attempt, log_tail, new_state, outcome, read_state,
                                  read_summary, should_run)

# Test hook: comma-separated fnmatch patterns of cell ids whose trainer is
# replaced by a stand-in that prints a log, writes a failed summary.json and
# exits 3. Honoured only here; never set it outside tests.
FAIL_CELLS_ENV = "KMATRIX_TEST_FAIL_CELLS"
POLL_S = 0.2

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


# ------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Cell:
    spec: CellSpec
    id: str
    hash: str
    text: str        # the cell's full .config
    dir: Path        # its run directory, <matrix dir>/<id>
    kconf: object = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def log(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learning_rate(self) -> float:
        """The peak learning rate the cell's config gives its optimizer."""
        return float(self.kconf.syms[optim.OPTIMIZERS[self.spec.optimizer].lr].str_value)


@dataclass
class Matrix:
    cfg: object          # the matrix Config
    kconf: object
    path: Path           # results/<RECIPE>-matrix-<hash>
    cells: list
    skipped: list
    config_path: Path = None
    overrides: tuple = ()

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def state_path(self, cell) -> Path:
        return self.state_dir / f"{cell.id}.json"


def cell_kconf(config_path, overrides, spec, results, run_name="", project=()):
    # --set values of the matrix's own knobs (the grid, the executor) do not reach a cell,
    # where MATRIX=n drops them.
    kept = [o for o in overrides if not o.partition("=")[0].strip().removeprefix("CONFIG_")
            .startswith(("MATRIX", "SLURM_"))]
    try:
        return cfglib.load_kconf(config_path, [*kept, *spec.overrides(), *project,
                                               f"RESULTS_DIR={results}", f"RUN_NAME={run_name}"])
    except ConfigError as e:
        raise ConfigError(f"cell {spec.name}: {e}") from None


def load_matrix(config_path, overrides=()) -> Matrix:
    """Read the matrix config and resolve every cell's configuration (validated
    like any .config: a cell value that does not take is an error naming it)."""
    kconf = cfglib.load_kconf(config_path, overrides)
    cfg = cfglib.from_kconf(kconf, config_path)
    specs, skipped = enumerate_cells(cfg)
    path = matrix_dir(cfg, kconf)
    m = Matrix(cfg, kconf, path, [], skipped, config_path, tuple(overrides))
    m.cells = make_cells(m, specs)
    return m


def make_cells(m: Matrix, specs) -> list:
    """The Cell of each spec of matrix m, validated like any .config."""
    results = results_setting(m.cfg, m.path.name)
    # The cells of a matrix are one tracker project.
    project = ([f"TRACKER_PROJECT={m.path.name}"]
               if m.cfg.TRACKER != "none" and not m.cfg.TRACKER_PROJECT else [])
    cells = []
    for spec in specs:
        cell_hash = cfglib.config_hash(cell_kconf(m.config_path, m.overrides, spec, results))
        cell_id = f"{spec.name}-{cell_hash}"
        kconf_cell = cell_kconf(m.config_path, m.overrides, spec, results, cell_id, project)
        cells.append(Cell(spec, cell_id, cell_hash, cfglib.config_text(kconf_cell),
                          m.path / cell_id, kconf_cell))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the matrix resolve to the same configuration: "
                          + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    return cells


def write_cell_config(cell) -> None:
    """<cell dir>/config, the same bytes the trainer writes when it claims the
    directory; an existing one is left alone (the cell id pins its hash)."""
    if cell.config.exists():
        if cell.config.read_text() != cell.text:
            other = cfglib.config_hash(cfglib.load_kconf(cell.config, strict=False))
            if other != cell.hash:
                raise ConfigError(f"{cell.dir} holds a run of a different configuration "
                                  f"(hash {other}, the cell's is {cell.hash})")
        return
    cell.dir.mkdir(parents=True, exist_ok=True)
    cfglib.write_config(cell.kconf, cell.config)  # atomic; no .old, as there is no old one


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


# ------------------------------------------------------------- processes

def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(device: str) -> list:
    """CUDA_VISIBLE_DEVICES entries the cells can be pinned to (none on the CPU)."""
    if device not in ("auto", "cuda"):
        return []
    try:
        import torch
        count = torch.cuda.device_count()
    except Exception:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in env.split(",") if d.strip()] if env else []
    return [names[i] if i < len(names) else str(i) for i in range(count)]


def pick_gpu(gpus: list, busy: list):
    """The GPU running the fewest cells (the lowest index among ties)."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (busy.count(g), gpus.index(g)))


def child_env(base: dict, gpu, threads) -> dict:
    env = dict(base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def command(cell, args=()) -> list:
    patterns = [p for p in os.environ.get(FAIL_CELLS_ENV, "").split(",") if p]
    if any(fnmatch.fnmatchcase(cell.id, p) for p in patterns):
        return [sys.executable, "-c", _FAKE_FAILURE, str(cell.dir)]
    return [sys.executable, "-m", "gpt2.train", str(cell.config), *args]


class Runner:
    outcome = staticmethod(outcome)

    def __init__(self, matrix: Matrix, retry_failed: bool):
        self.m = matrix
        self.retry_failed = retry_failed
        self.jobs = matrix.cfg.MATRIX_JOBS
        self.stop_on_failure = matrix.cfg.MATRIX_ON_FAILURE == "stop"
        self.running = {}   # Popen -> (cell, state, monotonic start)
        self.new_failures = []
        self.signal = None

    def lock(self):
        self.m.path.mkdir(parents=True, exist_ok=True)
        try:
            return lock_directory(self.m.path)
        except LockHeld as e:
            raise ConfigError(f"{self.m.path} is in use by another matrix runner or by cells it "
                              f"started ({e.holder}; the cells' pids are in "
                              f"{self.m.state_dir}); wait for them or stop them, then run "
                              f"again") from None

    def prepare(self, todo) -> None:
        """Prepare the dataset once before the cells start, so parallel cells do
        not race to write <matrix dir>/_data."""
        if not todo:
            return
        result = subprocess.run([sys.executable, "-m", "gpt2.data", str(todo[0].config)],
                                capture_output=True, text=True)
        if result.returncode != 0 and self.signal is None:
            raise ConfigError(f"preparing the data failed:\n{result.stderr.strip()}")

    def write_state(self, cell, state) -> None:
        atomic_write_json(self.m.state_path(cell), state)

    def start(self, cell, state, gpu, threads, args=()) -> None:
        now = time.time()
        cmd = command(cell, args)
        shown = shlex.join(cmd) if cmd[1] == "-m" else f"stand-in failure ({FAIL_CELLS_ENV})"
        with open(cell.log, "ab") as log:
            log.write(f"=== kmatrix: attempt {len(state['attempts']) + 1} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shown}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cfglib.ROOT,
                                    env=child_env(os.environ, gpu, threads),
                                    pass_fds=(self.lock_fd,))
        # Registered before anything else can go wrong, so it is always waited for.
        self.running[proc] = (cell, state, time.monotonic(), gpu)
        state.update(status="running", pid=proc.pid, started_at=now, finished_at=None,
                     exit_code=None, reason=None, error=None, log_tail=[], gpu=gpu,
                     threads=threads)
        state["attempts"].append({"pid": proc.pid, "started_at": now, "finished_at": None,
                                  "wall_s": None, "exit_code": None})
        self.write_state(cell, state)

    def finish(self, proc, bar) -> None:
        cell, state, t0, _ = self.running.pop(proc)
        wall = time.monotonic() - t0
        summary = read_summary(cell)
        status, reason = self.outcome(proc.returncode, summary, self.signal is not None)
        state["attempts"][-1].update(finished_at=time.time(), wall_s=wall,
                                     exit_code=proc.returncode)
        state.update(status=status, pid=None, finished_at=time.time(),
                     exit_code=proc.returncode, reason=reason,
                     error=summary.get("error") if status == "failed" else None,
                     log_tail=log_tail(cell.log) if status == "failed" else [],
                     wall_s=sum(a.get("wall_s") or 0.0 for a in state["attempts"]))
        self.write_state(cell, state)
        ppl = summary.get("val_ppl")
        ppl = f"{ppl:.3f}" if isinstance(ppl, (int, float)) else "-"
        line = f"{cell.id}  {status}  val ppl {ppl}  wall {wall:.1f} s"
        if status == "failed":
            line += f"  ({reason}{': ' + state['error'] if state['error'] else ''})"
            self.new_failures.append(cell)
        tqdm.write(line)
        bar.update(1)

    def on_signal(self, signum, frame):
        # Only noted here; the loop acts on it between two polls.
        if self.signal is None:
            self.signal = signum

    def run(self) -> int:
        processes = distributed.world_size(self.m.cfg)
        if processes > 1 and self.jobs > 1:
            raise ConfigError(f"MATRIX_JOBS={self.jobs} with {processes} processes per cell "
                              f"(DDP_NPROC_PER_NODE x DDP_NNODES): each cell trains over all "
                              f"the node's GPUs, so set MATRIX_JOBS=1, or run the matrix on "
                              f"Slurm (MATRIX_EXECUTOR_SLURM)")
        self.lock_fd = self.lock()
        try:
            return self._run()
        finally:
            os.close(self.lock_fd)

    def _run(self) -> int:
        m = self.m
        m.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(m.path / "matrix.config", cfglib.config_text(m.kconf))
        todo, states, done, old_failures = [], {}, 0, 0
        for cell in m.cells:
            write_cell_config(cell)
            state = read_state(m.state_path(cell)) or new_state(cell)
            if state.get("status") == "running":
                close_dead_attempt(state, cell.log)
            if state.get("status") == "done" and not RunDir(cell.dir).is_complete():
                # e.g. a summary an older trainer wrote before its final evaluation
                state.update(status="interrupted", reason="its run directory lacks the final "
                             "evaluation, samples or summary; the trainer finishes them")
            states[cell.id] = state
            run_it, _ = should_run(state, self.retry_failed)
            if run_it:
                todo.append(cell)
            elif state["status"] == "done":
                done += 1
            else:
                old_failures += 1
            self.write_state(cell, state)
        parallel = max(1, min(self.jobs, len(todo)))
        # A cell that trains over several processes (torchrun) takes all the node's GPUs.
        gpus = visible_gpus(m.cfg.DEVICE) if todo and distributed.world_size(m.cfg) == 1 else []
        threads = None if gpus else max(1, cpu_cores() // parallel)
        where = (f"GPUs {','.join(gpus)} round-robin" if gpus
                 else f"{threads} CPU thread{'s' if threads != 1 else ''} per cell")
        earlier = f", {old_failures} failed earlier (--retry-failed reruns)" if old_failures else ""
        print(f"matrix {m.path}: {len(m.cells)} cells, {done} done{earlier}, {len(todo)} to run, "
              f"{self.jobs} at once, {where}", flush=True)
        old_handlers = {sig: signal.signal(sig, self.on_signal) for sig in STOP_SIGNALS}
        bar = tqdm(total=len(m.cells), initial=done, unit="cell", desc="matrix",
                   dynamic_ncols=True, disable=None)
        stopping = False
        try:
            self.prepare(todo)
            while todo or self.running:
                if self.signal is not None:
                    self.interrupt(bar)
                    return 130
                while todo and len(self.running) < self.jobs and not stopping:
                    cell = todo.pop(0)
                    busy = [g for (_, _, _, g) in self.running.values()]
                    self.start(cell, states[cell.id], pick_gpu(gpus, busy), threads)
                time.sleep(POLL_S)
                for proc in [p for p in self.running if p.poll() is not None]:
                    self.finish(proc, bar)
                    if self.new_failures and self.stop_on_failure and not stopping:
                        stopping = True
                        tqdm.write(f"MATRIX_ON_FAILURE=stop: starting no more cells "
                                   f"({len(todo)} left pending)")
                if stopping and not self.running:
                    break
            if self.signal is not None:  # it came as the last cells ended
                self.interrupt(bar)
                return 130
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        self.report()
        failed = [c.id for c in m.cells if states[c.id]["status"] == "failed"]
        pending = [c.id for c in m.cells
                   if states[c.id]["status"] in ("pending", "running", "interrupted")]
        print(f"matrix {m.path}: {len(m.cells) - len(failed) - len(pending)} done, "
              f"{len(failed)} failed, {len(pending)} not run")
        for cell_id in failed:
            print(f"  failed: {cell_id} ({states[cell_id]['reason']})")
        return 1 if failed or pending else 0

    def interrupt(self, bar) -> None:
        """The signal is passed on to the cells (Ctrl-C reached them already; a second
        one costs nothing), which checkpoint and exit 130; they resume on the next run."""
        tqdm.write(f"interrupted: waiting for {len(self.running)} running cell(s) to "
                   f"checkpoint; run again to resume")
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(self.signal)
        while self.running:
            time.sleep(POLL_S)
            for proc in [p for p in self.running if p.poll() is not None]:
                self.finish(proc, bar)

    def report(self) -> None:
        from scripts import report  # here: pandas and matplotlib cost seconds at start-up
        try:
            paths = report.write_report(self.m.path)
            print(f"report: {paths['report']}")
        except Exception as e:  # the cells' results are safe; the report can be rerun
            print(f"warning: the report failed ({e!r}); rerun python -m scripts.report "
                  f"{self.m.path}", file=sys.stderr)


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
