"""The matrix report: python -m scripts.report MATRIX_DIR|CONFIG [MORE ...] [--baseline-matrix OTHER_DIR]

Reads only the results: each cell's run directory (config, summary.json, metrics.jsonl,
env.json, provenance.json) and the runner's state files, so it can be rerun at any time
without training. Writes into the matrix directory:

  summary.csv      one row per cell (one cell per seed)
  report.md        final test loss per setting; each setting against MATRIX_BASELINE paired
                   by seed (95% interval, paired t, Wilcoxon from 6 pairs, Holm, d_z); speed
                   over seeds; time to MATRIX_TARGET_VAL_LOSS; learning rates (with a sweep:
                   each setting at the rate that won on the validation split); caveats,
                   provenance differences, failures, environment, plots
  plots/*.png      final test loss, achieved sparsity, wall time, peak memory,
                   validation-loss curves per pruning method, test loss vs sparsity
  comparison.csv   with --baseline-matrix: val perplexity here vs there, per cell

Several matrices (workloads) at once also write, beside the first, profile-<hash>/ with
profile.md, profile.csv and performance_profile.png: AlgoPerf performance profiles of the
settings' times to target. Given a config file instead of a directory, it reports on that
config's matrix. Standard deviations are sample standard deviations (ddof=1) over seeds.
"""
import argparse
import math
import sys
from pathlib import Path

from lib import config as cfglib
from lib.config import ConfigError
from lib.fsutil import atomic_write_text
from lib.run import dir_of_config
from scripts import caveats, tuning_report
from scripts import report_load as load
from scripts import report_plots as plots_
from scripts import report_sections as sec
from scripts import report_speed as speed
from scripts import report_verdict as verdict

# The report's sections in order, one function each (report -> markdown lines).
# To add one, add one line here.
SECTIONS = [
    sec.header,
    sec.final_loss,
    sec.learning_rates,
    sec.against_baseline,
    sec.speed,
    sec.time_to_target,
    lambda r: tuning_report.report_section(r.matrix_dir),  # the trials, selections, early stops
    sec.caveat_list,
    sec.extra_budget,
    sec.cells,
    sec.failures,
    sec.unfinished,
    sec.comparison,
    sec.environment,
    sec.plots,
]


def render(report: sec.Report) -> str:
    return "\n".join(line for section in SECTIONS for line in section(report))


def _target(matrix_dir, cells, curves, baseline) -> dict:
    """MATRIX_TARGET_VAL_LOSS (0: the baseline's median final val loss) and its table."""
    value = load.matrix_setting(matrix_dir, "MATRIX_TARGET_VAL_LOSS", 0.0) or 0.0
    source = "MATRIX_TARGET_VAL_LOSS"
    if value == 0.0:
        value = speed.default_target(cells, baseline)
        source = (f"the baseline `{baseline}`'s median final validation loss"
                  if not math.isnan(value) else f"no finished baseline `{baseline}`")
    intervals = sorted({int(i) for i in cells["eval_interval"].dropna()})
    table = (speed.target_table(cells, curves, baseline, value) if not math.isnan(value)
             else cells.iloc[0:0])
    return {"value": value, "source": source, "table": table,
            "resolution": ", ".join(map(str, intervals)) or "n/a"}


def _numbers(matrix_dir, df, baseline) -> dict:
    """The tables of one matrix: selection on validation, verdict on test, speed, target."""
    cells = verdict.verdict_cells(df)
    selection = verdict.select_rates(verdict.aggregate(cells, "val_ppl"))
    chosen = verdict.at_best_rate(cells, selection)
    groups = verdict.aggregate(chosen, "test_loss")
    tried = selection.groupby(verdict.SETTING, sort=False, dropna=False)["rates_tried"].first()
    groups["rates_tried"] = [tried.get(tuple(k), 1) for k in
                             groups[verdict.SETTING].itertuples(index=False)]
    every_curve = load.load_curves(matrix_dir, cells)
    curves = every_curve[every_curve["cell"].isin(chosen["cell"])]
    return {"chosen": chosen, "selection": selection, "groups": groups, "curves": curves,
            "verdict": verdict.verdict(groups, baseline),
            "speed": speed.speed_table(chosen, baseline),
            "target": _target(matrix_dir, chosen, curves, baseline),
            "flags": caveats.find(cells, every_curve, baseline)}


def make_plots(n: dict, df, plots_dir: Path) -> dict:
    """Every plot there is data for; {name: (png path, data drawn)}."""
    out = {}
    done = n["chosen"][n["chosen"]["status"] == "done"]
    if done.empty:
        return out
    groups, base = n["groups"], verdict.baseline_rows(n["groups"], n["baseline"])
    if done["test_loss"].notna().any():
        mean = float(base["mean"].iloc[0]) if not base.empty else math.nan
        out["test_loss"] = plots_.plot_final_loss(done, mean, plots_dir / "test_loss.png")
    out["sparsity"] = plots_.plot_sparsity(df, plots_dir / "sparsity.png")
    out["wall_time"] = plots_.plot_wall_time(df, plots_dir / "wall_time.png")
    if done["peak_mem_bytes"].notna().any():
        out["peak_memory"] = plots_.plot_peak_memory(df, plots_dir / "peak_memory.png")
    ok = n["curves"][n["curves"]["cell"].isin(done["cell"])]
    for method, data in plots_.plot_val_curves(ok, plots_dir).items():
        out[f"val_loss_{method}"] = data
    pruned = groups[(groups["target_sparsity"] > 0) & (groups["n"] > 0)]
    if pruned["target_sparsity"].nunique() > 1:  # a sparsity axis that spans something
        out["loss_vs_sparsity"] = plots_.plot_loss_vs_sparsity(
            groups[groups["n"] > 0], plots_dir / "loss_vs_sparsity.png")
    return {name: (plots_dir / f"{name}.png", data) for name, data in out.items()}


def write_report(matrix_dir, baseline_matrix=None, baseline=None) -> dict:
    """Read the matrix directory and write summary.csv, report.md, plots/ (and
    comparison.csv). Returns the paths and the tables it computed."""
    matrix_dir = Path(matrix_dir)
    if not matrix_dir.is_dir():
        raise ConfigError(f"{matrix_dir}: no such matrix directory")
    df = load.load_cells(matrix_dir)
    if df.empty:
        raise ConfigError(f"{matrix_dir}: no cells (no run directories or state files)")
    baseline = baseline or load.matrix_baseline(matrix_dir)
    n = {**_numbers(matrix_dir, df, baseline), "baseline": baseline}
    out = {"summary": matrix_dir / "summary.csv", "report": matrix_dir / "report.md"}
    comparison = None
    if baseline_matrix is not None:
        comparison = verdict.compare_matrices(df, load.load_cells(Path(baseline_matrix)))
        out["comparison"] = matrix_dir / "comparison.csv"
        atomic_write_text(out["comparison"], comparison.to_csv(index=False))
    report = sec.Report(matrix_dir, df, n["selection"], n["groups"], n["verdict"], baseline,
                        n["flags"], load.environment(matrix_dir, df), n["speed"], n["target"],
                        make_plots(n, df, matrix_dir / "plots"), comparison, baseline_matrix)
    atomic_write_text(out["summary"], df[load.COLUMNS].to_csv(index=False))
    atomic_write_text(out["report"], render(report))
    return {**out, "cells": df, "groups": n["groups"], "all_rates": n["selection"],
            "deltas": n["verdict"], "verdict": n["verdict"], "speed": n["speed"],
            "target": n["target"], "plots": report.plots, "comparison": comparison,
            "caveats": n["flags"]}


def resolve(target) -> Path:
    """A matrix directory, or the matrix directory a config file describes."""
    path = Path(target)
    if path.is_dir():
        return path
    if path.is_file():
        return dir_of_config(path)
    raise ConfigError(f"{path}: neither a matrix directory nor a config file")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix", nargs="*", help="matrix directories or config files "
                        "(default: .config or $KCONFIG_CONFIG); several: one report each "
                        "and performance profiles over them")
    parser.add_argument("--baseline-matrix", metavar="OTHER_DIR",
                        help="another matrix directory (or config) to compare each cell with")
    parser.add_argument("--baseline", metavar="CELL",
                        help="baseline cell, e.g. adamw-none (default: the matrix's MATRIX_BASELINE)")
    args = parser.parse_args(argv)
    try:
        dirs = [resolve(m) for m in (args.matrix or [cfglib.default_config_path()])]
        other = resolve(args.baseline_matrix) if args.baseline_matrix else None
        outs = [write_report(d, other, args.baseline) for d in dirs]
        if len(dirs) > 1:
            from scripts import report_profile
            outs.append(report_profile.write_profiles(dirs, outs))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for out in outs:
        print("\n".join(str(out[k]) for k in ("report", "summary") if k in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
