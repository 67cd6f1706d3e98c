"""The matrix on a real Slurm through submitit's SlurmExecutor (`make slurm-local` starts a
one-node one with accounting; CI does, and sets KMATRIX_SLURM=1, which makes these tests
fail rather than skip where no Slurm answers). Tiny CPU cells, 1 CPU each, 2 at once."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from conftest import EVENT_LIMIT_S, write_tiny_config  # noqa: E402
from lib.run import RunDir  # noqa: E402
from scripts import matrix  # noqa: E402

REQUIRED = os.environ.get("KMATRIX_SLURM") == "1"
CELLS = ["MATRIX=y", "MATRIX_OPTIMIZER_LION=y", "MATRIX_SEEDS=2", "SAMPLE_AFTER_TRAINING=n"]
ON_SLURM = ["MATRIX_EXECUTOR=slurm", "SLURM_CPUS_PER_JOB=1", "SLURM_GPUS_PER_JOB=0",
            "SLURM_ARRAY_PARALLELISM=2", "SLURM_TIME_LIMIT_MIN=20"]
# Long enough (tens of seconds on 2 cores) to be caught running with a checkpoint.
LONG = ["MAX_ITERS=2000", "CHECKPOINT_INTERVAL=20", "EVAL_INTERVAL=500", "LOG_INTERVAL=100"]


def slurm_missing() -> str:
    """Why no Slurm with accounting answers here, or "" when one does."""
    if not shutil.which("sinfo") or not shutil.which("sacct"):
        return "no Slurm client (sinfo, sacct) on PATH"
    for cmd in (["sinfo", "-h", "-o", "%T"], ["sacct", "-X", "-n", "-S", "now"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=EVENT_LIMIT_S)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not answer within {EVENT_LIMIT_S:g} s"
        if out.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {out.stderr.strip()[:200]}"
    return ""


@pytest.fixture(scope="module", autouse=True)
def slurm_here():
    why = slurm_missing()
    if why and REQUIRED:
        pytest.fail(f"KMATRIX_SLURM=1 but {why}: start it with `make slurm-local`")
    if why:
        pytest.skip(f"{why}; `make slurm-local` starts a one-node Slurm (KMATRIX_SLURM=1 "
                    f"makes this a failure)")


@pytest.fixture
def jobs_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sbatch passes the environment on
    submitted = []
    yield submitted
    for job in submitted:  # a failed test leaves nothing queued or running
        subprocess.run(["scancel", job.split("_")[0]], capture_output=True)


def sh(*cmd) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=EVENT_LIMIT_S)
    assert out.returncode == 0, f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr}"
    return out.stdout


def signal_job(*cmd) -> None:
    """scontrol requeue or scancel --signal. On an array task, scancel delivers the signal,
    then retries for about a minute and exits 228 ("Job can not be altered now, try again
    later") when the job is being requeued in answer to it; sacct's record is checked."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=EVENT_LIMIT_S)
    assert out.returncode == 0 or "try again later" in out.stderr, \
        f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr}"


def states(m) -> dict:
    return {c.id: json.loads(m.state_path(c).read_text()) for c in m.cells}


def wait(what, ready, timeout=EVENT_LIMIT_S, every=1.0):
    end = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < end, f"waited {timeout} s for {what}"
        time.sleep(every)


def run_until_collected(config, capsys, timeout=EVENT_LIMIT_S) -> int:
    """`make test-matrix` again and again until no cell is running; its last exit status."""
    end = time.monotonic() + timeout
    while True:
        code = matrix.main([str(config)])
        out = capsys.readouterr().out
        if "running or queued" not in out or " 0 running or queued" in out:
            return code
        assert time.monotonic() < end, f"the jobs did not end within {timeout} s:\n{out}"
        time.sleep(5)


def losses(path: Path):
    import pandas as pd
    table = pd.read_csv(path / "summary.csv").set_index("cell").sort_index()
    return table[["status", "iters", "tokens_seen", "train_loss", "val_loss", "val_ppl"]]


def test_one_array_requeued_and_signalled_jobs_resume_to_the_local_result(
        tmp_path, jobs_env, capsys):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "local").mkdir()
    config = write_tiny_config(tmp_path / "slurm" / "config", *CELLS, *LONG, *ON_SLURM)
    m = matrix.load_matrix(config)
    assert len(m.cells) == 4
    assert matrix.main([str(config)]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 cell(s) as one array" in out
    jobs = [states(m)[c.id]["job_id"] for c in m.cells]
    jobs_env.extend(jobs)
    assert len({j.split("_")[0] for j in jobs}) == 1, jobs  # one array
    requeued, signalled = m.cells[0], m.cells[1]

    # Both first jobs run and have checkpointed: scontrol requeue one, USR1 to the
    # other's batch script.
    wait("the first two cells' checkpoints",
         lambda: all(RunDir(c.dir).ckpt.exists() for c in (requeued, signalled)), every=0.2)
    signal_job("scontrol", "requeue", jobs[0])
    # scancel retries for about a minute while the job it signalled is being requeued
    usr1 = subprocess.Popen(["scancel", "--signal=USR1", "--batch", jobs[1]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # `make test-matrix` while they run or wait: their states, nothing submitted again.
    assert matrix.main([str(config)]) == 0
    out = capsys.readouterr().out
    for cell, job in zip(m.cells, jobs):
        assert f"{cell.id}  running (job {job} " in out, out
    assert "submitted" not in out
    assert [states(m)[c.id]["job_id"] for c in m.cells] == jobs
    _, err = usr1.communicate(timeout=EVENT_LIMIT_S)
    assert usr1.returncode == 0 or "try again later" in err, err

    assert run_until_collected(config, capsys) == 0
    recorded = states(m)
    assert all(s["status"] == "done" for s in recorded.values()), recorded
    assert [s["job_id"] for s in recorded.values()] == jobs  # never resubmitted
    assert len(list((m.path / "slurm").glob("*_submission.sh"))) == 1
    for cell in (requeued, signalled):
        log = cell.log.read_text()
        assert log.count("=== kmatrix: job on") == 2, log  # the job ran again
        assert "SIGTERM: stopped at iteration" in log and "resuming" in log, log
        assert recorded[cell.id]["slurm_state"] == "COMPLETED"
    for job in jobs[:2]:  # Slurm's own record of each requeue
        sacct = sh("sacct", "-X", "-n", "-P", "-D", "-o", "JobID,State", "-j", job)
        assert sacct.split().count(f"{job}|REQUEUED") == 1, sacct

    # The same matrix run locally, uninterrupted: the same losses, cell for cell.
    local = write_tiny_config(tmp_path / "local" / "config", *CELLS, *LONG, "MATRIX_JOBS=2")
    assert matrix.main([str(local)]) == 0
    local_m = matrix.load_matrix(local)
    assert local_m.path.name == m.path.name
    on_slurm, here = losses(m.path), losses(local_m.path)
    assert list(on_slurm.index) == [c.id for c in sorted(m.cells, key=lambda c: c.id)]
    assert on_slurm.equals(here), f"slurm:\n{on_slurm}\nlocal:\n{here}"


def test_a_cell_that_fails_is_recorded_with_sacct_state_exit_code_and_log(
        tmp_path, jobs_env, capsys, monkeypatch):
    config = write_tiny_config(tmp_path / "config", "MATRIX=y", "MATRIX_SEEDS=2",
                               "MAX_ITERS=20", "EVAL_INTERVAL=10", "SAMPLE_AFTER_TRAINING=n",
                               *ON_SLURM)
    m = matrix.load_matrix(config)
    broken, fine = m.cells
    monkeypatch.setenv(matrix.FAIL_CELLS_ENV, broken.id)  # reaches the job through sbatch
    assert matrix.main([str(config)]) == 0
    jobs_env.extend(s["job_id"] for s in states(m).values())
    assert run_until_collected(config, capsys) == 1
    failed, done = states(m)[broken.id], states(m)[fine.id]
    assert done["status"] == "done"
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert failed["slurm_state"] == "FAILED" and failed["slurm_exit_code"] == "3:0"
    assert "exit 3 (training failed)" in failed["reason"]
    assert "sacct: FAILED, exit code 3:0" in failed["reason"]
    assert failed["error"] == "injected failure (KMATRIX_TEST_FAIL_CELLS)"
    assert failed["log_tail"][-1] == "stand-in trainer: injected failure"
    assert failed["attempts"][-1]["slurm_state"] == "FAILED"


def test_slurm_local_again_says_it_is_running():
    conf = Path(os.environ.get("KMATRIX_SLURM_DIR", "/var/tmp/kmatrix-slurm")) / "slurm.conf"
    if os.geteuid() != 0 or not conf.exists():
        pytest.skip("this Slurm was not started by make slurm-local")
    out = subprocess.run([str(Path(__file__).parents[1] / "scripts" / "slurm_local.sh"),
                          "start"], capture_output=True, text=True, timeout=EVENT_LIMIT_S)
    assert out.returncode == 0, out.stderr
    for daemon in ("munged", "MariaDB", "slurmdbd", "slurmctld", "slurmd"):
        assert f"slurm-local: {daemon} already running" in out.stdout, out.stdout
    assert " is idle" in out.stdout or " is mixed" in out.stdout or " is alloc" in out.stdout
