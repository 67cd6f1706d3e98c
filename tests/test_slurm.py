"""The matrix on Slurm through submitit: sbatch settings, and the submit / collect /
resubmit cycle and preemption on submitit's LocalExecutor (the same path minus sbatch)."""
import json
import os
import signal
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from conftest import wait_for  # noqa: E402
from lib import config as cfglib  # noqa: E402
from lib.config import ConfigError  # noqa: E402
from lib.run import RunDir, matrix_dir  # noqa: E402
from scripts import matrix, slurm  # noqa: E402

QUICK = ["MAX_ITERS=20", "EVAL_INTERVAL=10", "SAMPLE_AFTER_TRAINING=n"]
SLURM = ["MATRIX=y", "MATRIX_EXECUTOR=slurm"]


class LocalCluster(slurm.Cluster):
    """submitit's LocalExecutor in place of sbatch: jobs run on this machine."""
    jobs = {}
    submitted = []

    def __init__(self, cfg, folder):
        self.folder = folder
        self.executor = submitit.LocalExecutor(folder=folder)
        self.executor.update_parameters(timeout_min=10)

    def submit(self, jobs):
        submitted = self.executor.submit_array(jobs)
        LocalCluster.jobs.update({j.job_id: j for j in submitted})
        LocalCluster.submitted.append([job.cell_id for job in jobs])
        return [j.job_id for j in submitted]

    def ended(self, job_id):
        return LocalCluster.jobs[job_id].done()


@pytest.fixture
def local_cluster(monkeypatch):
    monkeypatch.setitem(slurm.CLUSTERS, "slurm", LocalCluster)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # jobs share this machine's few cores
    LocalCluster.jobs, LocalCluster.submitted = {}, []
    yield LocalCluster
    for job in LocalCluster.jobs.values():  # a failed test leaves no job running
        if not job.done():
            job.cancel()


def wait_for_jobs():
    wait_for(lambda: all(j.done() for j in LocalCluster.jobs.values()),
             "the local jobs to end", every_s=0.2)


def states(m) -> dict:
    return {c.id: json.loads(m.state_path(c).read_text()) for c in m.cells}


def test_without_slurm_here_the_error_says_where_to_run(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    cfg = cfglib.load(tiny_config(*SLURM))
    with pytest.raises(ConfigError, match="MATRIX_EXECUTOR_SLURM=y.*login node"):
        slurm.slurm_executor(cfg, tmp_path / "slurm")


def test_sbatch_settings_come_from_the_config(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    cfg = cfglib.load(tiny_config(*SLURM, "SLURM_PARTITION=gpu", "SLURM_GPUS_PER_JOB=2",
                                  "SLURM_CPUS_PER_JOB=12", "SLURM_TIME_LIMIT_MIN=90",
                                  "SLURM_ARRAY_PARALLELISM=5",
                                  "SLURM_EXTRA_OPTIONS=account=proj qos=high constraint=a100|h100"))
    executor = slurm.slurm_executor(cfg, tmp_path / "slurm")
    text = executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --time=90", "#SBATCH --account=proj",
                 "#SBATCH --qos=high", "#SBATCH --constraint='a100|h100'", "#SBATCH --signal=USR2@90"):
        assert line in text, line
    assert executor.parameters["array_parallelism"] == 5


@pytest.mark.parametrize("word", ["account", "qos=high;touch x", "x=$(id)"])
def test_an_extra_option_that_is_not_key_value_is_an_error(tiny_config, word):
    cfg = cfglib.load(tiny_config(*SLURM, f"SLURM_EXTRA_OPTIONS=qos=high {word}"))
    with pytest.raises(ConfigError, match="SLURM_EXTRA_OPTIONS"):
        slurm.sbatch_options(cfg)


def test_slurm_knobs_do_not_move_the_matrix_but_the_shared_dir_does(tiny_config, tmp_path):
    local = cfglib.load_kconf(tiny_config("MATRIX=y", name="local"))
    on_slurm = cfglib.load_kconf(tiny_config(*SLURM, "SLURM_PARTITION=gpu", name="slurm"))
    shared = cfglib.load_kconf(tiny_config(*SLURM, f"SLURM_SHARED_DIR={tmp_path / 'nfs'}",
                                           name="shared"))
    dirs = [matrix_dir(cfglib.from_kconf(k), k) for k in (local, on_slurm, shared)]
    assert dirs[0] == dirs[1]
    assert dirs[2] == tmp_path / "nfs" / dirs[0].name
    m = matrix.load_matrix(tiny_config("MATRIX=y", name="shared2"),
                           ["MATRIX_EXECUTOR=slurm", f"SLURM_SHARED_DIR={tmp_path / 'nfs'}"])
    assert all(c.dir.parent == dirs[2] for c in m.cells)
    assert cfglib.load(m.cells[0].config if m.cells[0].config.exists() else
                       _written(m.cells[0])).RESULTS_DIR == str(dirs[2])


def _written(cell):
    matrix.write_cell_config(cell)
    return cell.config


def test_array_holds_exactly_the_pending_cells_and_a_second_call_collects(
        tiny_config, local_cluster, capsys):
    config = tiny_config(*SLURM, *QUICK, "MATRIX_SEEDS=3")
    m = matrix.load_matrix(config)
    failed = m.cells[0]
    m.state_dir.mkdir(parents=True)
    matrix.write_cell_config(failed)
    state = matrix.new_state(failed)
    state.update(status="failed", exit_code=3, reason="exit 3 (training failed)")
    m.state_path(failed).write_text(json.dumps(state))

    assert matrix.main([str(config)]) == 0
    pending = [c.id for c in m.cells[1:]]
    assert LocalCluster.submitted == [pending]
    recorded = states(m)
    assert all(recorded[c]["status"] == "running" and recorded[c]["job_id"] for c in pending)
    assert {recorded[c]["job_id"] for c in pending} == set(LocalCluster.jobs)
    assert recorded[failed.id]["status"] == "failed"
    out = capsys.readouterr().out
    assert "submitted 2 cell(s) as one array" in out and "2 running or queued" in out

    wait_for_jobs()
    assert matrix.main([str(config)]) == 1  # collected; the failed cell is still failed
    assert LocalCluster.submitted == [pending]  # nothing resubmitted
    recorded = states(m)
    assert [recorded[c]["status"] for c in pending] == ["done", "done"]
    assert all(RunDir(c.dir).is_complete() for c in m.cells[1:])
    assert all(recorded[c]["attempts"][-1]["exit_code"] == 0 for c in pending)
    out = capsys.readouterr().out
    assert "2 done" in out and "1 failed" in out and (m.path / "report.md").exists()


def test_a_job_signalled_ahead_of_its_limit_checkpoints_and_resumes_when_requeued(
        tiny_config, local_cluster, monkeypatch):
    monkeypatch.setattr(matrix.Runner, "report", lambda self: None)  # tested elsewhere
    config = tiny_config(*SLURM, "MAX_ITERS=200", "CHECKPOINT_INTERVAL=10",
                         "EVAL_INTERVAL=200", "SAMPLE_AFTER_TRAINING=n")
    m = matrix.load_matrix(config)
    cell = m.cells[0]
    assert matrix.main([str(config)]) == 0
    (job,) = LocalCluster.jobs.values()
    wait_for(lambda: RunDir(cell.dir).ckpt.exists() or job.done(), "a checkpoint to resume from",
             every_s=0.1)
    assert RunDir(cell.dir).ckpt.exists(), "the job ended before its first checkpoint"
    # submitit's pre-timeout signal, as sbatch --signal=USR2@90 sends it, to the job's task
    task = int(Path(f"/proc/{job.job_id}/task/{job.job_id}/children").read_text().split()[0])
    os.kill(task, signal.SIGUSR2)
    wait_for_jobs()
    assert matrix.main([str(config)]) == 0
    state = states(m)[cell.id]
    assert state["status"] == "done", state
    log = cell.log.read_text()
    assert log.count("=== kmatrix: job on") == 2  # the job ran again after its requeue
    assert "SIGTERM: stopped at iteration" in log and "resuming" in log
    assert RunDir(cell.dir).read_summary()["iters"] == 200


class RecordingCluster(slurm.Cluster):
    """Records submissions; every job has ended, with the result the test wrote."""
    submitted = []

    def __init__(self, cfg, folder):
        self.folder = folder

    def submit(self, jobs):
        ids = [f"77_{len(RecordingCluster.submitted)}{i}" for i in range(len(jobs))]
        RecordingCluster.submitted.append([job.cell_id for job in jobs])
        return ids

    def ended(self, job_id):
        return True


def finish_job(folder, job_id, result):
    from submitit.core import utils
    utils.cloudpickle_dump(("success", result), utils.JobPaths(folder, job_id, 0).result_pickle)


def test_preempted_and_lost_jobs_are_resubmitted_failed_ones_only_on_request(
        tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(slurm.CLUSTERS, "slurm", RecordingCluster)
    RecordingCluster.submitted = []
    config = tiny_config(*SLURM, *QUICK, "MATRIX_SEEDS=3")
    m = matrix.load_matrix(config)
    assert matrix.main([str(config)]) == 0
    preempted, crashed, lost = m.cells
    jobs = {c.id: s["job_id"] for c, s in zip(m.cells, states(m).values())}
    folder = m.path / "slurm"
    # Slurm's preemption SIGTERM reached the trainer: it checkpointed and exited 130
    RunDir(preempted.dir).write_summary({"status": "interrupted"})
    finish_job(folder, jobs[preempted.id], {"exit_code": 130, "wall_s": 5.0, "host": "n1"})
    RunDir(crashed.dir).write_summary({"status": "failed", "error": "non-finite loss"})
    finish_job(folder, jobs[crashed.id], {"exit_code": 3, "wall_s": 2.0, "host": "n2"})
    # `lost` was cancelled: no result file
    RunDir(lost.dir).write_summary({"status": "running"})

    assert matrix.main([str(config)]) == 0
    assert RecordingCluster.submitted[1] == [preempted.id, lost.id]
    recorded = states(m)
    assert recorded[crashed.id]["status"] == "failed"
    assert recorded[crashed.id]["error"] == "non-finite loss"
    assert recorded[preempted.id]["attempts"][0]["exit_code"] == 130
    assert len(recorded[preempted.id]["attempts"]) == 2
    out = capsys.readouterr().out
    assert "interrupted  (exit 130 (interrupted); resubmitted)" in out
    assert "without a result" in out

    for cell in (preempted, lost):
        finish_job(folder, recorded[cell.id]["job_id"], {"exit_code": 130, "wall_s": 1.0,
                                                         "host": "n1"})
    assert matrix.main([str(config), "--retry-failed"]) == 0
    assert RecordingCluster.submitted[2] == [preempted.id, crashed.id, lost.id]


def test_dry_run_shows_what_each_job_asks_sbatch_for(tiny_config, capsys):
    config = tiny_config(*SLURM, *QUICK, "MATRIX_SEEDS=3", "SLURM_PARTITION=gpu",
                         "SLURM_GPUS_PER_JOB=2", "SLURM_CPUS_PER_JOB=12",
                         "SLURM_MEM_PER_JOB_GB=64", "SLURM_TIME_LIMIT_MIN=90",
                         "SLURM_ARRAY_PARALLELISM=2", "SLURM_EXTRA_OPTIONS=account=proj qos=high")
    assert matrix.main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=12",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --mem=64GB", "#SBATCH --time=90",
                 "#SBATCH --array=0-2%2", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "3 cell(s) as one job array"):
        assert line in out, (line, out)
    assert "cluster's default" not in out
    assert not (matrix.load_matrix(config).path / "slurm").exists()  # nothing submitted

    config = tiny_config(*SLURM, *QUICK, "SLURM_GPUS_PER_JOB=0", name="defaults")
    assert matrix.main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--partition" not in out and "--mem" not in out and "--gpus" not in out
    assert "cluster's default: partition, memory" in out and "no GPUs" in out


def test_sacct_records_and_exit_codes():
    text = ("JobID|State|ExitCode|ElapsedRaw|NodeList\n"
            "12_0|FAILED|3:0|14|n1\n12_1|CANCELLED by 0|0:15|7|n2\n"
            "12_[2-3%2]|PENDING|0:0|0|None assigned\n")
    info = slurm.parse_sacct(text)
    assert info["12_0"] == {"state": "FAILED", "exit_code": "3:0", "elapsed_s": 14.0,
                            "node": "n1"}
    assert info["12_1"]["state"] == "CANCELLED"
    assert info["12_2"]["state"] == info["12_3"]["state"] == "PENDING"
    assert [slurm.exit_status(c) for c in ("3:0", "0:15", "0:0", None)] == [3, 143, 0, None]
