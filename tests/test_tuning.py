"""Tuning: the draw, the groups, selection, confirmations, successive halving, the edge
flag, the knobs-can-act check over every shipped defconfig, and one tiny tuned matrix."""
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import qmc

from gpt2 import budget, data
from lib import config as cfglib
from scripts import asha, matrix, tuning, tuning_report

TUNE = ["MATRIX=y", "MATRIX_TUNING_TRIALS=5"]


@pytest.fixture
def tune_config(tiny_config):
    def make(*extra):
        return tiny_config(*TUNE, *extra, name="matrix.config")
    return make


# ------------------------------------------------------------------ the draw

def test_draw_is_scipys_halton_mapped_onto_the_declared_ranges(tune_config):
    cfg = cfglib.load(tune_config("MATRIX_OPTIMIZER_LION=y", "MATRIX_TUNING_SEED=7",
                                  "LION_LR_SEARCH=1e-5 1e-3 log",
                                  "LION_WEIGHT_DECAY_SEARCH=0.1 3 linear"))
    drawn = tuning.draw(cfg, "lion")
    assert drawn == tuning.draw(cfg, "lion")  # the same on every call (and machine)
    raw = qmc.Halton(d=2, scramble=True, rng=7).random(5)
    lr = 10 ** (-5 + 2 * raw[:, 0])
    wd = 0.1 + raw[:, 1] * 2.9
    got = np.array([[d["LION_LR"], d["LION_WEIGHT_DECAY"]] for d in drawn])
    np.testing.assert_allclose(got, np.stack([lr, wd], 1), rtol=1e-3)
    assert all(1e-5 <= d["LION_LR"] <= 1e-3 and 0.1 <= d["LION_WEIGHT_DECAY"] <= 3
               for d in drawn)
    other = cfglib.load(tune_config("MATRIX_OPTIMIZER_LION=y", "MATRIX_TUNING_SEED=8"))
    assert tuning.draw(other, "lion") != drawn


def test_the_registry_lists_each_optimizers_search_symbols_once():
    from lib import optim
    for name, entry in optim.OPTIMIZERS.items():
        assert entry.search[0] == f"{entry.lr}_SEARCH"
        assert len(set(entry.search)) == len(entry.search)
        tree = cfglib.load_tree()
        assert all(s in tree.syms and tree.syms[s].nodes for s in entry.search), name


@pytest.mark.parametrize("text", ["1e-4 1e-2", "1e-2 1e-4 log", "0 1 log", "a b log",
                                  "1 2 cubic"])
def test_a_bad_search_range_is_one_line_naming_its_symbol(tune_config, text):
    with pytest.raises(cfglib.ConfigError, match=r"^CONFIG_ADAMW_LR_SEARCH=.*expected"):
        matrix.load_matrix(tune_config(f"ADAMW_LR_SEARCH={text}"))


def test_every_group_gets_exactly_n_trials_at_the_tuning_seed(tune_config):
    config = tune_config("MATRIX_OPTIMIZER_LION=y", "MATRIX_PRUNING_MAGNITUDE=y",
                         "MATRIX_SPARSITIES=0.5 0.7", "MATRIX_SEEDS=3", "SEED=11")
    cfg = cfglib.load(config)
    specs, _ = matrix.enumerate_cells(cfg)
    groups = {}
    for s in specs:
        groups.setdefault(s.group, []).append(s)
    assert set(groups) == {f"{o}-{m}" for o in ("adamw", "lion")
                           for m in ("none", "magnitude-s0.5", "magnitude-s0.7")}
    assert all(len(g) == 5 and [s.trial for s in g] == list(range(5)) for g in groups.values())
    assert {s.seed for s in specs} == {11} and {s.role for s in specs} == {"trial"}
    m = matrix.load_matrix(config)
    cell = m.cells[0]
    state = matrix.new_state(cell)
    assert state["role"] == "trial" and state["values"]["ADAMW_LR"] == cell.learning_rate
    assert "-trial00-seed11-" in cell.id


def test_the_multiplier_grid_is_the_trials_when_tuning(tune_config):
    config = tune_config("MATRIX_TUNING_TRIALS=3", "MATRIX_LR_MULTIPLIERS=0.5 1 2",
                         "ADAMW_LR=2e-3")
    m = matrix.load_matrix(config)
    assert [c.learning_rate for c in m.cells] == [1e-3, 2e-3, 4e-3]
    assert [c.spec.lr_multiplier for c in m.cells] == [0.5, 1, 2]
    with pytest.raises(cfglib.ConfigError, match="MATRIX_TUNING_TRIALS=4 with "
                                                 "MATRIX_LR_MULTIPLIERS"):
        matrix.load_matrix(config, ["MATRIX_TUNING_TRIALS=4"])


def test_a_tuned_symbol_is_not_also_the_extra_dimension(tune_config):
    config = tune_config("MATRIX_EXTRA_SYMBOL=WEIGHT_DECAY", "MATRIX_EXTRA_VALUES=0 0.1",
                         "WEIGHT_DECAY_SEARCH=0.01 0.3 log")
    with pytest.raises(cfglib.ConfigError, match="MATRIX_EXTRA_SYMBOL=WEIGHT_DECAY: tuning"):
        matrix.load_matrix(config)


# ------------------------------------------------------- selection, confirmation

def test_selection_is_the_lowest_final_validation_loss():
    rng = np.random.default_rng(0)
    trials = [f"t{i}" for i in range(8)]
    losses = dict(zip(trials, rng.uniform(1, 2, 8)))
    assert tuning.select(trials, losses) == trials[int(np.argmin(list(losses.values())))]
    losses.update(t3=None, t4=math.inf, t5=0.5)  # unfinished and diverged trials never win
    assert tuning.select(trials, losses) == "t5"
    assert tuning.select(["a", "b"], {"a": 1.0, "b": 1.0}) == "a"
    assert tuning.select(["a"], {"a": None}) is None


def test_confirmation_seeds_are_fresh_and_shared_across_groups(tune_config):
    cfg = cfglib.load(tune_config("MATRIX_OPTIMIZER_LION=y", "MATRIX_SEEDS=3", "SEED=5"))
    specs, _ = matrix.enumerate_cells(cfg)
    chosen = [specs[2], specs[6]]  # one trial of each group
    confirms = tuning.confirm_specs(cfg, chosen)
    seeds = {g: sorted(s.seed for s in confirms if s.group == g) for g in ("adamw-none",
                                                                          "lion-none")}
    assert seeds["adamw-none"] == seeds["lion-none"] and len(seeds["adamw-none"]) == 3
    assert 5 not in seeds["adamw-none"]
    assert all(s.role == "confirm" and s.settings == chosen[0].settings
               for s in confirms if s.group == "adamw-none")


def test_edge_flag(tune_config):
    cfg = cfglib.load(tune_config("ADAMW_LR_SEARCH=1e-4 1e-2 log"))
    spec = matrix.enumerate_cells(cfg)[0][0]
    at = {x: replace(spec, settings=(f"ADAMW_LR={x}",)) for x in (1.1e-4, 1e-3, 9e-3)}
    assert "lower edge" in tuning.edge_flags(cfg, at[1.1e-4])[0]
    assert tuning.edge_flags(cfg, at[1e-3]) == []
    assert "upper edge" in tuning.edge_flags(cfg, at[9e-3])[0]
    assert "widen the range" in tuning.edge_flags(cfg, at[9e-3])[0]
    grid = cfglib.load(tune_config("MATRIX_TUNING_TRIALS=3", "MATRIX_LR_MULTIPLIERS=1 3 10"))
    specs = matrix.enumerate_cells(grid)[0]
    assert [bool(tuning.edge_flags(grid, s)) for s in specs] == [True, False, True]


# ------------------------------------------------------- successive halving

def test_rungs_align_with_the_evaluations_or_are_refused():
    assert asha.rungs(900, 50, 3, 100) == [100, 300, 900]
    assert asha.rungs(277, 25, 3, 50) == [100, 277]
    assert asha.rungs(1000, 10, 4, 10) == [20, 60, 250, 1000]
    with pytest.raises(cfglib.ConfigError, match="MATRIX_ASHA_MIN_ITERS=50"):
        asha.rungs(100, 10, 3, 50)
    with pytest.raises(cfglib.ConfigError, match="EVAL_INTERVAL=40"):
        asha.rungs(100, 40, 3, 5)
    with pytest.raises(cfglib.ConfigError, match="BUDGET=minutes"):
        asha.rungs(None, 10, 3, 5)


def test_successive_halving_stops_exactly_those_outside_the_top_third():
    rng = np.random.default_rng(1)
    trials = [f"t{i}" for i in range(9)]
    table = rng.uniform(1, 3, size=(9, 3))
    losses = {(t, k): table[i, k] for i, t in enumerate(trials) for k in range(3)}
    first = asha.plan(trials, {}, 3, 3)
    assert first.rung == 0 and first.to_run == trials and not first.stopped
    after0 = asha.plan(trials, {key: v for key, v in losses.items() if key[1] == 0}, 3, 3)
    best0 = [trials[i] for i in np.argsort(table[:, 0])[:3]]
    assert after0.rung == 1 and sorted(after0.to_run) == sorted(best0)
    assert set(after0.stopped) == set(trials) - set(best0)
    assert set(after0.stopped.values()) == {0}
    done = asha.plan(trials, losses, 3, 3)
    order1 = sorted(best0, key=lambda t: table[trials.index(t), 1])
    assert done.rung is None and done.finished == order1[:1]
    assert {t for t, k in done.stopped.items() if k == 1} == set(order1[1:])


def test_a_failed_trial_never_goes_on_and_is_not_counted_as_stopped():
    # a failed after reaching rung 0 (where it was best), d before
    losses = {("a", 0): 1.0, ("b", 0): 2.0, ("c", 0): 3.0, ("e", 0): 1.5, ("f", 0): 2.5}
    p = asha.plan(list("abcdef"), losses, 2, 3, failed={"a", "d"})
    assert p.rung == 1 and p.to_run == ["e"] and p.stopped == {"b": 0, "c": 0, "f": 0}
    done = asha.plan(list("abcdef"), {**losses, ("e", 1): 1.2}, 2, 3, failed={"a", "d"})
    assert done.rung is None and done.finished == ["e"]


# ------------------------------------------------------- knobs that can act

def test_spam_that_cannot_act_is_refused(tiny_config):
    spam = ["OPTIMIZER=adamwspam", "MAX_ITERS=100"]
    for extra, knob in ((["SPAM_INTERVAL=100"], "SPAM_INTERVAL=100"),
                        (["SPAM_INTERVAL=50", "SPAM_WARMUP_STEPS=50"], "SPAM_WARMUP_STEPS=50"),
                        (["SPAM_INTERVAL=50", "SPAM_CLIP_DELAY=60"], "SPAM_CLIP_DELAY=60")):
        with pytest.raises(cfglib.ConfigError, match=knob):
            budget.check_knobs(cfglib.load(tiny_config(*spam, *extra)))
    budget.check_knobs(cfglib.load(tiny_config(*spam, "SPAM_INTERVAL=30",
                                               "SPAM_WARMUP_STEPS=10")))
    budget.check_knobs(cfglib.load(tiny_config(*spam, "SPAM_PERIODIC_RESET=n")))


@pytest.mark.parametrize("name", sorted(p.name for p in (cfglib.ROOT / "defconfigs").iterdir()))
def test_every_knob_a_shipped_defconfig_sets_can_act(name, tmp_path):
    path = cfglib.ROOT / "defconfigs" / name
    results = [f"RESULTS_DIR={tmp_path}"]
    try:
        if cfglib.load(path, results).MATRIX:
            matrix.check_cells(matrix.load_matrix(path, results))  # every cell, and the rungs
        else:
            budget.check_knobs(cfglib.load(path, results))
    except data.DataError as e:
        pytest.skip(f"the dataset's size is not known here: {e}")


def test_the_dry_run_lists_every_trial_with_its_values_and_the_rungs(tune_config, capsys):
    config = tune_config("MATRIX_TUNING_TRIALS=3", "MATRIX_EARLY_STOP=asha", "MAX_ITERS=90",
                         "EVAL_INTERVAL=10", "MATRIX_ASHA_MIN_ITERS=10", "MATRIX_SEEDS=2")
    assert matrix.main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    m = matrix.load_matrix(config)
    for cell in m.cells:
        assert f"{cell.id}: ADAMW_LR={cell.learning_rate:g}" in out
    assert "adamw-none: rungs at 10, 30, 90 iterations" in out
    assert "seeds 1338, 1339: 2 confirmation cells" in out
    assert not m.path.exists()  # the dry run writes nothing
    # rungs that cannot align with the evaluations, and tuning on Slurm, are one line each
    assert matrix.main([str(config), "--dry-run", "--set", "EVAL_INTERVAL=40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EVAL_INTERVAL=40" in err[0] and "MATRIX_ASHA" in err[0]
    assert matrix.main([str(config), "--dry-run", "--set", "MATRIX_EXECUTOR=slurm"]) == 2
    assert "MATRIX_EXECUTOR_LOCAL" in capsys.readouterr().err
    # a confirmation seed that does not take is refused before any trial runs
    assert matrix.main([str(config), "--dry-run", "--set", "SEED=2147483646"]) == 2
    assert "cell adamw-none-tuned-seed2147483648: " in capsys.readouterr().err


# ------------------------------------------------------- one tiny tuned matrix

def run(config):
    env = {k: v for k, v in os.environ.items() if k != matrix.FAIL_CELLS_ENV}
    return subprocess.run([sys.executable, "-m", "scripts.matrix", str(config)],
                          cwd=cfglib.ROOT, env=env, capture_output=True, text=True, timeout=900)


def attempts(m) -> dict:
    return {p.name: len(json.loads(p.read_text())["attempts"]) for p in m.state_dir.iterdir()}


def test_a_tuned_matrix_stops_trials_selects_confirms_and_resumes(tune_config):
    config = tune_config("MATRIX_TUNING_TRIALS=3", "MATRIX_EARLY_STOP=asha",
                         "MATRIX_ASHA_MIN_ITERS=5", "MAX_ITERS=20", "EVAL_INTERVAL=5",
                         "SAMPLE_AFTER_TRAINING=n", "MATRIX_JOBS=2")
    m = matrix.load_matrix(config)
    result = run(config)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((m.path / "tuning.json").read_text())
    group = record["groups"]["adamw-none"]
    assert group["rungs"] == [5, 20]
    rung0 = {t["cell"]: t["rung_losses"]["0"] for t in group["trials"]}
    winner = min(rung0, key=rung0.get)
    assert group["selected"] == winner  # the only trial that finished
    for cell in m.cells:
        summary = json.loads((cell.dir / "summary.json").read_text())
        if cell.id == winner:
            assert summary["status"] == "complete" and summary["iters"] == 20
            assert summary["val_loss"] == group["selected_val_loss"]
        else:
            assert summary["status"] == "stopped" and summary["iters"] == 5
            assert summary["early_stop"] == {"iter": 5, "rung": 0}
            assert summary["stop_reason"] == "stopped early at iteration 5 (ASHA rung 0)"
    assert record["compute"]["iters_saved"] == 2 * 15
    (confirm,) = group["confirmations"]
    state = json.loads((m.state_dir / f"{confirm}.json").read_text())
    assert state["role"] == "confirm" and state["seed"] == 1338 and state["status"] == "done"
    section = "\n".join(tuning_report.report_section(m.path))
    assert "stopped early at iteration 5 (ASHA rung 0)" in section and "saved 30" in section

    # a rerun of a finished matrix starts nothing
    before = attempts(m)
    assert run(config).returncode == 0 and attempts(m) == before
    # a runner that died as the winner finished, before the confirmations: the winner is
    # finished once more (its run is complete), the rest carries on from the files
    state_path = m.state_dir / f"{winner}.json"
    state = json.loads(state_path.read_text())
    state.update(status="running", rungs={"0": state["rungs"]["0"]})
    state_path.write_text(json.dumps(state))
    (m.path / "tuning.json").unlink()
    (m.state_dir / f"{confirm}.json").unlink()
    result = run(config)
    assert result.returncode == 0, result.stderr[-3000:]
    after = attempts(m)
    assert after[f"{winner}.json"] == before[f"{winner}.json"] + 1
    assert {k: v for k, v in after.items() if k not in (f"{winner}.json", f"{confirm}.json")} \
        == {k: v for k, v in before.items() if k not in (f"{winner}.json", f"{confirm}.json")}
    assert json.loads((m.path / "tuning.json").read_text())["groups"]["adamw-none"][
        "selected"] == winner
    assert json.loads((m.state_dir / f"{confirm}.json").read_text())["status"] == "done"


def test_stop_at_limits_the_session_and_names_the_rung_only_when_final():
    from lib.stop_at import StopAt
    assert StopAt(30).steps(10, None) == 20 and StopAt(30).steps(10, 5) == 5
    assert StopAt(30).steps(40, None) == 0 and StopAt().steps(10, 7) == 7
    assert StopAt(30).summary("stopped", 30) == {}  # a pause at a rung says nothing more
    assert StopAt(30, 1).summary("stopped", 30) == {
        "early_stop": {"iter": 30, "rung": 1},
        "stop_reason": "stopped early at iteration 30 (ASHA rung 1)"}
    assert StopAt(30, 1).summary("complete", 30) == {}
    with pytest.raises(cfglib.ConfigError, match="--early-stop-rung needs --stop-at"):
        StopAt(None, 1)


def test_a_single_run_only_warns_of_a_spam_that_cannot_act(tiny_config):
    from gpt2 import train
    from lib.run import RunDir
    config = tiny_config("OPTIMIZER=adamwspam", "MAX_ITERS=20", "SAMPLE_AFTER_TRAINING=n")
    assert train.main([str(config), "--stop-after", "1"]) == 0
    log = RunDir.for_config(cfglib.load(config)).log.read_text()
    assert "WARNING SPAM_INTERVAL=1000 with a run of 20 iterations" in log


def test_the_tuning_section_tables_hold_each_trial_and_selection():
    from tests import md_cells
    trial = {"trial": 1, "values": {"ADAMW_LR": 3e-3}, "status": "stopped",
             "rung_losses": {"0": 2.9}, "val_loss": None, "early_stop": {"iter": 5, "rung": 0}}
    group = {"group": "adamw-none", "rungs": [5, 20], "trials": [trial],
             "selected": None, "selected_values": None, "selected_val_loss": None,
             "edge": ["ADAMW_LR at its range's edge"]}
    data = {"trials_per_group": 1, "draw": "scrambled Halton", "draw_seed": 0,
            "trial_seed": 1, "confirmation_seeds": [2], "early_stop": "asha", "eta": 3,
            "groups": {"adamw-none": group},
            "compute": {"iters_trained": 5, "iters_full": 20, "tokens_trained": 10,
                        "tokens_full": 40, "iters_saved": 15, "tokens_saved": 30}}
    rows = md_cells.table_rows("\n".join(tuning_report.section(data)))
    assert rows[1] == ["adamw-none", "1", "ADAMW_LR=0.003",
                       "stopped early at iteration 5 (ASHA rung 0)", "5: 2.9000", "-"]
    assert rows[3] == ["adamw-none", "none finished", "-", "-", "0",
                       "ADAMW_LR at its range's edge"]
