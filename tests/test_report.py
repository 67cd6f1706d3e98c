"""The matrix report on results directories built by hand: CSV, statistics, plots, comparison."""
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib import config as cfglib
from lib.run import dir_of_config
from scripts import matrix, report, report_plots

DEFAULT = cfglib.ROOT / "defconfigs" / "default"
PNG = b"\x89PNG\r\n\x1a\n"


def write_matrix_config(tmp_path, *extra):
    kconf = cfglib.load_kconf(DEFAULT, [f"RESULTS_DIR={tmp_path / 'results'}", "MATRIX=y", *extra])
    path = tmp_path / "matrix.config"
    cfglib.write_config(kconf, path)
    return path


def held_out_loss(ppl, seed):
    """The test loss fake_summary gives: not the validation loss, and not by a constant."""
    return math.log(ppl) + 0.1 + 0.01 * seed


def fake_summary(ppl, seed, **extra):
    return {"status": "complete", "error": None, "iters": 100, "tokens_seen": 100 * 256,
            "train_loss": math.log(ppl) - 0.1, "val_loss": math.log(ppl), "val_ppl": ppl,
            "test_loss": held_out_loss(ppl, seed), "test_ppl": math.exp(held_out_loss(ppl, seed)),
            "steady_train_time_s": 9.0 + seed, "compile_s": 1.0,
            "best_val_ppl": ppl * 0.99, "train_time_s": 10.0 + seed,
            "tokens_per_s": 25600 / (10.0 + seed), "peak_mem_bytes": (300 + seed) * 2**20,
            "peak_mem_kind": "cpu_peak_rss", "optimizer_state_bytes": 1000 * seed, **extra}


def squash(text: str) -> str:
    """A report's markdown with the padding tabulate puts in table cells taken out, so a
    row reads "| adamw | 0.001 |" whatever the widths of its columns."""
    return "\n".join(re.sub(r" {2,}", " ", line) if line.startswith("|") else line
                     for line in text.splitlines()) + "\n"


def add_cell(mdir, optimizer, pruning, seed, ppl=None, *, variant=None, sparsity=None,
             summary=None, state=None, extra=(), config=True):
    """A cell's run directory as the runner and trainer leave it; returns its id."""
    spec = matrix.CellSpec(optimizer, pruning, variant, sparsity, seed)
    kconf = cfglib.load_kconf(DEFAULT, [*spec.overrides(), *extra])
    cell_id = f"{spec.name}-{cfglib.config_hash(kconf)}"
    run = mdir / cell_id
    if config:
        run.mkdir(parents=True)
        cfglib.write_config(cfglib.load_kconf(DEFAULT, [*spec.overrides(), *extra,
                                                        f"RUN_NAME={cell_id}"]), run / "config")
    if ppl is not None:
        summary = summary or fake_summary(ppl, seed)
        (run / "summary.json").write_text(json.dumps(summary))
        records = [{"kind": "train", "iter": 10, "train_loss": 4.0},
                   {"kind": "eval", "iter": 50, "tokens": 50 * 256, "elapsed_s": 6.0,
                    "val_loss": math.log(ppl) + 0.5},
                   {"kind": "eval", "iter": 100, "tokens": 100 * 256, "elapsed_s": 11.0,
                    "val_loss": math.log(ppl)}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "env.json").write_text(json.dumps(
            {"git_sha": "0123abcd", "git_dirty": False, "torch": "2.13.0+cpu", "cuda": None,
             "hip": None, "python": "3.11.7", "device": "cpu", "device_name": "cpu"}))
    if state is None and ppl is not None and summary["status"] == "complete":
        state = {"status": "done", "exit_code": 0, "wall_s": summary["train_time_s"] + 3.0}
    if state is not None:
        (mdir / "state").mkdir(parents=True, exist_ok=True)
        full = {"cell": cell_id, "optimizer": optimizer, "pruning": pruning, "variant": variant,
                "target_sparsity": sparsity, "seed": seed, **state}
        (mdir / "state" / f"{cell_id}.json").write_text(json.dumps(full))
    return cell_id


PPL = {("adamw", "none"): [10.0, 10.6, 11.1], ("lion", "none"): [12.0, 12.4, 13.5],
       ("adamw", "magnitude"): [11.5, 11.9]}


@pytest.fixture
def built(tmp_path):
    """A matrix directory: dense adamw and lion (3 seeds), magnitude at 0.5 (2 seeds) and
    0.9, state bitter2 with extra budget, a failed cell and a pending one."""
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    ids = {}
    for (opt, pruning), values in PPL.items():
        for seed, ppl in enumerate(values, start=1):
            sparsity = None if pruning == "none" else 0.5
            extra = {} if pruning == "none" else {"sparsity": 0.5 - 0.001 * seed}
            ids[opt, pruning, seed] = add_cell(mdir, opt, pruning, seed, ppl, sparsity=sparsity,
                                               summary=fake_summary(ppl, seed, **extra))
    ids["mag09"] = add_cell(mdir, "adamw", "magnitude", 1, 15.0, sparsity=0.9,
                            summary=fake_summary(15.0, 1, sparsity=0.9))
    ids["bitter2"] = add_cell(mdir, "adamw", "state", 1, 10.8, variant="bitter2", sparsity=0.5,
                              summary=fake_summary(10.8, 1, sparsity=0.5,
                                                   extra_budget="+21% iterations"))
    ids["failed"] = add_cell(
        mdir, "lion", "magnitude", 1, 99.0, sparsity=0.5,
        summary={"status": "failed", "error": "non-finite training loss (nan) at iteration 7"},
        state={"status": "failed", "exit_code": 3, "reason": "exit 3 (training failed)",
               "error": "non-finite training loss (nan) at iteration 7",
               "log_tail": ["iter 5: loss 9.1", "training failed: non-finite loss"]})
    ids["pending"] = add_cell(mdir, "adamw", "movement", 1, sparsity=0.5,
                              state={"status": "pending"}, config=False)
    return config, mdir, ids


def test_summary_csv_holds_each_cells_summary(built):
    _, mdir, ids = built
    out = report.write_report(mdir)
    csv = pd.read_csv(out["summary"]).set_index("cell")
    assert sorted(csv.index) == sorted(ids.values())
    for key, cell_id in ids.items():
        if key in ("failed", "pending"):
            continue
        s = json.loads((mdir / cell_id / "summary.json").read_text())
        row = csv.loc[cell_id]
        for field in ("train_loss", "val_loss", "val_ppl", "best_val_ppl", "iters", "tokens_seen",
                      "train_time_s", "tokens_per_s", "peak_mem_bytes", "optimizer_state_bytes"):
            assert row[field] == s[field], (cell_id, field)
        assert row["peak_mem_kind"] == "cpu_peak_rss" and row["status"] == "done"
        assert row["achieved_sparsity"] == s.get("sparsity", 0.0)
        assert row["wall_s"] == s["train_time_s"] + 3.0
        assert row["overhead_s"] == pytest.approx(3.0)
    row = csv.loc[ids["bitter2"]]
    assert (row["optimizer"], row["pruning"], row["variant"], row["method"], row["seed"],
            row["target_sparsity"]) == ("adamw", "state", "bitter2", "state-bitter2", 1, 0.5)
    assert row["extra_budget"] == "+21% iterations"
    assert csv.loc[ids["adamw", "none", 2], "target_sparsity"] == 0.0
    assert pd.isna(csv.loc[ids["adamw", "none", 2], "variant"])
    failed = csv.loc[ids["failed"]]
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    assert failed["error"] == "non-finite training loss (nan) at iteration 7"
    pending = csv.loc[ids["pending"]]
    assert pending["status"] == "pending" and pending["method"] == "movement"
    assert pd.isna(pending["val_ppl"])


def textbook_paired(x, y):
    """Paired t by its textbook formula: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1,
    p = 2 P(T > |t|), interval mean(d) +- t_0.975 sd(d) / sqrt(n)."""
    d = np.asarray(x) - np.asarray(y)
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    t = mean / (sd / math.sqrt(n))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"diff": mean, "t": t, "p": 2 * stats.t.sf(abs(t), n - 1), "ci": (mean - half,
                                                                         mean + half),
            "d_z": mean / sd}


def test_groups_and_the_paired_verdict_on_the_test_split(built):
    _, mdir, _ = built
    out = report.write_report(mdir)
    groups = out["groups"].set_index(["group", "target_sparsity"])
    for (opt, pruning), values in PPL.items():
        tests = [held_out_loss(v, seed) for seed, v in enumerate(values, start=1)]
        g = groups.loc[(f"{opt}-{pruning}", 0.0 if pruning == "none" else 0.5)]
        assert g["n"] == len(values)
        assert g["mean"] == pytest.approx(statistics.mean(tests), rel=1e-12)
        assert g["std"] == pytest.approx(statistics.stdev(tests), rel=1e-12)
    assert math.isnan(groups.loc[("adamw-state-bitter2", 0.5), "std"])
    assert ("lion-magnitude", 0.5) not in groups.index  # failed cells are not averaged

    verdict = out["verdict"].set_index(["group", "target_sparsity"])
    base = [held_out_loss(v, s) for s, v in enumerate(PPL["adamw", "none"], start=1)]
    expected = {}
    for key in (("lion", "none"), ("adamw", "magnitude")):
        mine = [held_out_loss(v, s) for s, v in enumerate(PPL[key], start=1)]
        expected[key] = textbook_paired(mine, base[:len(mine)])  # seed with seed
        row = verdict.loc[(f"{key[0]}-{key[1]}", 0.0 if key[1] == "none" else 0.5)]
        e = expected[key]
        assert row["n_pairs"] == len(mine) and row["test"] == "paired t"
        assert row["diff"] == pytest.approx(e["diff"], rel=1e-9)
        assert row["t"] == pytest.approx(e["t"], rel=1e-9)
        assert row["p"] == pytest.approx(e["p"], rel=1e-9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(e["ci"], rel=1e-9)
        assert row["d_z"] == pytest.approx(e["d_z"], rel=1e-9)
        assert math.isnan(row["p_wilcoxon"])  # fewer than 6 pairs
    # Holm over the table's two tests, by hand
    low, high = sorted(expected.values(), key=lambda e: e["p"])
    holm = {id(low): min(1, 2 * low["p"]), id(high): max(min(1, 2 * low["p"]), high["p"])}
    for key, e in expected.items():
        row = verdict.loc[(f"{key[0]}-{key[1]}", 0.0 if key[1] == "none" else 0.5)]
        assert row["p_holm"] == pytest.approx(holm[id(e)], rel=1e-9)
        assert row["mark"] == ("**" if holm[id(e)] < 0.01 else "*" if holm[id(e)] < 0.05
                               else "ns")
    assert verdict.loc[("adamw-none", 0.0), "mark"] == "baseline"
    one_seed = verdict.loc[("adamw-state-bitter2", 0.5)]
    assert math.isnan(one_seed["p"]) and one_seed["mark"] == "n=1: no test"
    assert one_seed["diff"] == pytest.approx(held_out_loss(10.8, 1) - base[0])
    md = squash(out["report"].read_text())
    section = md[md.index("## Against the baseline"):md.index("## Speed")]
    assert "Split: **test**" in section and "Welch" not in md
    lion = verdict.loc[("lion-none", 0.0)]
    e = expected["lion", "none"]
    assert (f"| lion-none | 0 | {lion['mean']:.4f} ± {lion['std']:.4f} (n=3) | 3 | "
            f"{e['diff']:+.4f} | [{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}] | {e['p']:.4f} | - | "
            f"{holm[id(e)]:.4f} | {e['d_z']:+.2f} | {lion['mark']} |") in section
    assert "| adamw-state-bitter2 | 0.5 |" in section and "n=1: no test" in section


def test_paired_verdict_sees_a_difference_of_the_same_sign_at_every_seed(tmp_path):
    """AdamW + SPAM behind AdamW by +0.020 and +0.018 at seeds 1337 and 1338: the same
    sign twice, which Welch's test over the seeds' spread called "ns" (p 0.9)."""
    config = write_matrix_config(tmp_path, "MATRIX_OPTIMIZER_ADAMWSPAM=y", "MATRIX_SEEDS=2")
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    for seed, base in ((1337, 3.000), (1338, 3.500)):  # the seeds differ far more
        for opt, loss in (("adamw", base), ("adamwspam", base + (0.020 if seed == 1337
                                                                 else 0.018))):
            add_cell(mdir, opt, "none", seed, 20.0,
                     summary=fake_summary(20.0, seed, test_loss=loss))
    row = report.write_report(mdir)["verdict"].set_index("group").loc["adamwspam-none"]
    welch = stats.ttest_ind([3.020, 3.518], [3.0, 3.5], equal_var=False).pvalue
    assert welch > 0.9
    t = 0.019 / (0.001 * math.sqrt(2) / math.sqrt(2))  # mean / (sd / sqrt(n)) = 19
    p = 2 * (0.5 - math.atan(t) / math.pi)  # t with one degree of freedom is Cauchy
    assert row["diff"] == pytest.approx(0.019) and row["p"] == pytest.approx(p)
    assert row["p_holm"] == pytest.approx(p) and row["mark"] == "*"


def test_identical_differences_make_no_test_and_no_star(tmp_path):
    config = write_matrix_config(tmp_path, "MATRIX_OPTIMIZER_LION=y")
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    for seed in (1, 2, 3):
        add_cell(mdir, "adamw", "none", seed, 10.0,
                 summary=fake_summary(10.0, seed, test_loss=2.0 + seed))
        add_cell(mdir, "lion", "none", seed, 11.0,
                 summary=fake_summary(11.0, seed, test_loss=2.5 + seed))
    out = report.write_report(mdir)
    row = out["verdict"].set_index("group").loc["lion-none"]
    assert row["diff"] == pytest.approx(0.5) and math.isnan(row["p"])
    assert row["mark"] == "identical differences: no test"
    line = next(x for x in squash(out["report"].read_text()).splitlines()
                if x.startswith("| lion-none |") and "no test" in x)
    assert " * " not in line and " ns " not in line


def test_another_baseline_can_be_named(built):
    _, mdir, _ = built
    verdict = report.write_report(mdir, baseline="lion-none")["verdict"].set_index("group")
    assert verdict.loc["lion-none", "mark"] == "baseline"
    pairs = [held_out_loss(a, s) - held_out_loss(b, s) for s, (a, b) in
             enumerate(zip(PPL["adamw", "none"], PPL["lion", "none"]), start=1)]
    assert verdict.loc["adamw-none", "diff"] == pytest.approx(statistics.mean(pairs))
    assert "## Against the baseline `lion-none`" in squash((mdir / "report.md").read_text())


def held_out_losses(values):
    return [held_out_loss(v, seed) for seed, v in enumerate(values, start=1)]


def test_report_tables_failures_environment_and_plots(built):
    _, mdir, ids = built
    md = squash(report.write_report(mdir)["report"].read_text())
    adamw, lion = held_out_losses(PPL["adamw", "none"]), held_out_losses(PPL["lion", "none"])
    mag = held_out_losses(PPL["adamw", "magnitude"])
    assert "## Final test loss\n\nSplit: **test**" in md
    table = md[md.index("### Target sparsity 0.5"):md.index("### Target sparsity 0.9")]
    assert "| optimizer \\ pruning | none | magnitude | state-bitter2 |" in table
    assert (f"| adamw | {statistics.mean(adamw):.3f} ± {statistics.stdev(adamw):.3f} (n=3) | "
            f"{statistics.mean(mag):.3f} ± {statistics.stdev(mag):.3f} (n=2) [N] | "
            f"{held_out_loss(10.8, 1):.3f} [C,N] |") in table  # fewer seeds; extra budget
    # [H]: Lion runs at its own LION_LR, not the baseline's ADAMW_LR
    assert (f"| lion | {statistics.mean(lion):.3f} ± {statistics.stdev(lion):.3f} (n=3) [H] "
            f"| - | - |" in table)
    assert f"| {held_out_loss(15.0, 1):.3f} [N] |" in md  # the 0.9 table
    failures = md[md.index("## Failures"):]
    assert ids["failed"] in failures and "exit 3 (training failed)" in failures
    assert "non-finite training loss (nan) at iteration 7" in failures
    assert "training failed: non-finite loss" in failures
    assert f"- {ids['pending']} (pending)" in md
    assert "+21% iterations" in md
    env = md[md.index("## Environment"):]
    assert "0123abcd" in env and "2.13.0+cpu" in env and "different environments" not in env
    for name in ("test_loss", "sparsity", "wall_time", "peak_memory", "val_loss_none",
                 "val_loss_magnitude", "val_loss_state-bitter2", "loss_vs_sparsity"):
        assert f"![{name}](plots/{name}.png)" in md


def test_old_run_directories_without_the_new_fields_show_n_a(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    for seed in (1, 2):
        summary = fake_summary(10.0 + seed, seed)
        for key in ("test_loss", "test_ppl", "steady_train_time_s", "compile_s"):
            del summary[key]
        add_cell(mdir, "adamw", "none", seed, 10.0 + seed, summary=summary)
    out = report.write_report(mdir)
    md = squash(out["report"].read_text())
    assert "| adamw | n/a |" in md
    assert out["verdict"].set_index("group").loc["adamw-none", "n"] == 0
    row = next(x for x in md.splitlines() if x.startswith("| adamw-none-seed1-"))
    assert row.count("n/a") == 4  # test loss, steady s, compile s, parameters
    assert "test_loss" not in out["plots"]  # nothing to draw, nothing invented


def test_plots_are_pngs_of_the_expected_data(built):
    _, mdir, ids = built
    plots = report.write_report(mdir)["plots"]
    for path, _ in plots.values():
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, path
    mean = statistics.mean
    final = plots["test_loss"][1]
    assert list(final.index) == ["adamw-none", "adamw-magnitude s=0.5", "adamw-magnitude s=0.9",
                                 "adamw-state-bitter2 s=0.5", "lion-none"]
    assert final.loc["adamw-none", "mean"] == pytest.approx(mean(held_out_losses(PPL["adamw", "none"])))
    assert final.loc["lion-none", "count"] == 3
    assert final.loc["adamw-magnitude s=0.9", "mean"] == pytest.approx(held_out_loss(15.0, 1))
    assert not final["diverging"].any()

    sparsity = plots["sparsity"][1]
    assert sparsity.loc["adamw-magnitude-s0.5-seed2", "achieved_sparsity"] == 0.498
    assert sparsity.loc["adamw-magnitude-s0.5-seed2", "target_sparsity"] == 0.5
    assert sparsity.loc["lion-none-seed3", "achieved_sparsity"] == 0.0
    assert "lion-magnitude-s0.5-seed1" not in sparsity.index

    wall = plots["wall_time"][1]
    assert wall.loc["lion-none-seed2"].tolist() == pytest.approx([12.0, 3.0])

    memory = plots["peak_memory"][1]
    assert memory.loc["adamw-none-seed3"] == 303.0 and len(memory) == 10
    assert memory.name == "CPU peak RSS (MiB)"

    dense = plots["val_loss_none"][1]
    assert list(dense.index) == [50, 100] and list(dense.columns) == ["adamw", "lion"]
    assert dense.loc[100, "lion"] == pytest.approx(np.mean(np.log(PPL["lion", "none"])))
    assert dense.loc[50, "adamw"] == pytest.approx(np.mean(np.log(PPL["adamw", "none"])) + 0.5)
    magnitude = plots["val_loss_magnitude"][1]
    assert list(magnitude.columns) == ["adamw s=0.5", "adamw s=0.9"]
    assert magnitude.loc[100, "adamw s=0.9"] == pytest.approx(math.log(15.0))

    curve = plots["loss_vs_sparsity"][1]
    assert list(curve.index) == [0.5, 0.9]
    assert curve.loc[0.5, "adamw-magnitude"] == pytest.approx(mean(held_out_losses(PPL["adamw",
                                                                                "magnitude"])))
    assert curve.loc[0.9, "adamw-magnitude"] == pytest.approx(held_out_loss(15.0, 1))
    assert math.isnan(curve.loc[0.9, "adamw-state-bitter2"])
    assert curve["adamw-none"].tolist() == pytest.approx([mean(held_out_losses(PPL["adamw",
                                                                            "none"]))] * 2)


def test_memory_axis_names_what_was_measured(tmp_path):
    df = pd.DataFrame({"name": ["a", "b"], "status": ["done", "done"],
                       "peak_mem_bytes": [2**30, 2**29], "peak_mem_kind": ["cuda_max_allocated"] * 2})
    data = report_plots.plot_peak_memory(df, tmp_path / "m.png")
    assert data.name == "GPU memory (CUDA max allocated) (MiB)"
    assert data.tolist() == [1024.0, 512.0]
    df["peak_mem_kind"] = ["cuda_max_allocated", "cpu_peak_rss"]
    assert report_plots.plot_peak_memory(df, tmp_path / "m.png").name.startswith("mixed")


def test_comparison_with_a_baseline_matrix(built, tmp_path):
    _, mdir, ids = built
    other = tmp_path / "before"
    shift = {1: 0.5, 2: -0.25}
    for seed, ppl in enumerate(PPL["adamw", "none"], start=1):
        if seed in shift:  # the same cells before a code change: other hashes, other results
            add_cell(other, "adamw", "none", seed, ppl - shift[seed], extra=["ADAMW_LR=2e-3"])
    add_cell(other, "sgd", "none", 1, 30.0)
    assert report.main([str(mdir), "--baseline-matrix", str(other)]) == 0
    comparison = pd.read_csv(mdir / "comparison.csv").set_index("name")
    for seed, delta in shift.items():
        row = comparison.loc[f"adamw-none-seed{seed}"]
        assert row["delta"] == pytest.approx(delta)
        assert row["val_ppl_there"] == pytest.approx(PPL["adamw", "none"][seed - 1] - delta)
        assert row["delta_pct"] == pytest.approx(100 * delta / row["val_ppl_there"])
    assert math.isnan(comparison.loc["adamw-none-seed3", "val_ppl_there"])
    assert math.isnan(comparison.loc["sgd-none-seed1", "val_ppl_here"])
    md = squash((mdir / "report.md").read_text())
    section = md[md.index("## Compared with"):]
    assert "| adamw-none-seed1 | 10.000 | 9.500 | 0.500 | 5.26 |" in section


def test_report_takes_a_config_path_and_reruns_identically(built, tmp_path, capsys):
    config, mdir, _ = built
    assert report.main([str(config)]) == 0
    first = (mdir / "summary.csv").read_bytes()
    assert str(mdir / "report.md") in capsys.readouterr().out
    assert report.main([str(mdir)]) == 0
    assert (mdir / "summary.csv").read_bytes() == first
    off = write_matrix_config(tmp_path, "MATRIX=n")
    assert report.main([str(off)]) == 2
    assert "matrix mode is off" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nowhere")]) == 2


def test_old_results_stay_readable_after_the_kconfig_tree_changes(built):
    _, mdir, ids = built
    config = mdir / ids["adamw", "none", 1] / "config"
    config.write_text(config.read_text() + "CONFIG_A_KNOB_SINCE_REMOVED=y\n")
    with pytest.raises(cfglib.ConfigError):
        cfglib.load(config)
    cells = report.write_report(mdir)["cells"].set_index("cell")
    assert cells.loc[ids["adamw", "none", 1], "optimizer"] == "adamw"


def test_learning_rate_sweep_compares_each_optimizer_at_its_best_rate(tmp_path):
    """Cells at several multiples of each optimizer's own rate: the tables and deltas use the
    winning rate per setting, the report marks it and says it was chosen on validation."""
    config = write_matrix_config(tmp_path, "MATRIX_OPTIMIZER_LION=y",
                                 "MATRIX_LR_MULTIPLIERS=0.5 1 2")
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    # adamw wins at x2, lion at x0.5
    ppl = {("adamw", 0.5): 12.0, ("adamw", 1): 11.0, ("adamw", 2): 10.0,
           ("lion", 0.5): 9.0, ("lion", 1): 9.5, ("lion", 2): 14.0}
    cells = matrix.load_matrix(config).cells
    assert len(cells) == 6
    for cell in cells:
        s = cell.spec
        run = mdir / cell.id
        run.mkdir()
        cfglib.write_config(cell.kconf, run / "config")
        (run / "summary.json").write_text(json.dumps(fake_summary(ppl[s.optimizer, s.lr_multiplier], 1)))
        (mdir / "state").mkdir(exist_ok=True)
        (mdir / "state" / f"{cell.id}.json").write_text(json.dumps(
            {**matrix.new_state(cell), "status": "done", "exit_code": 0, "wall_s": 12.0}))
    out = report.write_report(mdir)
    rates = out["cells"].set_index("name")["learning_rate"]
    assert rates["adamw-none-lr2x-seed1337"] == pytest.approx(2 * 1e-3)  # default recipe's 1e-3
    assert rates["lion-none-seed1337"] == pytest.approx(1e-4)  # Lion's own rate
    best = out["groups"].set_index("optimizer")
    assert best.loc["adamw", "learning_rate"] == pytest.approx(2e-3)
    assert best.loc["lion", "learning_rate"] == pytest.approx(5e-5)
    assert best.loc["lion", "mean"] == pytest.approx(held_out_loss(9.0, 1))  # on test
    verdict = out["verdict"].set_index("group")
    assert verdict.loc["lion-none", "diff"] == pytest.approx(math.log(0.9))  # 9 against 10
    md = squash((mdir / "report.md").read_text())
    assert "chosen on the validation split" in md
    assert ("| lion-none | 0 | 5e-05 | x0.5 | 9.000 | **best** (edge of the sweep: the optimum "
            "may lie beyond) |") in md
    section = md[md.index("## Learning rates"):md.index("## Against the baseline")]
    rows = [line for line in section.splitlines() if line.startswith("| adamw-none |")]
    assert [row.split(" | ")[2] for row in rows] == ["0.0005", "0.001", "0.002"]  # by rate
    assert "| adamw-none | 0 | 0.001 | x1 | 11.000 | |" in md
    assert f"{held_out_loss(10.0, 1):.3f} @ lr 0.002" in md
    # the caveat names the other rate once, not again as the ADAMW_LR symbol
    assert "differs from the baseline in learning rate 0.002 (baseline 0.001)\n" in md
    assert "ADAMW_LR" not in md[md.index("## Caveats"):]
    csv = pd.read_csv(mdir / "summary.csv").set_index("name")
    assert csv.loc["lion-none-lr2x-seed1337", "lr_multiplier"] == 2


def test_single_rate_report_lists_each_optimizers_rate(built):
    _, mdir, _ = built
    md = squash(report.write_report(mdir)["report"].read_text())
    section = md[md.index("## Learning rates"):md.index("## Against the baseline")]
    assert "| adamw | 0.001 |" in section and "| lion | 0.0001 |" in section
    assert "chosen on the validation split" not in md


def _drawn(monkeypatch):
    """Keep the figures report_plots.save is given, drawn, instead of closing them."""
    figures = []
    real_save = report_plots.save

    def keep(fig, path):
        report_plots.plain_numbers(fig)
        fig.canvas.draw()
        figures.append(fig)
        real_save(fig, path)

    monkeypatch.setattr(report_plots, "save", keep)
    return figures


def plot_cells(losses: dict) -> pd.DataFrame:
    """Cells for plot_final_loss: {(optimizer, method, sparsity): [test loss per seed]}."""
    rows = [{"status": "done", "optimizer": o, "method": m, "target_sparsity": sp,
             "test_loss": v} for (o, m, sp), values in losses.items() for v in values]
    return pd.DataFrame(rows)


def test_final_loss_plot_is_seeds_and_mean_on_a_zoomed_axis_with_the_baseline(tmp_path,
                                                                              monkeypatch):
    figures = _drawn(monkeypatch)
    cells = plot_cells({("adamw", "none", 0.0): [2.9025, 2.9029],
                        ("adamw", "magnitude", 0.5): [2.9031, 2.9035],
                        ("lion", "none", 0.0): [2.9040, 2.9042]})
    data = report_plots.plot_final_loss(cells, 2.9027, tmp_path / "loss.png")
    assert data.loc["adamw-magnitude s=0.5", "mean"] == pytest.approx(2.9033)
    ax = figures[-1].axes[0]
    assert not ax.patches  # no bars
    low, high = ax.get_ylim()
    assert 2.90 < low and high < 2.91  # zoomed: a 0.01% difference is visible
    assert ax.yaxis.get_offset_text().get_text() == ""
    seeds = [line for line in ax.get_lines() if line.get_label() == "one seed"]
    assert len(seeds[0].get_ydata()) == 6  # every seed a point
    base = [line for line in ax.get_lines() if line.get_label() == "baseline (mean)"]
    assert tuple(base[0].get_ydata()) == (2.9027, 2.9027)


def test_a_diverging_setting_is_annotated_not_allowed_to_set_the_axis(tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    cells = plot_cells({("adamw", "none", 0.0): [2.90, 2.91],
                        ("adam", "none", 0.0): [2.92, 2.93],
                        ("lion", "none", 0.0): [2.95, 2.96],
                        ("sgd", "none", 0.0): [7.5, 7.6],  # far above the others
                        ("adafactor", "none", 0.0): [float("inf"), float("inf")]})
    data = report_plots.plot_final_loss(cells, 2.905, tmp_path / "loss.png")
    assert set(data.index[data["diverging"]]) == {"sgd-none", "adafactor-none"}
    ax = figures[-1].axes[0]
    assert ax.get_ylim()[1] < 3.0  # the axis is the others'
    notes = [t.get_text() for t in ax.texts]
    assert any(t.startswith("sgd-none: 7.55") for t in notes)
    assert any(t.startswith("adafactor-none: inf") for t in notes)


def test_a_sparsity_axis_that_spans_nothing_is_not_drawn(built):
    _, mdir, ids = built
    import shutil
    shutil.rmtree(mdir / ids["mag09"])
    (mdir / "state" / f"{ids['mag09']}.json").unlink()
    plots = report.write_report(mdir)["plots"]
    assert "loss_vs_sparsity" not in plots and "test_loss" in plots


def test_loss_curves_start_at_the_first_evaluation(tmp_path, monkeypatch):
    figures = _drawn(monkeypatch)
    curves = pd.DataFrame({"method": "none", "optimizer": "adamw", "target_sparsity": 0.0,
                           "iter": [250, 500, 750], "val_loss": [5.0, 4.0, 3.5]})
    report_plots.plot_val_curves(curves, tmp_path)
    assert figures[-1].axes[0].get_xlim()[0] == 250


def test_extra_dimension_groups_apart_and_shows_its_value(tmp_path):
    config = write_matrix_config(tmp_path, "MATRIX_EXTRA_SYMBOL=NORM",
                                 "MATRIX_EXTRA_VALUES=layernorm rmsnorm",
                                 "MATRIX_BASELINE=adamw-none[NORM=layernorm]")
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    for norm, values in (("layernorm", [10.0, 10.4]), ("rmsnorm", [12.0, 12.6])):
        for seed, ppl in enumerate(values, start=1):
            add_cell(mdir, "adamw", "none", seed, ppl, extra=[f"NORM={norm}"],
                     state={"status": "done", "exit_code": 0, "wall_s": 13.0,
                            "extra": f"NORM={norm}"})
    out = report.write_report(mdir)
    by_method = {r.method: r.mean for r in out["groups"].itertuples()}
    assert by_method == pytest.approx({
        "none[NORM=layernorm]": statistics.mean(held_out_losses([10.0, 10.4])),
        "none[NORM=rmsnorm]": statistics.mean(held_out_losses([12.0, 12.6]))})
    text = squash((mdir / "report.md").read_text())
    assert "none[NORM=rmsnorm]" in text and "none[NORM=layernorm]" in text
    csv = pd.read_csv(mdir / "summary.csv")
    assert sorted(csv["extra"]) == ["NORM=layernorm"] * 2 + ["NORM=rmsnorm"] * 2


def write_curve(mdir, cell_id, losses, seconds, compile_s):
    """Eval records every 10 iterations (256 tokens each) at the given elapsed seconds."""
    records = [{"kind": "eval", "iter": 10 * (i + 1), "tokens": 2560 * (i + 1),
                "elapsed_s": compile_s + s, "val_loss": v}
               for i, (v, s) in enumerate(zip(losses, seconds))]
    (mdir / cell_id / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# per optimizer: val losses at iterations 10, 20, 30, 40; seconds after compile per seed;
# steady-state tokens/s per seed
RACE = {"adamw": ([3.0, 2.5, 2.0, 1.8], {1: [1, 3, 5, 7], 2: [1, 3, 5, 7]}, {1: 1000, 2: 1100}),
        "lion": ([3.0, 2.0, 1.9, 1.8], {1: [1, 2, 3, 4], 2: [1, 2, 3, 4]}, {1: 1500, 2: 1650}),
        "sgd": ([3.0, 2.9, 2.8, 2.7], {1: [1, 2, 3, 4], 2: [1, 2, 3, 4]}, {1: 1010, 2: 1090})}


def race_matrix(tmp_path, name, *extra):
    (tmp_path / name).mkdir()
    config = write_matrix_config(tmp_path / name, "MATRIX_OPTIMIZER_LION=y",
                                 "MATRIX_OPTIMIZER_SGD=y", *extra)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    for opt, (losses, seconds, rates) in RACE.items():
        for seed in (1, 2):
            compile_s = 0.5 * seed
            cell = add_cell(mdir, opt, "none", seed, math.exp(losses[-1]),
                            summary=fake_summary(math.exp(losses[-1]), seed, compile_s=compile_s,
                                                 tokens_per_s=rates[seed]))
            write_curve(mdir, cell, losses, seconds[seed], compile_s)
    return mdir


def test_time_to_target_from_the_eval_records(tmp_path):
    mdir = race_matrix(tmp_path, "a", "MATRIX_TARGET_VAL_LOSS=2.0")
    out = report.write_report(mdir)
    table = out["target"]["table"].set_index("group")
    assert out["target"]["value"] == 2.0
    lion = table.loc["lion-none"]
    assert (lion["reached"], lion["runs"]) == (2, 2)
    assert lion["iter"]["median"] == 20 and lion["tokens"]["median"] == 5120
    assert lion["seconds"]["median"] == pytest.approx(2.0)  # compile taken off
    assert table.loc["adamw-none", "seconds"]["median"] == pytest.approx(5.0)
    assert lion["speedup"]["ratio"] == pytest.approx(2.5)  # 5 s against 2 s, each seed
    assert table.loc["sgd-none", "reached"] == 0
    md = squash(out["report"].read_text())
    section = md[md.index("## Time to target"):]
    interval = cfglib.load(DEFAULT).EVAL_INTERVAL
    assert "Target validation loss 2.0000 (MATRIX_TARGET_VAL_LOSS)" in section
    assert f"one evaluation every {interval} iterations" in section
    assert "| sgd-none | 0 | 0/2 | not reached | not reached | not reached |" in section
    assert ("| lion-none | 0 | 2/2 | 20 [20–20] | 5,120 [5,120–5,120] | 2.0 [2.0–2.0] | "
            "x2.500 [2.500, 2.500] (faster) |") in section


def test_target_zero_is_the_baselines_median_final_val_loss(tmp_path):
    mdir = race_matrix(tmp_path, "a")
    target = report.write_report(mdir)["target"]
    assert target["value"] == pytest.approx(1.8)  # adamw's final val loss at both seeds
    assert "baseline `adamw-none`'s median final validation loss" in target["source"]
    assert target["table"].set_index("group").loc["lion-none", "iter"]["median"] == 40


def test_speed_is_steady_state_median_over_seeds_with_a_paired_ratio(tmp_path):
    mdir = race_matrix(tmp_path, "a")
    out = report.write_report(mdir)
    speed = out["speed"].set_index("group")
    lion = speed.loc["lion-none"]
    assert lion["tokens_per_s"]["median"] == 1575 and lion["tokens_per_s"]["spread"] == "range"
    assert lion["tokens_per_s_ratio"]["ratio"] == pytest.approx(1.5)
    assert lion["tokens_per_s_ratio"]["decision"] == "above 1"
    sgd = speed.loc["sgd-none", "tokens_per_s_ratio"]  # 1.01 and 0.99: within noise
    assert sgd["ci_low"] < 1 < sgd["ci_high"] and sgd["decision"] == "no difference measured"
    md = squash(out["report"].read_text())
    assert "| sgd-none | 0 |" in md and "(no difference measured)" in md
    assert "| 1,575 [1,500–1,650] | x1.500 [1.500, 1.500] (faster) |" in md
    assert "| adamw-none | 0 | 10.5 [10.0–11.0] | baseline | 1,050 [1,000–1,100] | baseline |" in md


def test_trials_are_left_out_of_the_verdict_and_stopped_never_complete(tmp_path):
    mdir = race_matrix(tmp_path, "a")
    add_cell(mdir, "adamw", "none", 7, 5.0, state={"status": "done", "exit_code": 0,
                                                  "wall_s": 1.0, "role": "trial"})
    add_cell(mdir, "adamw", "none", 8, 5.0, state={"status": "done", "exit_code": 0,
                                                  "wall_s": 1.0, "role": "confirm"})
    add_cell(mdir, "lion", "none", 9, 5.0,
             summary={**fake_summary(5.0, 9), "status": "stopped",
                      "early_stop": {"iter": 20, "rung": 1}},
             state={"status": "done", "exit_code": 0})
    out = report.write_report(mdir)
    groups = out["groups"].set_index("group")
    assert groups.loc["adamw-none", "n"] == 3  # seeds 1, 2 and the confirmation run
    assert groups.loc["lion-none", "n"] == 2  # the stopped trial is not complete
    cells = out["cells"].set_index("name")
    assert cells.loc["lion-none-seed9", "status"] == "stopped"
    md = squash(out["report"].read_text())
    assert "1 tuning trials are left out of the verdict tables" in md
    assert "lion-none-seed9" in md[md.index("## Not finished"):]


def test_several_matrices_give_performance_profiles(tmp_path, capsys):
    dirs = [race_matrix(tmp_path, name, "MATRIX_TARGET_VAL_LOSS=2.0") for name in ("a", "b")]
    assert report.main([str(d) for d in dirs]) == 0
    printed = capsys.readouterr().out
    profile = next(Path(line).parent for line in printed.splitlines()
                   if line.endswith("profile.md"))
    for d in dirs:
        assert (d / "report.md").is_file()
    curve = pd.read_csv(profile / "profile.csv").set_index("tau")
    # lion is fastest on both workloads; adamw takes 2.5 times as long; sgd never arrives
    assert (curve["lion-none"] == 1.0).all()
    assert curve.loc[curve.index < 2.5, "adamw-none"].eq(0.0).all()
    assert curve.loc[curve.index >= 2.5, "adamw-none"].eq(1.0).all()
    assert (curve["sgd-none"] == 0.0).all()
    assert (profile / "performance_profile.png").read_bytes().startswith(PNG)
    assert "| sgd-none | not reached | not reached |" in squash((profile / "profile.md").read_text())


def test_a_bad_target_is_an_error_naming_the_knob(tmp_path):
    for bad in ("fast", "-1"):
        with pytest.raises(cfglib.ConfigError, match="MATRIX_TARGET_VAL_LOSS"):
            write_matrix_config(tmp_path, f"MATRIX_TARGET_VAL_LOSS={bad}")
