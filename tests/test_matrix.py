"""The matrix runner: the grid and its skips, cell ids and configs, running, resuming, failures."""
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import EVENT_LIMIT_S, wait_for
from lib import config as cfglib
from lib.run import RunDir
from scripts import matrix

# A few tiny iterations per cell; no sampling, so a cell is mostly process start-up.
QUICK = ["MAX_ITERS=20", "EVAL_INTERVAL=10", "SAMPLE_AFTER_TRAINING=n"]


@pytest.fixture
def matrix_config(tiny_config):
    """A tiny config with MATRIX=y and `extra` on top (adamw x none, one seed by default)."""
    def make(*extra, name="matrix.config"):
        return tiny_config("MATRIX=y", *extra, name=name)
    return make


def run_matrix(config, *args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != matrix.FAIL_CELLS_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "scripts.matrix", str(config), *args],
                          cwd=cfglib.ROOT, env=env, capture_output=True, text=True,
                          timeout=EVENT_LIMIT_S)


def states(m) -> dict:
    return {c.id: json.loads(m.state_path(c).read_text()) for c in m.cells}


def summary(cell) -> dict:
    return json.loads((cell.dir / "summary.json").read_text())


# ---------------------------------------------------------------- the grid

def test_grid_crosses_every_selection_and_skips_state_without_adam(matrix_config):
    cfg = cfglib.load(matrix_config(
        "SEED=7", "MATRIX_SEEDS=2", "MATRIX_OPTIMIZER_ADAMW=n", "MATRIX_OPTIMIZER_SGD=y",
        "MATRIX_OPTIMIZER_ADAM=y", "MATRIX_OPTIMIZER_LION=y", "MATRIX_OPTIMIZER_ADAMWSPAM=y",
        "MATRIX_PRUNING_MAGNITUDE=y", "MATRIX_PRUNING_STATE=y", "MATRIX_VARIANT_BITTER2=y",
        "MATRIX_SPARSITIES=0.5 0.9"))
    cells, skipped = matrix.enumerate_cells(cfg)
    expected = set()
    for opt, seed in itertools.product(("sgd", "adam", "lion", "adamwspam"), (7, 8)):
        expected.add((opt, "none", None, None, seed))
        expected |= {(opt, "magnitude", None, s, seed) for s in (0.5, 0.9)}
        if opt in ("adam", "adamwspam"):
            expected |= {(opt, "state", v, s, seed)
                         for v in ("bitter0", "bitter2") for s in (0.5, 0.9)}
    got = [(c.optimizer, c.pruning, c.variant, c.sparsity, c.seed) for c in cells]
    assert len(got) == len(set(got)) == 40
    assert set(got) == expected
    # Kconfig order of the optimizers, seeds innermost
    assert [c.name for c in cells[:3]] == ["sgd-none-seed7", "sgd-none-seed8",
                                           "sgd-magnitude-s0.5-seed7"]
    assert "adam-state-bitter2-s0.9-seed8" in [c.name for c in cells]
    assert sorted(what for what, _ in skipped) == ["lion-state", "sgd-state"]
    assert all("Adam" in reason for _, reason in skipped)


def test_state_needs_a_variant_and_variants_need_state(matrix_config):
    cfg = cfglib.load(matrix_config("MATRIX_PRUNING_STATE=y", "MATRIX_VARIANT_BITTER0=n"))
    cells, skipped = matrix.enumerate_cells(cfg)
    assert [c.name for c in cells] == ["adamw-none-seed1337"]
    assert ("state", "no AdamWPrune variant selected (MATRIX_VARIANT_*)") in skipped
    # a variant without state pruning cannot even be configured
    with pytest.raises(cfglib.ConfigError, match="depends on MATRIX_PRUNING_STATE"):
        cfglib.load(matrix_config(), ["MATRIX_VARIANT_BITTER1=y"])


def test_state_optimizers_come_from_the_kconfig_dependency():
    assert matrix.state_optimizers() == ("adam", "adamw", "adamwspam")


def test_matrix_off_is_refused_with_the_fix(tiny_config, tmp_path):
    config = tiny_config()
    with pytest.raises(cfglib.ConfigError, match="make defconfig-shakespeare-char-matrix"):
        matrix.enumerate_cells(cfglib.load(config))
    for args in ([], ["--dry-run"]):
        result = run_matrix(config, *args)
        assert result.returncode == 2
        assert "matrix mode is off: set MATRIX=y in make menuconfig" in result.stderr
    assert not (tmp_path / "results").exists()


def test_a_cell_value_that_does_not_take_names_the_cell(matrix_config):
    config = matrix_config("SEED=2147483647", "MATRIX_SEEDS=2")
    with pytest.raises(cfglib.ConfigError, match=r"cell adamw-none-seed2147483648: .*SEED"):
        matrix.load_matrix(config)


# ------------------------------------------------------- ids and configs

def test_ids_are_deterministic_and_follow_the_configuration(matrix_config, tmp_path):
    grid = ("MATRIX_PRUNING_STATE=y", "MATRIX_PRUNING_MAGNITUDE=y", "MATRIX_SEEDS=2")
    config = matrix_config(*grid)
    first, again = matrix.load_matrix(config), matrix.load_matrix(config)
    ids = [c.id for c in first.cells]
    assert ids == [c.id for c in again.cells] and first.path == again.path
    assert re.fullmatch(r"adamw-none-seed1337-[0-9a-f]{8}", ids[0])
    assert re.fullmatch(r"adamw-state-bitter0-s0\.5-seed1338-[0-9a-f]{8}", ids[-1])
    assert len(set(c.hash for c in first.cells)) == len(ids)
    assert re.fullmatch(r"default-matrix-[0-9a-f]{8}", first.path.name)
    assert first.path.parent == tmp_path / "results"
    # a knob that changes what the cells compute changes every id (names stay) and the matrix
    changed = matrix.load_matrix(config, ["ADAMW_LR=2e-3"])
    assert [c.name for c in changed.cells] == [c.name for c in first.cells]
    assert not set(c.id for c in changed.cells) & set(ids)
    assert changed.path != first.path
    # runner-only knobs and where results go change neither ids nor the matrix name
    runner = matrix.load_matrix(config, ["MATRIX_JOBS=4", "MATRIX_ON_FAILURE=stop",
                                         f"RESULTS_DIR={tmp_path / 'elsewhere'}"])
    assert [c.id for c in runner.cells] == ids and runner.path.name == first.path.name
    # a bigger grid keeps the ids of the cells it shares
    more = matrix.load_matrix(config, ["MATRIX_SEEDS=3"])
    assert set(ids) < set(c.id for c in more.cells) and more.path != first.path


def test_each_optimizer_runs_at_its_own_rate_times_each_multiplier(matrix_config):
    """Cells read the same <OPTIMIZER>_LR symbols as single runs; a multiplier list sweeps
    each optimizer around its own rate, and every cell's config records the rate it used."""
    config = matrix_config("MATRIX_OPTIMIZER_LION=y", "LION_LR=2e-4", "ADAMW_LR=1e-3")
    plain = {c.spec.optimizer: c for c in matrix.load_matrix(config).cells}
    assert plain["lion"].learning_rate == 2e-4 and plain["adamw"].learning_rate == 1e-3
    assert 'CONFIG_LION_LR="2e-4"' in plain["lion"].text
    assert "ADAMW_LR" not in plain["lion"].text  # a lion cell carries only its own rate
    swept = matrix.load_matrix(config, ["MATRIX_LR_MULTIPLIERS=0.3 1 3"])
    rates = {c.name: c.learning_rate for c in swept.cells}
    assert rates == pytest.approx({
        "adamw-none-lr0.3x-seed1337": 3e-4, "adamw-none-seed1337": 1e-3,
        "adamw-none-lr3x-seed1337": 3e-3, "lion-none-lr0.3x-seed1337": 6e-5,
        "lion-none-seed1337": 2e-4, "lion-none-lr3x-seed1337": 6e-4})
    # the x1 cells are the plain matrix's cells: same ids, results shared on resume
    assert {c.id for c in plain.values()} <= {c.id for c in swept.cells}
    state = matrix.new_state(swept.cells[0])
    assert state["lr_multiplier"] == 0.3 and state["learning_rate"] == pytest.approx(3e-4)
    with pytest.raises(cfglib.ConfigError, match=r"cell adamw-none-lr1000x-seed1337: .*ADAMW_LR"):
        matrix.load_matrix(config, ["ADAMW_LR=2e-2", "MATRIX_LR_MULTIPLIERS=1000"])


def test_cell_configs_are_valid_and_what_the_trainer_writes(matrix_config, tmp_path):
    config = matrix_config("SEED=3", "MATRIX_SEEDS=2", "MATRIX_OPTIMIZER_SGD=y",
                           "MATRIX_OPTIMIZER_ADAMWSPAM=y", "MATRIX_PRUNING_STATE=y",
                           "MATRIX_PRUNING_MOVEMENT=y", "MATRIX_VARIANT_BITTER2=y",
                           "MATRIX_SPARSITIES=0.3 0.7")
    m = matrix.load_matrix(config)
    assert len(m.cells) == 3 * 2 * (1 + 2) + 2 * 2 * 2 * 2  # none + movement x2, state x2x2
    for cell in m.cells:
        matrix.write_cell_config(cell)
        cfg = cfglib.load(cell.config)  # strict: any problem raises
        spec = cell.spec
        assert (cfg.OPTIMIZER, cfg.PRUNING, cfg.ADAMWPRUNE_VARIANT, cfg.SEED) == (
            spec.optimizer, spec.pruning, spec.variant, spec.seed)
        assert cfg.TARGET_SPARSITY == spec.sparsity
        assert cfg.MATRIX is False and cfg.MATRIX_SEEDS is None
        assert cfg.RUN_NAME == cell.id and cfg.hash == cell.hash
        assert RunDir.for_config(cfg).path == cell.dir
        # the trainer writes cfg.text when it claims a directory: the same bytes
        assert cfg.text == cell.config.read_text() == cell.text
        RunDir.for_config(cfg).check_owner(cfg)  # accepts the directory as its own
        assert matrix.command(cell) == [sys.executable, "-m", "gpt2.train", str(cell.config)]
    sgd = next(c for c in m.cells if c.spec.optimizer == "sgd")
    assert cfglib.load(sgd.config).BETA1 is None  # a knob sgd does not have is dropped, not kept
    assert not (m.path / "cells").exists() and not list(m.path.glob("*/config.old"))


def test_resume_and_retry_decisions():
    assert matrix.should_run({}, False) == (True, "pending")
    assert matrix.should_run({"status": "done"}, True)[0] is False
    assert matrix.should_run({"status": "running", "pid": 1}, False)[0] is True
    assert matrix.should_run({"status": "failed", "exit_code": 130}, False)[0] is True
    assert matrix.should_run({"status": "failed", "exit_code": 3}, False)[0] is False
    assert matrix.should_run({"status": "failed", "exit_code": 3}, True)[0] is True
    assert matrix.outcome(0, {"status": "complete"}) == ("done", None)
    assert matrix.outcome(0, {"status": "stopped"})[0] == "failed"
    assert matrix.outcome(0, {})[0] == "failed"
    assert matrix.outcome(3, {"status": "failed"}) == ("failed", "exit 3 (training failed)")
    assert matrix.outcome(-9, {}) == ("failed", "killed by signal 9")
    assert matrix.should_run({"status": "interrupted", "exit_code": -2}, False)[0] is True
    assert matrix.outcome(130, {"status": "interrupted"})[0] == "interrupted"
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        assert matrix.outcome(-sig, {}) == ("interrupted", f"stopped by {sig.name}")
    # a cell that died while the runner itself was being stopped did not fail by itself
    assert matrix.outcome(1, {}, runner_signalled=True)[0] == "interrupted"
    assert matrix.outcome(3, {"status": "failed"}, runner_signalled=True)[0] == "failed"


def test_gpus_round_robin_and_cpu_threads_split():
    gpus = ["0", "1", "2"]
    assert matrix.pick_gpu(gpus, []) == "0"
    assert matrix.pick_gpu(gpus, ["0"]) == "1"
    assert matrix.pick_gpu(gpus, ["0", "1", "2", "1"]) == "0"
    assert matrix.pick_gpu(gpus, ["1", "2"]) == "0"
    assert matrix.pick_gpu([], ["0"]) is None
    env = matrix.child_env({"PATH": "/bin"}, "1", None)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "OMP_NUM_THREADS" not in env
    env = matrix.child_env({"PATH": "/bin"}, None, 3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert matrix.visible_gpus("cpu") == []


def test_dry_run_lists_cells_skips_and_an_estimate_and_writes_nothing(matrix_config, tmp_path,
                                                                     capsys):
    config = matrix_config("MATRIX_SEEDS=2", "MATRIX_OPTIMIZER_LION=y",
                           "MATRIX_PRUNING_STATE=y")
    m = matrix.load_matrix(config)
    assert matrix.main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(c.id in out for c in m.cells) and f"{len(m.cells)} cells" in out
    assert "skipped (1):\n  lion-state: state pruning prunes from Adam moments" in out
    assert "estimated wall time: unknown" in out
    assert not (tmp_path / "results").exists()
    # each cell's `make estimate` in one line, its own optimizer's state
    assert out.count("estimate: ") == len(m.cells)
    from scripts import estimate
    first = estimate.estimate(cfglib.from_kconf(m.cells[0].kconf))
    assert estimate.one_line(first) in out and "M params" in out
    # two finished cells of 100 s each: the rest (4 cells, 1 job) take about 400 s
    m.state_dir.mkdir(parents=True)
    for cell in m.cells[:2]:
        state = matrix.new_state(cell)
        state.update(status="done", wall_s=100.0)
        m.state_path(cell).write_text(json.dumps(state))
    assert matrix.main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 cells would run" in out and "estimated wall time: 6.7 min" in out
    assert f"{m.cells[0].id:<60} lr {m.cells[0].learning_rate:<8g} done" in out


def test_dry_run_refuses_cells_whose_pruning_cannot_reach_the_target(matrix_config, tmp_path,
                                                                     capsys):
    # the matrix's own PRUNING only makes the pruning knobs settable; cells choose theirs
    config = matrix_config("MATRIX_PRUNING_MAGNITUDE=y", "MATRIX_SPARSITIES=0.5 0.7",
                           "PRUNING=magnitude", "PRUNING_START=100", "MAX_ITERS=50")
    assert matrix.main([str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cell adamw-magnitude-s0.5-seed1337:" in err
    assert "cell adamw-magnitude-s0.7-seed1337:" in err and "adamw-none" not in err
    assert "PRUNING_START=100" in err and "MAX_ITERS=50" in err
    assert not (tmp_path / "results").exists()
    epochs = matrix_config("MATRIX_PRUNING_MAGNITUDE=y", "MATRIX_SPARSITIES=0.5",
                           "BUDGET=epochs", "NUM_EPOCHS=0.01", name="epochs.config")
    assert matrix.main([str(epochs), "--dry-run"]) == 2  # 0.01 epochs: a few iterations
    assert "BUDGET=epochs, NUM_EPOCHS=0.01" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_make_targets_pass_the_flags(tmp_path):
    def dry(*args):
        return subprocess.run(["make", "-n", "--no-print-directory", "-C", str(cfglib.ROOT),
                               "INSTALL=", "PY=python", f"KCONFIG_CONFIG={tmp_path / 'c'}",
                               *args], capture_output=True, text=True,
                              timeout=EVENT_LIMIT_S).stdout
    (tmp_path / "c").write_text("")
    assert dry("test-matrix").split() == ["python", "-m", "scripts.matrix", str(tmp_path / "c")]
    assert dry("test-matrix", "DRY_RUN=1", "RETRY_FAILED=1").split()[-2:] == [
        "--dry-run", "--retry-failed"]
    assert dry("report").split() == ["python", "-m", "scripts.report", str(tmp_path / "c")]
    assert dry("report", "MATRIX=a/b", "BASELINE_MATRIX=c/d").split() == [
        "python", "-m", "scripts.report", "a/b", "--baseline-matrix", "c/d"]
    assert dry("report", "MATRICES=a/b c/d").split() == [
        "python", "-m", "scripts.report", "a/b", "c/d"]


# ------------------------------------------------------------ real runs

def test_tiny_matrix_end_to_end(matrix_config):
    config = matrix_config(*QUICK, "MATRIX_SEEDS=2", "MATRIX_JOBS=2")
    m = matrix.load_matrix(config)
    result = run_matrix(config)
    assert result.returncode == 0, result.stdout + result.stderr
    st = states(m)
    assert [s["status"] for s in st.values()] == ["done", "done"]
    for cell in m.cells:
        s = st[cell.id]
        assert summary(cell)["status"] == "complete" and summary(cell)["iters"] == 20
        assert s["exit_code"] == 0 and len(s["attempts"]) == 1 and s["wall_s"] > 0
        assert s["wall_s"] >= summary(cell)["train_time_s"]
        assert cell.config.read_text() == cell.text
        assert re.search(rf"{cell.id}  done  val ppl [0-9.]+  wall [0-9.]+ s", result.stdout)
        # CPU cores split between the two cells
        env = json.loads((cell.dir / "env.json").read_text())
        assert env["cpu_threads"] == max(1, matrix.cpu_cores() // 2)
    a, b = (st[c.id] for c in m.cells)
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]  # in parallel
    rows = (m.path / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(c.id in (m.path / "summary.csv").read_text() for c in m.cells)
    assert (m.path / "report.md").is_file() and (m.path / "plots" / "val_loss_none.png").is_file()
    # run again: nothing trains, nothing is touched
    mtimes = [(c.dir / "summary.json").stat().st_mtime_ns for c in m.cells]
    again = run_matrix(config)
    assert again.returncode == 0 and "0 to run" in again.stdout
    assert [(c.dir / "summary.json").stat().st_mtime_ns for c in m.cells] == mtimes


def test_pruned_cells_report_the_sparsity_the_trainer_reached(matrix_config):
    # the pruning knobs of the base config reach every pruned cell
    config = matrix_config(*QUICK, "PRUNING=magnitude", "PRUNING_START=2", "PRUNING_FREQUENCY=2",
                           "MATRIX_OPTIMIZER_ADAMW=y", "MATRIX_PRUNING_NONE=n",
                           "MATRIX_PRUNING_MAGNITUDE=y", "MATRIX_PRUNING_STATE=y",
                           "MATRIX_SPARSITIES=0.5", "MATRIX_JOBS=2")
    m = matrix.load_matrix(config)
    assert [c.name for c in m.cells] == ["adamw-magnitude-s0.5-seed1337",
                                         "adamw-state-bitter0-s0.5-seed1337"]
    result = run_matrix(config)
    assert result.returncode == 0, result.stdout + result.stderr
    import pandas as pd
    csv = pd.read_csv(m.path / "summary.csv").set_index("cell")
    for cell in m.cells:
        reached = summary(cell)["sparsity"]  # the trainer's summary.json key
        assert reached == pytest.approx(0.5, abs=0.01)
        assert csv.loc[cell.id, "achieved_sparsity"] == pytest.approx(reached)
        assert csv.loc[cell.id, "target_sparsity"] == 0.5
    from tests.test_report import squash  # the report's tables are padded by tabulate
    assert "| optimizer \\ pruning | magnitude | state-bitter0 |" in squash(
        (m.path / "report.md").read_text())


def test_a_second_runner_on_the_same_matrix_is_refused(matrix_config):
    config = matrix_config(*QUICK)
    m = matrix.load_matrix(config)
    m.path.mkdir(parents=True)
    fd = os.open(m.path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live runner, or a cell it started, holds it
        result = run_matrix(config)
    finally:
        os.close(fd)
    assert result.returncode == 2 and "in use by another matrix runner" in result.stderr
    assert not m.state_dir.exists()


def lock_is_free(m) -> bool:
    fd = os.open(m.path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def start_runner(config):
    env = dict(os.environ)
    env.pop(matrix.FAIL_CELLS_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "scripts.matrix", str(config)],
                            cwd=cfglib.ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_kill_9_mid_matrix_loses_and_duplicates_nothing(matrix_config):
    config = matrix_config("MAX_ITERS=1000", "EVAL_INTERVAL=500", "CHECKPOINT_INTERVAL=100",
                           "SAMPLE_AFTER_TRAINING=n", "MATRIX_SEEDS=3")
    m = matrix.load_matrix(config)
    first, second, third = m.cells
    runner = start_runner(config)
    try:
        wait_for(lambda: matrix.read_state(m.state_path(first)).get("status") == "done",
                 "the first cell")
        wait_for(lambda: (second.dir / "ckpt.pt").exists(), "a checkpoint of the second")
    finally:
        os.killpg(runner.pid, signal.SIGKILL)  # the runner and its cells, at once
        runner.wait()
    wait_for(lambda: lock_is_free(m), "the killed processes to go")
    assert matrix.read_state(m.state_path(second))["status"] == "running"
    done_files = {f: (first.dir / f).stat().st_mtime_ns for f in ("summary.json", "ckpt.pt")}

    result = run_matrix(config)
    assert result.returncode == 0, result.stdout + result.stderr
    st = states(m)
    assert all(s["status"] == "done" for s in st.values())
    # the finished cell was not run again
    assert {f: (first.dir / f).stat().st_mtime_ns for f in done_files} == done_files
    assert len(st[first.id]["attempts"]) == 1 and first.id not in result.stdout
    # the interrupted one resumed from its checkpoint, its killed attempt closed
    assert len(st[second.id]["attempts"]) == 2
    assert st[second.id]["attempts"][0]["wall_estimated"] is True
    assert "resuming" in second.log.read_text()
    for cell in m.cells:
        assert summary(cell)["iters"] == 1000
        iters = [r["iter"] for r in map(json.loads, (cell.dir / "metrics.jsonl").read_text()
                                        .splitlines()) if r["kind"] == "eval"]
        assert iters == [500, 1000]  # nothing trained twice
    assert sorted(p.name for p in m.path.iterdir() if p.is_dir() and p.name[0] != "_") == sorted(
        [c.id for c in m.cells] + ["plots", "state"])


def test_a_failed_cell_is_isolated_recorded_and_retried_on_request(matrix_config):
    config = matrix_config(*QUICK, "MATRIX_SEEDS=3", "MATRIX_JOBS=2")
    m = matrix.load_matrix(config)
    bad = m.cells[1]
    result = run_matrix(config, env_extra={matrix.FAIL_CELLS_ENV: "*-seed1338-*"})
    assert result.returncode == 1
    st = states(m)
    assert [st[c.id]["status"] for c in m.cells] == ["done", "failed", "done"]
    failure = st[bad.id]
    assert failure["exit_code"] == 3 and failure["reason"] == "exit 3 (training failed)"
    assert failure["error"] == "injected failure (KMATRIX_TEST_FAIL_CELLS)"
    assert len(failure["log_tail"]) == matrix.LOG_TAIL_LINES
    assert failure["log_tail"][-2:] == ["stand-in trainer line 29",
                                        "stand-in trainer: injected failure"]
    assert f"failed: {bad.id} (exit 3 (training failed))" in result.stdout
    report_md = (m.path / "report.md").read_text()
    failures = report_md[report_md.index("## Failures"):]
    assert bad.id in failures and "exit 3 (training failed)" in failures
    assert "stand-in trainer line 29" in failures
    # without --retry-failed the failure stays, and nothing else runs again
    again = run_matrix(config)
    assert again.returncode == 1 and "0 to run" in again.stdout
    assert len(matrix.read_state(m.state_path(bad))["attempts"]) == 1
    retried = run_matrix(config, "--retry-failed")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    st = states(m)
    assert all(s["status"] == "done" for s in st.values())
    assert len(st[bad.id]["attempts"]) == 2 and len(st[m.cells[0].id]["attempts"]) == 1
    assert summary(bad)["status"] == "complete"


def test_on_failure_stop_starts_no_more_cells(matrix_config):
    config = matrix_config(*QUICK, "MATRIX_SEEDS=3", "MATRIX_ON_FAILURE=stop")
    m = matrix.load_matrix(config)
    result = run_matrix(config, env_extra={matrix.FAIL_CELLS_ENV: "*-seed1337-*"})
    assert result.returncode == 1
    st = states(m)
    assert [st[c.id]["status"] for c in m.cells] == ["failed", "pending", "pending"]
    assert not m.cells[1].log.exists() and not (m.cells[1].dir / "summary.json").exists()
    assert "starting no more cells" in result.stdout


def test_ctrl_c_interrupts_every_cell_and_the_next_run_resumes(matrix_config):
    config = matrix_config("MAX_ITERS=1000", "EVAL_INTERVAL=500", "CHECKPOINT_INTERVAL=100",
                           "SAMPLE_AFTER_TRAINING=n", "MATRIX_JOBS=2", "MATRIX_SEEDS=2")
    m = matrix.load_matrix(config)
    runner = start_runner(config)
    try:
        wait_for(lambda: all((c.dir / "ckpt.pt").exists() for c in m.cells),
                 "checkpoints of both cells")
        os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert runner.wait(timeout=EVENT_LIMIT_S) == 130
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    st = states(m)
    assert {s["status"] for s in st.values()} == {"interrupted"}
    assert {s["exit_code"] for s in st.values()} == {130}
    assert all(summary(c)["status"] == "interrupted" for c in m.cells)
    result = run_matrix(config)  # no --retry-failed needed
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(s["status"] == "done" for s in states(m).values())
    assert all("resuming" in c.log.read_text() for c in m.cells)


def test_a_done_cell_without_its_final_evaluation_is_finished(matrix_config):
    config = matrix_config(*QUICK)
    m = matrix.load_matrix(config)
    assert run_matrix(config).returncode == 0
    cell = m.cells[0]
    good = summary(cell)
    stale = {k: v for k, v in good.items() if k != "eval_iter"}  # as the old trainer wrote
    (cell.dir / "summary.json").write_text(json.dumps({**stale, "val_loss": 9.0}))
    result = run_matrix(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(cell)["val_loss"] == good["val_loss"] and summary(cell)["eval_iter"] == 20
    assert len(states(m)[cell.id]["attempts"]) == 2


def test_unwritable_results_dir_is_one_line(matrix_config, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = matrix_config(*QUICK, f"RESULTS_DIR={blocker / 'results'}")
    assert matrix.main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write in {tmp_path}" in err


@pytest.mark.parametrize("recipe", ["gpt2-shakespeare-matrix", "gpt2-shakespeare-l4",
                                    "gpt2-shakespeare-w7900", "gpt2-shakespeare-gpu-smoke",
                                    "gpt2-finewebedu-matrix", "gpt2-finewebedu-l4",
                                    "gpt2-finewebedu-h100", "gpt2-finewebedu-w7900"])
def test_gpu_recipes_reach_every_pruning_target_with_a_tail_at_full_sparsity(recipe, tmp_path):
    from gpt2 import budget, data

    path = cfglib.ROOT / "defconfigs" / recipe
    results = f"RESULTS_DIR={tmp_path}"
    try:
        if cfglib.load(path).MATRIX:
            m = matrix.load_matrix(path, [results])
            matrix.check_cells(m)  # raises for any cell that cannot prune
            plans = [budget.check_pruning(cfglib.from_kconf(c.kconf)) for c in m.cells]
        else:
            plans = [budget.check_pruning(cfglib.load(path, [results, *extra]))
                     for extra in ([], ["PRUNING=magnitude"])]
    except data.DataError as e:
        pytest.skip(f"no Shakespeare BPE inputs here: {e}")
    plans = [p for p in plans if p is not None]
    assert plans and all(p.full_share >= 0.1 for p in plans)
    if recipe != "gpt2-shakespeare-gpu-smoke":
        assert all(p.total_iters >= 150 for p in plans)  # not the 10 steps of 2 epochs


def test_extra_dimension_sweeps_any_symbol(matrix_config):
    config = matrix_config("MATRIX_EXTRA_SYMBOL=MLP", "MATRIX_EXTRA_VALUES=gelu relu2",
                           "MATRIX_SEEDS=2")
    m = matrix.load_matrix(config)
    assert [c.name for c in m.cells] == [
        "adamw-none-mlp-gelu-seed1337", "adamw-none-mlp-gelu-seed1338",
        "adamw-none-mlp-relu2-seed1337", "adamw-none-mlp-relu2-seed1338"]
    assert all(("CONFIG_MLP_RELU2=y" in c.text) == ("relu2" in c.name) for c in m.cells)
    assert len({c.hash for c in m.cells}) == 4
    assert matrix.new_state(m.cells[2])["extra"] == "MLP=relu2"
    # a plain symbol, values validated like --set
    floats = matrix.load_matrix(config, ["MATRIX_EXTRA_SYMBOL=LABEL_SMOOTHING",
                                         "MATRIX_EXTRA_VALUES=0 0.1", "MATRIX_SEEDS=1"])
    assert [c.name for c in floats.cells] == ["adamw-none-label_smoothing-0-seed1337",
                                              "adamw-none-label_smoothing-0.1-seed1337"]
    with pytest.raises(cfglib.ConfigError, match=r"cell adamw-none-mlp-tanh-seed1337: .*MLP=tanh"):
        matrix.load_matrix(config, ["MATRIX_EXTRA_VALUES=gelu tanh"])
    with pytest.raises(cfglib.ConfigError, match="unknown symbol NOPE"):
        matrix.load_matrix(config, ["MATRIX_EXTRA_SYMBOL=NOPE"])
    with pytest.raises(cfglib.ConfigError, match="sweeps it with its own settings"):
        matrix.load_matrix(config, ["MATRIX_EXTRA_SYMBOL=OPTIMIZER"])
    with pytest.raises(cfglib.ConfigError, match="without MATRIX_EXTRA_VALUES"):
        matrix.load_matrix(config, ["MATRIX_EXTRA_VALUES="])

