"""The local matrix runner: the cells' trainer processes, MATRIX_JOBS at once (pinned to
GPUs round-robin, or with the CPU cores split between them), their state files, signals
passed on, and the report at the end.

Why not submitit's LocalExecutor or concurrent.futures: we keep our own loop only for what
they cannot do. A cell is a process that must be pinned to a GPU (CUDA_VISIBLE_DEVICES, the
least busy one) or given its share of the CPU cores, signalled (SIGTERM/SIGUSR1 reach it as
the user's or the scheduler's stop), resumed from its checkpoint and recorded in a state
file that survives kill -9 of the runner (the next run resumes or retries from those
states); a pool of Python callables gives none of that, and LocalExecutor pins nothing and
keeps its job state in pickles of its own. Everything else is the standard library:
subprocess for the processes, kconfiglib for the cells' configurations, tqdm for progress;
on a cluster, submitit itself runs the cells (scripts/slurm.py).
"""
import os
import shlex
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from lib import distributed
from lib import config as cfglib
from lib.config import ConfigError
from lib.fsutil import LockHeld, atomic_write_json, atomic_write_text, lock_directory
from lib.run import RunDir
from lib.stop import STOP_SIGNALS
from scripts.fail_cells import FAIL_CELLS_ENV, stand_in
from scripts.matrix_cells import Matrix, write_cell_config
from scripts.matrix_state import (close_dead_attempt, log_tail, new_state, outcome,
                                  read_state, read_summary, should_run)

POLL_S = 0.2


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
    return (stand_in(cell.id, cell.dir)
            or [sys.executable, "-m", "gpt2.train", str(cell.config), *args])


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

    def placement(self, to_run: int) -> tuple:
        """(GPUs to pin cells to round-robin, CPU threads per cell) for to_run cells."""
        # A cell that trains over several processes (torchrun) takes all the node's GPUs.
        cfg = self.m.cfg
        gpus = visible_gpus(cfg.DEVICE) if to_run and distributed.world_size(cfg) == 1 else []
        threads = None if gpus else max(1, cpu_cores() // max(1, min(self.jobs, to_run)))
        return gpus, threads

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
        todo, states, done, old_failures = self.survey()
        gpus, threads = self.placement(len(todo))
        where = (f"GPUs {','.join(gpus)} round-robin" if gpus
                 else f"{threads} CPU thread{'s' if threads != 1 else ''} per cell")
        earlier = f", {old_failures} failed earlier (--retry-failed reruns)" if old_failures else ""
        print(f"matrix {m.path}: {len(m.cells)} cells, {done} done{earlier}, {len(todo)} to run, "
              f"{self.jobs} at once, {where}", flush=True)
        old_handlers = {sig: signal.signal(sig, self.on_signal) for sig in STOP_SIGNALS}
        bar = tqdm(total=len(m.cells), initial=done, unit="cell", desc="matrix",
                   dynamic_ncols=True, disable=None)
        try:
            self.prepare(todo)
            if self.run_cells(todo, states, gpus, threads, bar):
                return 130
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        self.report()
        return self.closing_lines(states)

    def survey(self) -> tuple:
        """(cells to run, {cell id: state}, cells done, cells failed earlier): every cell's
        configuration written and its state file brought up to date."""
        todo, states, done, old_failures = [], {}, 0, 0
        for cell in self.m.cells:
            write_cell_config(cell)
            state = read_state(self.m.state_path(cell)) or new_state(cell)
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
        return todo, states, done, old_failures

    def run_cells(self, todo, states, gpus, threads, bar) -> bool:
        """Run the cells of todo, MATRIX_JOBS at once; True when a signal interrupted them."""
        stopping = False
        while todo or self.running:
            if self.signal is not None:
                break
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
        if self.signal is not None:  # also when it came as the last cells ended
            self.interrupt(bar)
            return True
        return False

    def closing_lines(self, states) -> int:
        """Print what the matrix holds now; 0 when every cell is done."""
        m = self.m
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


