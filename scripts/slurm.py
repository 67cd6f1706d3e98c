"""The matrix on Slurm (MATRIX_EXECUTOR_SLURM): one job array of the pending cells through
submitit. Each `make test-matrix` collects the jobs that ended, shows the ones running and
submits what is left to run, then returns; the cells' state files and run directories are
the local runner's, so `make report` reads them the same way.

  state/<cell>.json  status "running" with the cell's "job_id" while its job is queued or
                     runs; every attempt lists its job id
  slurm/             submitit's job files and logs (<job id>_0_log.out/.err)

A job runs the ordinary trainer on the cell's config. Ahead of the time limit submitit
sends SIGUSR2: the job passes SIGTERM to the trainer, which checkpoints, and submitit
requeues the job, which resumes from the checkpoint. A trainer stopped otherwise (Slurm
preemption sends SIGTERM) ends its job interrupted, and the next `make test-matrix`
resubmits it.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lib import config as cfglib
from lib.config import ConfigError
from lib.fsutil import LockHeld, atomic_write_json, atomic_write_text, lock_directory
from lib.run import RunDir

OPTION = re.compile(r"^[a-z][a-z0-9_-]*=[A-Za-z0-9_.,:@%|+/=\-]+$")


def require_submitit():
    return cfglib.require("submitit", "MATRIX_EXECUTOR_SLURM", "submitit",
                          "select MATRIX_EXECUTOR_LOCAL")


def sbatch_options(cfg) -> dict:
    """SLURM_EXTRA_OPTIONS as {key: value}; words that are not key=value are an error."""
    options = {}
    for word in cfg.SLURM_EXTRA_OPTIONS.split():
        if not OPTION.match(word):
            raise ConfigError(f"SLURM_EXTRA_OPTIONS: {word!r} is not key=value (e.g. "
                              f"account=myproject qos=high; letters, digits and _.,:@%|+/=- "
                              f"only)")
        key, _, value = word.partition("=")
        options[key.replace("-", "_")] = value
    return options


def slurm_executor(cfg, folder: Path):
    """submitit's SlurmExecutor with the SLURM_* settings of the matrix config."""
    submitit = require_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as e:  # no srun here
        raise ConfigError(f"MATRIX_EXECUTOR_SLURM=y, but this machine has no Slurm ({e}): run "
                          f"`make test-matrix` on the cluster's login node, or select "
                          f"MATRIX_EXECUTOR_LOCAL") from None
    params = dict(time=cfg.SLURM_TIME_LIMIT_MIN, cpus_per_task=cfg.SLURM_CPUS_PER_JOB,
                  array_parallelism=cfg.SLURM_ARRAY_PARALLELISM, ntasks_per_node=1,
                  additional_parameters=sbatch_options(cfg), job_name=folder.parent.name)
    if cfg.SLURM_GPUS_PER_JOB:
        params["gpus_per_node"] = cfg.SLURM_GPUS_PER_JOB
    if cfg.SLURM_PARTITION:
        params["partition"] = cfg.SLURM_PARTITION
    executor.update_parameters(**params)
    return executor


class SlurmCluster:
    """Submits through sbatch and asks the scheduler whether a job ended."""

    def __init__(self, cfg, folder: Path):
        self.folder = folder
        self.executor = slurm_executor(cfg, folder)

    def submit(self, jobs: list) -> list:
        """Submit callables as one array; their job ids, in order."""
        return [job.job_id for job in self.executor.submit_array(jobs)]

    def ended(self, job_id: str) -> bool:
        submitit = require_submitit()
        return submitit.SlurmJob(self.folder, job_id).done()


# The engines behind SlurmRunner, by name; tests add submitit's LocalExecutor here.
CLUSTERS = {"slurm": SlurmCluster}


def job_result(folder: Path, job_id: str):
    """(CellJob's result dict or None, why) from submitit's result file of an ended job."""
    from submitit.core import utils
    path = utils.JobPaths(folder, job_id, 0).result_pickle
    try:
        kind, value = utils.pickle_load(path)
    except FileNotFoundError:
        return None, f"job {job_id} ended without a result (cancelled, or killed at its limit)"
    except Exception as e:  # a damaged result file
        return None, f"job {job_id}: unreadable result file {path} ({type(e).__name__})"
    if kind == "success":
        return value, None
    last = (str(value).strip().splitlines() or ["error"])[-1]
    return None, f"job {job_id} failed: {last[:200]}"


class CellJob:
    """What a job runs: the trainer on one cell's config, its output appended to the cell's
    stdout.log. submitit calls checkpoint() on its pre-timeout signal."""

    def __init__(self, cell_id: str, config: str, log: str):
        self.cell_id, self.config, self.log = cell_id, config, log
        self._proc = None

    def __call__(self) -> dict:
        """{"exit_code": the trainer's, "wall_s": this job's seconds, "host": its node}."""
        started = time.monotonic()
        with open(self.log, "ab") as log:
            log.write(f"=== kmatrix: job on {socket.gethostname()} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: python -m gpt2.train "
                      f"{self.config}\n".encode())
            log.flush()
            self._proc = subprocess.Popen([sys.executable, "-m", "gpt2.train", self.config],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cfglib.ROOT)
            code = self._proc.wait()
        return {"exit_code": code, "wall_s": time.monotonic() - started,
                "host": socket.gethostname()}

    def checkpoint(self, *args, **kwargs):
        """Stop the trainer at its next step (it checkpoints), then requeue this cell."""
        from submitit.helpers import DelayedSubmission
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            # Not Popen.wait(): this runs in a signal handler that may have interrupted
            # __call__'s wait(), which holds Popen's lock.
            try:
                os.waitpid(self._proc.pid, 0)
            except ChildProcessError:  # it had ended and been reaped
                pass
        return DelayedSubmission(CellJob(self.cell_id, self.config, self.log))

    def __getstate__(self):
        return {"cell_id": self.cell_id, "config": self.config, "log": self.log, "_proc": None}


class SlurmRunner:
    """The matrix runner of MATRIX_EXECUTOR_SLURM: collect, show, submit, return. `runner`
    is scripts.matrix, whose state-file helpers it shares (passed in: it imports us)."""

    def __init__(self, matrix, retry_failed: bool, runner, cluster: str = "slurm"):
        self.m = matrix
        self.retry_failed = retry_failed
        self.runner = runner
        self.folder = matrix.path / "slurm"
        self.cluster_name = cluster

    def run(self) -> int:
        runner, m = self.runner, self.m
        m.path.mkdir(parents=True, exist_ok=True)
        try:
            lock = lock_directory(m.path)
        except LockHeld as e:
            raise ConfigError(f"{m.path} is in use by another matrix runner ({e.holder}); "
                              f"wait for it, then run again") from None
        try:
            m.state_dir.mkdir(parents=True, exist_ok=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(m.path / "matrix.config", cfglib.config_text(m.kconf))
            cluster = CLUSTERS[self.cluster_name](m.cfg, self.folder)
            return self._run(runner, cluster)
        finally:
            os.close(lock)

    def _run(self, runner, cluster) -> int:
        m = self.m
        states, todo, running, collected = {}, [], [], []
        for cell in m.cells:
            runner.write_cell_config(cell)
            state = runner.read_state(m.state_path(cell)) or runner.new_state(cell)
            if state.get("status") == "running" and state.get("job_id"):
                if not cluster.ended(state["job_id"]):
                    running.append(cell)
                    states[cell.id] = state
                    continue
                self.collect(runner, cell, state)
                collected.append(cell)
            elif state.get("status") == "running":  # left by a local runner that stopped
                runner.close_dead_attempt(state, cell.log)
            if state.get("status") == "done" and not RunDir(cell.dir).is_complete():
                state.update(status="interrupted", reason="its run directory lacks the final "
                             "evaluation, samples or summary; the trainer finishes them")
            states[cell.id] = state
            if runner.should_run(state, self.retry_failed)[0]:
                todo.append(cell)
            atomic_write_json(m.state_path(cell), state)
        for cell in collected:
            state = states[cell.id]
            line = f"  {cell.id}  {state['status']}"
            if state["status"] != "done":
                line += f"  ({state['reason']}{'; resubmitted' if cell in todo else ''})"
            print(line)
        for cell in running:
            print(f"  {cell.id}  running (job {states[cell.id]['job_id']})"
                  f"{self.position(cell)}")
        if todo:
            runner.Runner(m, self.retry_failed).prepare(todo)  # once, not in every job
            self.submit(runner, cluster, todo, states)
        counts = {s: sum(states[c.id]["status"] == s for c in m.cells)
                  for s in ("done", "running", "failed", "interrupted", "pending")}
        print(f"matrix {m.path}: {len(m.cells)} cells, {counts['done']} done, "
              f"{counts['running']} running or queued, {counts['failed']} failed"
              + (" (RETRY_FAILED=1 resubmits)" if counts["failed"] and not self.retry_failed
                 else ""))
        if counts["running"]:
            print("run `make test-matrix` again to collect finished cells; `make report` "
                  "reports on the finished ones")
            return 0
        runner.Runner(m, self.retry_failed).report()
        return 1 if counts["failed"] else 0

    def collect(self, runner, cell, state) -> None:
        """Close the cell's attempt from its job's result and its run directory."""
        result, why = job_result(self.folder, state["job_id"])
        summary = runner.read_summary(cell)
        code = result["exit_code"] if result else None
        if result is None:
            stopped = summary.get("status") in ("interrupted", "running")
            status, reason = ("interrupted" if stopped else "failed"), why
        else:
            status, reason = runner.outcome(code, summary)
        now = time.time()
        attempt = state["attempts"][-1] if state.get("attempts") else {}
        attempt.update(finished_at=now, exit_code=code, wall_s=result and result["wall_s"],
                       host=result and result["host"])
        state.update(status=status, finished_at=now, exit_code=code, reason=reason,
                     error=summary.get("error") if status == "failed" else None,
                     log_tail=runner.log_tail(cell.log) if status == "failed" else [],
                     wall_s=sum(a.get("wall_s") or 0.0 for a in state.get("attempts", [])))

    def position(self, cell) -> str:
        """Where a running cell stands: its last logged iteration."""
        records = RunDir(cell.dir).metrics
        try:
            last = records.read_text().splitlines()[-1]
        except (OSError, IndexError):
            return ""
        found = re.search(r'"iter": (\d+)', last)
        return f", iteration {found.group(1)}" if found else ""

    def submit(self, runner, cluster, todo, states) -> None:
        jobs = [CellJob(cell.id, str(cell.config), str(cell.log)) for cell in todo]
        ids = cluster.submit(jobs)
        now = time.time()
        for cell, job_id in zip(todo, ids):
            state = states[cell.id]
            state.update(status="running", job_id=job_id, pid=None, started_at=now,
                         finished_at=None, exit_code=None, reason=None, error=None,
                         log_tail=[])
            state.setdefault("attempts", []).append(
                {"job_id": job_id, "started_at": now, "finished_at": None, "wall_s": None,
                 "exit_code": None})
            atomic_write_json(self.m.state_path(cell), state)
        print(f"submitted {len(todo)} cell(s) as one array: jobs {', '.join(ids)}")
