"""The matrix on Slurm (MATRIX_EXECUTOR_SLURM): one job array of the pending cells through
submitit. Each `make test-matrix` collects the jobs that ended, shows the ones running and
submits what is left to run, then returns; the cells' state files and run directories are
the local runner's, so `make report` reads them the same way.

  state/<cell>.json  status "running" with the cell's "job_id" while its job is queued or
                     runs; every attempt lists its job id
  slurm/             submitit's job files and logs (<job id>_0_log.out/.err)

A job runs the ordinary trainer on the cell's config. Ahead of the time limit submitit
sends SIGUSR2: the job passes SIGTERM to the trainer, which checkpoints, and submitit
requeues the job, which resumes from the checkpoint. SIGUSR1 to the job's batch script
(`scancel --signal=USR1 --batch`, or a cluster's `--signal=B:USR1@N`) is passed on as that
SIGUSR2. Slurm's own requeue (`scontrol requeue`, preemption with PreemptMode=REQUEUE) sends
SIGTERM: the trainer checkpoints and Slurm starts the job again, which resumes. A trainer
stopped otherwise ends its job interrupted, and the next `make test-matrix` resubmits it.

Job states and exit codes come from Slurm's accounting (sacct), as submitit's own do; a cell
whose trainer failed fails its job with the trainer's exit code, so sacct shows it FAILED.
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
from scripts.fail_cells import stand_in

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


def sbatch_parameters(cfg, folder: Path) -> dict:
    """submitit SlurmExecutor parameters from the SLURM_* settings of the matrix config."""
    params = dict(time=cfg.SLURM_TIME_LIMIT_MIN, cpus_per_task=cfg.SLURM_CPUS_PER_JOB,
                  array_parallelism=cfg.SLURM_ARRAY_PARALLELISM, ntasks_per_node=1,
                  additional_parameters=sbatch_options(cfg), job_name=folder.parent.name,
                  setup=list(USR1_FORWARD))
    if cfg.SLURM_GPUS_PER_JOB:
        params["gpus_per_node"] = cfg.SLURM_GPUS_PER_JOB
    if cfg.SLURM_PARTITION:
        params["partition"] = cfg.SLURM_PARTITION
    if cfg.SLURM_MEM_PER_JOB_GB:
        params["mem"] = f"{cfg.SLURM_MEM_PER_JOB_GB}GB"
    return params


# Lines of the batch script before its srun (submitit's "setup"). bash runs a trap only
# after the foreground command has ended, so `srun` becomes a function that runs the real
# srun in the background and waits for it: SIGUSR1 to the script (scancel --signal=USR1
# --batch, sbatch --signal=B:USR1@N) then reaches the job step at once as submitit's
# checkpoint signal (SIGUSR2; srun passes it on): the cell checkpoints and submitit requeues
# the job. The SIGTERM of a requeue or cancellation does not end the script before its step.
USR1_FORWARD = [
    "# kmatrix: SIGUSR1 to this script is submitit's checkpoint signal (SIGUSR2) to the step",
    'kmatrix_usr1() { [[ -n ${kmatrix_step:-} ]] && kill -USR2 "$kmatrix_step" 2>/dev/null; }',
    "trap kmatrix_usr1 USR1",
    "trap : TERM",
    "srun() {",
    '    command srun "$@" &',
    "    kmatrix_step=$!",
    "    local rc",
    '    while :; do wait "$kmatrix_step"; rc=$?; kill -0 "$kmatrix_step" 2>/dev/null || break; done',
    '    return "$rc"',
    "}",
]


def slurm_executor(cfg, folder: Path):
    """submitit's SlurmExecutor with the SLURM_* settings of the matrix config."""
    submitit = require_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as e:  # no srun here
        raise ConfigError(f"MATRIX_EXECUTOR_SLURM=y, but this machine has no Slurm ({e}): run "
                          f"`make test-matrix` on the cluster's login node, or select "
                          f"MATRIX_EXECUTOR_LOCAL") from None
    executor.update_parameters(**sbatch_parameters(cfg, folder))
    return executor


def describe(cfg, folder: Path, jobs: int) -> list:
    """The dry run's lines: the #SBATCH options of the array of `jobs` cells, exactly as
    submitit writes them for sbatch, and what the cluster decides where nothing is asked."""
    require_submitit()
    from submitit.slurm.slurm import _make_sbatch_string
    params = sbatch_parameters(cfg, folder)
    text = _make_sbatch_string(command="python -u -m submitit.core._submit", folder=folder,
                               map_count=jobs if jobs > 1 else None, **params)
    lines = [f"slurm: {jobs} cell(s) as one job array, each job asking sbatch for:"]
    keep = ("partition", "cpus-per-task", "gpus-per-node", "mem", "time", "array", "signal",
            "job-name", "nodes", "ntasks-per-node", *params["additional_parameters"])
    for line in text.splitlines():
        key = line.removeprefix("#SBATCH --").partition("=")[0]
        if line.startswith("#SBATCH ") and key.replace("-", "_") in [k.replace("-", "_")
                                                                    for k in keep]:
            lines.append(f"  {line}")
    defaults = [what for what, given in (("partition", "partition" in params),
                                         ("memory", "mem" in params)) if not given]
    if defaults:
        lines.append(f"  (not asked, so the cluster's default: {', '.join(defaults)})")
    if "gpus_per_node" not in params:
        lines.append("  (no GPUs: SLURM_GPUS_PER_JOB=0)")
    lines.append(f"  the batch script also passes SIGUSR1 on as the checkpoint signal; job "
                 f"files and logs go to {folder}")
    return lines


# Slurm job states in which a job has not ended (it waits, runs or is being requeued).
NOT_ENDED = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
             "COMPLETING", "CONFIGURING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT",
             "RESV_DEL_HOLD", "STOPPED", "UNKNOWN"}
SACCT_FIELDS = "JobID,State,ExitCode,ElapsedRaw,NodeList"


def parse_sacct(text: str) -> dict:
    """{job id: {"state", "exit_code", "elapsed_s", "node"}} from `sacct --parsable2 -X -o
    SACCT_FIELDS`; a pending array range ("12_[1-3%2]") gives each of its ids."""
    from submitit.slurm.slurm import SlurmInfoWatcher
    info = {}
    for job_id, row in SlurmInfoWatcher().read_info(text).items():
        elapsed = row.get("ElapsedRaw", "")
        info[job_id] = {"state": (row.get("State") or "UNKNOWN").split()[0],
                        "exit_code": row.get("ExitCode") or None,
                        "elapsed_s": float(elapsed) if elapsed.isdigit() else None,
                        "node": row.get("NodeList") or None}
    return info


class Cluster:
    """What SlurmRunner asks of an engine (SlurmCluster; the tests' stand-ins)."""

    def submit(self, jobs: list) -> list:
        raise NotImplementedError

    def ended(self, job_id: str) -> bool:
        raise NotImplementedError

    def watch(self, job_ids: list) -> None:
        """Prepare to be asked about these jobs (one query for all)."""

    def accounting(self, job_id: str) -> dict:
        """The scheduler's record of an ended job: "state", "exit_code" ("3:0"),
        "elapsed_s", "node"; {} where it has none."""
        return {}

    def state(self, job_id: str) -> str:
        return "ENDED" if self.ended(job_id) else "RUNNING"


class SlurmCluster(Cluster):
    """Submits through sbatch and asks Slurm's accounting (sacct) about the jobs."""

    def __init__(self, cfg, folder: Path):
        self.folder = folder
        self.executor = slurm_executor(cfg, folder)
        self.info = {}

    def submit(self, jobs: list) -> list:
        """Submit callables as one array; their job ids, in order."""
        return [job.job_id for job in self.executor.submit_array(jobs)]

    def watch(self, job_ids: list) -> None:
        """Ask sacct once about these jobs (and their arrays)."""
        arrays = sorted({str(j).split("_")[0] for j in job_ids})
        if not arrays:
            return
        try:
            out = subprocess.run(["sacct", "-X", "--parsable2", "-o", SACCT_FIELDS,
                                  "-j", ",".join(arrays)], capture_output=True, text=True,
                                 timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"sacct, which tells the jobs' states, did not answer ({e}); "
                              f"run `make test-matrix` again on the cluster's login node") from None
        if out.returncode != 0:
            raise ConfigError(f"sacct failed: {out.stderr.strip()[:300]} (the Slurm executor "
                              f"needs the cluster's job accounting, slurmdbd)")
        self.info.update(parse_sacct(out.stdout))

    def accounting(self, job_id: str) -> dict:
        """The job's {"state", "exit_code", "elapsed_s", "node"} from sacct ({} if unknown)."""
        if job_id not in self.info:
            self.watch([job_id])
        return self.info.get(job_id, {})

    def state(self, job_id: str) -> str:
        return self.accounting(job_id).get("state", "UNKNOWN")

    def ended(self, job_id: str) -> bool:
        state = self.state(job_id)
        if state == "UNKNOWN":  # not in the accounting (yet): ended if it left a result
            from submitit.core import utils
            return utils.JobPaths(self.folder, job_id, 0).result_pickle.exists()
        return state not in NOT_ENDED


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


def exit_status(slurm_code):
    """The exit status of sacct's ExitCode "3:0" (3), or 128 + n of a signal "0:9"; None
    when there is none."""
    code, _, sig = (slurm_code or "").partition(":")
    if not code.isdigit():
        return None
    if int(code) == 0 and sig.isdigit() and int(sig):
        return 128 + int(sig)
    return int(code)


def _ignore_checkpoint_signal():
    """In the trainer's process, before it starts: ignore submitit's checkpoint signal.
    Slurm delivers a step's signals (--signal=USR2@90, or srun passing one on) to every
    process of the step, and SIGUSR2 would end the trainer at once, without a checkpoint;
    the job's own handler stops it with SIGTERM instead (CellJob.checkpoint)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


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
            self._proc = subprocess.Popen(self.command(), stdout=log,
                                          stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=cfglib.ROOT,
                                          preexec_fn=_ignore_checkpoint_signal)
            code = self._proc.wait()
        if code not in (0, 130):
            # The trainer failed: so does the job, with its exit code (a signal's as
            # 128 + n), for sacct to show; the collector reads it from there.
            sys.exit(code if code > 0 else 128 - code)
        return {"exit_code": code, "wall_s": time.monotonic() - started,
                "host": socket.gethostname()}

    def command(self) -> list:
        """The trainer, or the matrix tests' stand-in failure (scripts.matrix's hook)."""
        return (stand_in(self.cell_id, Path(self.config).parent)
                or [sys.executable, "-m", "gpt2.train", self.config])

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
        known = {cell.id: runner.read_state(m.state_path(cell)) for cell in m.cells}
        cluster.watch([s["job_id"] for s in known.values()
                       if s.get("status") == "running" and s.get("job_id")])
        for cell in m.cells:
            runner.write_cell_config(cell)
            state = known[cell.id] or runner.new_state(cell)
            if state.get("status") == "running" and state.get("job_id"):
                if not cluster.ended(state["job_id"]):
                    running.append(cell)
                    states[cell.id] = state
                    continue
                self.collect(runner, cell, state, cluster)
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
            job_id = states[cell.id]["job_id"]
            print(f"  {cell.id}  running (job {job_id} {cluster.state(job_id)}"
                  f"{self.position(cell)})")
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

    def collect(self, runner, cell, state, cluster) -> None:
        """Close the cell's attempt from its job's result, Slurm's accounting of the job and
        the cell's run directory."""
        job_id = state["job_id"]
        result, why = job_result(self.folder, job_id)
        acct = cluster.accounting(job_id)
        summary = runner.read_summary(cell)
        code = result["exit_code"] if result else None
        if result is None:
            # The job failed with the trainer's exit code (CellJob), or was cancelled,
            # killed at its limit or lost with its node: sacct says which.
            acct_code = exit_status(acct.get("exit_code"))
            stopped = summary.get("status") in ("interrupted", "running")
            if not stopped and acct_code:
                code = acct_code
                status, reason = runner.outcome(code, summary)
                reason = f"job {job_id}: {reason}"
            else:
                status, reason = ("interrupted" if stopped else "failed"), why
        else:
            status, reason = runner.outcome(code, summary)
        if acct and status != "done":
            reason += f"; sacct: {acct['state']}, exit code {acct['exit_code']}"
        now = time.time()
        wall = result["wall_s"] if result else acct.get("elapsed_s")
        host = result["host"] if result else acct.get("node")
        attempt = state["attempts"][-1] if state.get("attempts") else {}
        attempt.update(finished_at=now, exit_code=code, wall_s=wall, host=host,
                       slurm_state=acct.get("state"), slurm_exit_code=acct.get("exit_code"))
        state.update(slurm_state=acct.get("state"), slurm_exit_code=acct.get("exit_code"))
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
